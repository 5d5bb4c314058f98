//! `cargo xtask bench`: what the kernel programs cost the rest of the host. Workloads that touch
//! no tracked socket run without a sensor, with this build's sensor and, with `--baseline`, with
//! another build's (the previous commit's, to catch regressions), in rotating order; the report
//! is the ratio of the workload's CPU time (user + system) to the bare run's, median of the
//! rounds with its spread.
//!
//! - `dd`: `dd bs=64` of 64 MiB, one read and one write per 64 bytes: every untracked read or
//!   write pays for the enter and exit programs.
//! - `exec`: 3,000 `/bin/true` from a shell loop: fork, exec and exit programs, argv capture.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{build, prerequisites};

struct Workload {
    name: &'static str,
    program: &'static str,
    args: &'static [&'static str],
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "dd 1M x 64 B",
        program: "dd",
        args: &["if=/dev/zero", "of=/dev/null", "bs=64", "count=1000000"],
    },
    Workload {
        name: "exec storm, 3,000 x /bin/true",
        program: "sh",
        args: &["-c", "i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done"],
    },
];

pub fn bench(rounds: usize, baseline: Option<PathBuf>) -> anyhow::Result<()> {
    if !prerequisites::is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root (sudo cargo xtask bench)");
    }
    let current = build::build()?;
    let mut sensors = vec![("this build", current)];
    if let Some(baseline) = baseline {
        if !baseline.is_file() {
            bail!("--baseline {} is not a file", baseline.display());
        }
        sensors.push(("baseline", baseline));
    }
    let dir = std::env::temp_dir().join(format!("buildwatch-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    println!("| workload | sensor | CPU ratio, median | spread | rounds |");
    println!("|---|---|---|---|---|");
    for workload in &WORKLOADS {
        // ratios[i]: ratios of sensor i against the bare run of the same round.
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); sensors.len()];
        for round in 0..rounds {
            let bare = workload_cpu(workload)?;
            for offset in 0..sensors.len() {
                let index = (round + offset) % sensors.len();
                let (_, binary) = &sensors[index];
                let events = dir.join(format!("events-{round}-{index}.jsonl"));
                let state = dir.join(format!("state-{round}-{index}"));
                let mut sensor = start_sensor(binary, &events, &state, &dir)?;
                let attached = workload_cpu(workload);
                stop(&mut sensor);
                ratios[index].push(attached?.as_secs_f64() / bare.as_secs_f64());
            }
        }
        for ((name, _), values) in sensors.iter().zip(&mut ratios) {
            values.sort_by(f64::total_cmp);
            println!(
                "| {} | {name} | {:.2} | {:.2}-{:.2} | {rounds} |",
                workload.name,
                values[values.len() / 2],
                values[0],
                values[values.len() - 1]
            );
        }
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// CPU time (user + system) of one run of the workload.
fn workload_cpu(workload: &Workload) -> anyhow::Result<Duration> {
    let before = children_cpu();
    let status = Command::new(workload.program)
        .args(workload.args)
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", workload.program))?;
    if !status.success() {
        bail!("{} failed", workload.program);
    }
    Ok(children_cpu().saturating_sub(before))
}

fn children_cpu() -> Duration {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

fn start_sensor(binary: &Path, events: &Path, state: &Path, dir: &Path) -> anyhow::Result<Child> {
    let config = dir.join(format!(
        "{}.toml",
        state.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(
        &config,
        format!("[detect]\nstate_dir = \"{}\"\n", state.display()),
    )?;
    let mut child = Command::new(binary)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--output")
        .arg(events)
        .stderr(Stdio::null())
        .spawn()
        .context("starting buildwatch")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(events)
        .unwrap_or_default()
        .contains("\"sensor.start\"")
    {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!("{} did not start", binary.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

fn stop(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}
