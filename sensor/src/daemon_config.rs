//! What a dockerd declares about itself: the API endpoints it serves (`-H`/`--host`, or
//! `hosts` in its config file) and its data root (`--data-root`, or `data-root`), so that every
//! engine on a host (a second engine, rootless dockerd, docker-in-docker) is watched and keeps
//! its own provenance without being configured. The config file is read inside the daemon's
//! mount namespace; a daemon that is not root has its file read with its own identity.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::saferead::{self, Credentials};

/// A dockerd config file is a few KiB.
const MAX_CONFIG_BYTES: u64 = 256 * 1024;
/// Endpoints kept per daemon: the file is the daemon owner's to write.
const MAX_ENDPOINTS: usize = 8;

/// What a daemon declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// Unix socket paths (in the daemon's mount namespace).
    pub unix_sockets: Vec<String>,
    pub tcp_ports: Vec<u16>,
    /// `fd://`: sockets handed over by systemd, whose paths only the listeners say.
    pub inherited: bool,
    pub data_root: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(rename = "data-root")]
    data_root: Option<String>,
    /// The name before Docker 17.05.
    graph: Option<String>,
}

/// A process as `declared` needs it.
pub struct DaemonProcess<'a> {
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub argv: &'a [String],
    /// Its environment (`XDG_RUNTIME_DIR`, `XDG_CONFIG_HOME`, `HOME` of a rootless daemon).
    pub environ: &'a [(String, String)],
}

/// What a dockerd declares on its command line and in its config file.
pub fn declared(proc_root: &Path, daemon: &DaemonProcess<'_>) -> Declared {
    let arguments = Arguments::parse(daemon.argv);
    let env = |name: &str| {
        daemon
            .environ
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let config_path = arguments.config_file.clone().or_else(|| {
        if daemon.uid == 0 {
            return Some("/etc/docker/daemon.json".to_string());
        }
        let base = env("XDG_CONFIG_HOME")
            .map(String::from)
            .or_else(|| env("HOME").map(|home| format!("{home}/.config")))?;
        Some(format!("{base}/docker/daemon.json"))
    });
    let file = config_path
        .filter(|path| path.starts_with('/'))
        .and_then(|path| read_config(proc_root, daemon, Path::new(&path)));
    let file = file.unwrap_or_default();
    let mut hosts = arguments.hosts;
    if hosts.is_empty() {
        hosts = file.hosts;
    }
    if hosts.is_empty() {
        hosts.push(match (daemon.uid, env("XDG_RUNTIME_DIR")) {
            (0, _) | (_, None) => "unix:///var/run/docker.sock".to_string(),
            (_, Some(runtime)) => format!("unix://{runtime}/docker.sock"),
        });
    }
    let mut declared = Declared {
        data_root: arguments
            .data_root
            .or(file.data_root)
            .or(file.graph)
            .map(|root| root.trim_end_matches('/').to_string())
            .filter(|root| root.starts_with('/')),
        ..Declared::default()
    };
    for host in hosts.iter().take(MAX_ENDPOINTS) {
        declared.add_host(host);
    }
    declared
}

impl Declared {
    fn add_host(&mut self, host: &str) {
        if let Some(path) = host.strip_prefix("unix://") {
            let path = if path.is_empty() {
                "/var/run/docker.sock"
            } else {
                path
            };
            if path.starts_with('/') && !self.unix_sockets.iter().any(|p| p == path) {
                self.unix_sockets.push(path.to_string());
            }
        } else if let Some(address) = host.strip_prefix("tcp://") {
            let port = address
                .rsplit_once(':')
                .and_then(|(_, port)| port.trim_end_matches('/').parse().ok())
                .unwrap_or(2375);
            if !self.tcp_ports.contains(&port) {
                self.tcp_ports.push(port);
            }
        } else if host.starts_with("fd://") {
            self.inherited = true;
        }
    }

    /// Whether a listening unix socket at `path` is one it declared (`/var/run` is `/run`).
    pub fn serves_path(&self, path: &str) -> bool {
        let canonical = |p: &str| {
            p.strip_prefix("/var")
                .filter(|rest| rest.starts_with("/run/"))
                .unwrap_or(p)
                .to_string()
        };
        self.inherited
            || self
                .unix_sockets
                .iter()
                .any(|declared| canonical(declared) == canonical(path))
    }
}

/// The flags of a dockerd command line that say where it serves and stores.
#[derive(Debug, Default, PartialEq, Eq)]
struct Arguments {
    hosts: Vec<String>,
    data_root: Option<String>,
    config_file: Option<String>,
}

impl Arguments {
    fn parse(argv: &[String]) -> Self {
        let mut parsed = Self::default();
        let mut args = argv.iter().skip(1);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with('-') => (flag, Some(value.to_string())),
                _ => (arg.as_str(), None),
            };
            let slot = match flag {
                "-H" | "--host" => 0,
                "--data-root" | "-g" | "--graph" => 1,
                "--config-file" => 2,
                _ => continue,
            };
            let Some(value) = inline.or_else(|| args.next().cloned()) else {
                break;
            };
            match slot {
                0 => parsed.hosts.push(value),
                1 => parsed.data_root = Some(value),
                _ => parsed.config_file = Some(value),
            }
        }
        parsed
    }
}

