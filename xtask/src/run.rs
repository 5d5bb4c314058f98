//! `cargo xtask run`.
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{build, prerequisites};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let binary = build::build()?;
    let mut command = if prerequisites::is_root() {
        Command::new(&binary)
    } else {
        println!("xtask: buildwatch needs root; running it with sudo");
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    let status = command
        .arg("run")
        .args(args)
        .status()
        .context("starting buildwatch")?;
    if !status.success() {
        bail!("buildwatch exited with {status}");
    }
    Ok(())
}
