//! Which processes are trusted daemons (dockerd, containerd, buildkitd, podman). A name is not an
//! identity: a process is trusted only when its executable is one of the configured daemon
//! binaries (the same file, by device and inode, so a copy, a rename or a bind mount in another
//! mount namespace does not pass) and it serves the API (it owns a listening socket on a watched
//! path or port). A process that only takes a daemon's name is reported, never trusted.
//!
//! Each trusted daemon has a store: the image store its provenance belongs to, so that one
//! daemon's pulls never excuse another daemon's builds.
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{
    docker::daemon_api::ApiSocket,
    host::SharedHost,
    kernel::DaemonMap,
    model::daemon::{DaemonIdentity, DaemonView},
};

/// How long a daemon binary that does not serve yet (dockerd starting) is re-checked.
const CANDIDATE_WINDOW_NS: u64 = 300_000_000_000;
/// How often a candidate is re-checked.
const RECHECK_NS: u64 = 1_000_000_000;
/// How often a trusted daemon's identity and listeners are checked again: often while it starts
/// (dockerd opens its TCP listener some 15 s after its unix socket), then now and then.
const REFRESH_NS: u64 = 5_000_000_000;
const SETTLED_REFRESH_NS: u64 = 60_000_000_000;
const MAX_CANDIDATES: usize = 256;
const MAX_REPORTED: usize = 4096;

/// A trusted daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub name: String,
    /// The watched endpoints it serves, as last checked.
    pub serves: Vec<String>,
    /// The image store its provenance is kept under (`docker:/var/lib/docker`).
    pub store: String,
    trusted_ns: u64,
    next_refresh_ns: u64,
}

/// What an exec or a re-check concluded about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do with daemons.
    None,
    Trusted,
    /// The right binary, not serving (yet): re-checked for a while.
    Candidate,
    /// Takes a daemon's name but is not one of its binaries.
    Impersonation {
        name: String,
    },
}

struct Candidate {
    name: String,
    store: String,
    until_ns: u64,
    next_check_ns: u64,
}

pub struct Daemons {
    names: HashSet<String>,
    /// Trust given, taken or changed since the last `take_changes`, for `sensor.daemon` lines.
    changes: Vec<(u64, DaemonView)>,
    trusted: BTreeMap<u32, Daemon>,
    candidates: HashMap<u32, Candidate>,
    /// Impersonators already reported (tgid), so each is reported once.
    reported: HashSet<u32>,
    host: SharedHost,
    map: Option<DaemonMap>,
}

impl Daemons {
    pub fn new(names: &[String], host: SharedHost, map: Option<DaemonMap>) -> Self {
        Self {
            names: names.iter().cloned().collect(),
            changes: Vec::new(),
            trusted: BTreeMap::new(),
            candidates: HashMap::new(),
            reported: HashSet::new(),
            host,
            map,
        }
    }

    /// The daemon name a process goes by, if it takes one (comm or executable basename).
    fn claimed_name(&self, comm: &str, exe: Option<&str>) -> Option<String> {
        let basename = exe.and_then(|e| e.rsplit('/').next());
        [Some(comm), basename]
            .into_iter()
            .flatten()
            .find(|name| self.names.contains(*name))
            .map(String::from)
    }

    /// Re-evaluates `tgid` after an exec (or at start).
    pub fn update(&mut self, tgid: u32, now: u64, process: &ProcessFacts<'_>) -> Verdict {
        self.untrust(tgid, now);
        let Some(name) = self.claimed_name(process.comm, process.exe) else {
            return Verdict::None;
        };
        let identity = self.host.daemon_identity(tgid);
        if identity.answered && !identity.known_binary {
            if self.reported.len() >= MAX_REPORTED {
                self.reported.clear();
            }
            return if self.reported.insert(tgid) {
                Verdict::Impersonation { name }
            } else {
                Verdict::None
            };
        }
        let store =
            declared_store(&name, &identity).unwrap_or_else(|| store_of(&name, process.argv, process.uid));
        if !identity.serves.is_empty() {
            self.trust(tgid, name, store, &identity, now);
            return Verdict::Trusted;
        }
        if self.candidates.len() < MAX_CANDIDATES {
            self.candidates.insert(
                tgid,
                Candidate {
                    name,
                    store,
                    until_ns: now + CANDIDATE_WINDOW_NS,
                    next_check_ns: now + RECHECK_NS,
                },
            );
        }
        Verdict::Candidate
    }

