//! Process lifecycle: fork (new processes only, not threads), exec with its argv, exit of the
//! whole process; of the processes correlation can use (daemons and their descendants,
//! builders, API clients, anything taking a daemon's name), or of every process with
//! `process.all`. The agent reads any other process from /proc when it connects to an API.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel_str_bytes, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use sensor_common::{
    ArgvEvent, EventKind, ExecEvent, ExitEvent, ForkEvent, ARGV_ARG_LEN, ARGV_MAX_ARGS, ARGV_TRUNCATED_ARG,
    ARGV_TRUNCATED_COUNT, EXEC_PATH_KEY_LEN,
};

use crate::{
    event::{current_tgid, fill_header, is_self, reserve},
    maps,
    maps::{
        CLIENT_FDS, CLONE_FLAGS, DAEMONS, DAEMON_COMMS, DAEMON_DESCENDANTS, EXEC_FILENAME_OFFSET,
        EXEC_OLD_PID_OFFSET, EXEC_PATHS, EXIT_GROUP_DEAD_OFFSET, FORK_CHILD_PID_OFFSET, PROCESS_ALL,
        REPORTED, SCRATCH_EXEC_PATH,
    },
    syscall,
};

const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint]
pub fn sys_enter_clone(ctx: TracePointContext) -> u32 {
    // clone(flags, ...): flags is the first argument on every architecture we build for.
    let _ = syscall::arg(&ctx, 0).map(remember_clone_flags);
    0
}

#[tracepoint]
pub fn sys_enter_clone3(ctx: TracePointContext) -> u32 {
    let _ = try_enter_clone3(&ctx);
    0
}

fn try_enter_clone3(ctx: &TracePointContext) -> Result<(), i64> {
    let args = syscall::arg(ctx, 0)? as *const u64;
    // SAFETY: reading user memory through the helper; `flags` is the first field of clone_args.
    let flags = unsafe { bpf_probe_read_user(args) }.map_err(i64::from)?;
    remember_clone_flags(flags);
    Ok(())
}

/// Saved for every clone so a stale value from a failed call never outlives the next one.
#[inline(always)]
fn remember_clone_flags(flags: u64) {
    let _ = CLONE_FLAGS.insert(bpf_get_current_pid_tgid(), flags, 0);
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if let Some(flags) = CLONE_FLAGS.get_ptr(pid_tgid) {
        // SAFETY: map value pointer valid for this program run.
        let flags = unsafe { *flags };
        let _ = CLONE_FLAGS.remove(pid_tgid);
        if flags & CLONE_THREAD != 0 {
            // A new thread of an existing process: not a process event.
            return Ok(());
        }
    }
    if is_self(current_tgid()) {
        return Ok(());
    }
    // SAFETY: offset of the `child_pid` field read from this kernel's tracepoint format.
    let child_pid: i32 =
        unsafe { ctx.read_at(maps::load(&FORK_CHILD_PID_OFFSET) as usize) }.map_err(i64::from)?;
    let parent = current_tgid();
    if DAEMONS.get_ptr(parent).is_some() || DAEMON_DESCENDANTS.get_ptr(parent).is_some() {
        if DAEMON_DESCENDANTS.insert(child_pid as u32, 1, 0).is_err() {
            crate::maps::table_full(sensor_common::TABLE_DESCENDANTS);
        }
    } else if is_reported(parent) {
        let _ = REPORTED.insert(child_pid as u32, 1, 0);
    } else if !everything() {
        return Ok(());
    }
    let Some(mut entry) = reserve::<ForkEvent>(EventKind::ProcessFork) else {
        return Ok(());
    };
    // SAFETY: the reserved record is ours until submit; every field is written below.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::ProcessFork);
    event.child_pid = child_pid as u32;
    event._pad = 0;
    entry.submit(0);
    Ok(())
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i64> {
    if is_self(current_tgid()) {
        return Ok(());
    }
    let tgid = current_tgid();
    let reported = everything() || is_reported(tgid) || takes_daemon_name(tgid);
    // Its close-on-exec sockets closed without a close(): forget its client connections.
    crate::socket::forget_client_fds(current_tgid());
    if !reported {
        return Ok(());
    }
    // SAFETY: offsets read from this kernel's tracepoint format; `filename` is a __data_loc
    // (offset in the low 16 bits, length in the high 16 bits, relative to the record).
    let filename_loc: u32 =
        unsafe { ctx.read_at(maps::load(&EXEC_FILENAME_OFFSET) as usize) }.map_err(i64::from)?;
    let old_pid: i32 =
        unsafe { ctx.read_at(maps::load(&EXEC_OLD_PID_OFFSET) as usize) }.map_err(i64::from)?;
    let Some(mut entry) = reserve::<ExecEvent>(EventKind::ProcessExec) else {
        return Ok(());
    };
    // SAFETY: the reserved record is ours until submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::ProcessExec);
    event.old_pid = old_pid as u32;
    let filename = unsafe { ctx.as_ptr().cast::<u8>().add((filename_loc & 0xffff) as usize) };
    // SAFETY: kernel memory of the tracepoint record, read through the helper.
    event.filename_len = match unsafe { bpf_probe_read_kernel_str_bytes(filename, &mut event.filename) } {
        Ok(name) => name.len() as u32,
        Err(_) => 0,
    };
    entry.submit(0);
    Ok(())
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_self(tgid) {
        return Ok(());
    }
    let group_dead_offset = maps::load(&EXIT_GROUP_DEAD_OFFSET);
    let process_ended = if group_dead_offset == 0 {
        pid_tgid as u32 == tgid
    } else {
        // SAFETY: offset of the `group_dead` field read from this kernel's tracepoint format.
        unsafe { ctx.read_at::<u8>(group_dead_offset as usize) }.map_err(i64::from)? != 0
    };
    if !process_ended {
        return Ok(());
    }
    let reported = everything() || is_reported(tgid);
    let _ = DAEMON_DESCENDANTS.remove(tgid);
    // A daemon that exits leaves the table at once; a restarted one is added again.
    let _ = DAEMONS.remove(tgid);
    let _ = REPORTED.remove(tgid);
    crate::socket::forget_client_fds(tgid);
    if !reported {
        return Ok(());
    }
    let Some(mut entry) = reserve::<ExitEvent>(EventKind::ProcessExit) else {
        return Ok(());
    };
    // SAFETY: the reserved record is ours until submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::ProcessExit);
    entry.submit(0);
    Ok(())
}

#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    // execve(filename, argv, envp)
    if let (Ok(filename), Ok(argv)) = (syscall::arg(&ctx, 0), syscall::arg(&ctx, 1)) {
        emit_argv(filename as *const u8, argv as *const u64);
    }
    0
}

