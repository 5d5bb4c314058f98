//! Reading syscall tracepoint records: `args[i]` of sys_enter_* at 16 + 8*i, `ret` of
//! sys_exit_* at 16 (see /sys/kernel/tracing/events/syscalls/*/format). The record is the
//! program's context, which the verifier lets a tracepoint program load from directly: no
//! helper call on the path every read and write of the host takes.
use aya_ebpf::{programs::TracePointContext, EbpfContext as _};

const ARGS_OFFSET: usize = 16;

#[inline(always)]
pub fn arg(ctx: &TracePointContext, index: usize) -> Result<u64, i64> {
    // SAFETY: syscall tracepoint records always hold six 8-byte arguments at this offset, and
    // the verifier checks every context load.
    Ok(unsafe {
        core::ptr::read(
            ctx.as_ptr()
                .cast::<u8>()
                .add(ARGS_OFFSET + 8 * index)
                .cast::<u64>(),
        )
    })
}

#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> Result<i64, i64> {
    // SAFETY: sys_exit_* records hold the 8-byte return value at this offset.
    Ok(unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(ARGS_OFFSET).cast::<i64>()) })
}
