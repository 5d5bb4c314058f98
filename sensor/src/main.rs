//! buildwatch agent entry point: parse the command line, set up diagnostics, run.
use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use buildwatch::{
    agent,
    cli::{Cli, Command},
    config::Config,
    replay,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line on stderr, with the cause chain, and no backtrace.
            eprintln!("buildwatch: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            output,
            record,
        } => {
            let (config, config_path) = Config::load(config.as_deref())?;
            init_logging(&config.log.level);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| anyhow::anyhow!("cannot start the async runtime: {err}"))?;
            runtime.block_on(agent::run(agent::RunOptions {
                config,
                config_path,
                output,
                record,
            }))
        }
        Command::Replay {
            recording,
            config,
            all,
        } => {
            let tuned = match config {
                Some(path) => Some(Config::load(Some(&path))?.0),
                None => None,
            };
            init_logging(
                &tuned
                    .as_ref()
                    .map_or_else(|| "warn".to_string(), |c| c.log.level.clone()),
            );
            replay::replay(replay::ReplayOptions {
                recording,
                config: tuned,
                all,
            })
        }
        Command::CheckConfig { path } => {
            let (config, path) = Config::load(path.as_deref())?;
            let source = path.map_or_else(|| "built-in defaults".to_string(), |p| p.display().to_string());
            println!(
                "# {source}: valid. Effective settings (sha256 {}):",
                config.digest()
            );
            print!(
                "{}",
                toml::to_string(&config)
                    .map_err(|err| anyhow::anyhow!("cannot print the settings: {err}"))?
            );
            Ok(())
        }
    }
}

/// Diagnostics go to stderr; `RUST_LOG` overrides the configured level.
fn init_logging(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