/// The daemon's config file, read in its mount namespace (as the daemon's user when that is
/// not root: the file is theirs). A missing or malformed file declares nothing.
fn read_config(proc_root: &Path, daemon: &DaemonProcess<'_>, path: &Path) -> Option<ConfigFile> {
    let root = proc_root.join(daemon.tgid.to_string()).join("root");
    // Callers already run off the event loop (on the shared worker, which a nested job would
    // wait behind); a read as another user gets a thread of its own.
    let bytes = if daemon.uid == 0 {
        saferead::read_checked(Some(&root), path, MAX_CONFIG_BYTES)
    } else {
        let credentials = Credentials {
            uid: daemon.uid,
            gid: daemon.gid,
            groups: Vec::new(),
        };
        saferead::read_as(Some(&root), path, Some(&credentials), MAX_CONFIG_BYTES)
    }
    .ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(config) => Some(config),
        Err(err) => {
            tracing::warn!(
                daemon = daemon.tgid,
                "ignoring {}: {err}",
                PathBuf::from(path).display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn command_line_flags_in_both_forms() {
        let parsed = Arguments::parse(&argv(
            "dockerd -H unix:///run/a.sock --host=tcp://10.0.0.1:2376 --data-root=/srv/d --config-file /etc/x.json --debug",
        ));
        assert_eq!(parsed.hosts, ["unix:///run/a.sock", "tcp://10.0.0.1:2376"]);
        assert_eq!(parsed.data_root.as_deref(), Some("/srv/d"));
        assert_eq!(parsed.config_file.as_deref(), Some("/etc/x.json"));
        assert_eq!(Arguments::parse(&argv("dockerd -H")), Arguments::default());
    }

    #[test]
    fn hosts_become_endpoints() {
        let mut declared = Declared::default();
        for host in [
            "unix://",
            "unix:///tmp/d.sock",
            "tcp://0.0.0.0:2377",
            "tcp://:2375",
            "tcp://host",
            "ssh://x",
            "unix://relative",
        ] {
            declared.add_host(host);
        }
        assert_eq!(declared.unix_sockets, ["/var/run/docker.sock", "/tmp/d.sock"]);
        assert_eq!(declared.tcp_ports, [2377, 2375]);
        assert!(!declared.inherited);
        assert!(declared.serves_path("/run/docker.sock"), "/var/run is /run");
        assert!(!declared.serves_path("/tmp/other.sock"));
        declared.add_host("fd://");
        assert!(
            declared.serves_path("/tmp/other.sock"),
            "systemd's sockets are whatever it listens on"
        );
    }

    #[test]
    fn config_files_are_read_in_the_daemons_root() {
        let dir = std::env::temp_dir().join(format!("bw-daemon-config-{}", std::process::id()));
        let proc_root = dir.join("proc");
        let root = proc_root.join("42").join("root");
        std::fs::create_dir_all(root.join("etc/docker")).unwrap();
        std::fs::write(
            root.join("etc/docker/daemon.json"),
            r#"{"hosts": ["unix:///run/e.sock", "tcp://0.0.0.0:2380"], "data-root": "/srv/engine/", "features": {"containerd-snapshotter": true}}"#,
        )
        .unwrap();
        let environ = Vec::new();
        let args = argv("dockerd");
        let process = DaemonProcess {
            tgid: 42,
            uid: 0,
            gid: 0,
            argv: &args,
            environ: &environ,
        };
        let found = declared(&proc_root, &process);
        assert_eq!(found.unix_sockets, ["/run/e.sock"]);
        assert_eq!(found.tcp_ports, [2380]);
        assert_eq!(found.data_root.as_deref(), Some("/srv/engine"));
        // The command line wins; no hosts at all means the default socket.
        let args = argv("dockerd --data-root /d -H unix:///x.sock");
        let process = DaemonProcess {
            argv: &args,
            ..process
        };
        let found = declared(&proc_root, &process);
        assert_eq!(
            (found.unix_sockets.as_slice(), found.data_root.as_deref()),
            (["/x.sock".to_string()].as_slice(), Some("/d"))
        );
        std::fs::write(root.join("etc/docker/daemon.json"), "{not json").unwrap();
        let args = argv("dockerd");
        let process = DaemonProcess {
            argv: &args,
            ..process
        };
        assert_eq!(
            declared(&proc_root, &process).unix_sockets,
            ["/var/run/docker.sock"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
