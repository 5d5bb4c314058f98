//! The detection scenarios on the Docker people run today: Docker 26.1 with buildx (BuildKit over
//! `/grpc` and `/session`), once with dockerd's classic image store and once with containerd's,
//! both beside the 20.10 daemon of the detection suite and watched by one sensor. Every scenario
//! runs on all three (20.10 driven by the 26.1 CLI and buildx); the last ones check that each
//! daemon keeps its own provenance and that a replay equals the live run.
use std::{
    ffi::OsStr,
    path::PathBuf,
    process::{Command, ExitCode},
    time::Duration,
};

use buildwatch_integration_tests::{
    command::run_command,
    environment::{Environment, ImageStore, ModernEngine, BASE_IMAGE, REGISTRY},
    runner::{dump_events, prerequisites, run_all, Scenario},
    sensor::{event::*, Sensor},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

struct World {
    sensor: Sensor,
    binary: PathBuf,
    env: Environment,
    /// The Debian 20.10 daemon, driven by the 26.1 CLI and buildx.
    debian: ModernEngine,
    classic: ModernEngine,
    containerd: ModernEngine,
}

fn main() -> ExitCode {
    let binary = match prerequisites("engines", &[]) {
        Ok(binary) => binary,
        Err(code) => return code,
    };
    let prefix = match std::env::var_os("BUILDWATCH_DOCKER_26").map(PathBuf::from) {
        Some(prefix) if prefix.join("usr/sbin/dockerd").is_file() => prefix,
        _ => {
            let message =
                "the engine matrix needs Docker 26.1 in BUILDWATCH_DOCKER_26 (`cargo xtask test` fetches it)";
            if buildwatch_integration_tests::ci() {
                eprintln!("FAIL (CI=true, nothing may be skipped): {message}");
                return ExitCode::FAILURE;
            }
            println!("skipping: {message}\n0 passed, 0 failed, 1 skipped");
            return ExitCode::SUCCESS;
        }
    };
    let mut env = Environment::start();
    let debian = env.main_engine_with_buildx(&prefix);
    let classic = env.start_modern_engine(&prefix, ImageStore::Classic);
    let containerd = env.start_modern_engine(&prefix, ImageStore::Containerd);
    let config = sensor_config(&env, &[&classic, &containerd]);
    let recording = recording_path();
    let world = World {
        sensor: Sensor::start_with(
            &binary,
            &config,
            &[OsStr::new("--record"), recording.as_os_str()],
            &[],
        ),
        binary,
        env,
        debian,
        classic,
        containerd,
    };
    wait_until_trusted(&world);
    macro_rules! on_every_engine {
        ($($scenario:ident),* $(,)?) => {
            [$(
                Scenario {
                    name: concat!(stringify!($scenario), "_debian_20_10"),
                    run: |w: &World| $scenario(w, &w.debian),
                },
                Scenario {
                    name: concat!(stringify!($scenario), "_classic"),
                    run: |w: &World| $scenario(w, &w.classic),
                },
                Scenario {
                    name: concat!(stringify!($scenario), "_containerd"),
                    run: |w: &World| $scenario(w, &w.containerd),
                },
            )*]
        };
    }
    let mut scenarios: Vec<Scenario<'_, World>> = on_every_engine![
        remote_buildx_build_is_critical,
        local_buildx_build_is_detected,
        pull_then_build_is_not_flagged,
        a_pulled_name_built_over_then_run_is_caught,
        a_cached_rebuild_of_a_pulled_name_stays_quiet,
        run_by_short_id_of_an_untagged_build,
        docker_load_names_the_image,
    ]
    .into_iter()
    .collect();
    scenarios.push(Scenario {
        name: "each_daemon_keeps_its_own_provenance",
        run: each_daemon_keeps_its_own_provenance,
    });
    scenarios.push(Scenario {
        name: "detection_ids_are_unique",
        run: |w: &World| {
            let count = w.sensor.assert_unique_detection_ids();
            assert!(count >= 10, "the engines raised only {count} detections");
        },
    });
    // Last: stops the sensor.
    scenarios.push(Scenario {
        name: "replay_of_the_buildx_builds_equals_live",
        run: replay_of_the_buildx_builds_equals_live,
    });
    let passed = run_all(&world, &scenarios);
    dump_events(
        &world.sensor,
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("engines-events.jsonl"),
    );
    drop(world);
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Only what a deployment would say: the daemons' binaries (the trust decision) and the 20.10
/// daemon's socket and port as the detection suite gives them. The 26.1 engines' sockets, ports
/// and data roots come from their command line and config file.
fn sensor_config(env: &Environment, engines: &[&ModernEngine]) -> PathBuf {
    let mut binaries = vec![
        "/usr/bin/dockerd".to_string(),
        "/usr/sbin/dockerd".to_string(),
        "/usr/bin/containerd".to_string(),
        "/usr/bin/podman".to_string(),
    ];
    for engine in engines {
        binaries.push(engine.dockerd.display().to_string());
        binaries.push(engine.containerd.display().to_string());
    }
    let binaries: Vec<String> = binaries.iter().map(|b| format!("\"{b}\"")).collect();
    let path = env.dir.join("buildwatch-engines.toml");
    std::fs::write(
        &path,
        format!(
            "[watch]\nunix_sockets = [\"{}\"]\ntcp_ports = [2375]\ndaemons = [\"dockerd\", \"containerd\", \"podman\"]\ndaemon_binaries = [{}]\n[detect]\nstate_dir = \"{}\"\n",
            env.socket.display(),
            binaries.join(", "),
            env.dir.join("engines-state").display(),
        ),
    )
    .expect("writing the sensor config");
    path
}

/// The sensor trusts all three daemons, each with its own store and every endpoint, before any
/// scenario runs (dockerd opens its TCP listener some 15 s after its socket).
fn wait_until_trusted(world: &World) {
    let env = &world.env;
    let expected = [
        (env.dockerd_pid, env.dir.join("data"), env.socket.clone(), 2375),
        (
            world.classic.pid,
            world.classic.data_root.clone(),
            world.classic.socket.clone(),
            world.classic.port,
        ),
        (
            world.containerd.pid,
            world.containerd.data_root.clone(),
            world.containerd.socket.clone(),
            world.containerd.port,
        ),
    ];
    for (pid, data_root, socket, port) in expected {
        let serves = [format!("tcp:{port}"), format!("unix:{}", socket.display())];
        let line = world.sensor.wait_for(
            0,
            Duration::from_secs(90),
            "the daemon trusted on all its endpoints",
            |e| {
                kind(e) == "sensor.daemon"
                    && e["daemon"]["pid"] == pid
                    && strings(&e["daemon"]["serves"]) == serves
            },
        );
        assert_eq!(line["daemon"]["trusted"], true, "{line}");
        assert_eq!(
            line["daemon"]["store"],
            format!("docker:{}", data_root.display()),
            "{line}"
        );
    }
}

fn has_step(build: &Value, command: &str) -> bool {
    build["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|s| strings(&s["argv"]) == ["/bin/sh", "-c", command])
}

/// The Dockerfile, read from the session's file sync: its FROM and its RUN line.
fn assert_dockerfile(build: &Value, command: &str) {
    let instructions = &build["instructions"];
    assert_eq!(instructions["name"], "Dockerfile", "{build}");
    assert_eq!(strings(&instructions["from"]), [BASE_IMAGE], "{build}");
    assert_eq!(strings(&instructions["run"]), [command], "{build}");
    assert!(
        build["base_images"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["reference"] == BASE_IMAGE && b["in_dockerfile"] == true),
        "{build}"
    );
}

fn context(env: &Environment, engine: &ModernEngine, name: &str, dockerfile: &str) -> PathBuf {
    env.context(&format!("{}-{name}", engine.label), dockerfile)
}

/// Puts `name` in the registry (the base image under another name), and nowhere else.
fn publish_as(engine: &ModernEngine, name: &str) {
    run_command(engine.docker().args(["pull", BASE_IMAGE]));
    run_command(engine.docker().args(["tag", BASE_IMAGE, name]));
    run_command(engine.docker().args(["push", name]));
    run_command(engine.docker().args(["rmi", name]));
}

fn create_and_remove(engine: &ModernEngine, create: &mut Command) {
    let container = run_command(create);
    run_command(engine.docker().args(["rm", container.trim()]));
}

fn remote_buildx_build_is_critical(world: &World, engine: &ModernEngine) {
    let env = &world.env;
    let nonce = &env.nonce;
    let _ = engine
        .docker()
        .args(["image", "rm", "--force", BASE_IMAGE])
        .output();
    let command = format!("echo remote-{nonce} > /marker");
    let context = context(
        env,
        engine,
        "remote",
        &format!("FROM {BASE_IMAGE}\nRUN {command}\n"),
    );
    let tag = format!("bwdet/remote-{}:{nonce}", engine.label);
    let full_tag = format!("docker.io/{tag}");
    let mark = world.sensor.mark();
    run_command(engine.remote_docker().args(["build", "-t", &tag]).arg(&context));
    let found = world
        .sensor
        .detection(mark, "build_without_pull", "the remote buildx build", |e| {
            has_tag(&e["build"], &full_tag)
        });
    assert_eq!(found["detection"]["severity"], "critical", "{found}");
    let build = &found["build"];
    assert_eq!(build["builder"], "buildx", "{found}");
    assert_eq!(build["transport"], "tcp", "{found}");
    assert!(
        build["peer"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("{}:", env.remote_ip)),
        "{found}"
    );
    assert_eq!(build["endpoint"], format!("{}:{}", env.daemon_ip, engine.port));
    assert_eq!(build["daemon"]["pid"], engine.pid, "{found}");
    let summary = world
        .sensor
        .build_summary(mark, "the remote build's summary", |b| b["id"] == build["id"]);
    let summary = &summary["build"];
    assert_eq!(summary["state"], "finished", "{summary}");
    assert!(has_step(summary, &command), "RUN step missing: {summary}");
    assert_dockerfile(summary, &command);
    assert!(
        summary["base_images"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["reference"] == BASE_IMAGE),
        "{summary}"
    );
    assert_eq!(
        strings(&summary["images"]).len(),
        1,
        "the built image's id: {summary}"
    );
}

fn local_buildx_build_is_detected(world: &World, engine: &ModernEngine) {
    let env = &world.env;
    let nonce = &env.nonce;
    run_command(engine.docker().args(["pull", BASE_IMAGE]));
    let command = format!("echo local-{nonce} > /marker");
    let context = context(
        env,
        engine,
        "local",
        &format!("FROM {BASE_IMAGE}\nRUN {command}\n"),
    );
    let tag = format!("bwdet/local-{}:{nonce}", engine.label);
    let mark = world.sensor.mark();
    run_command(engine.docker().args(["build", "-t", &tag]).arg(&context));
    let found = world
        .sensor
        .detection(mark, "build_without_pull", "the local buildx build", |e| {
            has_tag(&e["build"], &format!("docker.io/{tag}"))
        });
    assert_eq!(found["build"]["builder"], "buildx", "{found}");
    assert_eq!(found["build"]["transport"], "unix", "{found}");
    let summary = world
        .sensor
        .build_summary(mark, "the local build's summary", |b| {
            b["id"] == found["build"]["id"]
        });
    assert!(
        has_step(&summary["build"], &command),
        "RUN step missing: {summary}"
    );
    assert_dockerfile(&summary["build"], &command);
    let id = run_command(engine.docker().args(["image", "inspect", "-f", "{{.Id}}", &tag]));
    assert_eq!(strings(&summary["build"]["images"]), [id.trim()], "{summary}");
}

/// The CI pattern on a repository of its own: only this pull, confirmed, can excuse the build
/// (its Dockerfile starts FROM another repository, so no fetch during the build can).
fn pull_then_build_is_not_flagged(world: &World, engine: &ModernEngine) {
    let env = &world.env;
    let nonce = &env.nonce;
    let name = format!("{REGISTRY}/ci-{}:{nonce}", engine.label);
    publish_as(engine, &name);
    let context = context(
        env,
        engine,
        "ci",
        &format!("FROM {BASE_IMAGE}\nLABEL ci={nonce}\n"),
    );
    let mark = world.sensor.mark();
    run_command(engine.docker().args(["pull", &name]));
    world.sensor.confirmed_pull(mark, &name);
    run_command(engine.docker().args(["build", "-t", &name]).arg(&context));
    let summary = world.sensor.stays_quiet(
        mark,
        "the CI build's summary",
        |e| kind(e) == "build" && has_tag(&e["build"], &name),
        "a pulled repository's build must not be flagged",
        |e| kind(e) == "detection" && has_tag(&e["build"], &name),
    );
    assert!(summary["build"]["detection_id"].is_null(), "{summary}");
}

/// Pull X, build other content as X, create X privileged: the run is judged by what X is now.
fn a_pulled_name_built_over_then_run_is_caught(world: &World, engine: &ModernEngine) {
    let env = &world.env;
    let nonce = &env.nonce;
    let app = format!("{REGISTRY}/accapp-{}:{nonce}", engine.label);
    publish_as(engine, &app);
    let mark = world.sensor.mark();
    run_command(engine.docker().args(["pull", &app]));
    world.sensor.confirmed_pull(mark, &app);
    let evil = context(
        env,
        engine,
        "reuse",
        &format!("FROM {BASE_IMAGE}\nRUN echo reused-{nonce} > /evil\n"),
    );
    run_command(engine.docker().args(["build", "-t", &app]).arg(&evil));
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
        engine,
        engine.docker().args([
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
}

/// Pull X, then build X from a Dockerfile that is only `FROM X` with the classic builder: the
/// result is the pulled content itself (in containerd's store too, where no manifest digest
/// tells pulled content apart), so a run of X is not a run of a build's image. (BuildKit writes
/// a new image config even then: that is new content, judged as a build's.)
fn a_cached_rebuild_of_a_pulled_name_stays_quiet(world: &World, engine: &ModernEngine) {
    let env = &world.env;
    let nonce = &env.nonce;
    let cached = format!("{REGISTRY}/cached-{}:{nonce}", engine.label);
    publish_as(engine, &cached);
    let mark = world.sensor.mark();
    run_command(engine.docker().args(["pull", &cached]));
    let pulled = run_command(
        engine
            .docker()
            .args(["image", "inspect", "-f", "{{.Id}}", &cached]),
    );
    let same = context(env, engine, "cached", &format!("FROM {cached}\n"));
    run_command(
        engine
            .docker()
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "-t", &cached])
            .arg(&same),
    );
    let rebuilt = run_command(
        engine
            .docker()
            .args(["image", "inspect", "-f", "{{.Id}}", &cached]),
    );
    assert_eq!(
        pulled.trim(),
        rebuilt.trim(),
        "a FROM-only build gives the pulled image itself"
    );
    world
        .sensor
        .build_summary(mark, "the cached rebuild", |b| has_tag(b, &cached));
    let run_mark = world.sensor.mark();
    create_and_remove(
        engine,
        engine
            .docker()
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

fn run_by_short_id_of_an_untagged_build(world: &World, engine: &ModernEngine) {
    let env = &world.env;
    let nonce = &env.nonce;
    run_command(engine.docker().args(["pull", BASE_IMAGE]));
    let context = context(
        env,
        engine,
        "by-id",
        &format!("FROM {BASE_IMAGE}\nRUN echo by-id-{nonce} > /id\n"),
    );
    let mark = world.sensor.mark();
    let id = run_command(engine.docker().args(["build", "-q"]).arg(&context));
    let id = id.trim().to_string();
    assert!(
        id.starts_with("sha256:") && id.len() == 71,
        "not an image id: {id}"
    );
    let summary = world
        .sensor
        .build_summary(mark, "the untagged build's summary", |b| {
            strings(&b["images"]).contains(&id)
        });
    assert!(strings(&summary["build"]["tags"]).is_empty(), "{summary}");
    let short = &id["sha256:".len().."sha256:".len() + 12];
    let mark = world.sensor.mark();
    create_and_remove(
        engine,
        engine
            .docker()
            .args(["create", "--network", "none", short, "true"]),
    );
    let found = world
        .sensor
        .detection(mark, "run_of_unpulled_image", "the create by short id", |e| {
            e["operation"]["image"] == short
        });
    assert_eq!(found["detection"]["severity"], "high", "{found}");
}

fn docker_load_names_the_image(world: &World, engine: &ModernEngine) {
    let env = &world.env;
    let nonce = &env.nonce;
    run_command(engine.docker().args(["pull", BASE_IMAGE]));
    let tag = format!("bwdet/loaded-{}:{nonce}", engine.label);
    let context = context(
        env,
        engine,
        "load",
        &format!("FROM {BASE_IMAGE}\nRUN echo loaded-{nonce} > /l\n"),
    );
    run_command(engine.docker().args(["build", "-t", &tag]).arg(&context));
    let archive = env.dir.join(format!("{}-load.tar", engine.label));
    run_command(
        engine
            .docker()
            .args(["save", "-o", &archive.to_string_lossy(), &tag]),
    );
    run_command(engine.docker().args(["rmi", &tag]));
    let mark = world.sensor.mark();
    run_command(engine.docker().args(["load", "-i", &archive.to_string_lossy()]));
    let full = format!("docker.io/{tag}");
    let found = world
        .sensor
        .detection(mark, "image_side_loaded", "the load, naming its image", |e| {
            e["operation"]["type"] == "load"
                && e["detection"]["summary"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(&full)
        });
    assert_eq!(found["detection"]["severity"], "medium", "{found}");
}

/// A pull on 20.10 does not excuse a build of the same name on 26.1, and a pull on one 26.1
/// engine does not excuse the other's.
fn each_daemon_keeps_its_own_provenance(world: &World) {
    let env = &world.env;
    let nonce = &env.nonce;
    let name = format!("{REGISTRY}/shared:{nonce}");
    publish_as(&world.classic, &name);
    let mark = world.sensor.mark();
    run_command(env.docker().args(["pull", &name]));
    run_command(world.classic.docker().args(["pull", &name]));
    world
        .sensor
        .wait_for(mark, TIMEOUT, "the 26.1 pull confirmed", |e| {
            kind(e) == "docker.operation"
                && e["operation"]["type"] == "pull"
                && e["operation"]["image"] == name.as_str()
                && e["operation"]["daemon"]["pid"] == world.classic.pid
        });
    let context = context(
        env,
        &world.containerd,
        "shared",
        &format!("FROM {BASE_IMAGE}\nLABEL shared={nonce}\n"),
    );
    run_command(world.containerd.docker().args(["pull", BASE_IMAGE]));
    run_command(
        world
            .containerd
            .docker()
            .args(["build", "-t", &name])
            .arg(&context),
    );
    let found = world.sensor.detection(
        mark,
        "build_without_pull",
        "the build on the engine that pulled nothing",
        |e| has_tag(&e["build"], &name),
    );
    assert_eq!(found["build"]["daemon"]["pid"], world.containerd.pid, "{found}");
}

fn recording_path() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("recordings");
    std::fs::create_dir_all(&dir).expect("creating the recordings directory");
    dir.join("engines-run.jsonl")
}

/// Every line the live sensor wrote about the buildx builds on the three engines (their
/// decoded sessions, the daemons' answers about image ids included), from the replay of its
/// recording.
fn replay_of_the_buildx_builds_equals_live(world: &World) {
    let status = world
        .sensor
        .terminate(Duration::from_secs(15))
        .expect("the sensor did not stop");
    assert!(status.success(), "{}", world.sensor.stderr());
    let output = Command::new(&world.binary)
        .arg("replay")
        .arg(recording_path())
        .arg("--all")
        .output()
        .expect("running buildwatch replay");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "replay failed: {stderr}");
    assert!(
        !stderr.contains("did not match"),
        "the recording did not answer the replay: {stderr}"
    );
    let replayed: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("replay prints JSON lines"))
        .filter(|e: &Value| !kind(e).starts_with("sensor."))
        .collect();
    let live = world.sensor.all(0, |e| !kind(e).starts_with("sensor."));
    let buildx = |lines: &[Value]| -> usize {
        lines
            .iter()
            .filter(|e| {
                kind(e) == "build"
                    && e["build"]["builder"] == "buildx"
                    && !e["build"]["instructions"].is_null()
            })
            .count()
    };
    assert!(
        buildx(&live) >= 10,
        "the buildx builds with their Dockerfiles: {}",
        buildx(&live)
    );
    assert_eq!(replayed.len(), live.len());
    assert!(live == replayed, "some replayed line differs from the live one");
}
