//! A second Docker Engine for the test matrix: Docker 26.1 with its CLI, buildx and containerd
//! 1.7, from Debian trixie's packages, unpacked into `target/engines/` beside the system's
//! bookworm 20.10. The system's apt configuration is not touched: apt gets its own sources
//! list, state and cache directories.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

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
    let apt = base.join("apt");
    let lists = apt.join("lists");
    let debs = apt.join("debs");
    for dir in [lists.join("partial"), debs.clone()] {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let sources = apt.join("sources.list");
    fs::write(
        &sources,
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {SUITE} main\n"),
    )?;
    let private = [
        format!("Dir::Etc::sourcelist={}", sources.display()),
        "Dir::Etc::sourceparts=-".to_string(),
        format!("Dir::State::Lists={}", lists.display()),
        // `download` writes as root; apt's sandbox user could not write here.
        "APT::Sandbox::User=root".to_string(),
    ];
    let apt_get = |args: &[&str], dir: &Path| -> anyhow::Result<()> {
        let mut command = Command::new("apt-get");
        command.current_dir(dir).arg("-qq");
        for option in &private {
            command.args(["-o", option]);
        }
        let status = command.args(args).status().context("running apt-get")?;
        if !status.success() {
            bail!(
                "apt-get {} (Debian {SUITE}, private sources list) failed",
                args.join(" ")
            );
        }
        Ok(())
    };
    apt_get(&["update"], &apt)?;
    let mut download = vec!["download"];
    download.extend(PACKAGES);
    apt_get(&download, &debs)?;
    let unpacking = base.join("docker-26.1.partial");
    let _ = fs::remove_dir_all(&unpacking);
    fs::create_dir_all(&unpacking)?;
    for entry in fs::read_dir(&debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            crate::prerequisites::run(
                "dpkg",
                &["-x", &deb.to_string_lossy(), &unpacking.to_string_lossy()],
            )?;
        }
    }
    if let Some(missing) = BINARIES.iter().find(|b| !unpacking.join(b).is_file()) {
        bail!("the Debian {SUITE} packages did not provide {missing}");
    }
    let _ = fs::remove_dir_all(&prefix);
    fs::rename(&unpacking, &prefix)?;
    fs::remove_dir_all(&debs)?;
    Ok(prefix)
}
