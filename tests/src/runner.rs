//! A minimal test runner: named scenarios run in order, each isolated by `catch_unwind`, so one
//! failure still lets the others run and the environment is always torn down afterwards.
use std::{
    panic::{self, AssertUnwindSafe},
    time::Instant,
};

pub struct Scenario<'a, E> {
    pub name: &'a str,
    pub run: fn(&E),
}

/// Runs every scenario (or those whose name contains one of the command line arguments) and
/// returns whether all passed: a filter that matches no scenario fails. Prints a closing
/// `N passed, N failed` line.
pub fn run_all<E>(environment: &E, scenarios: &[Scenario<'_, E>]) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let selected = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let mut passed = 0;
    let mut failed = Vec::new();
    for scenario in scenarios {
        if !selected(scenario.name) {
            continue;
        }
        println!("scenario {} ...", scenario.name);
        let started = Instant::now();
        match panic::catch_unwind(AssertUnwindSafe(|| (scenario.run)(environment))) {
            Ok(()) => {
                passed += 1;
                println!(
                    "scenario {} ... ok ({:.1}s)",
                    scenario.name,
                    started.elapsed().as_secs_f64()
                );
            }
            Err(_) => {
                failed.push(scenario.name);
                println!(
                    "scenario {} ... FAILED ({:.1}s)",
                    scenario.name,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    if !failed.is_empty() {
        println!("failed scenarios: {}", failed.join(", "));
    }
    println!("{passed} passed, {} failed", failed.len());
    let unmatched: Vec<&String> = filters
        .iter()
        .filter(|f| !scenarios.iter().any(|s| s.name.contains(f.as_str())))
        .collect();
    if !unmatched.is_empty() {
        println!("no scenario matches {unmatched:?}: nothing was tested for it");
        return false;
    }
    failed.is_empty()
}

/// The sensor binary for a scenario suite, after checking the environment's prerequisites and
/// `extra` binaries (name, Debian package). `Err` is the exit code to return at once: a failure
/// under CI=true, a skip otherwise.
pub fn prerequisites(
    suite: &str,
    extra: &[(&str, &str)],
) -> Result<std::path::PathBuf, std::process::ExitCode> {
    let mut problems = crate::environment::missing_prerequisites();
    for (binary, package) in extra {
        if crate::environment::find_binary(binary).is_none() {
            problems.push(format!("{binary} (Debian package {package})"));
        }
    }
    let binary = std::env::var_os("BUILDWATCH_BIN").map(std::path::PathBuf::from);
    match &binary {
        Some(path) if path.is_file() => {}
        Some(path) => problems.push(format!("BUILDWATCH_BIN={} does not exist", path.display())),
        None => problems.push("BUILDWATCH_BIN (run the tests with `cargo xtask test`)".to_string()),
    }
    match binary {
        Some(binary) if problems.is_empty() => Ok(binary),
        _ => {
            let message = format!("{suite} tests need: {}", problems.join("; "));
            if crate::ci() {
                eprintln!("FAIL (CI=true, nothing may be skipped): {message}");
                return Err(std::process::ExitCode::FAILURE);
            }
            println!("skipping: {message}");
            println!("0 passed, 0 failed, 1 skipped");
            Err(std::process::ExitCode::SUCCESS)
        }
    }
}

/// Writes every line the sensor printed to `dump` for a look after a failure (and for
/// `cargo xtask fixture`).
pub fn dump_events(sensor: &crate::sensor::Sensor, dump: &std::path::Path) {
    let lines: Vec<String> = sensor.all(0, |_| true).iter().map(ToString::to_string).collect();
    match std::fs::write(dump, lines.join("\n") + "\n") {
        Ok(()) => println!("the sensor's {} events are in {}", lines.len(), dump.display()),
        Err(err) => println!("could not write {}: {err}", dump.display()),
    }
    // Its log too: what it said about daemons and their APIs explains most failures.
    let _ = std::fs::write(dump.with_extension("stderr"), sensor.stderr());
}
