//! Event and map types shared by the kernel programs (`sensor-ebpf`) and the agent (`sensor`).
//!
//! Every record the kernel writes to the ring buffer starts with an [`EventHeader`] whose `kind`
//! selects the payload struct. All structs are `#[repr(C)]`, sized to multiples of 8 bytes and
//! free of implicit padding, so both sides agree on the layout byte for byte.
#![no_std]

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;
/// Largest prefix of one read or write that the kernel copies into a data record.
pub const CAPTURE_MAX: usize = 4096;
/// Arguments of an `execve` that the kernel copies.
pub const ARGV_MAX_ARGS: usize = 16;
/// Bytes copied per argument (including the terminating NUL).
pub const ARGV_ARG_LEN: usize = 256;
/// Bytes of the executed file name kept by an exec record.
pub const EXEC_PATH_LEN: usize = 256;
/// `sizeof(sockaddr_un.sun_path)`.
pub const UNIX_PATH_LEN: usize = 108;
/// iovec segments of one `readv`/`writev`/`recvmsg`/`sendmsg` that the kernel copies.
pub const IOV_MAX_SEGMENTS: usize = 4;
/// Slots in the per-kind drop counter array: `kind` for the daemon ring, `kind +
/// CLIENT_LOSS_OFFSET` for the client ring; every [`EventKind`] value is below the offset.
pub const LOSS_SLOTS: u32 = 64;
pub const CLIENT_LOSS_OFFSET: u32 = 32;

/// Entries of the socket tracking table. Client-side entries may take at most
/// [`TRACKED_CLIENT_LIMIT`] of them, so a flood of client connections never leaves a daemon's
/// connection untracked; nothing is ever evicted.
pub const TRACKED_CAPACITY: u32 = 32768;
pub const TRACKED_CLIENT_LIMIT: u32 = 16384;
/// Client connections tracked per process (their fds are listed so the process's exit, exec,
/// dup2 or close_range can drop them).
pub const CLIENT_FDS_PER_PROCESS: usize = 16;

/// Indexes of the table-full counters (`TABLE_FULL`), and their names in `sensor.loss`.
pub const TABLE_FULL_NAMES: [&str; 6] = [
    "tracked_daemon",
    "tracked_client",
    "client_fds_per_process",
    "daemons",
    "daemon_descendants",
    "pending",
];
pub const TABLE_TRACKED_DAEMON: u32 = 0;
pub const TABLE_TRACKED_CLIENT: u32 = 1;
pub const TABLE_CLIENT_FDS: u32 = 2;
pub const TABLE_DAEMONS: u32 = 3;
pub const TABLE_DESCENDANTS: u32 = 4;
pub const TABLE_PENDING: u32 = 5;

/// Indexes of `TRACKED_COUNTS` (entries in use per side) and `BUDGET_SKIPPED` (bytes not
/// captured because a connection spent its budget, per side).
pub const SIDE_DAEMON: u32 = 0;
pub const SIDE_CLIENT: u32 = 1;

/// What a record is. Values are grouped by family: 1.. process, 16.. socket.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    ProcessFork = 1,
    ProcessExec = 2,
    ProcessExit = 3,
    ProcessArgv = 4,
    SocketConnect = 16,
    SocketAccept = 17,
    SocketData = 18,
    SocketClose = 19,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::ProcessFork,
        EventKind::ProcessExec,
        EventKind::ProcessExit,
        EventKind::ProcessArgv,
        EventKind::SocketConnect,
        EventKind::SocketAccept,
        EventKind::SocketData,
        EventKind::SocketClose,
    ];

    pub fn from_u32(value: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| *kind as u32 == value)
    }

    /// Exact size of the record the kernel writes for this kind. The match is exhaustive, so a
    /// new kind without a payload struct does not compile.
    pub const fn record_size(self) -> usize {
        match self {
            EventKind::ProcessFork => core::mem::size_of::<ForkEvent>(),
            EventKind::ProcessExec => core::mem::size_of::<ExecEvent>(),
            EventKind::ProcessExit => core::mem::size_of::<ExitEvent>(),
            EventKind::ProcessArgv => core::mem::size_of::<ArgvEvent>(),
            EventKind::SocketConnect | EventKind::SocketAccept => core::mem::size_of::<SocketEvent>(),
            EventKind::SocketData => core::mem::size_of::<DataEvent>(),
            EventKind::SocketClose => core::mem::size_of::<CloseEvent>(),
        }
    }

    /// The name of drops on the client ring.
    pub const fn client_name(self) -> &'static str {
        match self {
            EventKind::ProcessFork => "client:process.fork",
            EventKind::ProcessExec => "client:process.exec",
            EventKind::ProcessExit => "client:process.exit",
            EventKind::ProcessArgv => "client:process.argv",
            EventKind::SocketConnect => "client:socket.connect",
            EventKind::SocketAccept => "client:socket.accept",
            EventKind::SocketData => "client:socket.data",
            EventKind::SocketClose => "client:socket.close",
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            EventKind::ProcessFork => "process.fork",
            EventKind::ProcessExec => "process.exec",
            EventKind::ProcessExit => "process.exit",
            EventKind::ProcessArgv => "process.argv",
            EventKind::SocketConnect => "socket.connect",
            EventKind::SocketAccept => "socket.accept",
            EventKind::SocketData => "socket.data",
            EventKind::SocketClose => "socket.close",
        }
    }
}

