//! Every map the programs share, and the globals the agent patches before load.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{FdKey, PendingIo, PendingSocket, TrackedSocket, UnixPathKey, LOSS_SLOTS};

/// All events, in order per CPU.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Failed ring buffer reserves, indexed by `EventKind`.
#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_SLOTS, 0);

/// Sockets whose bytes are captured, keyed by (tgid, fd).
#[map]
pub static TRACKED: LruHashMap<FdKey, TrackedSocket> = LruHashMap::with_max_entries(16384, 0);

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

/// TCP ports of watched APIs (filled by the agent from its config).
#[map]
pub static WATCHED_TCP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

/// tgids of watched daemons (dockerd, containerd, ...), kept current by the agent.
#[map]
pub static DAEMONS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Processes forked, at any depth, from a watched daemon (container runtimes, build steps).
#[map]
pub static DAEMON_DESCENDANTS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(16384, 0);

/// Non-zero while the agent has a build open: then connects of daemon descendants (build steps)
/// are tracked. Outside builds, containers' connections cost one array lookup.
#[map]
pub static BUILD_GATE: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU scratch space for values too large for the 512-byte BPF stack.
#[map]
pub static SCRATCH_PENDING: PerCpuArray<PendingSocket> = PerCpuArray::with_max_entries(1, 0);
#[map]
pub static SCRATCH_TRACKED: PerCpuArray<TrackedSocket> = PerCpuArray::with_max_entries(1, 0);

/// The agent's own tgid: never traced.
#[unsafe(no_mangle)]
pub static SELF_TGID: u32 = 0;
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
