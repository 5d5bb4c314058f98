//! The socket tracking table: connect() to a watched endpoint (a trusted daemon's listener, a
//! watched unix path, a configured remote port), accept() inside a trusted daemon, and a daemon's
//! own outbound connect() add a (tgid, fd) entry. close(), dup2/dup3 over the fd, close_range(),
//! and the process's exec or exit remove it: client entries are listed per process for that, and
//! capped so they never crowd out the daemons' side. Nothing is ever evicted.
// Map values are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_ktime_get_boot_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use sensor_common::{
    ClientFds, CloseEvent, EventKind, FdKey, ListenerKey, SocketEvent, SocketRole, TrackedSocket,
    UnixPathKey, AF_INET, AF_INET6, AF_UNIX, BUILD_GATE_OPEN, CLIENT_BUDGET_BURST, CLIENT_FDS_PER_PROCESS,
    DAEMON_BUDGET_BURST, SIDE_CLIENT, TABLE_CLIENT_FDS, TABLE_PENDING, TABLE_TRACKED_CLIENT,
    TABLE_TRACKED_DAEMON, TRACKED_CLIENT_LIMIT,
};

use crate::{
    event::{fill_header, is_self, reserve_on},
    maps::{
        table_full, BUILD_GATE, CLIENT_FDS, DAEMONS, DAEMON_DESCENDANTS, DAEMON_LISTENERS, PENDING_SOCKET,
        SCRATCH_LISTENER, SCRATCH_PENDING, SCRATCH_TRACKED, TRACKED, TRACKED_COUNTS, WATCHED_TCP_PORTS,
        WATCHED_UNIX_PATHS,
    },
    sockaddr::read_user_sockaddr,
    syscall,
};

const EINPROGRESS: i64 = 115;
/// close_range(2): only mark the fds close-on-exec (they close at exec, handled there).
const CLOSE_RANGE_CLOEXEC: u64 = 4;

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = try_enter_connect(&ctx);
    0
}

fn try_enter_connect(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_self(tgid) {
        return Ok(());
    }
    // connect(fd, uservaddr, addrlen)
    let fd = syscall::arg(ctx, 0)? as i32;
    let addr = syscall::arg(ctx, 1)? as *const u8;
    let pending = SCRATCH_PENDING.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: per-CPU scratch value, used by this program run only.
    let pending = unsafe { &mut *pending };
    read_user_sockaddr(addr, &mut pending.peer)?;
    let role = match pending.peer.family {
        AF_UNIX => {
            // SAFETY: UnixPathKey is a byte array of the same length as `path`.
            let key = unsafe { &*pending.peer.path.as_ptr().cast::<UnixPathKey>() };
            if WATCHED_UNIX_PATHS.get_ptr(key).is_none() {
                return Ok(());
            }
            SocketRole::Client
        }
        AF_INET | AF_INET6 => {
            if is_daemon_listener(pending)? || WATCHED_TCP_PORTS.get_ptr(pending.peer.port).is_some() {
                SocketRole::Client
            } else if DAEMONS.get_ptr(tgid).is_some() {
                SocketRole::DaemonOutbound
            } else if build_open() && DAEMON_DESCENDANTS.get_ptr(tgid).is_some() {
                SocketRole::BuildStep
            } else {
                return Ok(());
            }
        }
        _ => return Ok(()),
    };
    pending.fd = fd;
    pending.role = role as u8;
    pending._pad = [0; 3];
    pending.addr_ptr = 0;
    if PENDING_SOCKET.insert(pid_tgid, &*pending, 0).is_err() {
        table_full(TABLE_PENDING);
    }
    Ok(())
}

