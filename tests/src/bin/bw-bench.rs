//! The Docker half of `cargo xtask bench`, on the test harness's private dockerd, registry and
//! remote namespace: a 64 MiB `docker build` bare and under each sensor (rounds alternate the
//! order), the detection latency of remote builds, and the sensor's idle and peak RSS. Prints
//! one JSON object; `cargo xtask bench` turns it into docs/performance.md.
//!
//! Usage: bw-bench --sensor NAME=PATH [--sensor NAME=PATH] [--rounds N] [--latency-builds N]
use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use buildwatch_integration_tests::{
    command::run_command,
    environment::{Environment, BASE_IMAGE},
    sensor::{
        event::{has_tag, kind},
        Sensor,
    },
};
use serde_json::{json, Value};

const CONTEXT_BYTES: usize = 64 << 20;
const WAIT: Duration = Duration::from_secs(60);

struct Options {
    sensors: Vec<(String, PathBuf)>,
    rounds: usize,
    latency_builds: usize,
}

fn main() {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("bw-bench: {message}");
            std::process::exit(2);
        }
    };
    let env = Environment::start();
    run_command(env.docker().args(["pull", BASE_IMAGE]));
    let big = big_context(&env);
    let build64 = build_rounds(&env, &options, &big);
    let (name, binary) = &options.sensors[0];
    let (latency, rss) = latency_and_rss(&env, binary, options.latency_builds);
    let report = json!({
        "build64": build64,
        "latency": { "sensor": name, "samples_ms": latency },
        "rss": rss,
    });
    println!("{report}");
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        sensors: Vec::new(),
        rounds: 5,
        latency_builds: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--sensor" => {
                let (name, path) = value.split_once('=').ok_or("--sensor takes NAME=PATH")?;
                options.sensors.push((name.to_string(), PathBuf::from(path)));
            }
            "--rounds" => options.rounds = value.parse().map_err(|_| "--rounds takes a number")?,
            "--latency-builds" => {
                options.latency_builds = value.parse().map_err(|_| "--latency-builds takes a number")?
            }
            _ => return Err(format!("unknown argument {arg}")),
        }
    }
    if options.sensors.is_empty() {
        return Err("at least one --sensor NAME=PATH".into());
    }
    Ok(options)
}

