//! `cargo xtask bench`: the performance suite. It measures
//! - what the kernel programs cost unrelated workloads (dd, an exec storm, a mixed workload of a
//!   small `cargo build` and `git status` on a 20,000-file tree): the workload's CPU time under a
//!   watcher over its CPU time bare, in rounds that run bare and every watcher in rotating order;
//!   watchers are this build, the baseline (the previous commit's build), bpftrace on the same
//!   hooks, raw syscall tracepoints and one empty syscall tracepoint (dd), the socket layer's
//!   tracepoints with a lookup (dd and the round trips, where the kernel has them) and auditd
//!   with an execve rule (exec storm);
//! - 64-byte round trips on a socketpair and on loopback TCP (nobody tracks them), and on a
//!   connection to an API socket the sensor watches (tracked: its writes are captured);
//! - a 64 MiB `docker build` (wall ratio, sensor CPU, ring bytes, drops, output), the
//!   detection latency of 20 remote builds and the agent's RSS (`bw-bench`, on the test
//!   harness's private dockerd);
//!
//! and writes the results into docs/performance.md between its markers.
mod host;
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use self::host::{
    Watcher, BPFTRACE_DATA, BPFTRACE_EXEC, BPFTRACE_RAW, BPFTRACE_SOCKET_LAYER, BPFTRACE_SYSCALL_FEE,
};
use crate::{build, prerequisites};

/// Packages the peers and the workloads need, each with a binary that proves it is installed.
const BENCH_PACKAGES: &[(&str, &str)] = &[("bpftrace", "bpftrace"), ("auditd", "auditd"), ("git", "git")];

pub struct Options {
    pub rounds: usize,
    pub baseline: Baseline,
}

pub enum Baseline {
    /// Build the given git revision (the previous commit by default).
    Revision(String),
    Binary(PathBuf),
    None,
}

/// Ratios of one watcher on one workload, one per round.
pub struct Series {
    pub workload: &'static str,
    pub watcher: String,
    pub ratios: Vec<f64>,
}

pub fn bench(options: Options) -> anyhow::Result<()> {
    if !prerequisites::is_root() {
        bail!("the benchmark attaches eBPF programs and runs a Docker daemon: run it as root (sudo cargo xtask bench)");
    }
    if options.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    prerequisites::install_packages(prerequisites::TEST_PACKAGES, "the benchmark")?;
    prerequisites::install_packages(BENCH_PACKAGES, "the benchmark")?;
    let current = build::build()?;
    let root = build::workspace_root();
    let dir = root.join("target/bench");
    fs::create_dir_all(&dir)?;
    // The binary under test is copied: building the baseline must not replace it.
    let this = dir.join("buildwatch-this");
    fs::copy(&current, &this).context("copying the build under test")?;
    let baseline = match &options.baseline {
        Baseline::Revision(revision) => Some((revision.clone(), build_revision(&root, &dir, revision)?)),
        Baseline::Binary(path) if path.is_file() => Some(("baseline".to_string(), path.clone())),
        Baseline::Binary(path) => bail!("--baseline {} is not a file", path.display()),
        Baseline::None => None,
    };
    let mut sensors = vec![("this build".to_string(), this.clone())];
    if let Some((name, path)) = &baseline {
        sensors.push((format!("baseline ({name})"), path.clone()));
    }

    let roundtrip = build_test_binary(&root, "bw-roundtrip")?;
    let host_results = host_workloads(&dir, &roundtrip, &sensors, options.rounds)?;
    // Shown now, so a failure of the Docker half does not lose them.
    println!("{}", report::host_table(&host_results));
    let docker = docker_workloads(&root, &sensors, options.rounds)?;
    let commit = git_output(&root, &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let section = report::render(&commit, options.rounds, &host_results, &docker);
    println!("{section}");
    report::write_into(&root.join("docs/performance.md"), &section)?;
    println!("xtask: wrote the results into docs/performance.md");
    Ok(())
}

fn host_workloads(
    dir: &Path,
    roundtrip: &Path,
    sensors: &[(String, PathBuf)],
    rounds: usize,
) -> anyhow::Result<Vec<Series>> {
    let mut results = Vec::new();
    for workload in host::workloads(dir, roundtrip)? {
        let mut watchers: Vec<(String, Watcher)> = sensors
            .iter()
            .map(|(name, path)| (name.clone(), Watcher::Buildwatch(path.clone())))
            .collect();
        match workload.name {
            "dd" => {
                watchers.push((
                    "bpftrace, same hooks + map lookup".into(),
                    Watcher::Bpftrace(BPFTRACE_DATA),
                ));
                watchers.push((
                    "raw sys_enter/sys_exit, empty".into(),
                    Watcher::Bpftrace(BPFTRACE_RAW),
                ));
                watchers.push((
                    "one empty syscall tracepoint (close)".into(),
                    Watcher::Bpftrace(BPFTRACE_SYSCALL_FEE),
                ));
                if socket_layer_tracepoints() {
                    watchers.push((
                        "socket-layer tracepoints + lookup".into(),
                        Watcher::Bpftrace(BPFTRACE_SOCKET_LAYER),
                    ));
                }
            }
            "exec storm" => {
                watchers.push((
                    "bpftrace, same hooks, every exec".into(),
                    Watcher::Bpftrace(BPFTRACE_EXEC),
                ));
                watchers.push(("auditd, execve rule".into(), Watcher::Auditd));
            }
            // Round trips: the builds, and the floor of a capture at the socket layer.
            name if name.starts_with("64 B") => {
                if socket_layer_tracepoints() {
                    watchers.push((
                        "socket-layer tracepoints + lookup".into(),
                        Watcher::Bpftrace(BPFTRACE_SOCKET_LAYER),
                    ));
                }
            }
            // What one-program dispatch would cost work that is not reads and writes.
            _ => watchers.push((
                "raw sys_enter/sys_exit, empty".into(),
                Watcher::Bpftrace(BPFTRACE_RAW),
            )),
        }
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); watchers.len()];
        for round in 0..rounds {
            // The bare run takes its turn in the rotation too (slot `watchers.len()`).
            let slots = watchers.len() + 1;
            let mut bare = None;
            let mut attached = vec![None; watchers.len()];
            for offset in 0..slots {
                let index = (round + offset) % slots;
                if index == watchers.len() {
                    bare = Some(host::workload_cpu(&workload)?);
                    continue;
                }
                let running = host::start(&watchers[index].1, dir, &format!("{round}-{index}"))?;
                let cpu = host::workload_cpu(&workload);
                drop(running);
                attached[index] = Some(cpu?);
            }
            let bare = bare.expect("the bare run has a slot").as_secs_f64();
            for (index, cpu) in attached.into_iter().enumerate() {
                if let Some(cpu) = cpu {
                    ratios[index].push(cpu.as_secs_f64() / bare);
                }
            }
            println!("xtask: {} round {} of {rounds} done", workload.name, round + 1);
        }
        for ((name, _), ratios) in watchers.into_iter().zip(ratios) {
            results.push(Series {
                workload: workload.name,
                watcher: name,
                ratios,
            });
        }
    }
    Ok(results)
}

