//! Harness for buildwatch's integration tests: a private Docker Engine, registry and "remote"
//! client in network namespaces, the real sensor binary, and a tiny scenario runner.
//!
//! Nothing here touches a daemon the user runs: the test dockerd has its own data-root,
//! exec-root, pidfile and socket, and lives with the registry in a network namespace of its own.
pub mod command;
pub mod environment;
pub mod runner;
pub mod sensor;