/// Whether the destination is an address a trusted daemon listens on.
#[inline(always)]
fn is_daemon_listener(pending: &sensor_common::PendingSocket) -> Result<bool, i64> {
    let key = SCRATCH_LISTENER.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: per-CPU scratch value, used by this program run only.
    let key = unsafe { &mut *key };
    key.addr = pending.peer.addr;
    key.family = pending.peer.family;
    key.port = pending.peer.port;
    key._pad = 0;
    Ok(DAEMON_LISTENERS.get_ptr(&*key as &ListenerKey).is_some())
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = try_exit_socket(&ctx, EventKind::SocketConnect);
    0
}

/// Attached to accept and accept4, whose first three arguments are the same.
#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = try_enter_accept(&ctx);
    0
}

fn try_enter_accept(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if DAEMONS.get_ptr((pid_tgid >> 32) as u32).is_none() {
        return Ok(());
    }
    // accept(fd, upeer_sockaddr, upeer_addrlen)
    let pending = SCRATCH_PENDING.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: per-CPU scratch value, used by this program run only.
    let pending = unsafe { &mut *pending };
    pending.fd = syscall::arg(ctx, 0)? as i32;
    pending.role = SocketRole::DaemonAccepted as u8;
    pending._pad = [0; 3];
    pending.addr_ptr = syscall::arg(ctx, 1)?;
    if PENDING_SOCKET.insert(pid_tgid, &*pending, 0).is_err() {
        table_full(TABLE_PENDING);
    }
    Ok(())
}

/// Attached to the exits of accept and accept4.
#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_exit_socket(&ctx, EventKind::SocketAccept);
    0
}

/// Shared exit of connect and accept: on success, track the socket and report it.
fn try_exit_socket(ctx: &TracePointContext, kind: EventKind) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(saved) = PENDING_SOCKET.get_ptr(pid_tgid) else {
        return Ok(());
    };
    let pending = SCRATCH_PENDING.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: map value pointers valid for this program run; the scratch value is per-CPU.
    let pending = unsafe {
        *pending = *saved;
        &mut *pending
    };
    let _ = PENDING_SOCKET.remove(pid_tgid);
    let ret = syscall::ret(ctx)?;
    let tgid = (pid_tgid >> 32) as u32;
    let role = SocketRole::from_u8(pending.role).unwrap_or(SocketRole::Client);
    let side = role.side();
    let (fd, listen_fd) = match kind {
        EventKind::SocketAccept => {
            if ret < 0 {
                return Ok(());
            }
            if pending.addr_ptr != 0 {
                read_user_sockaddr(pending.addr_ptr as *const u8, &mut pending.peer)?;
            } else {
                pending.peer = sensor_common::SockAddr::EMPTY;
            }
            (ret as i32, pending.fd)
        }
        _ => {
            let failed = ret != 0 && ret != -EINPROGRESS;
            if failed && role == SocketRole::BuildStep {
                // A build step's refused or unreachable connect is still egress: reported,
                // never tracked.
                return report_failed_connect(pending, ret);
            }
            if failed {
                return Ok(());
            }
            (pending.fd, -1)
        }
    };
    let key = FdKey { tgid, fd: fd as u32 };
    if !track(key, role, pending) {
        return Ok(());
    }
    let Some(mut entry) = reserve_on::<SocketEvent>(side, kind, false) else {
        return Ok(());
    };
    // SAFETY: the reserved record is ours until submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, kind);
    debug!(
        ctx,
        "tracking fd {} of tgid {} as role {}", key.fd, key.tgid, role as u8
    );
    event.conn_id = TRACKED.get_ptr(&key).map_or(0, |t| unsafe { (*t).conn_id });
    event.fd = fd;
    event.listen_fd = listen_fd;
    event.result = ret as i32;
    event.role = role as u8;
    event._pad = [0; 3];
    event.peer = pending.peer;
    entry.submit(0);
    Ok(())
}

