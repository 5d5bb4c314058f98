//! One boot of a kernel in qemu. The guest mounts this machine's root read-only over virtio 9p
//! under a tmpfs overlay (so the tests can write anywhere, and nothing reaches the host), runs
//! `guest.sh` from a second, writable share, writes its output and exit code there and powers
//! off.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// The initramfs's `/init` (busybox sh). A step that fails powers the guest off at once, with
/// the reason on the console.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "kernel-matrix init: $*"; poweroff -f; }
mkdir -p /proc /sys /dev /host /upper /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /modules.order); do insmod /modules/$module || fail "insmod $module"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro host /host || fail "mounting the host's root"
mount -t tmpfs -o size=60% upper /upper || fail "tmpfs"
mkdir -p /upper/root /upper/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/root,workdir=/upper/work /newroot || fail "overlay"
cd /newroot
mount -t proc proc proc
mount -t sysfs sys sys
mount -t devtmpfs dev dev
mkdir -p dev/pts dev/shm
# udev's links: runc execs itself through /dev/fd (without them, RUN steps fail on 5.10).
ln -s /proc/self/fd dev/fd
ln -s /proc/self/fd/0 dev/stdin
ln -s /proc/self/fd/1 dev/stdout
ln -s /proc/self/fd/2 dev/stderr
mount -t devpts devpts dev/pts
mount -t tmpfs shm dev/shm
mount -t tmpfs -o size=40% tmp tmp
mount -t tmpfs run run
mount -t cgroup2 cgroup2 sys/fs/cgroup
mount -t tracefs tracefs sys/kernel/tracing
mount -t debugfs debugfs sys/kernel/debug
mount -t bpf bpf sys/fs/bpf
mkdir -p run/kernel-matrix run/host-root
# The host's root stays reachable, for what the tmpfs mounts above hide (a workspace in /tmp).
mount --move /host run/host-root || fail "moving the host's root"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results run/kernel-matrix || fail "mounting the results share"
# The guest's root becomes pid 1's, so the kernel's module loader (/sbin/modprobe) is this
# machine's kmod, finding the kernel's own modules where guest.sh binds them.
exec switch_root /newroot /bin/busybox sh -c '/bin/sh /run/kernel-matrix/guest.sh > /run/kernel-matrix/guest.log 2>&1; echo $? > /run/kernel-matrix/rc; sync; /bin/busybox poweroff -f'
"#;

/// What a boot left in its results directory.
pub struct Boot {
    /// `guest.sh`'s exit code; `None` when the guest never got that far.
    pub exit_code: Option<i32>,
    pub log: String,
    pub console: PathBuf,
    pub seconds: f64,
}

/// Boots `vmlinuz` with `initramfs`, running `script` (a shell script, run as root in the
/// guest with this machine's root) with `results` as its writable share; gives up after
/// `limit`.
pub fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    script: &str,
    results: &Path,
    limit: Duration,
) -> anyhow::Result<Boot> {
    let _ = fs::remove_dir_all(results);
    fs::create_dir_all(results).with_context(|| format!("creating {}", results.display()))?;
    fs::write(results.join("guest.sh"), script)?;
    let console = results.join("console.log");
    let log = fs::File::create(&console)?;
    let started = Instant::now();
    // TCG: this machine's /dev/kvm is a paravirtual one whose guests need a kernel of its own
    // kind (`-cpu host` dies on an MSR, `qemu64` hangs at boot).
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "6144"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 rdinit=/init panic=-1 quiet",
            "-virtfs",
            "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
            "-virtfs",
        ])
        .arg(format!(
            "local,path={},mount_tag=results,security_model=none",
            results.display()
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the guest ran over {} s (console: {})",
                limit.as_secs(),
                console.display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if !status.success() {
        bail!("qemu failed ({status}); console: {}", console.display());
    }
    let exit_code = fs::read_to_string(results.join("rc"))
        .ok()
        .and_then(|rc| rc.trim().parse().ok());
    Ok(Boot {
        exit_code,
        log: fs::read_to_string(results.join("guest.log")).unwrap_or_default(),
        console,
        seconds: started.elapsed().as_secs_f64(),
    })
}
