//! `cargo xtask install` / `uninstall`: the binary, an example configuration (never overwriting
//! one that exists) and the systemd unit.
use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::build;

const UNIT_NAME: &str = "buildwatch.service";
const CONFIG_DIR: &str = "etc/buildwatch";
const UNIT_DIR: &str = "etc/systemd/system";
const DROP_IN_DIR: &str = "buildwatch.service.d";
const NETWORK_DROP_IN: &str = "network.conf";
/// The drop-in's earlier name, removed on install.
const OLD_METRICS_DROP_IN: &str = "metrics.conf";
const STATE_DIRS: [&str; 2] = ["var/lib/buildwatch", "var/log/buildwatch"];

/// Where files go: `prefix` for the binary; `destdir` (default `/`) is prepended to every path,
/// for packaging or a trial run into a scratch directory.
pub struct Layout {
    pub prefix: PathBuf,
    pub destdir: PathBuf,
}

impl Layout {
    fn bindir(&self) -> PathBuf {
        self.prefix.join("bin")
    }

    /// A path as installed, under destdir.
    fn staged(&self, path: &Path) -> PathBuf {
        self.destdir.join(path.strip_prefix("/").unwrap_or(path))
    }
}

/// The unit file with the binary's real directory.
pub fn unit_text(bindir: &Path) -> anyhow::Result<String> {
    let template = build::workspace_root().join("sensor/dist").join(UNIT_NAME);
    let text =
        fs::read_to_string(&template).with_context(|| format!("cannot read {}", template.display()))?;
    Ok(text.replace("@BINDIR@", &bindir.display().to_string()))
}

pub fn install(layout: &Layout) -> anyhow::Result<()> {
    let binary = build::build()?;
    let bindir = layout.staged(&layout.bindir());
    create_dir(&bindir, 0o755)?;
    let target = bindir.join("buildwatch");
    // Copy to a temporary name and rename, so a running sensor's binary is replaced, not
    // rewritten in place.
    let temporary = bindir.join(".buildwatch.new");
    fs::copy(&binary, &temporary)
        .with_context(|| format!("cannot copy the binary to {}", temporary.display()))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(0o755))?;
    fs::rename(&temporary, &target).with_context(|| format!("cannot install {}", target.display()))?;
    println!("installed {}", target.display());

    let config_dir = layout.destdir.join(CONFIG_DIR);
    create_dir(&config_dir, 0o755)?;
    let config = config_dir.join("config.toml");
    if config.exists() {
        println!("kept {} (it exists)", config.display());
    } else {
        let example = build::workspace_root().join("docs/config.example.toml");
        fs::copy(&example, &config).with_context(|| format!("cannot write {}", config.display()))?;
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644))?;
        println!(
            "installed {} (every key commented, defaults apply)",
            config.display()
        );
    }

    let unit_dir = layout.destdir.join(UNIT_DIR);
    create_dir(&unit_dir, 0o755)?;
    let unit = unit_dir.join(UNIT_NAME);
    fs::write(&unit, unit_text(&layout.bindir())?)
        .with_context(|| format!("cannot write {}", unit.display()))?;
    fs::set_permissions(&unit, fs::Permissions::from_mode(0o644))?;
    println!("installed {}", unit.display());
    network_drop_in(&unit_dir, &target, &config)?;
    println!();
    println!("To start buildwatch now and at every boot:");
    println!("  systemctl daemon-reload");
    println!("  systemctl enable --now {UNIT_NAME}");
    println!("Events go to the journal (journalctl -u buildwatch -o cat), or to output.path.");
    Ok(())
}

/// The unit allows unix sockets only; serving `/metrics` and sending to a network syslog
/// receiver need IP sockets too. A drop-in allows them when the installed configuration sets
/// `[metrics] listen` or a udp:// or tcp:// `output.syslog`, and goes when it does not.
fn network_drop_in(unit_dir: &Path, binary: &Path, config: &Path) -> anyhow::Result<()> {
    let dir = unit_dir.join(DROP_IN_DIR);
    let drop_in = dir.join(NETWORK_DROP_IN);
    let settings = std::process::Command::new(binary)
        .arg("check-config")
        .arg(config)
        .output()
        .with_context(|| format!("running {} check-config", binary.display()))?;
    if !settings.status.success() {
        anyhow::bail!(
            "{} is not a valid configuration: {}",
            config.display(),
            String::from_utf8_lossy(&settings.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&settings.stdout);
    let mut reasons = Vec::new();
    if let Some(listen) = setting(&text, "metrics", "listen") {
        reasons.push(format!("[metrics] {listen}"));
    }
    if let Some(syslog) = setting(&text, "output", "syslog").filter(|s| !s.contains("\"unix:")) {
        reasons.push(format!("[output] {syslog}"));
    }
    match fs::remove_file(dir.join(OLD_METRICS_DROP_IN)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            return Err(err).context("cannot remove the old metrics drop-in")
        }
        _ => {}
    }
    if reasons.is_empty() {
        match fs::remove_file(&drop_in) {
            Ok(()) => println!("removed {} (no network output)", drop_in.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("cannot remove {}", drop_in.display())),
        }
        return Ok(());
    }
    create_dir(&dir, 0o755)?;
    fs::write(
        &drop_in,
        format!(
            "# Written by cargo xtask install: {} sets {}.\n[Service]\nRestrictAddressFamilies=AF_INET AF_INET6\n",
            config.display(),
            reasons.join(" and ")
        ),
    )
    .with_context(|| format!("cannot write {}", drop_in.display()))?;
    fs::set_permissions(&drop_in, fs::Permissions::from_mode(0o644))?;
    println!("installed {} (the unit may open IP sockets)", drop_in.display());
    Ok(())
}

/// `key = value` of `[section]` in check-config's output, as written there.
fn setting(config: &str, section: &str, key: &str) -> Option<String> {
    let header = format!("[{section}]");
    config
        .lines()
        .skip_while(|line| line.trim() != header)
        .skip(1)
        .take_while(|line| !line.trim_start().starts_with('['))
        .find(|line| line.split_once('=').is_some_and(|(name, _)| name.trim() == key))
        .map(|line| line.trim().to_string())
}

pub fn uninstall(layout: &Layout, purge: bool) -> anyhow::Result<()> {
    let mut removed = vec![
        layout.staged(&layout.bindir()).join("buildwatch"),
        layout.destdir.join(UNIT_DIR).join(UNIT_NAME),
        layout.destdir.join(UNIT_DIR).join(DROP_IN_DIR),
    ];
    if purge {
        removed.push(layout.destdir.join(CONFIG_DIR));
        removed.extend(STATE_DIRS.iter().map(|d| layout.destdir.join(d)));
    }
    println!("If the service is enabled, first: systemctl disable --now {UNIT_NAME}");
    for path in removed {
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => println!("removed {}", path.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("cannot remove {}", path.display())),
        }
    }
    if !purge {
        println!(
            "kept /{CONFIG_DIR} and the state in /{} (use --purge to remove them)",
            STATE_DIRS.join(", /")
        );
    }
    Ok(())
}

fn create_dir(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}
