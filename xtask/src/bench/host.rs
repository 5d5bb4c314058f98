//! Workloads that touch no tracked socket, and the peers that watch them: what the kernel
//! programs cost the rest of the host.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

pub struct Workload {
    pub name: &'static str,
    pub script: String,
}

/// Round trips per run of the socket workloads.
const ROUND_TRIPS: u32 = 100_000;

/// The API socket the bench's sensors watch (under `dir`): the tracked round trips connect to it.
pub fn tracked_socket(dir: &Path) -> PathBuf {
    dir.join("api.sock")
}

/// dd, the exec storm, the mixed workload (it works in `dir`) and 64-byte round trips with
/// `roundtrip` (bw-roundtrip) on sockets nobody tracks, then on a tracked one.
pub fn workloads(dir: &Path, roundtrip: &Path) -> anyhow::Result<Vec<Workload>> {
    let tree = large_git_tree(dir)?;
    let crate_dir = small_crate(dir)?;
    let roundtrip = roundtrip.display();
    Ok(vec![
        Workload {
            name: "dd",
            script: "dd if=/dev/zero of=/dev/null bs=64 count=1000000 2>/dev/null".into(),
        },
        Workload {
            name: "exec storm",
            script: "i=0; while [ $i -lt 3000 ]; do /bin/true; i=$((i+1)); done".into(),
        },
        Workload {
            name: "mixed",
            script: format!(
                "rm -rf {target} && cargo build --offline -q --manifest-path {manifest} --target-dir {target} \
                 && for i in 1 2 3 4 5; do git -C {tree} status --porcelain >/dev/null; done",
                manifest = crate_dir.join("Cargo.toml").display(),
                target = dir.join("mixed-target").display(),
                tree = tree.display(),
            ),
        },
        Workload {
            name: "64 B round trips, unix socketpair",
            script: format!("{roundtrip} unix {ROUND_TRIPS}"),
        },
        Workload {
            name: "64 B round trips, loopback TCP",
            script: format!("{roundtrip} tcp {ROUND_TRIPS}"),
        },
        Workload {
            name: "64 B round trips, tracked API socket",
            script: format!(
                "{roundtrip} path {} {ROUND_TRIPS}",
                tracked_socket(dir).display()
            ),
        },
    ])
}

/// A repository of 20,000 committed files, a few of them changed: `git status` walks and
/// stats them all.
fn large_git_tree(dir: &Path) -> anyhow::Result<PathBuf> {
    let tree = dir.join("tree");
    if tree.join(".git").is_dir() {
        return Ok(tree);
    }
    for d in 0..200 {
        let sub = tree.join(format!("d{d:03}"));
        fs::create_dir_all(&sub)?;
        for f in 0..100 {
            fs::write(sub.join(format!("f{f:03}.txt")), format!("{d} {f}\n"))?;
        }
    }
    let git = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("git")
            .arg("-C")
            .arg(&tree)
            .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .context("running git")?;
        if !status.success() {
            bail!("git {} failed", args.join(" "));
        }
        Ok(())
    };
    git(&["init", "-q"])?;
    git(&["add", "."])?;
    git(&["commit", "-q", "-m", "tree"])?;
    for d in 0..5 {
        fs::write(tree.join(format!("d{d:03}/f000.txt")), "changed\n")?;
    }
    Ok(tree)
}

/// A crate with a few hundred lines and no dependencies.
fn small_crate(dir: &Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("small-crate");
    fs::create_dir_all(root.join("src"))?;
    fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"bench-small\"\nversion = \"0.1.0\"\nedition = \"2021\"\n[workspace]\n",
    )?;
    let mut source = String::from("fn main() {\n    let mut total = 0u64;\n");
    for n in 0..200 {
        source.push_str(&format!("    total += f{n}(total);\n"));
    }
    source.push_str("    println!(\"{total}\");\n}\n");
    for n in 0..200 {
        source.push_str(&format!(
            "fn f{n}(x: u64) -> u64 {{ x.wrapping_mul({}).rotate_left({}) ^ {n} }}\n",
            n + 3,
            n % 63
        ));
    }
    fs::write(root.join("src/main.rs"), source)?;
    Ok(root)
}

/// CPU time (user + system) of one run of the workload and its children.
pub fn workload_cpu(workload: &Workload) -> anyhow::Result<Duration> {
    let before = children_cpu();
    let status = Command::new("sh")
        .args(["-c", &workload.script])
        .stdout(Stdio::null())
        .status()
        .with_context(|| format!("running the {} workload", workload.name))?;
    if !status.success() {
        bail!("the {} workload failed", workload.name);
    }
    Ok(children_cpu().saturating_sub(before))
}

