//! `cargo xtask kernels`: the kernel matrix. Debian's kernels for the releases the README
//! claims are fetched (like the Docker 26 engines, cached under `target/kernels/`), booted in
//! qemu with this machine's root, and run the detection suite's core scenarios there: the real
//! sensor against a real dockerd, registry and remote namespace, on that kernel.
mod guest;
mod initramfs;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::debian::PrivateApt;

/// The Debian releases whose kernels the matrix boots (5.10, 6.1 and 6.12 today; the metapackage
/// `linux-image-amd64` names the release's current one).
pub const RELEASES: &[&str] = &["bullseye", "bookworm", "trixie"];

/// The detection suite's scenarios run on every kernel: a remote plain-TCP build from another
/// network namespace (critical, with its peer), a pull then a build that stays quiet, a local
/// build without pull, and a container created from a built image.
const SCENARIOS: &[&str] = &[
    "remote_tcp_build_is_critical",
    "pull_then_build_is_not_flagged",
    "local_untagged_build_is_medium",
    "privileged_run_of_built_image",
];

/// How much longer the suite waits for anything in the guest (`BUILDWATCH_TEST_SLOWDOWN`).
const SLOWDOWN: u32 = 5;

/// Generous: TCG runs the guest several times slower than this machine.
const GUEST_LIMIT: Duration = Duration::from_secs(20 * 60);

/// A kernel unpacked from its Debian package.
struct Kernel {
    release: &'static str,
    version: String,
    vmlinuz: PathBuf,
    /// `lib/modules/<version>`, with `modules.dep`.
    modules: PathBuf,
}

/// What one kernel's boot showed.
pub struct Outcome {
    pub release: &'static str,
    pub version: String,
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub programs_attached: Option<usize>,
    pub programs_skipped: Vec<String>,
    /// Whether the kernel has `sock:sock_send_length`/`sock_recv_length` (a capture at the
    /// socket layer needs them).
    pub socket_tracepoints: Option<bool>,
    pub seconds: f64,
    pub error: Option<String>,
}

impl Outcome {
    fn new(release: &'static str, version: String) -> Self {
        Self {
            release,
            version,
            passed: Vec::new(),
            failed: Vec::new(),
            programs_attached: None,
            programs_skipped: Vec::new(),
            socket_tracepoints: None,
            seconds: 0.0,
            error: None,
        }
    }

    fn ok(&self) -> bool {
        self.error.is_none() && self.failed.is_empty() && self.passed.len() == SCENARIOS.len()
    }
}

