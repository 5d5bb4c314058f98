//! Every map the programs share, and the globals the agent patches before load.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    Bucket, ClientFds, ExecPathKey, FdKey, ListenerKey, PendingIo, PendingSocket, QuietRequest,
    TrackedSocket, UnixPathKey, COMM_LEN, LOSS_SLOTS, TABLE_FULL_NAMES, TRACKED_CAPACITY,
};

/// Process events and the daemons' side (what they read, their own connections): the trusted
/// view, which no client can crowd out.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Client-side data and connections (anyone's to shape), apart from `EVENTS`.
#[map]
pub static CLIENT_EVENTS: RingBuf = RingBuf::with_byte_size(2 * 1024 * 1024, 0);

/// Failed ring buffer reserves, indexed by `EventKind` (+ `CLIENT_LOSS_OFFSET` on the client
/// ring).
#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// Inserts a full table refused, by `TABLE_*` index.
#[map]
pub static TABLE_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(TABLE_FULL_NAMES.len() as u32, 0);

/// Bytes not captured because a connection spent its budget, by side.
#[map]
pub static BUDGET_SKIPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Connections whose next bytes the agent does not need (by connection id), written by the agent.
/// An LRU: an entry lost to eviction only means capturing resumes.
#[map]
pub static QUIET: LruHashMap<u64, QuietRequest> = LruHashMap::with_max_entries(8192, 0);

/// Bytes not captured because the agent asked for quiet.
#[map]
pub static QUIET_SKIPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Ring-byte budgets of daemon-side TCP peers (address), shared by all their connections.
#[map]
pub static PEER_BUDGETS: LruHashMap<[u8; 16], Bucket> = LruHashMap::with_max_entries(4096, 0);

/// Entries of `TRACKED` in use, by side (atomic counters).
#[map]
pub static TRACKED_COUNTS: Array<u64> = Array::with_max_entries(2, 0);

/// Sockets whose bytes are captured, keyed by (tgid, fd). Not an LRU: nothing a client does can
/// evict an entry; client entries are capped (`TRACKED_CLIENT_LIMIT`) and removed on close,
/// dup2/dup3 over them, close_range, exec and exit.
#[map]
pub static TRACKED: HashMap<FdKey, TrackedSocket> = HashMap::with_max_entries(TRACKED_CAPACITY, 0);

/// The client connections of each process with any, so its exit or exec drops them.
#[map]
pub static CLIENT_FDS: HashMap<u32, ClientFds> = HashMap::with_max_entries(8192, 0);

/// TCP addresses trusted daemons listen on (filled by the agent): a client connect to one of
/// them is tracked.
#[map]
pub static DAEMON_LISTENERS: HashMap<ListenerKey, u8> = HashMap::with_max_entries(1024, 0);

/// Read/write calls on tracked sockets between entry and exit, keyed by pid_tgid.
#[map]
pub static PENDING_IO: LruHashMap<u64, PendingIo> = LruHashMap::with_max_entries(8192, 0);

/// connect/accept calls worth tracking between entry and exit, keyed by pid_tgid.
#[map]
pub static PENDING_SOCKET: LruHashMap<u64, PendingSocket> = LruHashMap::with_max_entries(2048, 0);

/// clone flags between clone entry and sched_process_fork, keyed by pid_tgid.
#[map]
pub static CLONE_FLAGS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Unix socket paths of watched APIs (filled by the agent from its config).
#[map]
pub static WATCHED_UNIX_PATHS: HashMap<UnixPathKey, u8> = HashMap::with_max_entries(64, 0);

/// TCP ports of remote APIs whose clients on this host are followed to any address
/// (`watch.remote_tcp_ports`, empty by default).
#[map]
pub static WATCHED_TCP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

/// tgids of watched daemons (dockerd, containerd, ...), kept current by the agent.
#[map]
pub static DAEMONS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Processes forked, at any depth, from a watched daemon (container runtimes, build steps).
#[map]
pub static DAEMON_DESCENDANTS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(65536, 0);

/// Non-zero while the agent has a build open: then connects of daemon descendants (build steps)
/// are tracked. Outside builds, containers' connections cost one array lookup.
#[map]
pub static BUILD_GATE: Array<u32> = Array::with_max_entries(1, 0);

/// Processes whose lifecycle is reported although they are neither daemons nor their
/// descendants: those that executed a builder path, and their children.
#[map]
pub static REPORTED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// Executable paths whose processes are reported (builders, daemons; filled by the agent).
#[map]
pub static EXEC_PATHS: HashMap<ExecPathKey, u8> = HashMap::with_max_entries(256, 0);

/// Names (`comm`) daemons go by (`watch.daemons`): an exec that takes one is reported, whoever
/// runs it, so the agent can tell a daemon from an impostor.
#[map]
pub static DAEMON_COMMS: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(64, 0);

/// Per-CPU scratch space for values too large for the 512-byte BPF stack.
#[map]
pub static SCRATCH_PENDING: PerCpuArray<PendingSocket> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SCRATCH_TRACKED: PerCpuArray<TrackedSocket> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SCRATCH_LISTENER: PerCpuArray<ListenerKey> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SCRATCH_EXEC_PATH: PerCpuArray<ExecPathKey> = PerCpuArray::with_max_entries(1, 0);

/// Counts a refused insert into table `index`.
#[inline(always)]
pub fn table_full(index: u32) {
    if let Some(count) = TABLE_FULL.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *count += 1 };
    }
}

/// The agent's own tgid: never traced.
#[unsafe(no_mangle)]
pub static SELF_TGID: u32 = 0;
/// Non-zero: every process's fork, exec, argv and exit is reported (`process.all`).
#[unsafe(no_mangle)]
pub static PROCESS_ALL: u32 = 0;
/// Bytes copied per data record (at most `CAPTURE_MAX`).
#[unsafe(no_mangle)]
pub static CAPTURE_BYTES: u32 = 4096;
/// Tracepoint field offsets, read by the agent from tracefs `format` files.
#[unsafe(no_mangle)]
pub static FORK_CHILD_PID_OFFSET: u32 = 20;
#[unsafe(no_mangle)]
pub static EXEC_FILENAME_OFFSET: u32 = 8;
#[unsafe(no_mangle)]
pub static EXEC_OLD_PID_OFFSET: u32 = 16;
/// 0 when the kernel's sched_process_exit has no `group_dead` field.
#[unsafe(no_mangle)]
pub static EXIT_GROUP_DEAD_OFFSET: u32 = 32;

/// Reads a global patched by the loader. The volatile read keeps the compiler from folding the
/// build-time value into the code.
#[inline(always)]
pub fn load(global: &u32) -> u32 {
    // SAFETY: a valid reference to a u32 static.
    unsafe { core::ptr::read_volatile(global) }
}
