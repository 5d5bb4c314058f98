//! `cargo xtask bench`: what the kernel programs cost the rest of the host. Runs a syscall-heavy
//! workload that touches no tracked socket (`dd bs=64`, one read and one write per 64 bytes)
//! with and without the sensor attached, alternating, and reports the ratio of CPU time
//! (user + system of the workload), median of the pairs. Every untracked read or write pays for
//! the enter and exit programs: one map lookup each.
use std::{
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{build, prerequisites};

const WORKLOAD: &[&str] = &["if=/dev/zero", "of=/dev/null", "bs=64", "count=1000000"];

pub fn bench(pairs: usize) -> anyhow::Result<()> {
    if !prerequisites::is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root (sudo cargo xtask bench)");
    }
    let binary = build::build()?;
    let dir = std::env::temp_dir().join(format!("buildwatch-bench-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let mut ratios = Vec::new();
    let (mut bare_all, mut attached_all) = (Vec::new(), Vec::new());
    for pair in 0..pairs {
        let bare = workload_cpu()?;
        let events = dir.join(format!("events-{pair}.jsonl"));
        let mut sensor = start_sensor(&binary, &events)?;
        let attached = workload_cpu();
        stop(&mut sensor);
        let attached = attached?;
        println!(
            "pair {}: without {:.3}s, with {:.3}s, ratio {:.2}",
            pair + 1,
            bare.as_secs_f64(),
            attached.as_secs_f64(),
            attached.as_secs_f64() / bare.as_secs_f64()
        );
        ratios.push(attached.as_secs_f64() / bare.as_secs_f64());
        bare_all.push(bare.as_secs_f64());
        attached_all.push(attached.as_secs_f64());
    }
    let _ = fs::remove_dir_all(&dir);
    println!(
        "dd {}: median CPU without sensor {:.3}s, with sensor {:.3}s, median ratio {:.2} ({} pairs)",
        WORKLOAD.join(" "),
        median(&mut bare_all),
        median(&mut attached_all),
        median(&mut ratios),
        pairs
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// CPU time (user + system) of one run of the workload.
fn workload_cpu() -> anyhow::Result<Duration> {
    let before = children_cpu();
    let status = Command::new("dd")
        .args(WORKLOAD)
        .stderr(Stdio::null())
        .status()
        .context("running dd")?;
    if !status.success() {
        bail!("dd failed");
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

fn start_sensor(binary: &Path, events: &Path) -> anyhow::Result<Child> {
    let mut child = Command::new(binary)
        .arg("run")
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
            bail!("buildwatch did not start");
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
