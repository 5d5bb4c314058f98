//! The socket tracking table: connect() to a watched endpoint, accept() inside a watched daemon,
//! and a daemon's own outbound connect() add a (tgid, fd) entry; close() removes it.
// Map values are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::{debug, warn};
use sensor_common::{
    CloseEvent, EventKind, FdKey, SocketEvent, SocketRole, TrackedSocket, UnixPathKey, AF_INET, AF_INET6,
    AF_UNIX, BUILD_GATE_OPEN,
};

use crate::{
    event::{fill_header, is_self, reserve},
    maps::{
        BUILD_GATE, DAEMONS, DAEMON_DESCENDANTS, PENDING_SOCKET, SCRATCH_PENDING, SCRATCH_TRACKED, TRACKED,
        WATCHED_TCP_PORTS, WATCHED_UNIX_PATHS,
    },
    sockaddr::read_user_sockaddr,
    syscall,
};

const EINPROGRESS: i64 = 115;

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
            if WATCHED_TCP_PORTS.get_ptr(pending.peer.port).is_some() {
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
    PENDING_SOCKET.insert(pid_tgid, &*pending, 0).map_err(i64::from)
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
    PENDING_SOCKET.insert(pid_tgid, &*pending, 0).map_err(i64::from)
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
            if failed && pending.role == SocketRole::BuildStep as u8 {
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
    let tracked = SCRATCH_TRACKED.get_ptr_mut(0).ok_or(0i64)?;
    // SAFETY: per-CPU scratch value, used by this program run only.
    let tracked = unsafe { &mut *tracked };
    let Some(mut entry) = reserve::<SocketEvent>(kind) else {
        return Ok(());
    };
    // SAFETY: the reserved record is ours until submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, kind);
    let role = SocketRole::from_u8(pending.role).unwrap_or(SocketRole::Client);
    *tracked = TrackedSocket {
        conn_id: event.header.boot_ns,
        role: role as u8,
        capture_mask: role.capture_mask(),
        _pad: [0; 6],
        peer: pending.peer,
    };
    let key = FdKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: fd as u32,
    };
    if let Err(err) = TRACKED.insert(key, &*tracked, 0) {
        warn!(ctx, "cannot track fd {} of tgid {}: {}", key.fd, key.tgid, err);
    }
    debug!(
        ctx,
        "tracking fd {} of tgid {} as role {}", key.fd, key.tgid, role as u8
    );
    event.conn_id = tracked.conn_id;
    event.fd = fd;
    event.listen_fd = listen_fd;
    event.result = ret as i32;
    event.role = role as u8;
    event._pad = [0; 3];
    event.peer = pending.peer;
    entry.submit(0);
    Ok(())
}

fn report_failed_connect(pending: &sensor_common::PendingSocket, ret: i64) -> Result<(), i64> {
    let Some(mut entry) = reserve::<SocketEvent>(EventKind::SocketConnect) else {
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
    let Some(tracked) = TRACKED.get_ptr(key) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program run; copied before the remove.
    let (conn_id, role) = unsafe { ((*tracked).conn_id, (*tracked).role) };
    let _ = TRACKED.remove(key);
    let Some(mut entry) = reserve::<CloseEvent>(EventKind::SocketClose) else {
        return Ok(());
    };
    // SAFETY: the reserved record is ours until submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::SocketClose);
    event.conn_id = conn_id;
    event.fd = key.fd as i32;
    event.role = role;
    event._pad = [0; 3];
    entry.submit(0);
    Ok(())
}
