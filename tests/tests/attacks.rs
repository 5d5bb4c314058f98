//! Attacks on the sensor itself, by an unprivileged local user the harness creates: a Dockerfile
//! path that blocks or is swapped for a FIFO, a pull forged to a listener of the user's own, a
//! fake dockerd faking a registry fetch, a crash right after a pull, a corrupt ledger, an output
//! path replaced by a symlink. After each: the sensor is alive, the next real build is detected,
//! and what was refused or lost is reported.
use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use buildwatch_integration_tests::{
    attacker::Attacker,
    command::run_command,
    environment::{Environment, BASE_IMAGE, REGISTRY},
    runner::{dump_events, prerequisites, run_all, Scenario},
    sensor::{event::*, is_confirmed_pull, Sensor},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

struct World {
    sensor: Sensor,
    binary: PathBuf,
    attacker: Attacker,
    env: Environment,
}

fn main() -> ExitCode {
    let binary = match prerequisites("attack", &[("setpriv", "util-linux"), ("useradd", "passwd")]) {
        Ok(binary) => binary,
        Err(code) => return code,
    };
    let env = Environment::start();
    let config = sensor_config(&env, &env.dir.join("attack-state"), "");
    let world = World {
        sensor: Sensor::start(&binary, &config),
        binary,
        attacker: Attacker::create(),
        env,
    };
    let passed = run_all(
        &world,
        &[
            Scenario {
                name: "a_blocking_dockerfile_path_does_not_stall_the_sensor",
                run: a_blocking_dockerfile_path_does_not_stall_the_sensor,
            },
            Scenario {
                name: "a_fifo_swapped_in_is_refused_and_unreadable_files_stay_unread",
                run: a_fifo_swapped_in_is_refused_and_unreadable_files_stay_unread,
            },
            Scenario {
                name: "a_pull_forged_to_the_users_own_listener_excuses_nothing",
                run: a_pull_forged_to_the_users_own_listener_excuses_nothing,
            },
            Scenario {
                name: "a_fake_dockerd_is_reported_and_its_fetch_ignored",
                run: a_fake_dockerd_is_reported_and_its_fetch_ignored,
            },
            Scenario {
                name: "twenty_thousand_connects_do_not_evict_an_idle_api_connection",
                run: twenty_thousand_connects_do_not_evict_an_idle_api_connection,
            },
            Scenario {
                name: "a_one_byte_write_flood_costs_the_daemons_view_nothing",
                run: a_one_byte_write_flood_costs_the_daemons_view_nothing,
            },
            Scenario {
                name: "a_full_output_file_system_is_counted_and_recovered",
                run: a_full_output_file_system_is_counted_and_recovered,
            },
            Scenario {
                name: "sigkill_right_after_a_pull_keeps_the_pull",
                run: sigkill_right_after_a_pull_keeps_the_pull,
            },
            Scenario {
                name: "a_corrupt_ledger_is_moved_aside",
                run: a_corrupt_ledger_is_moved_aside,
            },
            Scenario {
                name: "an_output_path_replaced_by_a_symlink_is_not_followed",
                run: an_output_path_replaced_by_a_symlink_is_not_followed,
            },
        ],
    );
    dump_events(
        &world.sensor,
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("attack-events.jsonl"),
    );
    drop(world);
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The test daemon's socket and ports; clients of 2376 are followed to any address
/// (`remote_tcp_ports`), so a listener of the user's own there is decoded: what a client-side
/// view alone would take for a pull.
fn sensor_config(env: &Environment, state_dir: &Path, extra: &str) -> PathBuf {
    let path = env.dir.join(format!(
        "attack-{}.toml",
        state_dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(
        &path,
        format!(
            "[watch]\nunix_sockets = [\"{}\"]\ntcp_ports = [2375, 2376]\nremote_tcp_ports = [2376]\n[detect]\nstate_dir = \"{}\"\ndocker_data_root = \"{}\"\n{extra}",
            env.socket.display(),
            state_dir.display(),
            env.dir.join("data").display()
        ),
    )
    .expect("writing the sensor config");
    path
}

/// A remote plain-TCP build of a fresh tag, and its detection: the sensor still works.
fn next_build_is_detected(sensor: &Sensor, env: &Environment, label: &str) -> Value {
    let mark = sensor.mark();
    let context = env.context(
        &format!("attack-{label}"),
        &format!("FROM {BASE_IMAGE}\nLABEL attack={label}-{}\n", env.nonce),
    );
    let tag = format!("bwattack/{label}:{}", env.nonce);
    run_command(env.remote_docker().args(["build", "-t", &tag]).arg(&context));
    let full = format!("docker.io/{tag}");
    sensor.wait_for(mark, TIMEOUT, &format!("the detection of {tag}"), |e| {
        kind(e) == "detection"
            && e["detection"]["rule"] == "build_without_pull"
            && e["build"]["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == full.as_str()))
    })
}

fn build_of_tag(sensor: &Sensor, mark: usize, tag: &str) -> Value {
    sensor.wait_for(mark, TIMEOUT, &format!("the build of {tag}"), |e| {
        kind(e) == "build"
            && e["build"]["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == tag))
    })
}

/// Root builds `tag` over the unix socket; the build must be flagged, whatever `excuse` tried.
fn root_build_is_flagged(sensor: &Sensor, env: &Environment, tag: &str, excuse: &str) {
    let context = env.context(
        &format!("attack-{}", tag.replace(['/', ':'], "-")),
        &format!("FROM {BASE_IMAGE}\nLABEL excuse=1\n"),
    );
    let mark = sensor.mark();
    run_command(env.docker().args(["build", "-t", tag]).arg(&context));
    let normalised = if tag.contains('/') {
        tag.to_string()
    } else {
        format!("docker.io/library/{tag}")
    };
    let build = build_of_tag(sensor, mark, &normalised);
    assert!(
        !build["build"]["detection_id"].is_null(),
        "{excuse} excused the build: {build}"
    );
}

/// Lines the output file did not get are counted in `sensor.loss`.
fn assert_output_errors_reported(sensor: &Sensor, mark: usize) {
    let loss = sensor.wait_for(mark, TIMEOUT, "output errors in sensor.loss", |e| {
        kind(e) == "sensor.loss" && e["loss"]["output_errors"].is_object()
    });
    assert!(
        loss["loss"]["output_errors"]
            .as_object()
            .is_some_and(|o| !o.is_empty()),
        "{loss}"
    );
}

fn assert_alive(sensor: &Sensor) {
    assert!(sensor.is_running(), "the sensor died:\n{}", sensor.stderr());
}

/// `~/podman build -f /sys/kernel/tracing/trace_pipe .`: the file would block a reader forever.
fn a_blocking_dockerfile_path_does_not_stall_the_sensor(world: &World) {
    let (sensor, env, attacker) = (&world.sensor, &world.env, &world.attacker);
    let podman = attacker.tool(Path::new(env!("CARGO_BIN_EXE_bw-attacker")), "podman");
    let mark = sensor.mark();
    let started = std::time::Instant::now();
    let status = attacker
        .command(&podman)
        .args([
            "build",
            "-f",
            "/sys/kernel/tracing/trace_pipe",
            "-t",
            "blocked:1",
            ".",
        ])
        .status()
        .expect("running the fake podman");
    assert!(status.success());
    let build = sensor.wait_for(mark, TIMEOUT, "the fake podman's build", |e| {
        kind(e) == "build" && e["build"]["builder"] == "podman"
    });
    // The user may not even open it: nothing is read on their behalf that they could not read.
    let unread = build["build"]["dockerfile_unread"].as_str().unwrap_or_default();
    assert!(unread.contains("Permission denied"), "{build}");
    assert!(build["build"]["instructions"].is_null(), "{build}");
    // Root may open it; the file system is what refuses it then, at once.
    let mark = sensor.mark();
    let status = std::process::Command::new(&podman)
        .args([
            "build",
            "-f",
            "/sys/kernel/tracing/trace_pipe",
            "-t",
            "blocked:2",
            ".",
        ])
        .status()
        .expect("running the fake podman as root");
    assert!(status.success());
    let build = sensor.wait_for(mark, TIMEOUT, "root's fake podman build", |e| {
        kind(e) == "build" && e["build"]["tags"][0] == "docker.io/library/blocked:2"
    });
    let unread = build["build"]["dockerfile_unread"].as_str().unwrap_or_default();
    assert!(unread.contains("tracefs"), "{build}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_alive(sensor);
    next_build_is_detected(sensor, env, "blocking");
}

/// A context whose Dockerfile is a FIFO the user made; one whose Dockerfile is swapped for a
/// FIFO again and again while builds read it; and a Dockerfile only root may read, named by the
/// user: never read for them, and no reader blocked.
fn a_fifo_swapped_in_is_refused_and_unreadable_files_stay_unread(world: &World) {
    let (sensor, env, attacker) = (&world.sensor, &world.env, &world.attacker);
    let podman = attacker.tool(Path::new(env!("CARGO_BIN_EXE_bw-attacker")), "podman");
    // A build that certainly meets a FIFO: its Dockerfile is one.
    let fifo_context = attacker.home.join("fifo-ctx");
    let made = attacker
        .command(Path::new("/bin/sh"))
        .arg("-c")
        .arg(format!(
            "mkdir {0} && mkfifo {0}/Dockerfile",
            fifo_context.display()
        ))
        .status()
        .expect("making the FIFO");
    assert!(made.success(), "mkfifo as the user: {made}");
    let mark = sensor.mark();
    let started = std::time::Instant::now();
    let status = attacker
        .command(&podman)
        .args(["build", "-t", "fifo:1", "fifo-ctx"])
        .status()
        .expect("running the fake podman");
    assert!(status.success(), "the fake podman: {status}");
    let build = sensor.wait_for(mark, TIMEOUT, "the build of a FIFO Dockerfile", |e| {
        kind(e) == "build" && e["build"]["tags"][0] == "docker.io/library/fifo:1"
    });
    assert!(
        build["build"]["dockerfile_unread"]
            .as_str()
            .unwrap_or_default()
            .contains("FIFO"),
        "{build}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let context = attacker.home.join("ctx");
    std::fs::create_dir_all(&context).expect("creating the context");
    let swapper = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && for i in $(seq 1 400); do rm -f Dockerfile; echo 'FROM alpine' > Dockerfile; rm -f Dockerfile; mkfifo Dockerfile; sleep 0.01; done",
            context.display()
        ))
        .spawn()
        .expect("starting the swapper");
    let mut builds = Vec::new();
    for round in 0..4 {
        let mark = sensor.mark();
        let status = attacker
            .command(&podman)
            .args(["build", "-t", "swapped:1", "ctx"])
            .status()
            .expect("running the fake podman");
        assert!(status.success(), "the fake podman: {status}");
        builds.push(
            sensor.wait_for(mark, TIMEOUT, &format!("swapped build {round}"), |e| {
                kind(e) == "build" && e["build"]["tags"][0] == "docker.io/library/swapped:1"
            }),
        );
    }
    let mut swapper = swapper;
    assert!(swapper.wait().expect("the swapper").success());
    for build in &builds {
        let unread = build["build"]["dockerfile_unread"].as_str().unwrap_or_default();
        assert!(
            !build["build"]["instructions"].is_null()
                || unread.contains("FIFO")
                || unread.contains("No such file"),
            "{build}"
        );
    }
    // A root-only Dockerfile named by the user is not read on their behalf.
    let secret = env.dir.join("root-only");
    std::fs::create_dir_all(&secret).expect("mkdir");
    std::fs::write(
        secret.join("Dockerfile"),
        "FROM secret-base-image\nRUN secret-command\n",
    )
    .expect("write");
    run_command(std::process::Command::new("chmod").args(["0700"]).arg(&secret));
    let mark = sensor.mark();
    let _ = attacker
        .command(&podman)
        .args(["build", "-f"])
        .arg(secret.join("Dockerfile"))
        .args(["-t", "secret:1", "."])
        .status();
    let build = sensor.wait_for(mark, TIMEOUT, "the build naming a root-only file", |e| {
        kind(e) == "build" && e["build"]["tags"][0] == "docker.io/library/secret:1"
    });
    assert!(!build.to_string().contains("secret-command"), "{build}");
    assert!(
        build["build"]["dockerfile_unread"]
            .as_str()
            .unwrap_or_default()
            .contains("Permission denied"),
        "{build}"
    );
    assert_alive(sensor);
    next_build_is_detected(sensor, env, "fifo");
}

/// The user listens on 127.0.0.1:2376, connects and writes a pull of `advforged:1`. Root's next
/// build of that name must still be flagged.
fn a_pull_forged_to_the_users_own_listener_excuses_nothing(world: &World) {
    let (sensor, env, attacker) = (&world.sensor, &world.env, &world.attacker);
    let tool = attacker.tool(Path::new(env!("CARGO_BIN_EXE_bw-attacker")), "bw-attacker");
    let name = format!("advforged{}", env.nonce);
    let mark = sensor.mark();
    let status = attacker
        .command(&tool)
        .args(["forge-pull", "2376", &format!("{name}:1")])
        .status()
        .expect("running the forger");
    assert!(status.success());
    // The sensor decoded the forgery (the client's side of it), and did not believe it.
    let image = format!("docker.io/library/{name}:1");
    let forged = sensor.wait_for(mark, TIMEOUT, "the forged pull, decoded", |e| {
        kind(e) == "docker.operation"
            && e["operation"]["type"] == "pull"
            && e["operation"]["image"] == image.as_str()
    });
    assert_eq!(forged["operation"]["confirmed"], false, "{forged}");
    assert_eq!(forged["operation"]["client"]["uid"], attacker.uid, "{forged}");
    root_build_is_flagged(sensor, env, &format!("{name}:1"), "the forged pull");
    assert_alive(sensor);
}

/// A copy of the tool named dockerd listens and "fetches" a manifest from its own registry.
fn a_fake_dockerd_is_reported_and_its_fetch_ignored(world: &World) {
    let (sensor, env, attacker) = (&world.sensor, &world.env, &world.attacker);
    let fake = attacker.tool(Path::new(env!("CARGO_BIN_EXE_bw-attacker")), "dockerd");
    let repository = format!("advfake{}", env.nonce);
    let mark = sensor.mark();
    let status = attacker
        .command(&fake)
        .arg(&repository)
        .status()
        .expect("running the fake dockerd");
    assert!(status.success());
    let found = sensor.wait_for(mark, TIMEOUT, "daemon_impersonation", |e| {
        kind(e) == "detection" && e["detection"]["rule"] == "daemon_impersonation"
    });
    assert_eq!(found["detection"]["attack"]["technique"], "T1036.005");
    assert!(
        found["detection"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&fake.display().to_string()),
        "{found}"
    );
    // Its "registry" connection was never tracked as a daemon's: the real dockerd's pull after
    // it, confirmed by the registry traffic the sensor followed from that daemon, shows the
    // sensor was following daemons' outbound connections.
    let fake_pid = found["api"]["client"]["pid"].clone();
    let fake_done = std::time::SystemTime::now();
    run_command(env.docker().args(["pull", BASE_IMAGE]));
    sensor.stays_quiet(
        mark,
        "the real dockerd's pull after the fake's fetch, confirmed by its registry traffic",
        |e| is_confirmed_pull(e, BASE_IMAGE) && time(e) > fake_done,
        "the fake dockerd's connection is no daemon's",
        |e| role(e) == "daemon_outbound" && e["process"]["pid"] == fake_pid,
    );
    root_build_is_flagged(
        sensor,
        env,
        &format!("{REGISTRY}/{repository}:1"),
        "the fake fetch",
    );
    assert_alive(sensor);
}

/// A pull, a second and a half, SIGKILL, a restart: the pull is remembered. The repository is
/// this scenario's own, so only the remembered pull can excuse the build.
fn sigkill_right_after_a_pull_keeps_the_pull(world: &World) {
    let env = &world.env;
    let state = env.dir.join("sigkill-state");
    let config = sensor_config(env, &state, "");
    let repository = format!("{REGISTRY}/bwsigkill-{}", env.nonce);
    let pulled = format!("{repository}:1");
    let tag = format!("{repository}:2");
    run_command(env.docker().args(["pull", BASE_IMAGE]));
    run_command(env.docker().args(["tag", BASE_IMAGE, &pulled]));
    run_command(env.docker().args(["push", &pulled]));
    run_command(env.docker().args(["rmi", &pulled]));
    {
        let first = Sensor::start(&world.binary, &config);
        let mark = first.mark();
        run_command(env.docker().args(["pull", &pulled]));
        first.confirmed_pull(mark, &pulled);
        std::thread::sleep(Duration::from_millis(1500));
        first.kill();
    }
    let second = Sensor::start(&world.binary, &config);
    let context = env.context(
        "attack-sigkill",
        &format!("FROM {BASE_IMAGE}\nLABEL sigkill={}\n", env.nonce),
    );
    let mark = second.mark();
    run_command(env.docker().args(["build", "-t", &tag]).arg(&context));
    second.stays_quiet(
        mark,
        "the build after the crash",
        |e| kind(e) == "build" && has_tag(&e["build"], &tag),
        "the pull must survive the crash",
        |e| kind(e) == "detection" && has_tag(&e["build"], &tag),
    );
    next_build_is_detected(&second, env, "sigkill");
    assert_alive(&second);
}

/// A ledger file of garbage: the sensor starts anyway, says so, and flags the next build with
/// the reset among its reasons.
fn a_corrupt_ledger_is_moved_aside(world: &World) {
    let env = &world.env;
    let state = env.dir.join("corrupt-state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(state.join("ledger.json"), b"{\"version\":2,\"records\":[{\"trunc").expect("write");
    let config = sensor_config(env, &state, "");
    let sensor = Sensor::start(&world.binary, &config);
    let warning = sensor.wait_for(0, TIMEOUT, "sensor.warning", |e| kind(e) == "sensor.warning");
    let moved = warning["moved_to"].as_str().unwrap_or_default().to_string();
    assert!(moved.contains("ledger.json.corrupt-"), "{warning}");
    assert!(Path::new(&moved).is_file());
    let found = next_build_is_detected(&sensor, env, "corrupt");
    assert!(
        found["detection"]["reasons"]
            .to_string()
            .contains("ledger was reset"),
        "{found}"
    );
    assert_alive(&sensor);
}

/// The output file is replaced by a symlink to a file root owns, then SIGHUP reopens it: the
/// symlink is not followed, the failure is reported, events keep flowing to stdout.
fn an_output_path_replaced_by_a_symlink_is_not_followed(world: &World) {
    let env = &world.env;
    let dir = env.dir.join("symlink-out");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let output = dir.join("events.jsonl");
    let victim = env.dir.join("victim");
    std::fs::write(&victim, "root's file\n").expect("write");
    let config = sensor_config(
        env,
        &env.dir.join("symlink-state"),
        &format!("[output]\npath = \"{}\"\nstdout = true\n", output.display()),
    );
    let sensor = Sensor::start(&world.binary, &config);
    std::fs::remove_file(&output).expect("rm");
    std::os::unix::fs::symlink(&victim, &output).expect("symlink");
    let mark = sensor.mark();
    sensor.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    next_build_is_detected(&sensor, env, "symlink");
    assert_eq!(std::fs::read_to_string(&victim).expect("read"), "root's file\n");
    assert!(sensor.stderr().contains("symbolic link"), "{}", sensor.stderr());
    // What the file did not get is counted, not written to the old, unlinked file.
    assert_output_errors_reported(&sensor, mark);
    assert_alive(&sensor);
    // A symlinked output path at start is a one-line refusal.
    let refused = std::process::Command::new(&world.binary)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("running buildwatch");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
}

/// The last `sensor.loss` line since `mark`, or `None`.
fn last_loss(sensor: &Sensor, mark: usize) -> Option<Value> {
    sensor.all(mark, |e| kind(e) == "sensor.loss").pop()
}

/// A client that connected to the API and went quiet keeps its tracking while an unprivileged
/// user makes 20,000 connections (20 processes that leave them open and exit); its next request,
/// a build, is seen and flagged.
fn twenty_thousand_connects_do_not_evict_an_idle_api_connection(world: &World) {
    let (sensor, env, attacker) = (&world.sensor, &world.env, &world.attacker);
    let mut idle = UnixStream::connect(&env.socket).expect("connecting to the daemon");
    idle.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    idle.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n")
        .expect("ping");
    let mut answer = [0u8; 1024];
    let n = idle.read(&mut answer).expect("the ping's answer");
    assert!(String::from_utf8_lossy(&answer[..n]).contains("200 OK"));
    let tool = attacker.tool(Path::new(env!("CARGO_BIN_EXE_bw-attacker")), "bw-attacker");
    let mark = sensor.mark();
    let status = attacker
        .command_in(&env.remote_ns, &tool)
        .args(["connect-flood", &format!("{}:2375", env.daemon_ip), "20000", "20"])
        .status()
        .expect("running the flood");
    assert!(status.success());
    // The idle connection's next request: a build of a fresh name.
    let context = env.context(
        "attack-idle",
        &format!("FROM {BASE_IMAGE}\nLABEL idle={}\n", env.nonce),
    );
    let tar = run_command(
        std::process::Command::new("tar")
            .arg("-C")
            .arg(&context)
            .args(["-c", "."]),
    );
    let tag = format!("bwattack/idle:{}", env.nonce);
    let head = format!(
        "POST /v1.41/build?t={} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\n\r\n",
        tag.replace('/', "%2F").replace(':', "%3A"),
        tar.len()
    );
    idle.write_all(head.as_bytes()).expect("the build's head");
    idle.write_all(tar.as_bytes()).expect("the build's context");
    let full = format!("docker.io/{tag}");
    let found = sensor.wait_for(mark, TIMEOUT, "the idle connection's build", |e| {
        kind(e) == "detection"
            && e["detection"]["rule"] == "build_without_pull"
            && e["build"]["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == full.as_str()))
    });
    assert_eq!(found["build"]["transport"], "unix", "{found}");
    drop(idle);
    assert_alive(sensor);
    // What the flood could not get tracked is reported, not silent.
    let loss = sensor.wait_for(mark, TIMEOUT, "sensor.loss naming a full table", |e| {
        kind(e) == "sensor.loss" && e["loss"]["table_full"].is_object()
    });
    assert!(
        loss["loss"]["table_full"]["client_fds_per_process"]
            .as_u64()
            .unwrap_or_default()
            > 0,
        "{loss}"
    );
    assert!(loss["loss"]["table_full"]["tracked_daemon"].is_null(), "{loss}");
    next_build_is_detected(sensor, env, "after-connects");
}

/// Sixteen connections writing one byte per write during a remote build: the client ring and
/// the budgets (per connection, per peer) take it; the daemon ring loses no record and the build
/// is detected with its Dockerfile.
fn a_one_byte_write_flood_costs_the_daemons_view_nothing(world: &World) {
    let (sensor, env, attacker) = (&world.sensor, &world.env, &world.attacker);
    let tool = attacker.tool(Path::new(env!("CARGO_BIN_EXE_bw-attacker")), "bw-attacker");
    let mark = sensor.mark();
    // From another address than the remote builder's: daemon-side budgets are per connection
    // and per peer address, so a flooding host only spends its own.
    let flood = attacker
        .command_in(&env.daemon_ns, &tool)
        .args(["byte-flood", &format!("{}:2375", env.daemon_ip), "16", "8"])
        .spawn()
        .expect("starting the flood");
    std::thread::sleep(Duration::from_secs(2));
    let found = next_build_is_detected(sensor, env, "flood");
    assert!(!found["build"]["instructions"].is_null(), "{found}");
    let mut flood = flood;
    let _ = flood.wait();
    std::thread::sleep(Duration::from_millis(1500));
    assert_alive(sensor);
    let loss = last_loss(sensor, mark).expect("the flood's cost is reported");
    let drops = loss["loss"]["kernel_drops"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert!(
        drops.keys().all(|k| k.starts_with("client:")),
        "the daemon ring lost records: {loss}"
    );
    let skipped = &loss["loss"]["budget_skipped_bytes"];
    assert!(
        skipped["client"].as_u64().unwrap_or_default() > 0 || !drops.is_empty(),
        "{loss}"
    );
}

/// The output file's file system fills up: lost lines are counted, the sensor runs on, and once
/// space returns lines reach the file again, whole.
fn a_full_output_file_system_is_counted_and_recovered(world: &World) {
    let env = &world.env;
    let mount = env.dir.join("small-fs");
    std::fs::create_dir_all(&mount).expect("mkdir");
    run_command(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
            .arg(&mount),
    );
    let filler = mount.join("filler");
    std::fs::write(&filler, vec![0u8; 160 * 1024]).expect("filler");
    let output = mount.join("events.jsonl");
    let config = sensor_config(
        env,
        &env.dir.join("fullfs-state"),
        &format!(
            "[output]\npath = \"{}\"\nstdout = true\n[process]\nall = true\n",
            output.display()
        ),
    );
    let sensor = Sensor::start(&world.binary, &config);
    let mark = sensor.mark();
    // Plenty of events: short processes (every process is reported).
    for _ in 0..400 {
        let _ = std::process::Command::new("true").status();
    }
    assert_output_errors_reported(&sensor, mark);
    assert_alive(&sensor);
    std::fs::remove_file(&filler).expect("freeing space");
    let size_before = std::fs::metadata(&output).map(|m| m.len()).unwrap_or(0);
    next_build_is_detected(&sensor, env, "fullfs");
    std::thread::sleep(Duration::from_millis(800));
    let text = std::fs::read_to_string(&output).expect("reading the output");
    assert!(
        text.len() as u64 > size_before,
        "nothing written after space came back"
    );
    let last = text.lines().last().expect("a line");
    serde_json::from_str::<Value>(last).expect("whole lines after recovery");
    drop(sensor);
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&mount)
        .status();
}
