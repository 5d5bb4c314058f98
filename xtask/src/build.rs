//! `cargo xtask build`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::prerequisites;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Builds the agent with its real eBPF object; returns the path of the `buildwatch` binary.
pub fn build() -> anyhow::Result<PathBuf> {
    prerequisites::ensure_build_tools()?;
    let root = workspace_root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "--release", "--package", "sensor"])
        .env_remove("BUILDWATCH_SKIP_EBPF")
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let binary = root.join("target/release/buildwatch");
    if !binary.is_file() {
        bail!("the build did not produce {}", binary.display());
    }
    Ok(binary)
}
