//! Byte capture on tracked sockets. Entry programs run on every read/write of the host, so they
//! do exactly one map lookup on an untracked fd and return. For tracked fds the arguments are
//! saved and the bytes are copied at exit, when the syscall's return value says how many really
//! moved (non-blocking sockets write short, and the retry must not duplicate bytes).
use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_buf},
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::{
    Bucket, DataEvent, Direction, EventKind, FdKey, PendingIo, SocketRole, TrackedSocket, AF_INET, AF_INET6,
    CAPTURE_MAX, CLIENT_BUDGET_BURST, CLIENT_BUDGET_PER_SECOND, DAEMON_BUDGET_BURST,
    DAEMON_BUDGET_PER_SECOND, DATA_CAPACITIES, DATA_FLAG_CLEAN_END, IOV_MAX_SEGMENTS, PEER_BUDGET_BURST,
    PEER_BUDGET_PER_SECOND, QUIET_CHUNKED, QUIET_UNTIL_CLOSE, SIDE_CLIENT, TABLE_PENDING,
};

use crate::{
    event::{fill_header, reserve_on},
    maps,
    maps::{
        table_full, BUDGET_SKIPPED, CAPTURE_BYTES, PEER_BUDGETS, PENDING_IO, QUIET, QUIET_SKIPPED, TRACKED,
    },
    syscall,
};

/// How the syscall passes its buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Buffer {
    /// (fd, buf, count): read, write, recvfrom, sendto.
    Plain,
    /// (fd, iov, iovcnt): readv, writev.
    Iovec,
    /// (fd, msghdr, flags): recvmsg, sendmsg.
    Msghdr,
}

#[tracepoint]
pub fn sys_enter_send(ctx: TracePointContext) -> u32 {
    let _ = try_enter_io(&ctx, Direction::Send, Buffer::Plain);
    0
}

#[tracepoint]
pub fn sys_enter_recv(ctx: TracePointContext) -> u32 {
    let _ = try_enter_io(&ctx, Direction::Recv, Buffer::Plain);
    0
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    let _ = try_enter_io(&ctx, Direction::Send, Buffer::Iovec);
    0
}

#[tracepoint]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    let _ = try_enter_io(&ctx, Direction::Recv, Buffer::Iovec);
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let _ = try_enter_io(&ctx, Direction::Send, Buffer::Msghdr);
    0
}

#[tracepoint]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    let _ = try_enter_io(&ctx, Direction::Recv, Buffer::Msghdr);
    0
}

#[inline(always)]
fn try_enter_io(ctx: &TracePointContext, direction: Direction, buffer: Buffer) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let fd = syscall::arg(ctx, 0)? as u32;
    let key = FdKey {
        tgid: (pid_tgid >> 32) as u32,
        fd,
    };
    let Some(tracked) = TRACKED.get_ptr(key) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program run.
    let tracked = unsafe { &*tracked };
    let reply = tracked.capture_mask & direction as u8 == 0;
    if reply {
        // The other direction matters only while the agent asked for quiet until a reply.
        let Some(quiet) = QUIET.get_ptr(tracked.conn_id) else {
            return Ok(());
        };
        // SAFETY: map value pointer valid for this program run.
        if unsafe { (*quiet).mode } == QUIET_UNTIL_CLOSE {
            return Ok(());
        }
    }
    let ptr = syscall::arg(ctx, 1)?;
    let (buf, iov_count, vectored) = match buffer {
        Buffer::Plain => (ptr, 0, 0),
        Buffer::Iovec => (ptr, syscall::arg(ctx, 2)?, 1),
        Buffer::Msghdr => {
            // user_msghdr: msg_iov at offset 16, msg_iovlen at offset 24 (64-bit).
            let msg = ptr as *const u8;
            // SAFETY: user memory read through the helper.
            let iov: u64 = unsafe { bpf_probe_read_user(msg.add(16).cast()) }.map_err(i64::from)?;
            let count: u64 = unsafe { bpf_probe_read_user(msg.add(24).cast()) }.map_err(i64::from)?;
            (iov, count, 1)
        }
    };
    let pending = PendingIo {
        fd,
        direction: direction as u8,
        vectored,
        reply: reply as u8,
        _pad: 0,
        buf,
        iov_count,
    };
    if PENDING_IO.insert(pid_tgid, pending, 0).is_err() {
        table_full(TABLE_PENDING);
    }
    Ok(())
}

/// Attached to the exit of every read-like and write-like syscall.
#[tracepoint]
pub fn sys_exit_io(ctx: TracePointContext) -> u32 {
    let _ = try_exit_io(&ctx);
    0
}

