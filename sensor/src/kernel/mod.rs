//! Everything that talks to the kernel side: preflight checks, loading and attaching the
//! programs, and the maps the agent reads and writes.
pub mod daemon_map;
pub mod loader;
pub mod preflight;
pub mod settings;
pub mod tracefs;

pub use daemon_map::DaemonMap;
pub use loader::{BuildGate, KernelSensor, LossCounters, QuietMap, TrackedSockets};
