//! A second Docker Engine for the test matrix: Docker 26.1 with its CLI, buildx and containerd
//! 1.7, from Debian trixie's packages, unpacked into `target/engines/` beside the system's
//! bookworm 20.10, through a private apt state (`debian`).
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::debian::PrivateApt;

const SUITE: &str = "trixie";
const PACKAGES: &[&str] = &["docker.io", "docker-cli", "docker-buildx", "containerd"];
/// What the unpacked prefix must hold for the tests to use it.
const BINARIES: &[&str] = &[
    "usr/sbin/dockerd",
    "usr/bin/docker",
    "usr/bin/containerd",
    "usr/bin/containerd-shim-runc-v2",
    "usr/libexec/docker/cli-plugins/docker-buildx",
];

/// The prefix holding Docker 26.1 (`usr/sbin/dockerd`...), fetched and unpacked when missing.
pub fn ensure_docker_26(root: &Path) -> anyhow::Result<PathBuf> {
    let base = root.join("target/engines");
    let prefix = base.join("docker-26.1");
    if BINARIES.iter().all(|b| prefix.join(b).is_file()) {
        return Ok(prefix);
    }
    println!(
        "xtask: fetching Docker 26.1, buildx and containerd 1.7 from Debian {SUITE} into {}",
        prefix.display()
    );
    let apt = PrivateApt::open(SUITE, &base.join("apt"))?;
    apt.unpack(PACKAGES, &prefix)?;
    if let Some(missing) = BINARIES.iter().find(|b| !prefix.join(b).is_file()) {
        bail!("the Debian {SUITE} packages did not provide {missing}");
    }
    Ok(prefix)
}
