//! `cargo xtask test`: the house rules, unit tests (the agent's and xtask's own), then the
//! integration tests against a real dockerd, the kernel matrix and the fuzz targets. Every suite runs even when an
//! earlier one failed; the run fails at the end, naming each failure.
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{build, layers, prerequisites};

/// CI mode, where a missing prerequisite fails instead of skipping: any `CI` value but empty,
/// `false` or `0` (CI systems set `true`, `1`, `yes`...).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "false" | "0"))
}

pub fn test(unit_only: bool) -> anyhow::Result<()> {
    layers::check()?;
    let binary = build::build()?;
    let root = build::workspace_root();
    let ci = ci();
    let mut failed = Vec::new();

    let unit = cargo(
        &root,
        &[
            "test",
            "--release",
            "--no-fail-fast",
            "--package",
            "sensor",
            "--package",
            "sensor-common",
            "--package",
            "xtask",
        ],
    );
    if !unit? {
        failed.push("unit tests".to_string());
    }
    if unit_only {
        return verdict(failed);
    }
    let mut docker_26 = None;
    if prerequisites::is_root() {
        prerequisites::install_test_packages()?;
        match crate::engines::ensure_docker_26(&root) {
            Ok(prefix) => docker_26 = Some(prefix),
            Err(err) if ci => return Err(err.context("CI: the Docker 26.1 engine is required")),
            Err(err) => eprintln!("xtask: no Docker 26.1 engine, its scenarios will be skipped: {err:#}"),
        }
    } else if ci {
        bail!("CI: the integration tests need root (they load eBPF programs and start dockerd)");
    }
    // Every integration binary runs even when one fails (`--no-fail-fast`).
    let mut integration = Command::new(env!("CARGO"));
    integration
        .current_dir(&root)
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--package",
            "buildwatch-integration-tests",
        ])
        .env("BUILDWATCH_BIN", &binary);
    if let Some(prefix) = &docker_26 {
        integration.env("BUILDWATCH_DOCKER_26", prefix);
    }
    let status = integration.status().context("running the integration tests")?;
    if !status.success() {
        failed.push("integration tests (see each binary's result above)".to_string());
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
                failed.push(format!("the detection scenarios on {engine}"));
            }
        }
    }
    // The kernel matrix: the core detection scenarios on Debian's 5.10, 6.1 and 6.12, in qemu.
    if prerequisites::is_root() {
        println!("xtask: the kernel matrix");
        if let Err(err) = crate::kernels::matrix(&binary, &[]) {
            failed.push(format!("the kernel matrix: {err:#}"));
        }
    }
    // Every parser attacker bytes reach, briefly (`cargo xtask fuzz` runs them longer).
    let seconds = std::env::var("BUILDWATCH_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    if let Err(err) = crate::fuzz::fuzz(seconds) {
        failed.push(format!("fuzzing: {err:#}"));
    }
    verdict(failed)
}

fn verdict(failed: Vec<String>) -> anyhow::Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    bail!("{} failed:\n  {}", failed.len(), failed.join("\n  "))
}

/// Runs cargo; `Ok(false)` when it ran and failed.
fn cargo(root: &std::path::Path, args: &[&str]) -> anyhow::Result<bool> {
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(args)
        .status()
        .context("running cargo")?;
    Ok(status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_ci_value_but_false_is_ci() {
        let with = |value: Option<&str>| {
            // SAFETY: this test alone reads or writes CI in this process.
            unsafe {
                match value {
                    Some(v) => std::env::set_var("CI", v),
                    None => std::env::remove_var("CI"),
                }
            }
            ci()
        };
        let saved = std::env::var("CI").ok();
        for yes in ["true", "1", "yes", "TRUE", "github"] {
            assert!(with(Some(yes)), "{yes}");
        }
        for no in ["", "false", "0"] {
            assert!(!with(Some(no)), "{no:?}");
        }
        assert!(!with(None));
        with(saved.as_deref());
    }
}
