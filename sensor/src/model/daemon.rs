//! Daemons as the sensor knows them: what makes a process one (the configured policy), what the
//! host says about a process claiming to be one (its identity), and the `sensor.daemon` line's
//! view of a daemon it trusts.
use std::{net::IpAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

/// What makes a process a daemon (from the configuration).
#[derive(Debug, Clone)]
pub struct DaemonPolicy {
    pub binaries: Vec<PathBuf>,
    /// The host's root filesystem as the sensor sees it, to resolve `binaries` in.
    pub host_root: PathBuf,
    pub unix_sockets: Vec<PathBuf>,
    pub tcp_ports: Vec<u16>,
}

impl Default for DaemonPolicy {
    fn default() -> Self {
        Self {
            binaries: Vec::new(),
            host_root: PathBuf::from("/"),
            unix_sockets: Vec::new(),
            tcp_ports: Vec::new(),
        }
    }
}

/// What the host says about a process claiming to be a daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonIdentity {
    /// The host answered (a /proc read past its deadline is no answer: nothing changes then).
    #[serde(default)]
    pub answered: bool,
    /// Its executable is one of the configured daemon binaries (same device and inode).
    pub known_binary: bool,
    /// Watched endpoints it listens on (`unix:/run/docker.sock`, `tcp:2375`).
    pub serves: Vec<String>,
    /// The TCP addresses of its listeners on watched ports (a wildcard listener as every local
    /// address of its network namespace): client connects to these are followed.
    #[serde(default)]
    pub tcp_listeners: Vec<(IpAddr, u16)>,
    /// The data root it declares (dockerd: `--data-root`, or `data-root` in its config file).
    #[serde(default)]
    pub data_root: Option<String>,
}

/// A daemon the sensor began or stopped trusting, or whose endpoints changed, as its
/// `sensor.daemon` line names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonView {
    pub pid: u32,
    pub name: String,
    pub trusted: bool,
    pub store: String,
    pub serves: Vec<String>,
}
