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

/// Runs every scenario (or those whose name contains the first command line argument) and
/// returns whether all passed. Prints a closing `N passed, N failed` line.
pub fn run_all<E>(environment: &E, scenarios: &[Scenario<'_, E>]) -> bool {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let mut passed = 0;
    let mut failed = Vec::new();
    for scenario in scenarios {
        if filter.as_deref().is_some_and(|f| !scenario.name.contains(f)) {
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
    failed.is_empty()
}
