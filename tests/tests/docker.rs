//! End-to-end scenarios: the real buildwatch binary (real eBPF programs) watching a real
//! dockerd, registry and remote client. Run by `cargo xtask test`, which builds the binary and
//! passes its path in BUILDWATCH_BIN.
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use buildwatch_integration_tests::{
    command::run_command,
    environment::{Environment, BASE_IMAGE},
    runner::{dump_events, prerequisites, run_all, Scenario},
    sensor::{event::*, Sensor, Stream},
};
use serde_json::Value;

const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Fields drop in order: the sensor stops before the environment is torn down.
struct World {
    sensor: Sensor,
    env: Environment,
}

fn main() -> ExitCode {
    let binary = match prerequisites("integration", &[]) {
        Ok(binary) => binary,
        Err(code) => return code,
    };
    let env = Environment::start();
    let config = env.dir.join("buildwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[output]\nkinds = [\"all\"]\n[watch]\nunix_sockets = [\"{}\"]\ntcp_ports = [2375]\ndaemons = [\"dockerd\", \"containerd\"]\n[detect]\nstate_dir = \"{}\"\n",
            env.socket.display(),
            env.dir.join("sensor-state").display()
        ),
    )
    .expect("writing the sensor config");
    let world = World {
        sensor: Sensor::start(&binary, &config),
        env,
    };

    let passed = run_all(
        &world,
        &[
            Scenario {
                name: "pull_from_registry",
                run: pull_from_registry,
            },
            Scenario {
                name: "classic_build",
                run: classic_build,
            },
            Scenario {
                name: "buildkit_build",
                run: buildkit_build,
            },
            Scenario {
                name: "remote_tcp_build",
                run: remote_tcp_build,
            },
            Scenario {
                name: "daemon_registry_fetch",
                run: daemon_registry_fetch,
            },
            Scenario {
                name: "malformed_input",
                run: malformed_input,
            },
            Scenario {
                name: "graceful_shutdown",
                run: graceful_shutdown,
            },
        ],
    );
    dump_events(
        &world.sensor,
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("integration-events.jsonl"),
    );
    drop(world);
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The client's socket.connect for a connection (full process identity).
fn connect_of(world: &World, conn_id: u64) -> Value {
    world.sensor.wait_for(
        0,
        EVENT_TIMEOUT,
        "the socket.connect of the client connection",
        |e| kind(e) == "socket.connect" && e["socket"]["conn_id"] == conn_id,
    )
}

/// The bytes a role moved in one direction on one connection, containing every needle.
fn stream(world: &World, mark: usize, what: &str, role: &str, direction: &str, needles: &[&str]) -> Stream {
    world
        .sensor
        .wait_for_stream(mark, EVENT_TIMEOUT, what, role, direction, needles)
}

fn dockerd_pid(world: &World) -> u64 {
    u64::from(world.env.dockerd_pid)
}

fn pull_from_registry(world: &World) {
    let mark = world.sensor.mark();
    run_command(world.env.docker().args(["pull", BASE_IMAGE]));
    let request = "/images/create?fromImage=127.0.0.1%3A5000%2Fbwbase&tag=1";
    let sent = stream(
        world,
        mark,
        "client write of the pull request",
        "client",
        "send",
        &["POST /v1.", request],
    );
    let first = &sent.events[0];
    assert_eq!(first["process"]["comm"], "docker");
    assert_eq!(
        first["socket"]["peer"],
        format!("unix:{}", world.env.socket.display())
    );
    let connect = connect_of(world, sent.conn_id);
    assert_eq!(pid(&connect), pid(first));
    assert!(
        argv(&connect).iter().any(|a| a == "pull"),
        "client argv: {:?}",
        argv(&connect)
    );
    assert!(
        connect["process"]["exe"]
            .as_str()
            .unwrap_or_default()
            .ends_with("/docker"),
        "{connect}"
    );
    assert!(!ancestry_pids(&connect).is_empty(), "client ancestry: {connect}");

    let received = stream(
        world,
        mark,
        "dockerd's read of the pull request",
        "daemon_accepted",
        "recv",
        &["POST /v1.", request],
    );
    let first = &received.events[0];
    assert_eq!(pid(first), dockerd_pid(world), "{first}");
    assert_eq!(
        first["socket"]["local"],
        format!("unix:{}", world.env.socket.display())
    );
}