/// Common first field of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub _reserved: u32,
    /// `bpf_ktime_get_boot_ns` (CLOCK_BOOTTIME) when the event happened.
    pub boot_ns: u64,
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// Who owns a tracked socket and why it is tracked.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketRole {
    /// A process connected to a watched endpoint (docker.sock, TCP 2375...).
    Client = 1,
    /// A watched daemon accepted this connection.
    DaemonAccepted = 2,
    /// A watched daemon connected out (registry traffic).
    DaemonOutbound = 3,
    /// A descendant of a watched daemon (a build step) connected out while a build was open.
    BuildStep = 4,
}

impl SocketRole {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Client),
            2 => Some(Self::DaemonAccepted),
            3 => Some(Self::DaemonOutbound),
            4 => Some(Self::BuildStep),
            _ => None,
        }
    }

    /// Data directions captured for this role, as a mask of [`Direction`] bits: what the client
    /// or the outbound daemon sends, and what the daemon receives.
    pub const fn capture_mask(self) -> u8 {
        match self {
            SocketRole::Client | SocketRole::DaemonOutbound | SocketRole::BuildStep => Direction::Send as u8,
            SocketRole::DaemonAccepted => Direction::Recv as u8,
        }
    }
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// write, writev, sendto, sendmsg.
    Send = 1,
    /// read, readv, recvfrom, recvmsg.
    Recv = 2,
}

impl Direction {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Send),
            2 => Some(Self::Recv),
            _ => None,
        }
    }
}

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A socket address as the kernel saw it: `family` selects `addr`+`port` (IPv4 in the first four
/// bytes, IPv6 in all sixteen; port in host order) or `path` (NUL-terminated unix path).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockAddr {
    pub family: u16,
    pub port: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
    pub path: [u8; UNIX_PATH_LEN],
    pub _pad2: [u8; 4],
}

impl SockAddr {
    pub const EMPTY: SockAddr = SockAddr {
        family: 0,
        port: 0,
        _pad: 0,
        addr: [0; 16],
        path: [0; UNIX_PATH_LEN],
        _pad2: [0; 4],
    };
}

/// Key of the socket tracking table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Value of the socket tracking table.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TrackedSocket {
    /// Unique per tracked connection (boot time of the connect/accept), so records of a reused fd
    /// number never mix with the previous connection's.
    pub conn_id: u64,
    pub role: u8,
    pub capture_mask: u8,
    pub _pad: [u8; 2],
    /// Ring bytes this connection may still use (a token bucket refilled at its side's rate).
    pub budget: u32,
    /// When `budget` was last refilled (boot ns).
    pub budget_ns: u64,
    /// Bytes moved but not captured since the last record (budget spent): the next record
    /// carries them, so stream positions stay exact.
    pub skipped: u64,
    /// Times a quiet period of this connection ended (the other direction moved, or a chunked
    /// body ended at a read's end): a [`QuietRequest`] made before the latest end is stale.
    pub quiet_epoch: u32,
    /// `DATA_FLAG_*` bits for the next record.
    pub next_flags: u32,
    pub peer: SockAddr,
}

/// Modes of a [`QuietRequest`].
/// Capture nothing until the other direction moves bytes (the reply to a request whose body
/// is not needed).
pub const QUIET_UNTIL_REPLY: u32 = 1;
/// As [`QUIET_UNTIL_REPLY`], and also until a read or write that ends with the last chunk of a
/// chunked body (`\r\n0\r\n\r\n`): the next request starts after it.
pub const QUIET_CHUNKED: u32 = 2;
/// Capture nothing more on this connection (a raw attach stream).
pub const QUIET_UNTIL_CLOSE: u32 = 3;