    /// Trusts a daemon-less builder running from a verified binary (a `podman build`): its own
    /// registry traffic is then followed like a daemon's. `store` is where its images go.
    pub fn trust_builder(&mut self, tgid: u32, name: &str, store: String, now: u64) {
        let identity = self.host.daemon_identity(tgid);
        if identity.answered && identity.known_binary {
            self.trust(tgid, name.to_string(), store, &identity, now);
        }
    }

    fn trust(&mut self, tgid: u32, name: String, store: String, identity: &DaemonIdentity, now: u64) {
        self.candidates.remove(&tgid);
        let daemon = Daemon {
            name,
            serves: identity.serves.clone(),
            store,
            trusted_ns: now,
            next_refresh_ns: now + REFRESH_NS,
        };
        self.changes.push((now, view(tgid, &daemon, true)));
        self.host.serve_api(&daemon.store, api_socket(tgid, &daemon));
        let added = self.trusted.insert(tgid, daemon).is_none();
        if let Some(map) = &mut self.map {
            if added {
                map.insert(tgid);
            }
            map.listen(tgid, &identity.tcp_listeners);
            map.watch_paths(tgid, &unix_paths(&identity.serves));
        }
    }

    /// Whether a candidate or a trusted daemon is due for a check at `now`.
    pub fn has_due_checks(&self, now: u64) -> bool {
        self.candidates.values().any(|c| now >= c.next_check_ns)
            || self.trusted.values().any(|d| now >= d.next_refresh_ns)
    }

    /// Re-checks candidates that are due; returns the tgids that became trusted.
    pub fn recheck(&mut self, now: u64) -> Vec<u32> {
        // In tgid order, so a replay asks the host the same questions in the same order.
        let mut due: Vec<u32> = self
            .candidates
            .iter()
            .filter(|(_, c)| now >= c.next_check_ns)
            .map(|(tgid, _)| *tgid)
            .collect();
        due.sort_unstable();
        let mut trusted = Vec::new();
        for tgid in due {
            let identity = self.host.daemon_identity(tgid);
            let Some(candidate) = self.candidates.get_mut(&tgid) else {
                continue;
            };
            if identity.known_binary && !identity.serves.is_empty() {
                let name = candidate.name.clone();
                let store = declared_store(&name, &identity).unwrap_or_else(|| candidate.store.clone());
                self.trust(tgid, name, store, &identity, now);
                trusted.push(tgid);
            } else if identity.answered && !identity.known_binary || now >= candidate.until_ns {
                self.candidates.remove(&tgid);
            } else {
                candidate.next_check_ns = now + RECHECK_NS;
            }
        }
        let mut refresh: Vec<u32> = self
            .trusted
            .iter()
            .filter(|(_, d)| now >= d.next_refresh_ns)
            .map(|(tgid, _)| *tgid)
            .collect();
        refresh.sort_unstable();
        for tgid in refresh {
            let identity = self.host.daemon_identity(tgid);
            if let Some(daemon) = self.trusted.get_mut(&tgid) {
                let settled = now.saturating_sub(daemon.trusted_ns) > CANDIDATE_WINDOW_NS;
                daemon.next_refresh_ns = now + if settled { SETTLED_REFRESH_NS } else { REFRESH_NS };
            }
            // No answer (a busy /proc) changes nothing; a process that is no longer a daemon
            // binary (it exec'd, or exited and the pid was reused) loses its trust.
            if !identity.answered {
                continue;
            }
            if !identity.known_binary {
                self.untrust(tgid, now);
                continue;
            }
            if let Some(daemon) = self.trusted.get_mut(&tgid) {
                if daemon.serves != identity.serves {
                    daemon.serves = identity.serves.clone();
                    self.changes.push((now, view(tgid, daemon, true)));
                    self.host.serve_api(&daemon.store, api_socket(tgid, daemon));
                }
            }
            if let Some(map) = &mut self.map {
                map.listen(tgid, &identity.tcp_listeners);
                map.watch_paths(tgid, &unix_paths(&identity.serves));
            }
        }
        trusted
    }

    /// The process ended.
    pub fn remove(&mut self, tgid: u32, now: u64) {
        self.reported.remove(&tgid);
        self.untrust(tgid, now);
    }

