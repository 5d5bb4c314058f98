//! The two ends of a watched connection and which way bytes move: what socket lines, the
//! connection table and the protocol decoders speak of.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A socket address as reported by the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    Unix(String),
    Tcp(IpAddr, u16),
    /// Unnamed unix peer, or a family we do not decode.
    Unknown,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) if path.is_empty() => f.write_str("unix:"),
            Endpoint::Unix(path) => write!(f, "unix:{path}"),
            Endpoint::Tcp(ip, port) => write!(f, "{}", std::net::SocketAddr::new(*ip, *port)),
            Endpoint::Unknown => f.write_str("unknown"),
        }
    }
}

/// Which side of a watched connection the process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    DaemonAccepted,
    DaemonOutbound,
    /// A build step (a daemon's descendant) connecting out while a build is open.
    BuildStep,
}

/// Which way bytes moved, seen from the process that moved them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    Send,
    Recv,
}
