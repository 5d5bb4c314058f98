//! The agent's command line failures: one line on stderr that says what to do, exit code 1, no
//! panic or backtrace. Uses the binary built by `cargo xtask test` (BUILDWATCH_BIN).
use std::{path::PathBuf, process::Command};

use buildwatch_integration_tests::{environment::find_binary, is_root, sensor_binary, TempConfig};

fn binary() -> Option<PathBuf> {
    sensor_binary(false)
}

fn assert_one_line_failure(output: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected, got:\n{stderr}"
    );
    assert!(stderr.starts_with("buildwatch: "), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn unknown_config_key_names_the_line() {
    let Some(binary) = binary() else { return };
    let config = TempConfig::new("cli", "[watch]\ntcp_port = [2375]\n");
    let output = Command::new(&binary)
        .arg("run")
        .arg("--config")
        .arg(&config.path)
        .output()
        .unwrap();
    assert_one_line_failure(&output, "line 2");
}

#[test]
fn missing_config_file_is_reported() {
    let Some(binary) = binary() else { return };
    let output = Command::new(&binary)
        .args(["run", "--config", "/nonexistent/buildwatch.toml"])
        .output()
        .unwrap();
    assert_one_line_failure(&output, "/nonexistent/buildwatch.toml");
}

#[test]
fn unprivileged_run_says_it_needs_root() {
    let Some(binary) = binary() else { return };
    if !is_root() {
        let output = Command::new(&binary).arg("run").output().unwrap();
        assert_one_line_failure(&output, "must run as root");
        return;
    }
    let setpriv = find_binary("setpriv").expect("setpriv (util-linux) drops privileges for this test");
    let output = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&binary)
        .arg("run")
        .output()
        .unwrap();
    assert_one_line_failure(&output, "must run as root");
}
