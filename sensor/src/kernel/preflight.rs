//! Checks before loading: each failure is one line that says what to do.
use std::path::{Path, PathBuf};

use anyhow::bail;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Runs every check; returns the tracefs root.
pub fn check() -> anyhow::Result<PathBuf> {
    check_privileges()?;
    check_kernel_version()?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); buildwatch needs a kernel built with CONFIG_DEBUG_INFO_BTF=y");
    }
    let tracefs = super::tracefs::locate_or_mount()?;
    ensure_bpffs();
    Ok(tracefs)
}

fn check_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| effective & (1 << cap) != 0;
    if !(has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))) {
        bail!("buildwatch must run as root (or with CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo");
    }
    Ok(())
}

fn check_kernel_version() -> anyhow::Result<()> {
    match aya::util::KernelVersion::current() {
        Ok(version) if version < aya::util::KernelVersion::new(5, 8, 0) => {
            bail!("kernel {version:?} has no BPF ring buffer; buildwatch needs Linux 5.8 or newer")
        }
        _ => Ok(()),
    }
}

/// bpffs is not needed for our maps (nothing is pinned) but tools that inspect the sensor expect
/// it; mount it when missing and carry on if that fails.
fn ensure_bpffs() {
    let path = Path::new("/sys/fs/bpf");
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let is_bpffs = std::ffi::CString::new("/sys/fs/bpf")
        .map(|c| unsafe { libc::statfs(c.as_ptr(), &mut stat) } == 0 && stat.f_type as i64 == BPF_FS_MAGIC)
        .unwrap_or(false);
    if !is_bpffs && path.is_dir() {
        match super::tracefs::mount("bpf", path, "bpf") {
            Ok(()) => tracing::info!("mounted bpffs at /sys/fs/bpf"),
            Err(err) => tracing::warn!("bpffs is not mounted at /sys/fs/bpf and mounting failed: {err}"),
        }
    }
}