/// Asserts the RUN step `command` was exec'd as `/bin/sh -c ...` under the test dockerd.
fn assert_run_step(world: &World, mark: usize, command: &str) -> Value {
    let exec = world.sensor.wait_for(
        mark,
        EVENT_TIMEOUT,
        &format!("exec of the RUN step `{command}`"),
        |e| kind(e) == "process.exec" && argv(e) == ["/bin/sh", "-c", command],
    );
    let chain = ancestry_pids(&exec);
    assert!(
        chain.contains(&dockerd_pid(world)),
        "RUN step ancestry {:?} ({:?}) does not reach dockerd {}",
        chain,
        ancestry_comms(&exec),
        world.env.dockerd_pid
    );
    exec
}

fn classic_build(world: &World) {
    let nonce = &world.env.nonce;
    let command = format!("echo classic-{nonce} > /marker");
    let context = world
        .env
        .context("classic", &format!("FROM {BASE_IMAGE}\nRUN {command}\n"));
    let tag = format!("bwtest/classic:{nonce}");
    let mark = world.sensor.mark();
    run_command(world.env.docker().arg("build").arg("-t").arg(&tag).arg(&context));
    let query = format!("t=bwtest%2Fclassic%3A{nonce}");
    let needles = ["POST /v1.", "/build?", query.as_str()];
    let sent = stream(
        world,
        mark,
        "client write of POST /build",
        "client",
        "send",
        &needles,
    );
    assert_eq!(sent.events[0]["process"]["comm"], "docker");
    let received = stream(
        world,
        mark,
        "dockerd's read of POST /build",
        "daemon_accepted",
        "recv",
        &needles,
    );
    assert_eq!(pid(&received.events[0]), dockerd_pid(world));
    assert_run_step(world, mark, &command);
}

fn buildkit_build(world: &World) {
    let nonce = &world.env.nonce;
    let command = format!("echo buildkit-{nonce} > /marker");
    let context = world
        .env
        .context("buildkit", &format!("FROM {BASE_IMAGE}\nRUN {command}\n"));
    let tag = format!("bwtest/buildkit:{nonce}");
    let mark = world.sensor.mark();
    run_command(
        world
            .env
            .docker()
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "--network", "none", "-t", &tag])
            .arg(&context),
    );
    let query = format!("t=bwtest%2Fbuildkit%3A{nonce}");
    for (role, direction) in [("client", "send"), ("daemon_accepted", "recv")] {
        stream(
            world,
            mark,
            &format!("{role} {direction} of POST /session"),
            role,
            direction,
            &["POST /session", "Upgrade: h2c"],
        );
        stream(
            world,
            mark,
            &format!("{role} {direction} of POST /build?version=2"),
            role,
            direction,
            &["/build?", "version=2", &query],
        );
    }
    let exec = assert_run_step(world, mark, &command);
    assert!(
        ancestry_comms(&exec).iter().any(|c| c.starts_with("runc")),
        "BuildKit RUN steps run under runc: {:?}",
        ancestry_comms(&exec)
    );
}

fn remote_tcp_build(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let command = format!("echo remote-{nonce} > /marker");
    let context = env.context("remote", &format!("FROM {BASE_IMAGE}\nRUN {command}\n"));
    let tag = format!("bwtest/remote:{nonce}");
    let mark = world.sensor.mark();
    run_command(env.remote_docker().arg("build").arg("-t").arg(&tag).arg(&context));
    let query = format!("t=bwtest%2Fremote%3A{nonce}");
    let needles = ["POST /v1.", "/build?", query.as_str()];
    let daemon_address = format!("{}:2375", env.daemon_ip);
    let peer_prefix = format!("{}:", env.remote_ip);
    let received = stream(
        world,
        mark,
        "dockerd's read of the remote POST /build",
        "daemon_accepted",
        "recv",
        &needles,
    );
    for event in &received.events {
        assert_eq!(pid(event), dockerd_pid(world));
        assert_eq!(event["socket"]["local"], daemon_address);
    }
    let peer = received.events[0]["socket"]["peer"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        peer.starts_with(&peer_prefix),
        "peer {peer} is not the remote namespace {}",
        env.remote_ip
    );
    let port: u16 = peer[peer_prefix.len()..].parse().expect("peer port");
    assert!(port > 0);
    let accept = world
        .sensor
        .wait_for(0, EVENT_TIMEOUT, "dockerd's accept of the remote client", |e| {
            kind(e) == "socket.accept" && e["socket"]["conn_id"] == received.conn_id
        });
    assert_eq!(accept["socket"]["peer"], peer);
    assert_eq!(accept["socket"]["local"], daemon_address);
    // The client side, inside the remote namespace, is seen too.
    let sent = stream(
        world,
        mark,
        "the remote client's write",
        "client",
        "send",
        &needles,
    );
    assert_eq!(sent.events[0]["socket"]["peer"], daemon_address);
    assert_run_step(world, mark, &command);
}

