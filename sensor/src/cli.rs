//! Command line.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// buildwatch: eBPF sensor for MITRE ATT&CK T1612 (Build Image on Host). It watches Docker-style
/// API traffic, image builds and image provenance on this host and writes events and detections
/// as JSON lines.
///
/// Exit codes: 0 success (for `run`: stopped by SIGINT/SIGTERM after flushing), 1 failure (one
/// line on stderr says why and what to do), 2 invalid command line.
#[derive(Debug, Parser)]
#[command(name = "buildwatch", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs and write events and detections until SIGINT/SIGTERM (needs root).
    ///
    /// SIGHUP reopens the output file (after logrotate moved it). With systemd, readiness is
    /// signalled (Type=notify) once every program is attached.
    Run {
        /// Configuration file [default: /etc/buildwatch/config.toml when it exists].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Append events to this file (created 0600); overrides `output.path`.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Also record every input of the correlation engine to this file (0600), for
        /// `buildwatch replay`. Credentials are masked as in the events.
        #[arg(long, value_name = "PATH")]
        record: Option<PathBuf>,
    },
    /// Run the correlation engine offline on a recording and print its detections (no root).
    ///
    /// Times come from the recorded events, so the detections are those of the live run.
    Replay {
        /// A recording made with `buildwatch run --record`.
        #[arg(value_name = "RECORDING")]
        recording: PathBuf,
        /// Replay with the [detect] and [allow] settings of this file instead of the recorded
        /// ones (to see what a tuning change would do).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Print every line the live run wrote (events, operations, builds, as its
        /// `output.kinds` chose), not only detections.
        #[arg(long)]
        all: bool,
    },
    /// Validate a configuration file and print the effective settings (defaults filled in).
    CheckConfig {
        /// Configuration file [default: /etc/buildwatch/config.toml when it exists].
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
    },
}
