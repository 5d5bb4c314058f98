//! Builds the kernel programs (`sensor-ebpf`) into `OUT_DIR/sensor` for `include_bytes_aligned!`.
//!
//! Without `bpf-linker` on PATH (or with `BUILDWATCH_SKIP_EBPF=1`) an empty stub object is written
//! instead, so `cargo check`, clippy and unit tests work on any machine; the agent refuses to run
//! with a stub and says how to build the real object (`cargo xtask build`).
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

const SKIP_VAR: &str = "BUILDWATCH_SKIP_EBPF";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={SKIP_VAR}");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let skip = env::var(SKIP_VAR).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let linker_missing = which::which("bpf-linker").is_err();
    if skip || linker_missing {
        let why = if skip {
            format!("{SKIP_VAR} is set")
        } else {
            "bpf-linker is not on PATH".into()
        };
        println!("cargo:warning=building buildwatch with a stub eBPF object ({why}); `cargo xtask build` builds the real one");
        let stub = out_dir.join("sensor");
        fs::write(&stub, []).with_context(|| format!("writing {}", stub.display()))?;
        return Ok(());
    }
    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = PathBuf::from(manifest_dir).join("../sensor-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name: "sensor-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
