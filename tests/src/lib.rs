//! Harness for buildwatch's integration tests: a private Docker Engine, registry and "remote"
//! client in network namespaces, the real sensor binary, and a tiny scenario runner.
//!
//! Nothing here touches a daemon the user runs: the test dockerd has its own data-root,
//! exec-root, pidfile and socket, and lives with the registry in a network namespace of its own.
pub mod attacker;
pub mod command;
pub mod environment;
pub mod runner;
pub mod sensor;

use std::{path::PathBuf, time::Duration};

/// `d` stretched by `BUILDWATCH_TEST_SLOWDOWN` (a whole number, 1 when unset): the kernel
/// matrix runs the suites in an emulated machine several times slower than this one. Waits for
/// something to happen grow; so does the time a "stays quiet" check waits for a verdict, which
/// keeps that check as strict as here.
pub fn scaled(d: Duration) -> Duration {
    let factor = std::env::var("BUILDWATCH_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|f| *f >= 1)
        .unwrap_or(1);
    d * factor
}

/// True when running under CI, where a missing prerequisite fails instead of skipping: any
/// `CI` value but empty, `false` or `0` (as `cargo xtask test` reads it).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "false" | "0"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `buildwatch` binary `cargo xtask test` built (BUILDWATCH_BIN), if this test can run:
/// `None` (with the reason printed) when something is missing outside CI; a panic under CI.
pub fn sensor_binary(needs_root: bool) -> Option<PathBuf> {
    let binary = std::env::var_os("BUILDWATCH_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    let missing = match (&binary, needs_root && !is_root()) {
        (None, _) => "BUILDWATCH_BIN (run `cargo xtask test`)",
        (Some(_), true) => "root (run `sudo cargo xtask test`)",
        (Some(_), false) => return binary,
    };
    assert!(!ci(), "CI=true: this test needs {missing}");
    eprintln!("skipping: this test needs {missing}");
    None
}

/// A config file in a private temporary directory, removed when dropped (also on panic). Unless
/// the text has its own `[detect]` section, the sensor's state (the image ledger) is kept in that
/// directory too, so tests never share history with each other or with the host.
pub struct TempConfig {
    dir: PathBuf,
    pub path: PathBuf,
}

impl TempConfig {
    pub fn new(name: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("buildwatch-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        let path = dir.join("config.toml");
        let mut text = text.to_string();
        if !text.contains("[detect]") {
            text.push_str(&format!(
                "\n[detect]\nstate_dir = \"{}\"\n",
                dir.join("state").display()
            ));
        }
        std::fs::write(&path, text).expect("writing a config file");
        Self { dir, path }
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
