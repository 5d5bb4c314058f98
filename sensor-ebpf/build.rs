use which::which;

/// The eBPF object is linked by `bpf-linker`; rebuild when it changes.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
