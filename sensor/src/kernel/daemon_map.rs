//! The agent's side of the kernel's daemon tables: which tgids are trusted daemons, the TCP
//! addresses they listen on, and the unix socket paths they declare (client connects to those
//! are tracked).
use aya::maps::{HashMap, MapData};
use sensor_common::{ListenerKey, UnixPathKey, UNIX_PATH_LEN};

/// The kernel's set of trusted daemon tgids, and the TCP addresses they listen on (client
/// connects to those are tracked).
pub struct DaemonMap {
    daemons: HashMap<MapData, u32, u8>,
    listeners: HashMap<MapData, ListenerKey, u8>,
    /// What each daemon listens on, as last put in the kernel.
    listening: std::collections::HashMap<u32, Vec<(std::net::IpAddr, u16)>>,
    /// Unix socket paths whose client connects are tracked.
    paths: HashMap<MapData, UnixPathKey, u8>,
    configured_paths: std::collections::HashSet<String>,
    /// The socket paths each daemon declared and serves, as last put in the kernel.
    watching: std::collections::HashMap<u32, Vec<String>>,
}

impl DaemonMap {
    pub(super) fn new(
        daemons: HashMap<MapData, u32, u8>,
        listeners: HashMap<MapData, ListenerKey, u8>,
        paths: HashMap<MapData, UnixPathKey, u8>,
        configured: &[std::path::PathBuf],
    ) -> Self {
        Self {
            daemons,
            listeners,
            listening: std::collections::HashMap::new(),
            paths,
            configured_paths: configured
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            watching: std::collections::HashMap::new(),
        }
    }

    pub fn insert(&mut self, tgid: u32) {
        if let Err(err) = self.daemons.insert(tgid, 1, 0) {
            DAEMON_INSERTS_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(tgid, "cannot watch daemon: {err}");
        }
    }

    pub fn remove(&mut self, tgid: u32) {
        let _ = self.daemons.remove(&tgid);
        self.listen(tgid, &[]);
        self.watch_paths(tgid, &[]);
    }

    /// Makes `paths` (the unix sockets `tgid` serves, from its own declaration or the
    /// configuration) watched in the kernel; `/run` and `/var/run` are the same directory, and
    /// clients name either.
    pub fn watch_paths(&mut self, tgid: u32, paths: &[String]) {
        let mut wanted: Vec<String> = Vec::new();
        for path in paths {
            let alias = path
                .strip_prefix("/var/run/")
                .map(|rest| format!("/run/{rest}"))
                .or_else(|| path.strip_prefix("/run/").map(|rest| format!("/var/run/{rest}")));
            for path in std::iter::once(path.clone()).chain(alias) {
                if !wanted.contains(&path)
                    && !self.configured_paths.contains(&path)
                    && path.len() < UNIX_PATH_LEN
                {
                    wanted.push(path);
                }
            }
        }
        wanted.truncate(MAX_DECLARED_PATHS_PER_DAEMON);
        let before = self.watching.remove(&tgid).unwrap_or_default();
        for path in before.iter().filter(|p| !wanted.contains(p)) {
            if !self.watching.values().any(|list| list.contains(path)) {
                let _ = self.paths.remove(&unix_path_key(path));
            }
        }
        for path in &wanted {
            if let Err(err) = self.paths.insert(unix_path_key(path), 1, 0) {
                tracing::warn!(tgid, "cannot watch the clients of {path}: {err}");
            }
        }
        if !wanted.is_empty() {
            self.watching.insert(tgid, wanted);
        }
    }

    /// Makes `addresses` the TCP listeners of `tgid` in the kernel.
    pub fn listen(&mut self, tgid: u32, addresses: &[(std::net::IpAddr, u16)]) {
        let before = self.listening.remove(&tgid).unwrap_or_default();
        let still_used = |listening: &std::collections::HashMap<u32, Vec<(std::net::IpAddr, u16)>>,
                          address: &(std::net::IpAddr, u16)| {
            listening.values().any(|list| list.contains(address))
        };
        for address in before.iter().filter(|a| !addresses.contains(a)) {
            if !still_used(&self.listening, address) {
                for key in listener_keys(address) {
                    let _ = self.listeners.remove(&key);
                }
            }
        }
        for address in addresses {
            for key in listener_keys(address) {
                if let Err(err) = self.listeners.insert(key, 1, 0) {
                    tracing::warn!(tgid, "cannot follow the clients of listener {address:?}: {err}");
                }
            }
        }
        if !addresses.is_empty() {
            self.listening.insert(tgid, addresses.to_vec());
        }
    }
}

/// Socket paths one daemon may add to the kernel's watch list (the table holds 64).
const MAX_DECLARED_PATHS_PER_DAEMON: usize = 8;

pub(super) fn unix_path_key(path: &str) -> UnixPathKey {
    let mut key = UnixPathKey {
        path: [0; UNIX_PATH_LEN],
    };
    let bytes = path.as_bytes();
    let len = bytes.len().min(UNIX_PATH_LEN - 1);
    key.path[..len].copy_from_slice(&bytes[..len]);
    key
}

/// Daemons the kernel's table refused (full), reported with the kernel's own table counts.
pub(super) static DAEMON_INSERTS_REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The kernel keys of a listening address: IPv4 also in its IPv6-mapped form.
fn listener_keys(address: &(std::net::IpAddr, u16)) -> Vec<ListenerKey> {
    let key = |family: u16, addr: [u8; 16]| ListenerKey {
        addr,
        family,
        port: address.1,
        _pad: 0,
    };
    match address.0 {
        std::net::IpAddr::V4(v4) => {
            let mut short = [0u8; 16];
            short[..4].copy_from_slice(&v4.octets());
            vec![
                key(sensor_common::AF_INET, short),
                key(sensor_common::AF_INET6, v4.to_ipv6_mapped().octets()),
            ]
        }
        std::net::IpAddr::V6(v6) => vec![key(sensor_common::AF_INET6, v6.octets())],
    }
}