/// Runs the matrix on `releases` (all when empty) with the sensor `binary`; fails naming every
/// kernel that did not pass. Writes the table to `target/kernels/matrix.md`.
pub fn matrix(binary: &Path, releases: &[String]) -> anyhow::Result<()> {
    let root = crate::build::workspace_root();
    crate::prerequisites::install_packages(
        &[
            ("qemu-system-x86", "qemu-system-x86_64"),
            ("kmod", "depmod"),
            ("xz-utils", "xz"),
        ],
        "the kernel matrix",
    )?;
    crate::prerequisites::install_test_packages()?;
    let suite = detection_suite(&root)?;
    let chosen: Vec<&'static str> = RELEASES
        .iter()
        .copied()
        .filter(|r| releases.is_empty() || releases.iter().any(|want| want == r))
        .collect();
    if chosen.is_empty() {
        bail!(
            "no kernel release among {releases:?} (known: {})",
            RELEASES.join(", ")
        );
    }
    let mut outcomes = Vec::new();
    for release in chosen {
        let outcome = match ensure_kernel(&root, release) {
            Ok(kernel) => run_kernel(&root, &kernel, binary, &suite),
            Err(err) => Outcome {
                error: Some(format!("{err:#}")),
                ..Outcome::new(release, String::new())
            },
        };
        println!(
            "xtask: kernel {} ({}): {}",
            outcome.version,
            release,
            if outcome.ok() { "passed" } else { "FAILED" }
        );
        outcomes.push(outcome);
    }
    let table = table(&outcomes);
    println!("{table}");
    let out = root.join("target/kernels/matrix.md");
    fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok())
        .map(|o| {
            format!(
                "{} ({}): {}",
                o.version,
                o.release,
                o.error
                    .clone()
                    .unwrap_or_else(|| format!("failed {:?}", o.failed))
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!("the kernel matrix failed on {}", failed.join("; "));
    }
    Ok(())
}

/// The release's kernel, fetched and unpacked into `target/kernels/<release>` when missing.
fn ensure_kernel(root: &Path, release: &'static str) -> anyhow::Result<Kernel> {
    let base = root.join("target/kernels");
    let prefix = base.join(release);
    if let Some(kernel) = unpacked(release, &prefix) {
        return Ok(kernel);
    }
    println!(
        "xtask: fetching Debian {release}'s kernel into {}",
        prefix.display()
    );
    let apt = PrivateApt::open(release, &base.join(format!("apt-{release}")))?;
    let package = apt.dependency("linux-image-amd64", "linux-image-")?;
    apt.unpack(&[&package], &prefix)?;
    // Newer packages keep modules under usr/lib (merged /usr); depmod -b looks under lib.
    if !prefix.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", prefix.join("lib"))?;
    }
    let kernel = unpacked(release, &prefix)
        .with_context(|| format!("{package} holds no boot/vmlinuz-* with its modules"))?;
    let status = Command::new("depmod")
        .arg("-b")
        .arg(&prefix)
        .arg(&kernel.version)
        .status()
        .context("running depmod (Debian package kmod)")?;
    if !status.success() {
        bail!("depmod -b {} {} failed", prefix.display(), kernel.version);
    }
    Ok(kernel)
}

/// The kernel unpacked under `prefix`, if it is whole.
fn unpacked(release: &'static str, prefix: &Path) -> Option<Kernel> {
    let boot = fs::read_dir(prefix.join("boot")).ok()?;
    let vmlinuz = boot.filter_map(Result::ok).map(|e| e.path()).find(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
    })?;
    let version = vmlinuz.file_name()?.to_string_lossy()["vmlinuz-".len()..].to_string();
    let modules = prefix.join("lib/modules").join(&version);
    Some(Kernel {
        release,
        version,
        vmlinuz,
        modules,
    })
}

