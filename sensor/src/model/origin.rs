//! Who asked and where: the transport, endpoint, TCP peer, local client process and serving
//! daemon of an operation or a build.
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::process::ProcessView;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Unix,
    Tcp,
    /// A daemon-less builder started from a command line.
    Exec,
}

/// Who asked and where.
#[derive(Debug, Clone, Serialize)]
pub struct Origin {
    pub transport: Transport,
    /// The API endpoint: `unix:/var/run/docker.sock` or the daemon's `ip:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The TCP client address as the daemon saw it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The local client process (exe, argv, uid, container id, ancestry), when it is on this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<ProcessView>,
    /// The daemon process that served the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<ServingDaemon>,
    /// The image store the request was served from (a trusted daemon's, or a daemon-less
    /// builder's own).
    #[serde(skip)]
    pub store: Option<String>,
}

/// The trusted daemon that served a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServingDaemon {
    pub pid: u32,
    pub comm: String,
    /// The image store of this trusted daemon, where the operation's provenance is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
}

impl Origin {
    /// A process seen by its command line (a daemon-less builder, a process taking a daemon's
    /// name); `store` is a builder's own image store.
    pub fn exec(process: &ProcessView, store: Option<String>) -> Self {
        Self {
            transport: Transport::Exec,
            endpoint: None,
            peer: None,
            client: Some(process.clone()),
            daemon: None,
            store,
        }
    }

    pub fn peer_ip(&self) -> Option<IpAddr> {
        self.peer.as_deref()?.parse::<SocketAddr>().ok().map(|a| a.ip())
    }

    /// "remote client 10.0.0.2:41000", "/usr/bin/docker (pid 42, uid 0) from 10.0.0.2:41000",
    /// for summaries.
    pub fn who(&self) -> String {
        match (&self.client, &self.peer) {
            (Some(client), peer) => {
                let exe = client.exe.as_deref().unwrap_or(&client.comm);
                let from = peer.as_deref().map(|p| format!(" from {p}")).unwrap_or_default();
                format!("{exe} (pid {}, uid {}){from}", client.pid, client.uid)
            }
            (None, Some(peer)) => format!("remote client {peer}"),
            (None, None) => match &self.endpoint {
                Some(endpoint) => format!("a client of {endpoint}"),
                None => "an unknown client".to_string(),
            },
        }
    }

    #[cfg(test)]
    pub fn for_test(transport: Transport, peer: Option<&str>) -> Self {
        Self {
            transport,
            endpoint: None,
            peer: peer.map(String::from),
            client: None,
            daemon: None,
            store: None,
        }
    }
}