/// The agent's word that it needs none of a connection's next bytes in its captured
/// direction, written to `QUIET` under the connection id. It holds while the connection's
/// `quiet_epoch` equals `epoch` (the epoch of the last record the agent saw): a reply that
/// happened after that record makes it stale, so it can never silence the next request.
/// Skipped bytes are counted into the next record's `skipped_before`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietRequest {
    pub epoch: u32,
    pub mode: u32,
}

/// Set on a data record when the quiet period before it ended with the chunked terminator at
/// the end of a read: the skipped bytes were exactly the rest of the message.
pub const DATA_FLAG_CLEAN_END: u8 = 1;

impl SocketRole {
    /// Which side of the API a role is on: the daemon's (trusted) or a client's (hostile).
    pub const fn side(self) -> u32 {
        match self {
            SocketRole::DaemonAccepted | SocketRole::DaemonOutbound => SIDE_DAEMON,
            SocketRole::Client | SocketRole::BuildStep => SIDE_CLIENT,
        }
    }
}

/// Ring bytes all the daemon-side connections of one TCP peer address may use per second, and
/// at most in a burst: many connections from one host share this.
pub const PEER_BUDGET_PER_SECOND: u32 = 1 << 20;
pub const PEER_BUDGET_BURST: u32 = 4 << 20;

/// A token bucket of ring bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    pub tokens: u32,
    pub _pad: u32,
    pub stamp_ns: u64,
}

/// Ring bytes a connection may use per second, and at most in a burst, per side.
pub const DAEMON_BUDGET_PER_SECOND: u32 = 4 << 20;
pub const DAEMON_BUDGET_BURST: u32 = 4 << 20;
pub const CLIENT_BUDGET_PER_SECOND: u32 = 256 << 10;
pub const CLIENT_BUDGET_BURST: u32 = 1 << 20;

/// The client connections of one process (fds, -1 when free).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ClientFds {
    pub fds: [i32; CLIENT_FDS_PER_PROCESS],
}

/// Key of the daemon listener table: a TCP address a trusted daemon listens on (IPv4 in the
/// first four bytes), port in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerKey {
    pub addr: [u8; 16],
    pub family: u16,
    pub port: u16,
    pub _pad: u32,
}

/// Longest executable path (with its NUL) matched against the builder paths.
pub const EXEC_PATH_KEY_LEN: usize = 128;

/// Key of the builder path map: an absolute executable path as passed to execve, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecPathKey {
    pub path: [u8; EXEC_PATH_KEY_LEN],
}

/// Key of the watched unix socket path map: the path, NUL-padded.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixPathKey {
    pub path: [u8; UNIX_PATH_LEN],
}

/// The parent (header) created a new process `child_pid`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkEvent {
    pub header: EventHeader,
    pub child_pid: u32,
    pub _pad: u32,
}

/// The process in the header executed `filename`. `old_pid` is the thread that called exec.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub old_pid: u32,
    pub filename_len: u32,
    pub filename: [u8; EXEC_PATH_LEN],
}

/// The whole process in the header ended (its last thread exited).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    pub header: EventHeader,
}

/// Set in [`ArgvEvent::truncated`] when the process had more than [`ARGV_MAX_ARGS`] arguments.
pub const ARGV_TRUNCATED_COUNT: u32 = 1;
/// Set in [`ArgvEvent::truncated`] when an argument was longer than [`ARGV_ARG_LEN`] - 1 bytes.
pub const ARGV_TRUNCATED_ARG: u32 = 2;

/// Arguments passed to `execve`/`execveat` by the thread in the header; the exec event that
/// follows (if the call succeeds) has `old_pid` equal to this header's `pid`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArgvEvent {
    pub header: EventHeader,
    pub argc: u32,
    pub truncated: u32,
    /// Bytes of each argument, without its NUL.
    pub lens: [u16; ARGV_MAX_ARGS],
    pub args: [[u8; ARGV_ARG_LEN]; ARGV_MAX_ARGS],
}

/// A socket became tracked: `SocketConnect` (`listen_fd` = -1) or `SocketAccept`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SocketEvent {
    pub header: EventHeader,
    pub conn_id: u64,
    pub fd: i32,
    pub listen_fd: i32,
    /// Return value of connect (0 or -EINPROGRESS); 0 for accept.
    pub result: i32,
    pub role: u8,
    pub _pad: [u8; 3],
    pub peer: SockAddr,
}

/// A tracked socket was closed by its process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CloseEvent {
    pub header: EventHeader,
    pub conn_id: u64,
    pub fd: i32,
    pub role: u8,
    pub _pad: [u8; 3],
}