/// A context of a Dockerfile and 64 MiB of incompressible bytes, which `docker build` sends
/// whole to the daemon.
fn big_context(env: &Environment) -> PathBuf {
    let dir = env.context(
        "bench-64m",
        &format!("FROM {BASE_IMAGE}\nARG ROUND\nLABEL bench.round=$ROUND\n"),
    );
    // BW_BENCH_CONTEXT_BYTES: another size, to tell fixed costs from costs per byte.
    let bytes = std::env::var("BW_BENCH_CONTEXT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CONTEXT_BYTES);
    let mut payload = vec![0u8; bytes];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in payload.chunks_mut(8) {
        // xorshift: incompressible, no need for a random source.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    fs::write(dir.join("payload.bin"), payload).expect("writing the 64 MiB payload");
    dir
}

fn sensor_config(env: &Environment, state: &str) -> PathBuf {
    let path = env.dir.join(format!("bench-{state}.toml"));
    let text = format!(
        "[watch]\nunix_sockets = [\"{}\"]\ntcp_ports = [2375]\ndaemons = [\"dockerd\", \"containerd\"]\ndaemon_binaries = [\"{}\", \"{}\"]\n[output]\nhealth_interval = \"0s\"\n[detect]\nstate_dir = \"{}\"\ndocker_data_root = \"{}\"\n",
        env.socket.display(),
        env.engine.dockerd().display(),
        env.engine.containerd().display(),
        env.dir.join(format!("state-{state}")).display(),
        env.dir.join("data").display()
    );
    fs::write(&path, text).expect("writing the sensor config");
    path
}

fn timed_build(env: &Environment, context: &Path, tag: &str, round: &str) -> Duration {
    let started = Instant::now();
    run_command(
        env.docker()
            .args(["build", "-q", "-t", tag, "--build-arg"])
            .arg(format!("ROUND={round}"))
            .arg(context),
    );
    started.elapsed()
}

/// CPU time of every thread of a process, in nanoseconds (schedstat: exact, not in ticks).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn build_rounds(env: &Environment, options: &Options, context: &Path) -> Value {
    let mut results: Vec<Vec<Value>> = vec![Vec::new(); options.sensors.len()];
    // Unmeasured: the daemon's first build of a context is slower than every later one.
    timed_build(env, context, &format!("bench/big:{}-warmup", env.nonce), "warmup");
    for round in 0..options.rounds {
        let tag = |who: &str| format!("bench/big:{}-{round}-{who}", env.nonce);
        // The bare build takes its turn in the rotation too (slot `sensors.len()`).
        let slots = options.sensors.len() + 1;
        let mut bare = None;
        let mut measured = Vec::new();
        for offset in 0..slots {
            let index = (round + offset) % slots;
            if index == options.sensors.len() {
                bare = Some(timed_build(env, context, &tag("bare"), &format!("{round}-bare")));
                continue;
            }
            let (name, binary) = &options.sensors[index];
            let config = sensor_config(env, &format!("{round}-{index}"));
            let sensor = Sensor::start(binary, &config);
            // Its start-up (daemons asked, existing connections adopted) is not the build's.
            std::thread::sleep(Duration::from_secs(2));
            let mark = sensor.mark();
            let pid = sensor.pid();
            let cpu_before = cpu_ns(pid);
            let who = format!("s{index}");
            let full_tag = format!("docker.io/{}", tag(&who));
            let wall = timed_build(env, context, &tag(&who), &format!("{round}-{who}"));
            sensor.wait_for(mark, WAIT, "the build line", |e| {
                kind(e) == "build" && has_tag(&e["build"], &full_tag)
            });
            let cpu = cpu_ns(pid).saturating_sub(cpu_before);
            let lines = sensor.all(mark, |e| !kind(e).starts_with("sensor."));
            let output_bytes: usize = lines.iter().map(|l| l.to_string().len() + 1).sum();
            assert!(
                sensor
                    .terminate(Duration::from_secs(20))
                    .is_some_and(|s| s.success()),
                "{name} did not stop cleanly: {}",
                sensor.stderr()
            );
            let stop = sensor.wait_for(0, WAIT, "sensor.stop", |e| kind(e) == "sensor.stop");
            let stats = &stop["stats"];
            let drops: u64 = stats["loss"]["kernel_drops"]
                .as_object()
                .map(|m| m.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            measured.push((index, wall));
            results[index].push(json!({
                "sensor_cpu_ms": cpu as f64 / 1e6,
                "ring_bytes": stats["ring_bytes"],
                "quiet_skipped_bytes": stats["quiet_skipped_bytes"],
                "kernel_drops": drops,
                "output_lines": lines.len(),
                "output_bytes": output_bytes,
                "desyncs": stats["detect"]["http_desyncs"],
            }));
        }
        let bare = bare.expect("the bare build has a slot");
        for (index, wall) in measured {
            let result = results[index].last_mut().expect("measured");
            result["wall_ratio"] = json!(wall.as_secs_f64() / bare.as_secs_f64());
            eprintln!(
                "bw-bench: 64 MiB build, round {round}, {}: {result}",
                options.sensors[index].0
            );
        }
    }
    options
        .sensors
        .iter()
        .zip(results)
        .map(|((name, _), rounds)| (name.clone(), Value::Array(rounds)))
        .collect::<serde_json::Map<String, Value>>()
        .into()
}

/// Remote builds over TCP, each one a `build_without_pull` detection: from the daemon's read
/// of the request (the kernel's time of its first evidence line) to the detection line
/// reaching the sensor's output. Then the sensor's RSS: idle before the builds, peak after.
fn latency_and_rss(env: &Environment, binary: &Path, builds: usize) -> (Vec<f64>, Value) {
    let config = sensor_config(env, "latency");
    let sensor = Sensor::start(binary, &config);
    std::thread::sleep(Duration::from_secs(5));
    let idle_kib = status_kib(sensor.pid(), "VmRSS:");
    let context = env.context(
        "bench-latency",
        &format!("FROM {BASE_IMAGE}\nARG N\nLABEL n=$N\n"),
    );
    let mut samples = Vec::new();
    for n in 0..builds {
        let tag = format!("bench/remote:{}-{n}", env.nonce);
        let full_tag = format!("docker.io/{tag}");
        let mark = sensor.mark();
        run_command(
            env.remote_docker()
                .args(["build", "-q", "-t", &tag, "--build-arg"])
                .arg(format!("N={n}"))
                .arg(&context),
        );
        let found = sensor.wait_for(mark, WAIT, "the detection", |e| {
            kind(e) == "detection"
                && e["detection"]["rule"] == "build_without_pull"
                && has_tag(&e["build"], &full_tag)
        });
        let Some(arrived) = found["id"].as_str().and_then(|id| sensor.arrival(id)) else {
            continue;
        };
        let evidence: Vec<String> = found["detection"]["evidence"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        // The request's bytes (the evidence also names the client's exec and connect).
        let request = sensor
            .all(0, |e| {
                kind(e) == "socket.data"
                    && e["id"]
                        .as_str()
                        .is_some_and(|id| evidence.iter().any(|x| x == id))
            })
            .iter()
            .filter_map(|e| humantime::parse_rfc3339(e["time"].as_str()?).ok())
            .min();
        if let Some(request) = request {
            let latency = arrived.duration_since(request).unwrap_or_default();
            samples.push(latency.as_secs_f64() * 1e3);
            if std::env::var_os("BW_BENCH_DEBUG").is_some() {
                let decided = humantime::parse_rfc3339(found["time"].as_str().unwrap_or_default())
                    .ok()
                    .and_then(|t| t.duration_since(request).ok());
                eprintln!("bw-bench: latency {latency:?}, decided after {decided:?}");
            }
        }
    }
    let peak_kib = status_kib(sensor.pid(), "VmHWM:");
    let _ = sensor.terminate(Duration::from_secs(20));
    if std::env::var_os("BW_BENCH_DEBUG").is_some() {
        let _ = fs::write("/tmp/bw-bench-sensor.log", sensor.stderr());
        let lines: Vec<String> = sensor.all(0, |_| true).iter().map(Value::to_string).collect();
        let _ = fs::write("/tmp/bw-bench-sensor.jsonl", lines.join("\n"));
    }
    (
        samples,
        json!({ "idle_bytes": idle_kib * 1024, "peak_bytes": peak_kib * 1024 }),
    )
}
