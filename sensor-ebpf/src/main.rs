//! buildwatch kernel programs: tracepoints that track processes, Docker-API sockets and the
//! bytes moving on them, and report through one ring buffer. Everything clever happens in the
//! agent; this side captures, filters and counts.
//!
//! Built for the BPF target by `sensor/build.rs`. A host build (`cargo build --workspace`,
//! clippy) compiles the same code into a placeholder binary, so the workspace builds anywhere.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod data;
mod event;
mod maps;
mod process;
mod sockaddr;
mod socket;
mod syscall;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("sensor-ebpf holds kernel programs; sensor/build.rs builds them for the BPF target");
    std::process::exit(1);
}
