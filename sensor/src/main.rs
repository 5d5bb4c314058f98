//! buildwatch agent entry point: parse the command line, set up diagnostics, run.
mod agent;
mod cli;
mod config;
mod connections;
mod daemons;
mod docker;
mod decode;
mod detect;
mod engine;
mod existing;
mod kernel;
mod output;
mod process_table;
mod procfs;
mod protocol;
mod redact;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(&anyhow::anyhow!("cannot start the async runtime: {err}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { output, config } => agent::run(agent::RunOptions { config, output }).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// One line on stderr, with the cause chain, and no backtrace.
fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("buildwatch: {err:#}");
    ExitCode::FAILURE
}