    fn untrust(&mut self, tgid: u32, now: u64) {
        self.candidates.remove(&tgid);
        if let Some(daemon) = self.trusted.remove(&tgid) {
            self.changes.push((now, view(tgid, &daemon, false)));
            self.host.serve_api(&daemon.store, None);
            if let Some(map) = &mut self.map {
                map.remove(tgid);
            }
        }
    }

    /// What changed since the last call, oldest first.
    pub fn take_changes(&mut self) -> Vec<(u64, DaemonView)> {
        std::mem::take(&mut self.changes)
    }

    pub fn get(&self, tgid: u32) -> Option<&Daemon> {
        self.trusted.get(&tgid)
    }

    pub fn tgids(&self) -> Vec<u32> {
        self.trusted.keys().copied().collect()
    }
}

/// A dockerd's store by the data root it declares (its command line or its config file).
fn declared_store(name: &str, identity: &DaemonIdentity) -> Option<String> {
    (name == "dockerd")
        .then(|| identity.data_root.as_ref().map(|root| format!("docker:{root}")))
        .flatten()
}

/// Where a dockerd's store can be asked: its first unix socket (podman's API serves another
/// store layout, containerd and buildkitd speak gRPC).
fn api_socket(tgid: u32, daemon: &Daemon) -> Option<ApiSocket> {
    if daemon.name != "dockerd" {
        return None;
    }
    daemon.serves.iter().find_map(|endpoint| {
        endpoint.strip_prefix("unix:").map(|path| ApiSocket {
            tgid,
            path: path.into(),
        })
    })
}

/// The unix socket paths among served endpoints.
fn unix_paths(serves: &[String]) -> Vec<String> {
    serves
        .iter()
        .filter_map(|e| e.strip_prefix("unix:").map(String::from))
        .collect()
}

fn view(tgid: u32, daemon: &Daemon, trusted: bool) -> DaemonView {
    DaemonView {
        pid: tgid,
        name: daemon.name.clone(),
        trusted,
        store: daemon.store.clone(),
        serves: daemon.serves.clone(),
    }
}

/// What `update` needs to know about a process.
pub struct ProcessFacts<'a> {
    pub comm: &'a str,
    pub exe: Option<&'a str>,
    pub argv: &'a [String],
    pub uid: u32,
}

