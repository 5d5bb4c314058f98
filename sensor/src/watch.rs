//! `[watch]`: which API sockets and ports are watched and which executables are daemons.
use std::path::PathBuf;

use anyhow::bail;
use sensor_common::UNIX_PATH_LEN;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watch {
    /// Unix socket paths of container APIs; a connect() to one makes the socket tracked.
    pub unix_sockets: Vec<PathBuf>,
    /// TCP ports of container APIs: a daemon listening on one serves the API, and a client
    /// connect to the address a trusted daemon listens on is tracked.
    pub tcp_ports: Vec<u16>,
    /// Ports of remote APIs whose clients on this host are followed to any address (empty by
    /// default: a connect to an arbitrary address is anyone's to make).
    pub remote_tcp_ports: Vec<u16>,
    /// Daemon names (comm or executable basename). A process taking one of these names is a
    /// daemon only when its executable is one of `daemon_binaries` and it listens on a watched
    /// socket or port; otherwise it is reported as `daemon_impersonation`.
    pub daemons: Vec<String>,
    /// Executables of trusted daemons and builders (compared by device and inode, so copies and
    /// bind mounts do not pass).
    pub daemon_binaries: Vec<PathBuf>,
    /// Where the host's root filesystem is, for `daemon_binaries`: "/" on the host; in a
    /// container, the directory the host's filesystem (or its /usr) is mounted at ("/host").
    /// The paths are resolved inside it as the host would (its symlinks included).
    pub host_root: PathBuf,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            unix_sockets: [
                "/var/run/docker.sock",
                "/run/docker.sock",
                "/run/podman/podman.sock",
                "/run/buildkit/buildkitd.sock",
                "/run/containerd/containerd.sock",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            tcp_ports: vec![2375, 2376],
            remote_tcp_ports: Vec::new(),
            daemons: ["dockerd", "podman", "buildkitd", "containerd"]
                .map(String::from)
                .to_vec(),
            daemon_binaries: [
                "/usr/bin/dockerd",
                "/usr/sbin/dockerd",
                "/usr/local/bin/dockerd",
                "/usr/bin/containerd",
                "/usr/local/bin/containerd",
                "/usr/bin/buildkitd",
                "/usr/local/bin/buildkitd",
                "/usr/bin/podman",
                "/usr/local/bin/podman",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            host_root: PathBuf::from("/"),
        }
    }
}

impl Watch {
    pub fn validate(&self) -> anyhow::Result<()> {
        for path in &self.unix_sockets {
            let len = path.as_os_str().len();
            if len == 0 || len >= UNIX_PATH_LEN || !path.is_absolute() {
                bail!(
                    "watch.unix_sockets: {} is not an absolute path shorter than {UNIX_PATH_LEN} bytes",
                    path.display()
                );
            }
        }
        if self
            .daemons
            .iter()
            .any(|name| name.is_empty() || name.contains('/'))
        {
            bail!("watch.daemons holds process names, not paths or empty strings");
        }
        if !self.host_root.is_absolute() {
            bail!(
                "watch.host_root: {} is not an absolute path",
                self.host_root.display()
            );
        }
        if let Some(relative) = self.daemon_binaries.iter().find(|p| !p.is_absolute()) {
            bail!(
                "watch.daemon_binaries: {} is not an absolute path",
                relative.display()
            );
        }
        Ok(())
    }
}
