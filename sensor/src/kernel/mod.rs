//! Everything that talks to the kernel side: preflight checks, loading and attaching the
//! programs, and the maps the agent reads and writes.
pub mod loader;
pub mod preflight;
pub mod settings;
pub mod tracefs;

pub use loader::{BuildGate, DaemonMap, KernelSensor, LossCounters, TrackedSockets};
