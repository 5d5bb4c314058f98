//! Loading the eBPF object, patching its globals, attaching the programs from one table, and
//! handing out the maps the agent uses.
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
    Ebpf, EbpfLoader,
};
use std::collections::BTreeMap;

use sensor_common::{
    EventKind, ExecPathKey, FdKey, QuietRequest, SocketRole, TrackedSocket, UnixPathKey, BUILD_GATE_OPEN,
    CLIENT_LOSS_OFFSET, COMM_LEN, EXEC_PATH_KEY_LEN, GLOBAL_CAPTURE_BYTES, GLOBAL_EXEC_FILENAME_OFFSET,
    GLOBAL_EXEC_OLD_PID_OFFSET, GLOBAL_EXIT_GROUP_DEAD_OFFSET, GLOBAL_FORK_CHILD_PID_OFFSET,
    GLOBAL_PROCESS_ALL, GLOBAL_SELF_TGID, SIDE_CLIENT, SIDE_DAEMON, TABLE_FULL_NAMES,
};

use super::{
    daemon_map::{unix_path_key, DaemonMap, DAEMON_INSERTS_REFUSED},
    settings::{Capture, Kernel, Process},
    tracefs,
};
use crate::{
    decode::sockaddr,
    model::{
        probe::SkippedProbe,
        socket::{Endpoint, Role},
    },
    watch::Watch,
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor"));

/// One program attached to one tracepoint. `required` probes abort the start when they fail;
/// the others are skipped with the reason reported in `sensor.start`.
struct Probe {
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
    required: bool,
}

const fn probe(
    program: &'static str,
    category: &'static str,
    tracepoint: &'static str,
    required: bool,
) -> Probe {
    Probe {
        program,
        category,
        tracepoint,
        required,
    }
}

const PROBES: &[Probe] = &[
    // Process lifecycle.
    probe("sched_process_fork", "sched", "sched_process_fork", true),
    probe("sched_process_exec", "sched", "sched_process_exec", true),
    probe("sched_process_exit", "sched", "sched_process_exit", true),
    probe("sys_enter_clone", "syscalls", "sys_enter_clone", true),
    probe("sys_enter_clone3", "syscalls", "sys_enter_clone3", false),
    probe("sys_enter_execve", "syscalls", "sys_enter_execve", true),
    probe("sys_enter_execveat", "syscalls", "sys_enter_execveat", false),
    // Socket tracking.
    probe("sys_enter_connect", "syscalls", "sys_enter_connect", true),
    probe("sys_exit_connect", "syscalls", "sys_exit_connect", true),
    probe("sys_enter_accept", "syscalls", "sys_enter_accept4", true),
    probe("sys_exit_accept", "syscalls", "sys_exit_accept4", true),
    probe("sys_enter_accept", "syscalls", "sys_enter_accept", false),
    probe("sys_exit_accept", "syscalls", "sys_exit_accept", false),
    probe("sys_enter_close", "syscalls", "sys_enter_close", true),
    probe("sys_enter_dup", "syscalls", "sys_enter_dup2", false),
    probe("sys_enter_dup", "syscalls", "sys_enter_dup3", true),
    probe(
        "sys_enter_close_range",
        "syscalls",
        "sys_enter_close_range",
        false,
    ),
    // Data capture.
    probe("sys_enter_send", "syscalls", "sys_enter_write", true),
    probe("sys_enter_send", "syscalls", "sys_enter_sendto", true),
    probe("sys_enter_writev", "syscalls", "sys_enter_writev", true),
    probe("sys_enter_sendmsg", "syscalls", "sys_enter_sendmsg", true),
    probe("sys_enter_recv", "syscalls", "sys_enter_read", true),
    probe("sys_enter_recv", "syscalls", "sys_enter_recvfrom", true),
    probe("sys_enter_readv", "syscalls", "sys_enter_readv", true),
    probe("sys_enter_recvmsg", "syscalls", "sys_enter_recvmsg", true),
    probe("sys_exit_io", "syscalls", "sys_exit_write", true),
    probe("sys_exit_io", "syscalls", "sys_exit_sendto", true),
    probe("sys_exit_io", "syscalls", "sys_exit_writev", true),
    probe("sys_exit_io", "syscalls", "sys_exit_sendmsg", true),
    probe("sys_exit_io", "syscalls", "sys_exit_read", true),
    probe("sys_exit_io", "syscalls", "sys_exit_recvfrom", true),
    probe("sys_exit_io", "syscalls", "sys_exit_readv", true),
    probe("sys_exit_io", "syscalls", "sys_exit_recvmsg", true),
];

pub struct KernelSensor {
    ebpf: Ebpf,
    pub attached: Vec<String>,
    pub skipped: Vec<SkippedProbe>,
}

impl KernelSensor {
    pub fn load(
        watch: &Watch,
        kernel: &Kernel,
        capture: &Capture,
        process: &Process,
        tracefs_root: &Path,
    ) -> anyhow::Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!("this buildwatch binary was built without its eBPF programs (bpf-linker was missing at build time); rebuild it with `cargo xtask build`");
        }
        raise_memlock_limit();
        let offset = |category, name, field| -> anyhow::Result<u32> {
            tracefs::field_offset(tracefs_root, category, name, field)?
                .ok_or_else(|| anyhow!("tracepoint {category}/{name} has no field {field}"))
        };
        let fork_child_pid = offset("sched", "sched_process_fork", "child_pid")?;
        let exec_filename = offset("sched", "sched_process_exec", "filename")?;
        let exec_old_pid = offset("sched", "sched_process_exec", "old_pid")?;
        // Kernels before 6.? have no group_dead; 0 tells the program to use pid == tgid.
        let exit_group_dead =
            tracefs::field_offset(tracefs_root, "sched", "sched_process_exit", "group_dead")?.unwrap_or(0);
        let self_tgid = std::process::id();
        let log_level: u8 = if kernel.log { 5 } else { 0 };
        let process_all = u32::from(process.all);

        let ebpf = EbpfLoader::new()
            .override_global(GLOBAL_SELF_TGID, &self_tgid, true)
            .override_global(GLOBAL_PROCESS_ALL, &process_all, true)
            .override_global(GLOBAL_CAPTURE_BYTES, &capture.bytes, true)
            .override_global(GLOBAL_FORK_CHILD_PID_OFFSET, &fork_child_pid, true)
            .override_global(GLOBAL_EXEC_FILENAME_OFFSET, &exec_filename, true)
            .override_global(GLOBAL_EXEC_OLD_PID_OFFSET, &exec_old_pid, true)
            .override_global(GLOBAL_EXIT_GROUP_DEAD_OFFSET, &exit_group_dead, true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .map_max_entries("EVENTS", kernel.ring_buffer_bytes)
            .map_max_entries("CLIENT_EVENTS", kernel.client_ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(|err| anyhow!("loading the eBPF object failed: {err} (buildwatch needs Linux >= 5.8 with BPF ring buffer support, and root)"))?;

        let mut sensor = Self {
            ebpf,
            attached: Vec::new(),
            skipped: Vec::new(),
        };
        sensor.fill_watch_maps(watch)?;
        sensor.fill_process_maps(watch, process)?;
        sensor.attach_all(tracefs_root)?;
        Ok(sensor)
    }

    fn attach_all(&mut self, tracefs_root: &Path) -> anyhow::Result<()> {
        for probe in PROBES {
            let program: &mut TracePoint = self
                .ebpf
                .program_mut(probe.program)
                .ok_or_else(|| anyhow!("the eBPF object has no program {}", probe.program))?
                .try_into()
                .with_context(|| format!("{} is not a tracepoint program", probe.program))?;
            let name = format!("{}/{}", probe.category, probe.tracepoint);
            let exists = tracefs_root
                .join("events")
                .join(probe.category)
                .join(probe.tracepoint)
                .is_dir();
            let result = if !exists {
                Err(anyhow!("this kernel has no tracepoint {name}"))
            } else {
                // A program is loaded once and may be attached to several tracepoints.
                let loaded = if program.fd().is_ok() {
                    Ok(())
                } else {
                    program.load()
                };
                loaded
                    .map_err(|err| anyhow!("the kernel rejected program {}: {err}", probe.program))
                    .and_then(|()| {
                        program
                            .attach(probe.category, probe.tracepoint)
                            .map(drop)
                            .map_err(|err| anyhow!("attaching {} to {name} failed: {err}", probe.program))
                    })
            };
            match result {
                Ok(()) => self.attached.push(name),
                Err(err) if probe.required => return Err(err),
                Err(err) => {
                    tracing::warn!(tracepoint = %name, "skipped: {err}");
                    self.skipped.push(SkippedProbe {
                        tracepoint: name,
                        reason: err.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    fn fill_watch_maps(&mut self, watch: &Watch) -> anyhow::Result<()> {
        let mut paths: HashMap<_, UnixPathKey, u8> = HashMap::try_from(self.map_mut("WATCHED_UNIX_PATHS")?)?;
        for path in &watch.unix_sockets {
            paths
                .insert(unix_path_key(&path.to_string_lossy()), 1, 0)
                .with_context(|| format!("watching {}", path.display()))?;
        }
        let mut ports: HashMap<_, u16, u8> = HashMap::try_from(self.map_mut("WATCHED_TCP_PORTS")?)?;
        for port in &watch.remote_tcp_ports {
            ports
                .insert(port, 1, 0)
                .with_context(|| format!("watching TCP port {port}"))?;
        }
        Ok(())
    }

    /// The executables and daemon names whose processes the kernel reports.
    fn fill_process_maps(&mut self, watch: &Watch, process: &Process) -> anyhow::Result<()> {
        let mut paths: HashMap<_, ExecPathKey, u8> = HashMap::try_from(self.map_mut("EXEC_PATHS")?)?;
        for path in process.builders.iter().chain(&watch.daemon_binaries) {
            let bytes = path.as_os_str().as_encoded_bytes();
            if bytes.len() >= EXEC_PATH_KEY_LEN {
                continue;
            }
            let mut key = ExecPathKey {
                path: [0; EXEC_PATH_KEY_LEN],
            };
            key.path[..bytes.len()].copy_from_slice(bytes);
            paths
                .insert(key, 1, 0)
                .with_context(|| format!("reporting processes of {}", path.display()))?;
        }
        let mut comms: HashMap<_, [u8; COMM_LEN], u8> = HashMap::try_from(self.map_mut("DAEMON_COMMS")?)?;
        for name in &watch.daemons {
            // The kernel keeps the first 15 bytes of a process name.
            let mut comm = [0u8; COMM_LEN];
            let bytes = &name.as_bytes()[..name.len().min(COMM_LEN - 1)];
            comm[..bytes.len()].copy_from_slice(bytes);
            comms
                .insert(comm, 1, 0)
                .with_context(|| format!("reporting processes named {name}"))?;
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }

    fn take_map(&mut self, name: &str) -> anyhow::Result<aya::maps::Map> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name} (or it was taken)"))
    }

    /// The daemon ring (process events and the daemons' side) and the client ring.
    pub fn take_rings(&mut self) -> anyhow::Result<(RingBuf<MapData>, RingBuf<MapData>)> {
        Ok((
            RingBuf::try_from(self.take_map("EVENTS")?)?,
            RingBuf::try_from(self.take_map("CLIENT_EVENTS")?)?,
        ))
    }

    pub fn take_build_gate(&mut self) -> anyhow::Result<BuildGate> {
        Ok(BuildGate {
            map: Array::try_from(self.take_map("BUILD_GATE")?)?,
            open: false,
        })
    }

    /// The daemon tables; `configured` are the watched socket paths of the configuration,
    /// which stay watched whatever daemons come and go.
    pub fn take_daemon_map(&mut self, configured: &[std::path::PathBuf]) -> anyhow::Result<DaemonMap> {
        Ok(DaemonMap::new(
            HashMap::try_from(self.take_map("DAEMONS")?)?,
            HashMap::try_from(self.take_map("DAEMON_LISTENERS")?)?,
            HashMap::try_from(self.take_map("WATCHED_UNIX_PATHS")?)?,
            configured,
        ))
    }

    pub fn take_daemon_descendants(&mut self) -> anyhow::Result<DaemonDescendants> {
        Ok(DaemonDescendants(HashMap::try_from(
            self.take_map("DAEMON_DESCENDANTS")?,
        )?))
    }

    pub fn take_tracked_sockets(&mut self) -> anyhow::Result<TrackedSockets> {
        Ok(TrackedSockets {
            table: HashMap::try_from(self.take_map("TRACKED")?)?,
            counts: Array::try_from(self.take_map("TRACKED_COUNTS")?)?,
        })
    }

    pub fn take_loss_counters(&mut self) -> anyhow::Result<LossCounters> {
        Ok(LossCounters {
            ring: PerCpuArray::try_from(self.take_map("LOSSES")?)?,
            tables: PerCpuArray::try_from(self.take_map("TABLE_FULL")?)?,
            budget: PerCpuArray::try_from(self.take_map("BUDGET_SKIPPED")?)?,
            quiet: PerCpuArray::try_from(self.take_map("QUIET_SKIPPED")?)?,
        })
    }

    pub fn take_quiet_map(&mut self) -> anyhow::Result<QuietMap> {
        Ok(QuietMap(HashMap::try_from(self.take_map("QUIET")?)?))
    }

    /// The aya-log reader, when the object logs at all.
    pub fn kernel_logger(&mut self) -> Option<aya_log::EbpfLogger<KernelLog>> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, KernelLog).ok()
    }
}

/// Forwards the kernel programs' aya-log records to our diagnostics at info level: they are only
/// produced when the operator turned `kernel.log` on, so they must not be filtered away again.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::info!(target: "buildwatch::kernel", level = %record.level(), "{}", record.args());
    }

    fn flush(&self) {}
}

fn raise_memlock_limit() {
    // Kernels before 5.11 charge BPF maps against RLIMIT_MEMLOCK.
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The kernel's set of watched daemon tgids.
/// Tells the kernel whether a build is open: then connects of daemon descendants (build steps)
/// are tracked.
pub struct BuildGate {
    map: Array<MapData, u32>,
    open: bool,
}

impl BuildGate {
    pub fn set(&mut self, open: bool) {
        if open == self.open {
            return;
        }
        match self.map.set(BUILD_GATE_OPEN, u32::from(open), 0) {
            Ok(()) => self.open = open,
            Err(err) => tracing::warn!("cannot update the build gate: {err}"),
        }
    }
}

/// Tells the kernel which connections' next bytes the agent does not need.
pub struct QuietMap(HashMap<MapData, u64, QuietRequest>);

impl QuietMap {
    pub fn apply(&mut self, requests: Vec<(u64, QuietRequest)>) {
        for (conn_id, request) in requests {
            if let Err(err) = self.0.insert(conn_id, request, 0) {
                tracing::debug!(conn_id, "cannot ask the kernel for quiet: {err}");
            }
        }
    }
}

/// Processes descending from watched daemons. The kernel adds children at fork; the agent adds
/// those that already existed when it started.
pub struct DaemonDescendants(HashMap<MapData, u32, u8>);

impl DaemonDescendants {
    pub fn seed(&mut self, tgids: &[u32]) {
        for tgid in tgids {
            // BPF_NOEXIST: an entry the kernel made meanwhile stays.
            let _ = self.0.insert(tgid, 1, 1);
        }
    }
}

/// The kernel's socket tracking table, for connections that predate the sensor.
pub struct TrackedSockets {
    table: HashMap<MapData, FdKey, TrackedSocket>,
    counts: Array<MapData, u64>,
}

impl TrackedSockets {
    /// Tracks `fd` of `tgid` unless the kernel already tracks it (its entry is newer than our
    /// /proc scan). Returns whether the entry was added.
    pub fn adopt(&mut self, tgid: u32, fd: i32, conn_id: u64, role: Role, peer: &Endpoint) -> bool {
        const BPF_NOEXIST: u64 = 1;
        let role = match role {
            Role::Client => SocketRole::Client,
            Role::DaemonAccepted => SocketRole::DaemonAccepted,
            Role::DaemonOutbound => SocketRole::DaemonOutbound,
            Role::BuildStep => SocketRole::BuildStep,
        };
        let side = role.side();
        let value = TrackedSocket {
            conn_id,
            role: role as u8,
            capture_mask: role.capture_mask(),
            _pad: [0; 2],
            budget: if side == sensor_common::SIDE_CLIENT {
                sensor_common::CLIENT_BUDGET_BURST
            } else {
                sensor_common::DAEMON_BUDGET_BURST
            },
            budget_ns: 0,
            skipped: 0,
            quiet_epoch: 0,
            next_flags: 0,
            peer: sockaddr(peer),
        };
        let key = FdKey { tgid, fd: fd as u32 };
        self.table.insert(key, value, BPF_NOEXIST).is_ok()
    }

    /// Removes every entry of `tgid` (a daemon that exited: its connections closed without a
    /// close() the kernel could see).
    pub fn forget(&mut self, tgid: u32) {
        let keys: Vec<FdKey> = self
            .table
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == tgid)
            .collect();
        for key in keys {
            let _ = self.table.remove(&key);
        }
        self.recount();
    }

    /// Sets the kernel's per-side entry counts from the table itself (the kernel's own updates
    /// are not atomic and may drift); returns (daemon, client) entries.
    pub fn recount(&mut self) -> (u64, u64) {
        let mut counts = [0u64; 2];
        for (_, socket) in self.table.iter().filter_map(Result::ok) {
            if let Some(role) = SocketRole::from_u8(socket.role) {
                counts[role.side() as usize] += 1;
            }
        }
        for (side, count) in counts.iter().enumerate() {
            if let Err(err) = self.counts.set(side as u32, count, 0) {
                tracing::debug!("cannot correct the tracked-socket counts: {err}");
            }
        }
        (counts[SIDE_DAEMON as usize], counts[SIDE_CLIENT as usize])
    }
}

/// What the kernel could not do: records it could not reserve (per ring and kind), table
/// inserts refused, bytes not captured for spent budgets.
pub struct LossCounters {
    ring: PerCpuArray<MapData, u64>,
    tables: PerCpuArray<MapData, u64>,
    budget: PerCpuArray<MapData, u64>,
    quiet: PerCpuArray<MapData, u64>,
}

impl LossCounters {
    fn total(array: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
        array
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// Total drops so far per ring and event kind (only kinds with drops): `socket.data` on the
    /// daemon ring, `client:socket.data` on the client ring.
    pub fn ring_drops(&self) -> BTreeMap<&'static str, u64> {
        let mut drops = BTreeMap::new();
        for kind in EventKind::ALL {
            let daemon = Self::total(&self.ring, kind as u32);
            if daemon > 0 {
                drops.insert(kind.name(), daemon);
            }
            let client = Self::total(&self.ring, kind as u32 + CLIENT_LOSS_OFFSET);
            if client > 0 {
                drops.insert(kind.client_name(), client);
            }
        }
        drops
    }

    /// Inserts refused per table (only tables that refused any).
    pub fn tables_full(&self) -> BTreeMap<&'static str, u64> {
        TABLE_FULL_NAMES
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let mut count = Self::total(&self.tables, index as u32);
                if index as u32 == sensor_common::TABLE_DAEMONS {
                    count += DAEMON_INSERTS_REFUSED.load(std::sync::atomic::Ordering::Relaxed);
                }
                (*name, count)
            })
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    /// Bytes not copied because the agent did not need them (not a loss).
    pub fn quiet_skipped(&self) -> u64 {
        Self::total(&self.quiet, 0)
    }

    /// Bytes not captured because connections spent their budget, per side.
    pub fn budget_skipped(&self) -> BTreeMap<&'static str, u64> {
        [("daemon", SIDE_DAEMON), ("client", SIDE_CLIENT)]
            .into_iter()
            .map(|(name, side)| (name, Self::total(&self.budget, side)))
            .filter(|(_, bytes)| *bytes > 0)
            .collect()
    }
}