/// Adds the tracking entry, within the client cap and the process's client list; false (and
/// counted) when a table is full.
#[inline(always)]
fn track(key: FdKey, role: SocketRole, pending: &sensor_common::PendingSocket) -> bool {
    let side = role.side();
    if side == SIDE_CLIENT {
        if count(SIDE_CLIENT) >= u64::from(TRACKED_CLIENT_LIMIT) {
            table_full(TABLE_TRACKED_CLIENT);
            return false;
        }
        if !list_client_fd(key) {
            table_full(TABLE_CLIENT_FDS);
            return false;
        }
    }
    let Some(tracked) = SCRATCH_TRACKED.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch value, used by this program run only.
    let tracked = unsafe { &mut *tracked };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    *tracked = TrackedSocket {
        conn_id: now,
        role: role as u8,
        capture_mask: role.capture_mask(),
        _pad: [0; 2],
        budget: if side == SIDE_CLIENT {
            CLIENT_BUDGET_BURST
        } else {
            DAEMON_BUDGET_BURST
        },
        budget_ns: now,
        skipped: 0,
        quiet_epoch: 0,
        next_flags: 0,
        peer: pending.peer,
    };
    let replaced = TRACKED.get_ptr(&key).is_some();
    if TRACKED.insert(&key, &*tracked, 0).is_err() {
        table_full(if side == SIDE_CLIENT {
            TABLE_TRACKED_CLIENT
        } else {
            TABLE_TRACKED_DAEMON
        });
        return false;
    }
    if !replaced {
        add_count(side, 1);
    }
    true
}

/// Records `key.fd` among the process's client fds; false when the list is full.
#[inline(always)]
fn list_client_fd(key: FdKey) -> bool {
    let fds = match CLIENT_FDS.get_ptr_mut(&key.tgid) {
        Some(fds) => fds,
        None => {
            let empty = ClientFds {
                fds: [-1; CLIENT_FDS_PER_PROCESS],
            };
            if CLIENT_FDS.insert(&key.tgid, &empty, 0).is_err() {
                return false;
            }
            match CLIENT_FDS.get_ptr_mut(&key.tgid) {
                Some(fds) => fds,
                None => return false,
            }
        }
    };
    // SAFETY: map value pointer valid for this program run.
    let fds = unsafe { &mut *fds };
    let mut free = CLIENT_FDS_PER_PROCESS;
    for slot in 0..CLIENT_FDS_PER_PROCESS {
        if fds.fds[slot] == key.fd as i32 {
            return true;
        }
        if fds.fds[slot] < 0 && free == CLIENT_FDS_PER_PROCESS {
            free = slot;
        }
    }
    if free >= CLIENT_FDS_PER_PROCESS {
        return false;
    }
    fds.fds[free] = key.fd as i32;
    true
}

#[inline(always)]
fn count(side: u32) -> u64 {
    TRACKED_COUNTS.get(side).copied().unwrap_or(0)
}

/// Counts entries in use per side. Not atomic (the BPF target has no read-modify-write
/// atomics in Rust's core): concurrent updates on two CPUs may lose one, which only moves the
/// client cap by that much; the agent corrects the counts from the table (`recount`).
#[inline(always)]
fn add_count(side: u32, delta: i64) {
    if let Some(counter) = TRACKED_COUNTS.get_ptr_mut(side) {
        // SAFETY: an aligned u64 in an array map.
        unsafe { *counter = (*counter).wrapping_add(delta as u64) };
    }
}

fn report_failed_connect(pending: &sensor_common::PendingSocket, ret: i64) -> Result<(), i64> {
    let Some(mut entry) = reserve_on::<SocketEvent>(SIDE_CLIENT, EventKind::SocketConnect, false) else {
        return Ok(());
    };
    // SAFETY: the reserved record is ours until submit; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::SocketConnect);
    event.conn_id = event.header.boot_ns;
    event.fd = pending.fd;
    event.listen_fd = -1;
    event.result = ret as i32;
    event.role = pending.role;
    event._pad = [0; 3];
    event.peer = pending.peer;
    entry.submit(0);
    Ok(())
}