fn daemon_registry_fetch(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    // Make the daemon fetch the base image itself while building.
    run_command(env.docker().args(["image", "rm", "--force", BASE_IMAGE]));
    let context = env.context("fetch", &format!("FROM {BASE_IMAGE}\nRUN echo fetch-{nonce}\n"));
    let mark = world.sensor.mark();
    run_command(
        env.docker()
            .args(["build", "-t", &format!("bwtest/fetch:{nonce}")])
            .arg(&context),
    );
    let connect = world
        .sensor
        .wait_for(mark, EVENT_TIMEOUT, "dockerd's connect to the registry", |e| {
            kind(e) == "socket.connect"
                && role(e) == "daemon_outbound"
                && e["socket"]["peer"] == "127.0.0.1:5000"
        });
    assert_eq!(pid(&connect), dockerd_pid(world));
    let fetch = stream(
        world,
        mark,
        "dockerd's manifest request",
        "daemon_outbound",
        "send",
        &["/v2/bwbase/manifests/1 HTTP/1.1"],
    );
    let first = &fetch.events[0];
    assert_eq!(pid(first), dockerd_pid(world));
    assert_eq!(first["socket"]["peer"], "127.0.0.1:5000");
    let line = fetch
        .text
        .lines()
        .find(|l| l.contains("/v2/bwbase/manifests/1"))
        .unwrap_or_default();
    assert!(
        line.starts_with("GET ") || line.starts_with("HEAD "),
        "request line: {line}"
    );
}

fn malformed_input(world: &World) {
    let env = &world.env;
    let mark = world.sensor.mark();
    let garbage: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    {
        // dockerd answers garbage with 400 and may close before a second write: only the first
        // write must succeed.
        let mut stream = UnixStream::connect(&env.socket).expect("connecting to the daemon socket");
        let written = stream.write(&garbage).expect("writing garbage");
        assert_eq!(written, garbage.len(), "one write of all the garbage");
        let _ = stream.write_all(b"\r\n\r\n");
    }
    {
        let mut stream = UnixStream::connect(&env.socket).expect("connecting to the daemon socket");
        stream
            .write_all(b"POST /v1.41/build?t=half HTTP/1.1\r\nContent-Le")
            .expect("writing half a request");
    }
    let garbage_seen = world
        .sensor
        .wait_for(mark, EVENT_TIMEOUT, "the garbage write", |e| {
            kind(e) == "socket.data" && role(e) == "client" && e["data"]["encoding"] == "base64"
        });
    assert_eq!(garbage_seen["data"]["length"], garbage.len(), "{garbage_seen}");
    assert_eq!(garbage_seen["data"]["captured"], 4096, "{garbage_seen}");
    stream(
        world,
        mark,
        "the half request",
        "client",
        "send",
        &["t=half", "Content-Le"],
    );

    let marker = format!("/v1.41/version?after-garbage={}", env.nonce);
    let mut connection = UnixStream::connect(&env.socket).expect("connecting to the daemon socket");
    connection
        .write_all(format!("GET {marker} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("writing a valid request");
    let mut response = String::new();
    connection
        .read_to_string(&mut response)
        .expect("reading the response");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "dockerd answered: {response}"
    );
    stream(
        world,
        mark,
        "the valid request after garbage (client)",
        "client",
        "send",
        &[&marker],
    );
    stream(
        world,
        mark,
        "the valid request after garbage (dockerd)",
        "daemon_accepted",
        "recv",
        &[&marker],
    );
    assert!(world.sensor.is_running(), "the sensor died on malformed input");
    assert!(
        world.sensor.invalid_lines().is_empty(),
        "non-JSON output: {:?}",
        world.sensor.invalid_lines()
    );
}

fn graceful_shutdown(world: &World) {
    let status = world
        .sensor
        .terminate(Duration::from_secs(10))
        .expect("buildwatch did not exit within 10 s of SIGTERM");
    assert!(
        status.success(),
        "buildwatch exited with {status}; stderr:\n{}",
        world.sensor.stderr()
    );
    let stop = world
        .sensor
        .wait_for(0, Duration::from_secs(1), "sensor.stop", |e| {
            kind(e) == "sensor.stop"
        });
    assert_eq!(stop["stats"]["decode_errors"], 0, "{stop}");
    assert!(
        stop["stats"]["events"]["socket.data"]
            .as_u64()
            .unwrap_or_default()
            > 0,
        "{stop}"
    );
    let losses = world.sensor.all(0, |e| kind(e) == "sensor.loss");
    assert!(losses.is_empty(), "the kernel dropped events: {losses:?}");
}
