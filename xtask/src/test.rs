//! `cargo xtask test`: unit tests, then the integration tests against a real dockerd.
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{build, prerequisites};

pub fn test(unit_only: bool) -> anyhow::Result<()> {
    let binary = build::build()?;
    let root = build::workspace_root();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");

    cargo(
        &root,
        &[
            "test",
            "--release",
            "--package",
            "sensor",
            "--package",
            "sensor-common",
        ],
    )?;
    if unit_only {
        return Ok(());
    }
    let mut docker_26 = None;
    if prerequisites::is_root() {
        prerequisites::install_test_packages()?;
        match crate::engines::ensure_docker_26(&root) {
            Ok(prefix) => docker_26 = Some(prefix),
            Err(err) if ci => return Err(err.context("CI=true: the Docker 26.1 engine is required")),
            Err(err) => eprintln!("xtask: no Docker 26.1 engine, its scenarios will be skipped: {err:#}"),
        }
    } else if ci {
        bail!("CI=true: the integration tests need root (they load eBPF programs and start dockerd)");
    }
    let mut integration = Command::new(env!("CARGO"));
    integration
        .current_dir(&root)
        .args(["test", "--release", "--package", "buildwatch-integration-tests"])
        .env("BUILDWATCH_BIN", &binary);
    if let Some(prefix) = &docker_26 {
        integration.env("BUILDWATCH_DOCKER_26", prefix);
    }
    let status = integration.status().context("running the integration tests")?;
    if !status.success() {
        bail!("integration tests failed");
    }
    // The detection scenarios again, on Docker 26.1 as the test daemon: its classic image
    // store, then containerd's.
    if let Some(prefix) = &docker_26 {
        for engine in ["docker26-classic", "docker26-containerd"] {
            println!("xtask: the detection scenarios on {engine}");
            let status = Command::new(env!("CARGO"))
                .current_dir(&root)
                .args([
                    "test",
                    "--release",
                    "--package",
                    "buildwatch-integration-tests",
                    "--test",
                    "detection",
                ])
                .env("BUILDWATCH_BIN", &binary)
                .env("BUILDWATCH_DOCKER_26", prefix)
                .env("BUILDWATCH_TEST_ENGINE", engine)
                .status()
                .context("running the detection scenarios on Docker 26.1")?;
            if !status.success() {
                bail!("the detection scenarios failed on {engine}");
            }
        }
    }
    // Every parser attacker bytes reach, briefly (`cargo xtask fuzz` runs them longer).
    let seconds = std::env::var("BUILDWATCH_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    crate::fuzz::fuzz(seconds)
}

fn cargo(root: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}