#[tracepoint]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    // execveat(dfd, filename, argv, envp, flags)
    if let (Ok(filename), Ok(argv)) = (syscall::arg(&ctx, 1), syscall::arg(&ctx, 2)) {
        emit_argv(filename as *const u8, argv as *const u64);
    }
    0
}

/// `process.all` is on.
#[inline(always)]
fn everything() -> bool {
    maps::load(&PROCESS_ALL) != 0
}

/// Whether the process's lifecycle is reported: a daemon, a daemon's descendant, a builder
/// (or its child), or a process with API connections (its identity is read at connect and
/// must be kept current).
#[inline(always)]
fn is_reported(tgid: u32) -> bool {
    DAEMONS.get_ptr(tgid).is_some()
        || DAEMON_DESCENDANTS.get_ptr(tgid).is_some()
        || REPORTED.get_ptr(tgid).is_some()
        || CLIENT_FDS.get_ptr(tgid).is_some()
}

/// Whether the process's new name is a daemon's; it is reported from here on if so.
#[inline(always)]
fn takes_daemon_name(tgid: u32) -> bool {
    let Ok(comm) = bpf_get_current_comm() else {
        return false;
    };
    if DAEMON_COMMS.get_ptr(comm).is_none() {
        return false;
    }
    let _ = REPORTED.insert(tgid, 1, 0);
    true
}

/// Whether an execve of `filename` by the current process is reported; an exec of a builder
/// path makes the process reported from here on.
#[inline(always)]
fn exec_is_reported(filename: *const u8) -> bool {
    let tgid = current_tgid();
    if everything() || is_reported(tgid) {
        return true;
    }
    let Some(key) = SCRATCH_EXEC_PATH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU scratch value, used by this program run only.
    let key = unsafe { &mut *key };
    key.path = [0; EXEC_PATH_KEY_LEN];
    // SAFETY: user memory read through the helper.
    if unsafe { bpf_probe_read_user_str_bytes(filename, &mut key.path) }.is_err() {
        return false;
    }
    // By reference: a copy would put the 128-byte key on the 512-byte stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let builder = EXEC_PATHS.get_ptr(&*key).is_some();
    if !builder {
        return false;
    }
    let _ = REPORTED.insert(tgid, 1, 0);
    true
}

fn emit_argv(filename: *const u8, argv: *const u64) {
    if argv.is_null() || is_self(current_tgid()) || !exec_is_reported(filename) {
        return;
    }
    let Some(mut entry) = reserve::<ArgvEvent>(EventKind::ProcessArgv) else {
        return;
    };
    // SAFETY: the reserved record is ours until submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    fill_header(&mut event.header, EventKind::ProcessArgv);
    event.truncated = 0;
    let mut argc = 0u32;
    for index in 0..ARGV_MAX_ARGS {
        event.lens[index] = 0;
        // SAFETY: user memory read through the helper.
        let arg = match unsafe { bpf_probe_read_user(argv.wrapping_add(index)) } {
            Ok(arg) if arg != 0 => arg as *const u8,
            _ => break,
        };
        let len = match unsafe { bpf_probe_read_user_str_bytes(arg, &mut event.args[index]) } {
            Ok(bytes) => bytes.len(),
            Err(_) => 0,
        };
        if len >= ARGV_ARG_LEN - 1 {
            event.truncated |= ARGV_TRUNCATED_ARG;
        }
        event.lens[index] = len as u16;
        argc += 1;
    }
    if argc as usize == ARGV_MAX_ARGS {
        // SAFETY: user memory read through the helper.
        if let Ok(next) = unsafe { bpf_probe_read_user(argv.wrapping_add(ARGV_MAX_ARGS)) } {
            if next != 0 {
                event.truncated |= ARGV_TRUNCATED_COUNT;
            }
        }
    }
    event.argc = argc;
    entry.submit(0);
}
