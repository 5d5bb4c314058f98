//! buildwatch's agent as a library: the binary (`main.rs`) is a thin command line over it, and
//! the fuzz targets (`sensor/fuzz`) reach the parsers that attacker bytes reach.
pub mod agent;
pub mod cli;
pub mod config;
pub mod connections;
pub mod daemon_config;
pub mod daemons;
pub mod decode;
pub mod detect;
pub mod docker;
pub mod engine;
pub mod existing;
pub mod files;
pub mod host;
pub mod kernel;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod process_table;
pub mod procfs;
pub mod protocol;
pub mod recording;
pub mod redact;
pub mod replay;
pub mod saferead;
pub mod watch;
pub mod worker;