/// The image store a daemon (or a daemon-less builder) keeps: dockerd's data root (from
/// `--data-root`/`-g`, else the default of its user), podman's per user.
pub fn store_of(name: &str, argv: &[String], uid: u32) -> String {
    let flag = |names: &[&str]| -> Option<String> {
        argv.iter().enumerate().find_map(|(i, arg)| {
            names.iter().find_map(|flag| {
                arg.strip_prefix(&format!("{flag}="))
                    .map(String::from)
                    .or_else(|| (arg == flag).then(|| argv.get(i + 1).cloned()).flatten())
            })
        })
    };
    match name {
        "dockerd" => match flag(&["--data-root", "-g", "--graph"]) {
            Some(root) => format!("docker:{}", root.trim_end_matches('/')),
            None if uid == 0 => "docker:/var/lib/docker".to_string(),
            None => format!("docker:rootless-uid-{uid}"),
        },
        "containerd" => format!(
            "containerd:{}",
            flag(&["--root"]).unwrap_or_else(|| "/var/lib/containerd".into())
        ),
        "buildkitd" => format!(
            "buildkitd:{}",
            flag(&["--root"]).unwrap_or_else(|| "/var/lib/buildkit".into())
        ),
        "podman" => match flag(&["--root"]) {
            Some(root) => format!("podman:{root}"),
            None => format!("podman:uid-{uid}"),
        },
        other => format!("{other}:uid-{uid}"),
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, rc::Rc};

    use super::*;
    use crate::host::scripted::ScriptedHost;

    fn facts<'a>(comm: &'a str, exe: &'a str, argv: &'a [String]) -> ProcessFacts<'a> {
        ProcessFacts {
            comm,
            exe: Some(exe),
            argv,
            uid: 0,
        }
    }

    #[test]
    fn names_alone_are_not_trusted() {
        let host = Rc::new(ScriptedHost::default());
        let identities = RefCell::new(HashMap::from([
            (
                10,
                DaemonIdentity {
                    answered: true,
                    known_binary: true,
                    serves: vec!["unix:/run/docker.sock".into()],
                    ..Default::default()
                },
            ),
            (
                11,
                DaemonIdentity {
                    answered: true,
                    known_binary: false,
                    serves: vec!["tcp:2375".into()],
                    ..Default::default()
                },
            ),
            (
                12,
                DaemonIdentity {
                    answered: true,
                    known_binary: true,
                    serves: vec![],
                    ..Default::default()
                },
            ),
        ]));
        *host.identities.borrow_mut() = identities.into_inner();
        let mut daemons = Daemons::new(&["dockerd".into(), "containerd".into()], host.clone(), None);
        let argv = vec!["dockerd".to_string(), "--data-root=/srv/docker/".to_string()];
        assert_eq!(
            daemons.update(10, 0, &facts("dockerd", "/usr/sbin/dockerd", &argv)),
            Verdict::Trusted
        );
        assert_eq!(daemons.get(10).unwrap().store, "docker:/srv/docker");
        assert_eq!(
            daemons.update(11, 0, &facts("dockerd", "/home/eve/dockerd", &argv)),
            Verdict::Impersonation {
                name: "dockerd".into()
            }
        );
        assert_eq!(
            daemons.update(11, 0, &facts("dockerd", "/home/eve/dockerd", &argv)),
            Verdict::None,
            "reported once"
        );
        assert_eq!(
            daemons.update(12, 0, &facts("dockerd", "/usr/sbin/dockerd", &argv)),
            Verdict::Candidate
        );
        assert_eq!(
            daemons.update(13, 0, &facts("bash", "/bin/bash", &argv)),
            Verdict::None
        );
        assert_eq!(daemons.tgids(), [10]);
        // The starting daemon begins to serve.
        host.identities.borrow_mut().insert(
            12,
            DaemonIdentity {
                answered: true,
                known_binary: true,
                serves: vec!["tcp:2375".into()],
                ..Default::default()
            },
        );
        assert!(daemons.recheck(RECHECK_NS / 2).is_empty(), "not due yet");
        assert_eq!(daemons.recheck(RECHECK_NS), [12]);
        assert_eq!(daemons.tgids(), [10, 12]);
        // A daemon that execs something else stops being one.
        assert_eq!(
            daemons.update(10, 5, &facts("sh", "/bin/sh", &argv)),
            Verdict::None
        );
        assert_eq!(daemons.tgids(), [12]);
    }

    /// A check the host could not answer in time (a daemon with many thousands of sockets, a
    /// stuck /proc) changes nothing: the daemon keeps its trust.
    #[test]
    fn an_unanswered_check_keeps_a_daemon_trusted() {
        let host = Rc::new(ScriptedHost::default());
        host.identities.borrow_mut().insert(
            10,
            DaemonIdentity {
                answered: true,
                known_binary: true,
                serves: vec!["tcp:2375".into()],
                ..Default::default()
            },
        );
        let mut daemons = Daemons::new(&["dockerd".into()], host.clone(), None);
        let argv = vec!["dockerd".to_string()];
        assert_eq!(
            daemons.update(10, 0, &facts("dockerd", "/usr/sbin/dockerd", &argv)),
            Verdict::Trusted
        );
        host.identities.borrow_mut().clear();
        daemons.recheck(REFRESH_NS);
        assert_eq!(daemons.tgids(), [10]);
        host.identities.borrow_mut().insert(
            10,
            DaemonIdentity {
                answered: true,
                ..Default::default()
            },
        );
        daemons.recheck(2 * REFRESH_NS);
        assert!(daemons.tgids().is_empty(), "no longer a daemon binary");
    }

    #[test]
    fn stores_by_engine_and_root() {
        let args = |line: &str| line.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            store_of("dockerd", &args("dockerd -H fd://"), 0),
            "docker:/var/lib/docker"
        );
        assert_eq!(
            store_of("dockerd", &args("dockerd --data-root /d -H x"), 0),
            "docker:/d"
        );
        assert_eq!(
            store_of("dockerd", &args("dockerd"), 1000),
            "docker:rootless-uid-1000"
        );
        assert_eq!(
            store_of("podman", &args("podman build ."), 1000),
            "podman:uid-1000"
        );
        assert_eq!(
            store_of("podman", &args("podman --root=/r pull x"), 0),
            "podman:/r"
        );
    }
}
