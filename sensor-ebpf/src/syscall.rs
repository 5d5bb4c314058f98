//! Reading syscall tracepoint records: `args[i]` of sys_enter_* at 16 + 8*i, `ret` of
//! sys_exit_* at 16 (see /sys/kernel/tracing/events/syscalls/*/format).
use aya_ebpf::programs::TracePointContext;

const ARGS_OFFSET: usize = 16;

#[inline(always)]
pub fn arg(ctx: &TracePointContext, index: usize) -> Result<u64, i64> {
    // SAFETY: syscall tracepoint records always hold six 8-byte arguments at this offset.
    unsafe { ctx.read_at::<u64>(ARGS_OFFSET + 8 * index) }.map_err(i64::from)
}

#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> Result<i64, i64> {
    // SAFETY: sys_exit_* records hold the 8-byte return value at this offset.
    unsafe { ctx.read_at::<i64>(ARGS_OFFSET) }.map_err(i64::from)
}