#[inline(always)]
fn build_open() -> bool {
    BUILD_GATE.get(BUILD_GATE_OPEN).is_some_and(|open| *open != 0)
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let _ = try_enter_close(&ctx);
    0
}

fn try_enter_close(ctx: &TracePointContext) -> Result<(), i64> {
    let key = FdKey {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        fd: syscall::arg(ctx, 0)? as u32,
    };
    untrack(key, true);
    Ok(())
}

/// dup2/dup3(oldfd, newfd): a tracked `newfd` is closed by the call.
#[tracepoint]
pub fn sys_enter_dup(ctx: TracePointContext) -> u32 {
    if let Ok(newfd) = syscall::arg(&ctx, 1) {
        let key = FdKey {
            tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
            fd: newfd as u32,
        };
        untrack(key, true);
    }
    0
}

/// close_range(first, last, flags): the process's client fds in the range are closed.
#[tracepoint]
pub fn sys_enter_close_range(ctx: TracePointContext) -> u32 {
    let _ = try_close_range(&ctx);
    0
}

fn try_close_range(ctx: &TracePointContext) -> Result<(), i64> {
    let first = syscall::arg(ctx, 0)? as u32;
    let last = syscall::arg(ctx, 1)? as u32;
    if syscall::arg(ctx, 2)? & CLOSE_RANGE_CLOEXEC != 0 {
        return Ok(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(fds) = CLIENT_FDS.get_ptr(&tgid) else {
        return Ok(());
    };
    // SAFETY: copied out of the map value before entries are removed.
    let fds = unsafe { *fds };
    for slot in 0..CLIENT_FDS_PER_PROCESS {
        let fd = fds.fds[slot];
        if fd >= 0 && fd as u32 >= first && fd as u32 <= last {
            untrack(FdKey { tgid, fd: fd as u32 }, true);
        }
    }
    Ok(())
}

/// Drops every client entry of `tgid` (its exit or exec). One lookup for a process without any.
#[inline(always)]
pub fn forget_client_fds(tgid: u32) {
    let Some(fds) = CLIENT_FDS.get_ptr(&tgid) else {
        return;
    };
    // SAFETY: copied out of the map value before it is removed.
    let fds = unsafe { *fds };
    let _ = CLIENT_FDS.remove(&tgid);
    for slot in 0..CLIENT_FDS_PER_PROCESS {
        let fd = fds.fds[slot];
        if fd >= 0 {
            untrack(FdKey { tgid, fd: fd as u32 }, false);
        }
    }
}

/// Removes a tracking entry (if there is one), keeps the counts and the process's client list,
/// and reports the close when `report`.
#[inline(always)]
fn untrack(key: FdKey, report: bool) {
    let Some(tracked) = TRACKED.get_ptr(&key) else {
        return;
    };
    // SAFETY: map value pointer valid for this program run; copied before the remove.
    let (conn_id, role) = unsafe { ((*tracked).conn_id, (*tracked).role) };
    if TRACKED.remove(&key).is_err() {
        return;
    }
    let side = SocketRole::from_u8(role).map_or(SIDE_CLIENT, SocketRole::side);
    add_count(side, -1);
    if side == SIDE_CLIENT {
        if let Some(fds) = CLIENT_FDS.get_ptr_mut(&key.tgid) {
            // SAFETY: map value pointer valid for this program run.
            let fds = unsafe { &mut *fds };
            for slot in 0..CLIENT_FDS_PER_PROCESS {
                if fds.fds[slot] == key.fd as i32 {
                    fds.fds[slot] = -1;
                }
            }
        }
    }
    if !report {
        return;
    }
    let Some(mut entry) = reserve_on::<CloseEvent>(side, EventKind::SocketClose, false) else {
        return;
    };
    // SAFETY: the reserved record is ours until submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::SocketClose);
    event.conn_id = conn_id;
    event.fd = key.fd as i32;
    event.role = role;
    event._pad = [0; 3];
    entry.submit(0);
}
