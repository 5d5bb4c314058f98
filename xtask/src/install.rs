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
    println!();
    println!("To start buildwatch now and at every boot:");
    println!("  systemctl daemon-reload");
    println!("  systemctl enable --now {UNIT_NAME}");
    println!("Events go to the journal (journalctl -u buildwatch -o cat), or to output.path.");
    Ok(())
}

pub fn uninstall(layout: &Layout, purge: bool) -> anyhow::Result<()> {
    let mut removed = vec![
        layout.staged(&layout.bindir()).join("buildwatch"),
        layout.destdir.join(UNIT_DIR).join(UNIT_NAME),
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