fn try_exit_io(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(saved) = PENDING_IO.get_ptr(pid_tgid) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program run; copied before the remove.
    let pending = unsafe { *saved };
    let _ = PENDING_IO.remove(pid_tgid);
    let moved = syscall::ret(ctx)?;
    if moved <= 0 {
        return Ok(());
    }
    let key = FdKey {
        tgid: (pid_tgid >> 32) as u32,
        fd: pending.fd,
    };
    let Some(tracked) = TRACKED.get_ptr_mut(key) else {
        return Ok(());
    };
    // SAFETY: map value pointer valid for this program run.
    let tracked = unsafe { &mut *tracked };
    if pending.reply != 0 {
        end_quiet(tracked, 0);
        return Ok(());
    }
    if let Some(quiet) = QUIET.get_ptr(tracked.conn_id) {
        // SAFETY: map value pointer valid for this program run; copied.
        let quiet = unsafe { *quiet };
        if quiet.epoch == tracked.quiet_epoch {
            skip_quietly(tracked, &pending, quiet.mode, moved as u64);
            return Ok(());
        }
        // Made before a reply the agent had not seen: it must not silence what follows.
        let _ = QUIET.remove(tracked.conn_id);
    }
    if pending.vectored == 0 {
        emit_data(tracked, &pending, pending.buf as *const u8, moved as u64, 0, true);
        return Ok(());
    }
    let iov = pending.buf as *const u64;
    let mut remaining = moved as u64;
    for segment in 0..IOV_MAX_SEGMENTS {
        if segment as u64 >= pending.iov_count || remaining == 0 {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; }
        // SAFETY: user memory read through the helper.
        let base: u64 = unsafe { bpf_probe_read_user(iov.add(segment * 2)) }.map_err(i64::from)?;
        let len: u64 = unsafe { bpf_probe_read_user(iov.add(segment * 2 + 1)) }.map_err(i64::from)?;
        let moved_here = if len < remaining { len } else { remaining };
        if moved_here > 0 {
            emit_data(
                tracked,
                &pending,
                base as *const u8,
                moved_here,
                segment as u8,
                true,
            );
        }
        remaining -= moved_here;
    }
    if remaining > 0 {
        // Bytes in segments past the captured ones: reported as moved and not captured, so the
        // stream shows a hole instead of silently skipping them.
        emit_data(
            tracked,
            &pending,
            core::ptr::null(),
            remaining,
            IOV_MAX_SEGMENTS as u8,
            false,
        );
    }
    Ok(())
}

/// Bytes moved while the agent asked for quiet: counted, not copied. A plain read or write that
/// ends with the last chunk of a chunked body ends the quiet period after it.
#[inline(always)]
fn skip_quietly(tracked: &mut TrackedSocket, pending: &PendingIo, mode: u32, moved: u64) {
    tracked.skipped += moved;
    if let Some(skipped) = QUIET_SKIPPED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *skipped += moved };
    }
    if mode != QUIET_CHUNKED || pending.vectored != 0 || moved < CHUNKED_END.len() as u64 {
        return;
    }
    let tail = (pending.buf + moved - CHUNKED_END.len() as u64) as *const [u8; 7];
    // SAFETY: user memory read through the helper.
    if let Ok(tail) = unsafe { bpf_probe_read_user(tail) } {
        if tail == CHUNKED_END {
            end_quiet(tracked, u32::from(DATA_FLAG_CLEAN_END));
        }
    }
}

/// Ends the connection's quiet period (a reply moved, or the body ended).
#[inline(always)]
fn end_quiet(tracked: &mut TrackedSocket, flags: u32) {
    tracked.quiet_epoch = tracked.quiet_epoch.wrapping_add(1);
    tracked.next_flags = flags;
    let _ = QUIET.remove(tracked.conn_id);
}

/// The end of a chunked body: the last data chunk's CRLF, the zero-size chunk, no trailers.
const CHUNKED_END: [u8; 7] = *b"\r\n0\r\n\r\n";

/// Writes one data record, in the smallest size class that holds what is captured, unless the
/// connection spent its byte budget or the ring has no room: then the bytes are added to the
/// connection's skipped count, which the next record carries, so the agent knows exactly how
/// much it did not see.
#[inline(always)]
fn emit_data(
    tracked: &mut TrackedSocket,
    pending: &PendingIo,
    src: *const u8,
    len: u64,
    segment: u8,
    capture: bool,
) {
    let limit = core::cmp::min(maps::load(&CAPTURE_BYTES) as usize, CAPTURE_MAX);
    let captured = if capture {
        core::cmp::min(len as usize, limit)
    } else {
        0
    };
    if captured <= DATA_CAPACITIES[0] {
        emit_sized::<{ DATA_CAPACITIES[0] }>(tracked, pending, src, len, segment, captured);
    } else if captured <= DATA_CAPACITIES[1] {
        emit_sized::<{ DATA_CAPACITIES[1] }>(tracked, pending, src, len, segment, captured);
    } else {
        emit_sized::<{ DATA_CAPACITIES[2] }>(tracked, pending, src, len, segment, captured);
    }
}

