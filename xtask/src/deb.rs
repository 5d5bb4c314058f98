//! `cargo xtask deb`: a Debian package of the release build, made with dpkg-deb: the binary in
//! /usr/bin, the unit in /lib/systemd/system, the example configuration as a conffile (kept on
//! remove, gone on purge), the docs, and maintainer scripts that reload systemd when it runs.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};

use crate::{build, install};

const PACKAGE: &str = "buildwatch";
const DOCS: [&str; 6] = [
    "README.md",
    "docs/events.md",
    "docs/design.md",
    "docs/performance.md",
    "docs/fleet.md",
    "docs/config.example.toml",
];
/// The configurations the tests run against real components, under the docs' examples/.
const EXAMPLES: [&str; 2] = [
    "deploy/prometheus/prometheus.yml",
    "deploy/rsyslog/buildwatch-receiver.conf",
];

const POSTINST: &str = "#!/bin/sh
set -e
# Only when systemd runs (not in a container or a chroot).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/buildwatch /var/log/buildwatch
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
";

const PRERM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
    systemctl stop buildwatch.service || true
fi
";

/// Builds the package into `out` (target/debian by default); returns its path.
pub fn deb(out: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let binary = build::build()?;
    let root = build::workspace_root();
    let out = out.unwrap_or_else(|| root.join("target/debian"));
    let version = package_version(&root)?;
    let stage = out.join("stage");
    let _ = fs::remove_dir_all(&stage);

    let put = |path: &str, mode: u32, bytes: &[u8]| -> anyhow::Result<()> {
        let target = stage.join(path);
        fs::create_dir_all(target.parent().expect("a file in a directory"))?;
        fs::write(&target, bytes).with_context(|| format!("writing {}", target.display()))?;
        fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("usr/bin/buildwatch", 0o755, &fs::read(&binary)?)?;
    put(
        "lib/systemd/system/buildwatch.service",
        0o644,
        install::unit_text(Path::new("/usr/bin"))?.as_bytes(),
    )?;
    put(
        "etc/buildwatch/config.toml",
        0o644,
        &fs::read(root.join("docs/config.example.toml"))?,
    )?;
    let docs = DOCS.iter().map(|doc| (*doc, ""));
    for (doc, under) in docs.chain(EXAMPLES.iter().map(|example| (*example, "examples/"))) {
        let name = Path::new(doc).file_name().expect("a file name").to_string_lossy();
        put(
            &format!("usr/share/doc/{PACKAGE}/{under}{name}"),
            0o644,
            &fs::read(root.join(doc)).with_context(|| format!("reading {doc}"))?,
        )?;
    }
    let installed_kib = directory_size(&stage) / 1024;
    put(
        "DEBIAN/control",
        0o644,
        format!(
            "Package: {PACKAGE}\nVersion: {version}\nArchitecture: amd64\nMaintainer: buildwatch developers <buildwatch@localhost>\nDepends: libc6 (>= 2.31)\nSection: admin\nPriority: optional\nInstalled-Size: {installed_kib}\nDescription: eBPF sensor for container image builds on the host (MITRE ATT&CK T1612)\n Watches Docker API traffic, BuildKit sessions and container daemons with eBPF\n tracepoints, keeps a ledger of where every image came from, and reports builds\n of images that were never pulled from a registry as JSON lines.\n"
        )
        .as_bytes(),
    )?;
    put("DEBIAN/conffiles", 0o644, b"/etc/buildwatch/config.toml\n")?;
    put("DEBIAN/postinst", 0o755, POSTINST.as_bytes())?;
    put("DEBIAN/prerm", 0o755, PRERM.as_bytes())?;
    put("DEBIAN/postrm", 0o755, POSTRM.as_bytes())?;

    let package = out.join(format!("{PACKAGE}_{version}_amd64.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&package)
        .status()
        .context("running dpkg-deb (Debian package dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb --build failed");
    }
    println!("built {}", package.display());
    Ok(package)
}

/// The workspace's version (`[workspace.package] version`).
pub fn package_version(root: &Path) -> anyhow::Result<String> {
    let manifest = fs::read_to_string(root.join("Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("version")?.trim().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_string())
        })
        .context("no version in Cargo.toml")
}

fn directory_size(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => directory_size(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
