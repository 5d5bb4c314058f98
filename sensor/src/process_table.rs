//! Every process the sensor knows: seeded from /proc at start, then kept current from fork,
//! exec and exit events. Exited processes stay a while so late events and ancestry chains of
//! their children still resolve.
use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::{
    decode::Header,
    host::SharedHost,
    model::process::{Ancestor, ProcessView},
    procfs::{self, ProcSnapshot},
    redact,
};

/// How long an exited process is kept, in nanoseconds.
const EXITED_RETENTION_NS: u64 = 120 * 1_000_000_000;
/// Bound on the table; exited processes are dropped first.
const MAX_PROCESSES: usize = 65_536;
/// Bound on argv records waiting for their exec.
const MAX_PENDING_ARGV: usize = 4_096;
/// Longest ancestry chain reported (a loop guard as much as a size bound).
const MAX_ANCESTRY: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub argv_truncated: bool,
    pub uid: u32,
    pub gid: u32,
    pub cwd: Option<String>,
    pub container_id: Option<String>,
    #[serde(skip)]
    pub exited_at: Option<u64>,
    /// Known from the kernel's fork or exec record, so kept current by its events. Other
    /// entries (seeded, read from /proc on demand) may be stale: the kernel reports only the
    /// processes correlation uses, and may have exec'd or reused the pid since.
    #[serde(skip)]
    pub from_events: bool,
}

impl From<ProcSnapshot> for Process {
    fn from(snapshot: ProcSnapshot) -> Self {
        Self {
            pid: snapshot.tgid,
            ppid: snapshot.ppid,
            comm: snapshot.comm,
            exe: snapshot.exe,
            argv: {
                let mut argv = snapshot.argv;
                redact::argv(&mut argv);
                argv
            },
            argv_truncated: false,
            uid: snapshot.uid,
            gid: snapshot.gid,
            cwd: snapshot.cwd,
            container_id: snapshot.container_id,
            exited_at: None,
            from_events: false,
        }
    }
}

/// The acting process as an event names it: the kernel header, enriched with what the table
/// knows.
pub fn view(header: &Header, known: Option<&Process>) -> ProcessView {
    ProcessView {
        pid: header.tgid,
        tid: header.pid,
        ppid: known.map(|p| p.ppid),
        comm: header.comm.clone(),
        uid: header.uid,
        gid: header.gid,
        exe: known.and_then(|p| p.exe.clone()),
        argv: None,
        argv_truncated: false,
        cwd: None,
        container_id: known.and_then(|p| p.container_id.clone()),
        ancestry: None,
    }
}

/// Everything: argv, cwd and the ancestry chain.
pub fn full_view(header: &Header, known: &Process, ancestry: Vec<Ancestor>) -> ProcessView {
    ProcessView {
        argv: Some(known.argv.clone()),
        argv_truncated: known.argv_truncated,
        cwd: known.cwd.clone(),
        ancestry: Some(ancestry),
        ..view(header, Some(known))
    }
}

pub struct ProcessTable {
    host: SharedHost,
    processes: HashMap<u32, Process>,
    /// argv captured at execve entry, keyed by the calling thread id.
    pending_argv: HashMap<u32, (Vec<String>, bool)>,
    exited: VecDeque<(u64, u32)>,
}

impl ProcessTable {
    pub fn new(host: SharedHost) -> Self {
        Self {
            host,
            processes: HashMap::new(),
            pending_argv: HashMap::new(),
            exited: VecDeque::new(),
        }
    }

    /// Loads every process currently in /proc. Call after the programs are attached, so nothing
    /// that starts meanwhile is missed.
    pub fn seed(&mut self) {
        for snapshot in self.host.processes() {
            self.processes
                .entry(snapshot.tgid)
                .or_insert_with(|| snapshot.into());
        }
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, tgid: u32) -> Option<&Process> {
        self.processes.get(&tgid)
    }

    /// The process, loaded from /proc if the table has not seen it (it may predate the sensor or
    /// its fork record may have been lost).
    pub fn get_or_load(&mut self, tgid: u32) -> Option<&Process> {
        if !self.processes.contains_key(&tgid) {
            let snapshot = self.host.snapshot(tgid)?;
            self.insert(snapshot.into());
        }
        self.processes.get(&tgid)
    }