fn children_cpu() -> Duration {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// What watches a workload: nothing, a buildwatch binary, or a peer tool.
#[derive(Clone)]
pub enum Watcher {
    Buildwatch(PathBuf),
    /// A bpftrace program.
    Bpftrace(&'static str),
    /// auditd with an execve rule.
    Auditd,
}

/// bpftrace on the hooks buildwatch's data path uses for dd (read and write, entry and exit),
/// with the map lookup an untracked fd costs.
pub const BPFTRACE_DATA: &str = "BEGIN { @tracked[0, 0] = 1; } \
    tracepoint:syscalls:sys_enter_read,tracepoint:syscalls:sys_enter_write { if (@tracked[pid, args->fd]) { @pending[tid] = 1; } } \
    tracepoint:syscalls:sys_exit_read,tracepoint:syscalls:sys_exit_write { if (@pending[tid]) { delete(@pending[tid]); } }";

/// bpftrace on buildwatch's process hooks, reporting each fork, exec (file and first argument)
/// and exit as buildwatch's `process.all` would.
pub const BPFTRACE_EXEC: &str =
    "tracepoint:sched:sched_process_fork { printf(\"fork %d\\n\", args->child_pid); } \
    tracepoint:syscalls:sys_enter_execve { printf(\"argv %d %s\\n\", tid, str(args->argv[0])); } \
    tracepoint:sched:sched_process_exec { printf(\"exec %d %s\\n\", pid, str(args->filename)); } \
    tracepoint:sched:sched_process_exit { printf(\"exit %d\\n\", pid); }";

/// Raw syscall tracepoints with empty programs: the floor of one-program-per-direction dispatch
/// (every syscall of the host enters both).
pub const BPFTRACE_RAW: &str = "tracepoint:raw_syscalls:sys_enter {} tracepoint:raw_syscalls:sys_exit {}";

/// One empty program on a syscall dd never makes: the fee every syscall of the host pays once
/// any syscall tracepoint is attached (the traced syscall path), whatever the program.
pub const BPFTRACE_SYSCALL_FEE: &str = "tracepoint:syscalls:sys_enter_close {}";

/// The socket layer's tracepoints (Linux 6.3+) with the lookup by socket a capture there would
/// make: the floor of capturing at the socket layer instead of on read and write.
pub const BPFTRACE_SOCKET_LAYER: &str = "BEGIN { @tracked[0] = 1; } \
    tracepoint:sock:sock_send_length,tracepoint:sock:sock_recv_length { if (@tracked[(uint64)args->sk]) { @hits = count(); } }";

/// A running watcher, stopped on drop.
pub struct Running {
    child: Child,
    audit_rule: bool,
}

impl Running {
    fn new(child: Child) -> Self {
        Self {
            child,
            audit_rule: false,
        }
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.audit_rule {
            let _ = Command::new("auditctl").arg("-D").stdout(Stdio::null()).status();
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.exited() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a watcher and waits until it is attached.
pub fn start(watcher: &Watcher, dir: &Path, label: &str) -> anyhow::Result<Running> {
    match watcher {
        Watcher::Buildwatch(binary) => start_buildwatch(binary, dir, label),
        Watcher::Bpftrace(program) => {
            let log = dir.join(format!("bpftrace-{label}.log"));
            let child = Command::new("bpftrace")
                .args(["-e", program])
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log)?)
                .spawn()
                .context("starting bpftrace")?;
            let mut running = Running::new(child);
            // bpftrace says "Attaching N probes..." on stdout only after attaching; its stderr
            // stays quiet. Wait for its programs to appear instead.
            wait_until(Duration::from_secs(30), || {
                !running.exited() && attached_by(running.child.id())
            })
            .with_context(|| {
                format!(
                    "bpftrace did not attach: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                )
            })?;
            Ok(running)
        }
        Watcher::Auditd => {
            let child = Command::new("auditd")
                .arg("-n")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting auditd")?;
            let mut running = Running::new(child);
            wait_until(Duration::from_secs(10), || {
                Command::new("auditctl")
                    .args([
                        "-a",
                        "always,exit",
                        "-F",
                        "arch=b64",
                        "-S",
                        "execve",
                        "-k",
                        "bench",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .context("auditctl could not add the execve rule (is auditd running?)")?;
            running.audit_rule = true;
            Ok(running)
        }
    }
}

/// Whether a process holds BPF program fds (bpftrace holds one per attached probe).
fn attached_by(pid: u32) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .any(|target| target.to_string_lossy().contains("bpf-prog"))
}

fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_buildwatch(binary: &Path, dir: &Path, label: &str) -> anyhow::Result<Running> {
    let events = dir.join(format!("events-{label}.jsonl"));
    let config = dir.join(format!("config-{label}.toml"));
    fs::write(
        &config,
        format!(
            "[watch]\nunix_sockets = [\"/var/run/docker.sock\", \"/run/docker.sock\", \"{}\"]\n\
             [output]\nhealth_interval = \"0s\"\n[detect]\nstate_dir = \"{}\"\n",
            tracked_socket(dir).display(),
            dir.join(format!("state-{label}")).display()
        ),
    )?;
    let child = Command::new(binary)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--output")
        .arg(&events)
        .stderr(Stdio::null())
        .spawn()
        .context("starting buildwatch")?;
    let mut running = Running::new(child);
    wait_until(Duration::from_secs(30), || {
        fs::read_to_string(&events)
            .unwrap_or_default()
            .contains("\"sensor.start\"")
            || running.exited()
    })?;
    if running.exited() {
        bail!("{} did not start", binary.display());
    }
    Ok(running)
}