/// Builds the detection suite and returns its executable.
fn detection_suite(root: &Path) -> anyhow::Result<PathBuf> {
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "test",
            "--release",
            "--package",
            "buildwatch-integration-tests",
            "--test",
            "detection",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("building the detection suite")?;
    if !out.status.success() {
        bail!(
            "building the detection suite failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "detection")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo named no executable for the detection suite")
}

fn run_kernel(root: &Path, kernel: &Kernel, binary: &Path, suite: &Path) -> Outcome {
    let mut outcome = Outcome::new(kernel.release, kernel.version.clone());
    let dir = root.join("target/kernels").join(kernel.release);
    let initramfs = dir.join("initramfs.cpio");
    if let Err(err) = initramfs::build(&kernel.modules, guest::INIT, &initramfs) {
        outcome.error = Some(format!("{err:#}"));
        return outcome;
    }
    let results = dir.join("results");
    println!(
        "xtask: booting {} in qemu (TCG) for {}",
        kernel.version,
        SCENARIOS.join(", ")
    );
    let boot = match guest::boot(
        &kernel.vmlinuz,
        &initramfs,
        &guest_script(root, kernel, binary, suite),
        &results,
        GUEST_LIMIT,
    ) {
        Ok(boot) => boot,
        Err(err) => {
            outcome.error = Some(format!("{err:#}"));
            return outcome;
        }
    };
    outcome.seconds = boot.seconds;
    for line in boot.log.lines() {
        if let Some(answer) = line.strip_prefix("socket tracepoints: ") {
            outcome.socket_tracepoints = Some(answer == "yes");
        }
        if let Some(rest) = line.strip_prefix("scenario ") {
            if let Some((name, _)) = rest.split_once(" ... ok") {
                outcome.passed.push(name.to_string());
            } else if let Some((name, _)) = rest.split_once(" ... FAILED") {
                outcome.failed.push(name.to_string());
            }
        }
    }
    if let Some(start) = sensor_start(&results.join("events.jsonl")) {
        let sensor = &start["sensor"];
        outcome.programs_attached = sensor["programs_attached"].as_array().map(Vec::len);
        outcome.programs_skipped = sensor["programs_skipped"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["tracepoint"].as_str().unwrap_or_default().to_string())
            .collect();
    }
    match boot.exit_code {
        Some(0) => {}
        Some(code) => {
            outcome.error = Some(format!(
                "the suite exited {code}; its output: {}",
                results.join("guest.log").display()
            ));
            print_tail(&boot.log);
        }
        None => {
            outcome.error = Some(format!(
                "the guest did not finish its script; console: {}",
                boot.console.display()
            ));
        }
    }
    outcome
}

/// The guest's script: the kernel's own modules where modprobe looks, then the scenarios.
fn guest_script(root: &Path, kernel: &Kernel, binary: &Path, suite: &Path) -> String {
    let events = root.join("target/tmp/detection-events.jsonl");
    // The guest's /tmp is a tmpfs of its own: a workspace there (a CI clone) comes back as an
    // overlay of the host's copy, writable like the rest of the guest's root.
    let workspace = if root.starts_with("/tmp") {
        format!(
            "mkdir -p /tmp/.workspace/upper /tmp/.workspace/work {root}
             mount -t overlay overlay -o lowerdir=/run/host-root{root},upperdir=/tmp/.workspace/upper,workdir=/tmp/.workspace/work {root} || exit 90
",
            root = root.display()
        )
    } else {
        String::new()
    };
    format!(
        "{workspace}export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CI=true\n\
         export BUILDWATCH_BIN={binary} BUILDWATCH_TEST_SLOWDOWN={SLOWDOWN}\n\
         hostname kernel-matrix\n\
         ip link set lo up\n\
         mkdir -p /usr/lib/modules/{version}\n\
         mount --bind {modules} /usr/lib/modules/{version}\n\
         echo \"kernel $(uname -r)\"\n\
         if [ -d /sys/kernel/tracing/events/sock/sock_send_length ]; then echo 'socket tracepoints: yes'; else echo 'socket tracepoints: no'; fi\n\
         {suite} {scenarios}\n\
         rc=$?\n\
         cp {events} /run/kernel-matrix/events.jsonl\n\
         exit $rc\n",
        binary = binary.display(),
        version = kernel.version,
        modules = kernel.modules.display(),
        suite = suite.display(),
        scenarios = SCENARIOS.join(" "),
        events = events.display(),
    )
}

fn sensor_start(events: &Path) -> Option<serde_json::Value> {
    fs::read_to_string(events)
        .ok()?
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["kind"] == "sensor.start")
}

fn print_tail(log: &str) {
    let lines: Vec<&str> = log.lines().collect();
    for line in &lines[lines.len().saturating_sub(40)..] {
        println!("  | {line}");
    }
}

/// The Markdown table docs/performance.md carries.
fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| kernel (Debian release) | socket-layer tracepoints | programs attached | skipped | scenarios passed | guest time |\n|---|---|---|---|---|---|\n",
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} ({}) | {} | {} | {} | {}/{}{} | {:.0} s |",
            o.version,
            o.release,
            match o.socket_tracepoints {
                Some(true) => "yes",
                Some(false) => "no",
                None => "—",
            },
            o.programs_attached.map_or("—".to_string(), |n| n.to_string()),
            if o.programs_skipped.is_empty() {
                "none".to_string()
            } else {
                o.programs_skipped.join(", ")
            },
            o.passed.len(),
            SCENARIOS.len(),
            o.error.as_ref().map_or(String::new(), |e| format!(" ({e})")),
            o.seconds,
        );
    }
    out
}