/// Whether this kernel has `sock:sock_send_length` (Linux 6.3+).
fn socket_layer_tracepoints() -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|tracefs| Path::new(tracefs).join("events/sock/sock_send_length").is_dir())
}

/// Runs `bw-bench` (the integration harness's private dockerd) and returns its report.
fn docker_workloads(
    root: &Path,
    sensors: &[(String, PathBuf)],
    rounds: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut command = Command::new(build_test_binary(root, "bw-bench")?);
    for (name, path) in sensors {
        command.arg("--sensor").arg(format!("{name}={}", path.display()));
    }
    command.args(["--rounds", &rounds.to_string(), "--latency-builds", "20"]);
    // The harness treats a missing prerequisite as a failure, not a skip.
    command.env("CI", "true");
    let output = command.output().context("running bw-bench")?;
    if !output.status.success() {
        bail!(
            "bw-bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    serde_json::from_slice(&output.stdout).context("bw-bench printed no JSON report")
}

/// Builds one of the integration crate's binaries (release); returns its path.
fn build_test_binary(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "buildwatch-integration-tests",
            "--bin",
            name,
        ])
        .status()
        .with_context(|| format!("building {name}"))?;
    if !status.success() {
        bail!("building {name} failed");
    }
    Ok(root.join("target/release").join(name))
}

/// Builds `revision` in a worktree of its own; returns its `buildwatch` binary.
fn build_revision(root: &Path, dir: &Path, revision: &str) -> anyhow::Result<PathBuf> {
    let commit = git_output(
        root,
        &["rev-parse", "--verify", &format!("{revision}^{{commit}}")],
    )
    .with_context(|| format!("{revision} is not a commit of this repository"))?;
    let binary = dir.join(format!("buildwatch-{}", &commit[..12.min(commit.len())]));
    if binary.is_file() {
        return Ok(binary);
    }
    let worktree = dir.join("baseline-src");
    let _ = Command::new("git")
        .current_dir(root)
        .args(["worktree", "remove", "--force"])
        .arg(&worktree)
        .status();
    let _ = fs::remove_dir_all(&worktree);
    let status = Command::new("git")
        .current_dir(root)
        .args(["worktree", "add", "--detach", "--force"])
        .arg(&worktree)
        .arg(&commit)
        .status()
        .context("running git worktree")?;
    if !status.success() {
        bail!("git worktree add {commit} failed");
    }
    println!("xtask: building the baseline {revision} ({commit}); the first time takes a few minutes");
    let status = Command::new(env!("CARGO"))
        .current_dir(&worktree)
        .args(["build", "--release", "--package", "sensor"])
        .env("CARGO_TARGET_DIR", dir.join("baseline-target"))
        .env_remove("BUILDWATCH_SKIP_EBPF")
        .status()
        .context("building the baseline")?;
    if !status.success() {
        bail!("building the baseline {revision} failed");
    }
    let built = dir.join("baseline-target/release/buildwatch");
    fs::copy(&built, &binary).with_context(|| format!("copying {}", built.display()))?;
    Ok(binary)
}

fn git_output(root: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git").current_dir(root).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}
