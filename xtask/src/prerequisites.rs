//! What the build and the tests need on the machine, installed when missing.
use std::process::Command;

use anyhow::{bail, Context as _};

/// bpf-linker built against rustc's own LLVM (no system LLVM needed). 0.10.4 sanitizes Rust
/// generic union names in BTF (`MaybeUninit<u8>`), which the kernel otherwise rejects.
pub const BPF_LINKER_VERSION: &str = "0.10.4";

/// Debian packages for the integration tests, each with a binary that proves it is installed.
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("docker.io", "dockerd"),
    ("docker-registry", "docker-registry"),
    ("busybox-static", "busybox"),
    ("podman", "podman"),
    ("iproute2", "ip"),
    ("tar", "tar"),
    ("curl", "curl"),
    ("systemd", "systemd-analyze"),
    // The metrics scenario is scraped by a real Prometheus.
    ("prometheus", "prometheus"),
    // The syslog scenario sends to a real rsyslog.
    ("rsyslog", "rsyslogd"),
    // The attack scenarios create an unprivileged user and run as it.
    ("passwd", "useradd"),
    ("util-linux", "setpriv"),
];

pub fn ensure_build_tools() -> anyhow::Result<()> {
    ensure_rust_src()?;
    ensure_bpf_linker()
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    );
    match installed {
        Some(components) if components.lines().any(|line| line.starts_with("rust-src")) => Ok(()),
        // Add the component to the nightly the machine has; never update that toolchain.
        Some(_) => {
            println!("xtask: installing the nightly toolchain's rust-src component (needed to build the eBPF programs)");
            run(
                "rustup",
                &["component", "add", "rust-src", "--toolchain", "nightly"],
            )
        }
        None => {
            println!(
                "xtask: installing a nightly toolchain with rust-src (needed to build the eBPF programs)"
            );
            run(
                "rustup",
                &[
                    "toolchain",
                    "install",
                    "nightly",
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ],
            )
        }
    }
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let version = output("bpf-linker", &["--version"]).unwrap_or_default();
    if version.split_whitespace().any(|word| word == BPF_LINKER_VERSION) {
        return Ok(());
    }
    let found = if version.is_empty() {
        "none found".to_string()
    } else {
        format!("found {}", version.trim())
    };
    println!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} with cargo ({found}); this takes a few minutes"
    );
    run(
        "cargo",
        &[
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ],
    )
}

pub fn missing_packages(packages: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    packages
        .iter()
        .filter(|(_, binary)| !on_path(binary))
        .map(|(package, _)| *package)
        .collect()
}

pub fn install_test_packages() -> anyhow::Result<()> {
    install_packages(TEST_PACKAGES, "the integration tests")
}

/// Installs whichever of `packages` are missing, for `what` (named in the error).
pub fn install_packages(packages: &[(&'static str, &'static str)], what: &str) -> anyhow::Result<()> {
    let missing = missing_packages(packages);
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{what} need the Debian packages {} and root to install them: run it with sudo",
            missing.join(", ")
        );
    }
    println!("xtask: installing Debian packages {}", missing.join(" "));
    run("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    let status = Command::new("apt-get")
        .args(&args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file()))
        .unwrap_or(false)
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
