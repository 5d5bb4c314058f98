//! Command line.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// buildwatch: eBPF sensor that watches Docker-style API traffic, builds and image provenance on
/// this host (MITRE ATT&CK T1612, Build Image on Host). Events go out as JSON lines.
#[derive(Debug, Parser)]
#[command(name = "buildwatch", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs and print events as JSON lines until SIGINT/SIGTERM (needs root).
    Run {
        /// Append events to this file (created 0600) instead of writing them to stdout.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Configuration file [default: /etc/buildwatch/config.toml when it exists].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}
