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
    if prerequisites::is_root() {
        prerequisites::install_test_packages()?;
    } else if ci {
        bail!("CI=true: the integration tests need root (they load eBPF programs and start dockerd)");
    }
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["test", "--release", "--package", "buildwatch-integration-tests"])
        .env("BUILDWATCH_BIN", &binary)
        .status()
        .context("running the integration tests")?;
    if !status.success() {
        bail!("integration tests failed");
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
