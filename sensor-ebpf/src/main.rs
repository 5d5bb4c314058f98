//! buildwatch kernel programs: tracepoints that track processes, Docker-API sockets and the
//! bytes moving on them, and report through one ring buffer. Everything clever happens in the
//! agent; this side captures, filters and counts.
#![no_std]
#![no_main]

mod data;
mod event;
mod maps;
mod process;
mod sockaddr;
mod socket;
mod syscall;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