#[inline(always)]
fn emit_sized<const N: usize>(
    tracked: &mut TrackedSocket,
    pending: &PendingIo,
    src: *const u8,
    len: u64,
    segment: u8,
    captured: usize,
) {
    let role = SocketRole::from_u8(tracked.role).unwrap_or(SocketRole::Client);
    let side = role.side();
    if !spend_budget(tracked, side, core::mem::size_of::<DataEvent<N>>() as u64) {
        tracked.skipped += len;
        if let Some(skipped) = BUDGET_SKIPPED.get_ptr_mut(side) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *skipped += len };
        }
        return;
    }
    let Some(mut entry) = reserve_on::<DataEvent<N>>(side, EventKind::SocketData, true) else {
        tracked.skipped += len;
        return;
    };
    // SAFETY: the reserved record is ours until submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::SocketData);
    event.conn_id = tracked.conn_id;
    event.fd = pending.fd as i32;
    event.total_len = len as u32;
    event.role = tracked.role;
    event.direction = pending.direction;
    event.segment = segment;
    event.flags = tracked.next_flags as u8;
    tracked.next_flags = 0;
    event.skipped_before = tracked.skipped;
    tracked.skipped = 0;
    event.quiet_epoch = tracked.quiet_epoch;
    event._pad = 0;
    event.peer = tracked.peer;
    let captured = core::cmp::min(captured, N);
    // SAFETY: user memory read through the helper; `captured` <= N.
    let ok = captured > 0 && unsafe { bpf_probe_read_user_buf(src, &mut event.data[..captured]) }.is_ok();
    event.captured_len = if ok { captured as u32 } else { 0 };
    entry.submit(0);
}

/// Takes one record's worth of ring from the connection's token bucket (refilled at its side's
/// rate since the last record), and for a daemon-side TCP connection from its peer's bucket too,
/// so many connections from one host share a budget; false when either is spent.
#[inline(always)]
fn spend_budget(tracked: &mut TrackedSocket, side: u32, cost: u64) -> bool {
    let (rate, burst) = if side == SIDE_CLIENT {
        (CLIENT_BUDGET_PER_SECOND, CLIENT_BUDGET_BURST)
    } else {
        (DAEMON_BUDGET_PER_SECOND, DAEMON_BUDGET_BURST)
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if !take(
        &mut tracked.budget,
        &mut tracked.budget_ns,
        now,
        rate,
        burst,
        cost,
    ) {
        return false;
    }
    let tcp_peer = tracked.peer.family == AF_INET || tracked.peer.family == AF_INET6;
    if side == SIDE_CLIENT || !tcp_peer {
        return true;
    }
    let peer = tracked.peer.addr;
    let bucket = match PEER_BUDGETS.get_ptr_mut(peer) {
        Some(bucket) => bucket,
        None => {
            let fresh = Bucket {
                tokens: PEER_BUDGET_BURST,
                _pad: 0,
                stamp_ns: now,
            };
            let _ = PEER_BUDGETS.insert(peer, fresh, 0);
            match PEER_BUDGETS.get_ptr_mut(peer) {
                Some(bucket) => bucket,
                None => return true,
            }
        }
    };
    // SAFETY: map value pointer valid for this program run.
    let bucket = unsafe { &mut *bucket };
    take(
        &mut bucket.tokens,
        &mut bucket.stamp_ns,
        now,
        PEER_BUDGET_PER_SECOND,
        PEER_BUDGET_BURST,
        cost,
    )
}

/// Refills a token bucket for the time since `stamp`, then takes `cost`; false when short.
#[inline(always)]
fn take(tokens: &mut u32, stamp: &mut u64, now: u64, rate: u32, burst: u32, cost: u64) -> bool {
    let elapsed = core::cmp::min(now.saturating_sub(*stamp), 10_000_000_000);
    let refill = elapsed * u64::from(rate) / 1_000_000_000;
    let available = core::cmp::min(u64::from(*tokens) + refill, u64::from(burst));
    *stamp = now;
    if available < cost {
        *tokens = available as u32;
        return false;
    }
    *tokens = (available - cost) as u32;
    true
}