/// Bytes that moved on a tracked socket. `total_len` is what the syscall really moved for this
/// segment; only the first `captured_len` bytes are in `data`. The kernel writes the smallest of
/// [`DATA_CAPACITIES`] that holds what it captured, so a 1-byte write costs a few hundred bytes of
/// ring, not 4 KiB; `DataEvent<0>` is the part before the bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DataEvent<const N: usize = CAPTURE_MAX> {
    pub header: EventHeader,
    pub conn_id: u64,
    pub fd: i32,
    pub total_len: u32,
    pub captured_len: u32,
    pub role: u8,
    pub direction: u8,
    /// iovec index for vectored calls, 0 otherwise.
    pub segment: u8,
    /// `DATA_FLAG_*` bits.
    pub flags: u8,
    /// Bytes this connection moved in this direction before this record and that no record
    /// carried (its byte budget was spent, or the agent asked for quiet).
    pub skipped_before: u64,
    /// The connection's `quiet_epoch` when this record was written.
    pub quiet_epoch: u32,
    pub _pad: u32,
    pub peer: SockAddr,
    pub data: [u8; N],
}

/// Capacities of data records (bytes of `data`), smallest first.
pub const DATA_CAPACITIES: [usize; 3] = [64, 512, CAPTURE_MAX];

/// Size of a data record with room for `capacity` bytes.
pub const fn data_record_size(capacity: usize) -> usize {
    core::mem::size_of::<DataEvent<0>>() + capacity
}

/// Arguments of an in-flight read-like or write-like call, saved at entry for the exit program.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingIo {
    pub fd: u32,
    pub direction: u8,
    /// 0: plain buffer; 1: iovec array.
    pub vectored: u8,
    /// 1: the direction the connection does not capture, watched only to end a quiet period.
    pub reply: u8,
    pub _pad: u8,
    pub buf: u64,
    /// Number of iovecs when `vectored`.
    pub iov_count: u64,
}

/// Arguments of an in-flight connect or accept, saved at entry for the exit program.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PendingSocket {
    pub fd: i32,
    pub role: u8,
    pub _pad: [u8; 3],
    /// accept: user pointer to the peer sockaddr (0 when the caller passed none).
    pub addr_ptr: u64,
    /// connect: the destination, already read at entry.
    pub peer: SockAddr,
}

// Offsets into tracepoint records that changed between kernels; the agent reads them from
// tracefs `format` files and patches these globals before load.
/// Index of the "a build is open" flag in the BUILD_GATE array.
pub const BUILD_GATE_OPEN: u32 = 0;

pub const GLOBAL_SELF_TGID: &str = "SELF_TGID";
pub const GLOBAL_PROCESS_ALL: &str = "PROCESS_ALL";
pub const GLOBAL_CAPTURE_BYTES: &str = "CAPTURE_BYTES";
pub const GLOBAL_FORK_CHILD_PID_OFFSET: &str = "FORK_CHILD_PID_OFFSET";
pub const GLOBAL_EXEC_FILENAME_OFFSET: &str = "EXEC_FILENAME_OFFSET";
pub const GLOBAL_EXEC_OLD_PID_OFFSET: &str = "EXEC_OLD_PID_OFFSET";
pub const GLOBAL_EXIT_GROUP_DEAD_OFFSET: &str = "EXIT_GROUP_DEAD_OFFSET";

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for FdKey {}
    unsafe impl aya::Pod for TrackedSocket {}
    unsafe impl aya::Pod for UnixPathKey {}
    unsafe impl aya::Pod for SockAddr {}
    unsafe impl aya::Pod for ListenerKey {}
    unsafe impl aya::Pod for ClientFds {}
    unsafe impl aya::Pod for QuietRequest {}
    unsafe impl aya::Pod for ExecPathKey {}
}

const _: () = {
    assert!(core::mem::size_of::<EventHeader>() == 56);
    assert!(core::mem::size_of::<SockAddr>() == 136);
    assert!(core::mem::size_of::<EventHeader>().is_multiple_of(8));
    assert!(core::mem::size_of::<DataEvent>().is_multiple_of(8));
    assert!(core::mem::size_of::<DataEvent<0>>().is_multiple_of(8));
    assert!(core::mem::size_of::<DataEvent<64>>() == data_record_size(64));
    assert!(core::mem::size_of::<DataEvent<512>>() == data_record_size(512));
    assert!(core::mem::size_of::<TrackedSocket>().is_multiple_of(8));
    assert!(core::mem::size_of::<ArgvEvent>().is_multiple_of(8));
    assert!(core::mem::size_of::<ExecEvent>().is_multiple_of(8));
    assert!(core::mem::size_of::<SocketEvent>().is_multiple_of(8));
    assert!(core::mem::size_of::<PendingSocket>().is_multiple_of(8));
};
