//! The vocabulary every layer shares, at the bottom of the house: the views of processes,
//! daemons, sockets and operations that lines carry, image references, detection severities and
//! rules, line kinds, ids and a daemon's identity. Plain data with serde derives and pure helpers:
//! no I/O, and no import of any other module of the agent. The kernel side, the host, detection
//! and output all build on it; it builds on nothing of theirs.
pub mod daemon;
pub mod detection;
pub mod ids;
pub mod image_ref;
pub mod line;
pub mod operation;
pub mod origin;
pub mod probe;
pub mod process;
pub mod socket;
