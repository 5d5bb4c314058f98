//! Which processes are watched daemons (dockerd, containerd, podman, buildkitd, ...): matched by
//! comm or executable basename at start (/proc scan) and on every exec.
use std::collections::{BTreeSet, HashSet};

use crate::kernel::DaemonMap;

pub struct Daemons {
    names: HashSet<String>,
    tgids: BTreeSet<u32>,
    map: Option<DaemonMap>,
}

impl Daemons {
    pub fn new(names: &[String], map: Option<DaemonMap>) -> Self {
        Self {
            names: names.iter().cloned().collect(),
            tgids: BTreeSet::new(),
            map,
        }
    }

    pub fn is_daemon_name(&self, comm: &str, exe: Option<&str>) -> bool {
        let basename = exe.and_then(|e| e.rsplit('/').next());
        self.names.contains(comm) || basename.is_some_and(|b| self.names.contains(b))
    }

    /// Re-evaluates `tgid` after an exec (or at start); returns true if it became a daemon.
    pub fn update(&mut self, tgid: u32, comm: &str, exe: Option<&str>) -> bool {
        if self.is_daemon_name(comm, exe) {
            let added = self.tgids.insert(tgid);
            if added {
                if let Some(map) = &mut self.map {
                    map.insert(tgid);
                }
            }
            added
        } else {
            self.remove(tgid);
            false
        }
    }

    pub fn remove(&mut self, tgid: u32) {
        if self.tgids.remove(&tgid) {
            if let Some(map) = &mut self.map {
                map.remove(tgid);
            }
        }
    }

    pub fn tgids(&self) -> Vec<u32> {
        self.tgids.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_comm_or_exe_basename_exactly() {
        let mut daemons = Daemons::new(&["dockerd".into(), "containerd".into()], None);
        assert!(daemons.update(10, "dockerd", Some("/usr/sbin/dockerd")));
        assert!(daemons.update(11, "exe", Some("/usr/bin/containerd")));
        assert!(!daemons.update(12, "containerd-shim", Some("/usr/bin/containerd-shim-runc-v2")));
        assert_eq!(daemons.tgids(), [10, 11]);
        // A daemon that execs something else stops being one.
        assert!(!daemons.update(10, "sh", Some("/bin/sh")));
        assert_eq!(daemons.tgids(), [11]);
    }
}