    /// The process as it is now: the entry when the kernel's events keep it current, else
    /// read again from /proc (the old entry when the process is gone).
    pub fn current(&mut self, tgid: u32) -> Option<&Process> {
        let stale = self.processes.get(&tgid).is_none_or(|p| !p.from_events);
        if stale {
            if let Some(snapshot) = self.host.snapshot(tgid) {
                self.insert(snapshot.into());
            }
        }
        self.processes.get(&tgid)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Process> {
        self.processes.values()
    }

    pub fn on_fork(&mut self, parent: &Header, child_pid: u32) -> &Process {
        let child = match self.get_or_load(parent.tgid) {
            Some(parent_process) => Process {
                pid: child_pid,
                ppid: parent.tgid,
                exited_at: None,
                from_events: true,
                ..parent_process.clone()
            },
            None => Process {
                pid: child_pid,
                ppid: parent.tgid,
                comm: parent.comm.clone(),
                exe: None,
                argv: Vec::new(),
                argv_truncated: false,
                uid: parent.uid,
                gid: parent.gid,
                cwd: None,
                container_id: None,
                exited_at: None,
                from_events: true,
            },
        };
        self.insert(child);
        &self.processes[&child_pid]
    }

    pub fn on_argv(&mut self, header: &Header, args: Vec<String>, truncated: bool) {
        if self.pending_argv.len() >= MAX_PENDING_ARGV {
            // execve calls that failed leave records behind; never let them grow unbounded.
            self.pending_argv.clear();
        }
        self.pending_argv.insert(header.pid, (args, truncated));
    }

    pub fn on_exec(&mut self, header: &Header, old_pid: u32, filename: &str) -> &Process {
        let argv = self
            .pending_argv
            .remove(&old_pid)
            .or_else(|| self.pending_argv.remove(&header.pid));
        let previous = self.processes.get(&header.tgid);
        // The kernel gave argv and the table knows the parent in the common case; then only
        // exe, cwd and cgroup are read. Otherwise the whole /proc entry is.
        let full = (argv.is_none() || previous.is_none())
            .then(|| self.host.snapshot(header.tgid))
            .flatten();
        let live = match &full {
            Some(snapshot) => procfs::ExecDetails {
                exe: snapshot.exe.clone(),
                cwd: snapshot.cwd.clone(),
                container_id: snapshot.container_id.clone(),
            },
            None => self.host.exec_details(header.tgid),
        };
        let (mut argv, argv_truncated) = argv
            .or_else(|| full.as_ref().map(|s| (s.argv.clone(), false)))
            .unwrap_or_default();
        redact::argv(&mut argv);
        let process = Process {
            pid: header.tgid,
            ppid: previous
                .map(|p| p.ppid)
                .or(full.as_ref().map(|s| s.ppid))
                .unwrap_or(0),
            comm: header.comm.clone(),
            // /proc/PID/exe is canonical; the exec'd name may be relative. The process may already
            // be gone (short-lived RUN steps), then the exec'd name is what we have.
            exe: live.exe.or_else(|| Some(filename.to_string())),
            argv,
            argv_truncated,
            uid: header.uid,
            gid: header.gid,
            cwd: live.cwd.or_else(|| previous.and_then(|p| p.cwd.clone())),
            container_id: live
                .container_id
                .or_else(|| previous.and_then(|p| p.container_id.clone())),
            exited_at: None,
            from_events: true,
        };
        self.insert(process);
        &self.processes[&header.tgid]
    }

    pub fn on_exit(&mut self, header: &Header) {
        self.pending_argv.remove(&header.pid);
        if let Some(process) = self.processes.get_mut(&header.tgid) {
            process.exited_at = Some(header.boot_ns);
            self.exited.push_back((header.boot_ns, header.tgid));
        }
        self.expire(header.boot_ns);
    }

    /// Parent chain from the process's parent up to pid 1 (or the first unknown parent).
    pub fn ancestry(&mut self, tgid: u32) -> Vec<Ancestor> {
        let mut chain = Vec::new();
        let mut current = self.processes.get(&tgid).map(|p| p.ppid);
        while let Some(pid) = current {
            if pid == 0 || chain.len() >= MAX_ANCESTRY {
                break;
            }
            let Some(process) = self.get_or_load(pid) else {
                break;
            };
            chain.push(Ancestor {
                pid,
                comm: process.comm.clone(),
                exe: process.exe.clone(),
            });
            current = (process.ppid != pid).then_some(process.ppid);
        }
        chain
    }

    /// Processes the table knows that descend from one of `roots` (not the roots themselves).
    pub fn descendants_of(&self, roots: &[u32]) -> Vec<u32> {
        self.processes
            .values()
            .filter(|process| {
                let mut parent = process.ppid;
                for _ in 0..MAX_ANCESTRY {
                    if roots.contains(&parent) {
                        return true;
                    }
                    match self.processes.get(&parent) {
                        Some(next) if next.ppid != parent => parent = next.ppid,
                        _ => return false,
                    }
                }
                false
            })
            .map(|process| process.pid)
            .collect()
    }

    fn insert(&mut self, process: Process) {
        if self.processes.len() >= MAX_PROCESSES {
            self.expire(u64::MAX);
        }
        self.processes.insert(process.pid, process);
    }

    /// Drops processes that exited more than the retention ago (all exited ones for `u64::MAX`).
    fn expire(&mut self, now: u64) {
        while let Some(&(exited_at, tgid)) = self.exited.front() {
            if now != u64::MAX && now.saturating_sub(exited_at) < EXITED_RETENTION_NS {
                break;
            }
            self.exited.pop_front();
            // The pid may have been reused by a live process since.
            if self
                .processes
                .get(&tgid)
                .is_some_and(|p| p.exited_at == Some(exited_at))
            {
                self.processes.remove(&tgid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tgid: u32, comm: &str, boot_ns: u64) -> Header {
        Header::for_test(tgid, comm, boot_ns)
    }

    /// A table over an empty /proc, so only events feed it.
    fn table() -> ProcessTable {
        ProcessTable::new(std::rc::Rc::new(crate::host::live::LiveHost::new(
            std::path::Path::new("/nonexistent-proc"),
        )))
    }

    fn add(table: &mut ProcessTable, pid: u32, ppid: u32, comm: &str) {
        table.insert(Process {
            pid,
            ppid,
            comm: comm.into(),
            exe: Some(format!("/usr/bin/{comm}")),
            argv: vec![comm.into()],
            argv_truncated: false,
            uid: 0,
            gid: 0,
            cwd: None,
            container_id: None,
            exited_at: None,
            from_events: true,
        });
    }

    #[test]
    fn descendants_at_any_depth() {
        let mut table = table();
        add(&mut table, 1, 0, "init");
        add(&mut table, 10, 1, "containerd");
        add(&mut table, 11, 10, "containerd-shim");
        add(&mut table, 12, 11, "sh");
        add(&mut table, 20, 1, "cron");
        let mut found = table.descendants_of(&[10]);
        found.sort();
        assert_eq!(found, [11, 12]);
        assert!(table.descendants_of(&[99]).is_empty());
    }

    #[test]
    fn exec_takes_argv_of_the_calling_thread_and_keeps_parent() {
        let mut table = table();
        add(&mut table, 1, 0, "init");
        add(&mut table, 100, 1, "dockerd");
        table.on_fork(&header(100, "dockerd", 1), 200);
        table.on_argv(
            &Header {
                pid: 201,
                ..header(200, "dockerd", 2)
            },
            vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            false,
        );
        let process = table.on_exec(&header(200, "sh", 3), 201, "/bin/sh");
        assert_eq!(process.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(process.exe.as_deref(), Some("/bin/sh"));
        assert_eq!(process.ppid, 100);
        let chain: Vec<_> = table.ancestry(200).into_iter().map(|a| (a.pid, a.comm)).collect();
        assert_eq!(chain, [(100, "dockerd".to_string()), (1, "init".to_string())]);
    }

    #[test]
    fn fork_inherits_container_and_identity() {
        let mut table = table();
        add(&mut table, 50, 1, "runc");
        table.processes.get_mut(&50).unwrap().container_id = Some("abc".into());
        let child = table.on_fork(&header(50, "runc", 1), 51);
        assert_eq!((child.pid, child.ppid), (51, 50));
        assert_eq!(child.container_id.as_deref(), Some("abc"));
    }

    #[test]
    fn ancestry_stops_on_loops_and_unknown_parents() {
        let mut table = table();
        add(&mut table, 10, 11, "a");
        add(&mut table, 11, 10, "b");
        assert_eq!(table.ancestry(10).len(), MAX_ANCESTRY);
        add(&mut table, 20, 999, "orphan");
        assert!(table.ancestry(20).is_empty());
    }

    #[test]
    fn exited_processes_expire_after_retention() {
        let mut table = table();
        add(&mut table, 30, 1, "sh");
        table.on_exit(&header(30, "sh", 1_000));
        assert!(table.get(30).is_some(), "kept for late events");
        add(&mut table, 31, 1, "sh");
        table.on_exit(&header(31, "sh", 1_000 + EXITED_RETENTION_NS + 1));
        assert!(table.get(30).is_none());
        assert!(table.get(31).is_some());
    }

    #[test]
    fn reused_pid_is_not_expired_with_the_old_process() {
        let mut table = table();
        add(&mut table, 40, 1, "old");
        table.on_exit(&header(40, "old", 5));
        add(&mut table, 40, 1, "new");
        table.expire(u64::MAX);
        assert_eq!(table.get(40).map(|p| p.comm.as_str()), Some("new"));
    }

    #[test]
    fn pending_argv_is_bounded() {
        let mut table = table();
        for pid in 0..(MAX_PENDING_ARGV as u32 + 10) {
            table.on_argv(&header(pid, "x", 0), vec!["x".into()], false);
        }
        assert!(table.pending_argv.len() <= MAX_PENDING_ARGV);
    }
}
