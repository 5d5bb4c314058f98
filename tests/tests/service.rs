//! buildwatch as a service: the systemd unit, install/uninstall, readiness notification, file
//! output across SIGHUP reopen and size rotation without losing or tearing a line, health and
//! loss lines, graceful shutdown. Uses the binary built by `cargo xtask test` (BUILDWATCH_BIN).
use std::{
    collections::BTreeSet,
    ffi::OsStr,
    io::Read as _,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use buildwatch_integration_tests::{
    environment::find_binary,
    sensor::{event::kind, Sensor},
    sensor_binary, TempConfig,
};
use serde_json::Value;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// A directory of its own for one test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("buildwatch-service-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Short-lived processes, to make the sensor write lines (fork, exec, exit each).
fn burst(count: usize) {
    for _ in 0..count {
        let _ = Command::new("/bin/true").status();
    }
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("torn or invalid line in {}: {err}: {line}", path.display()))
        })
        .collect()
}

/// Asserts the lines hold every id of the run exactly once: `<run>-1..N` for events and
/// `<run>-s1..M` for sensor lines, so nothing was lost or written twice.
fn assert_no_gaps(lines: &[Value]) {
    let mut events = BTreeSet::new();
    let mut sensor = BTreeSet::new();
    for line in lines {
        let id = line["id"].as_str().expect("every line has an id");
        let (_, number) = id.rsplit_once('-').expect("ids are <run>-<n>");
        let fresh = match number.strip_prefix('s') {
            Some(n) => sensor.insert(n.parse::<u64>().expect("sensor line number")),
            None => events.insert(number.parse::<u64>().expect("event line number")),
        };
        assert!(fresh, "{id} written twice");
    }
    for (what, numbers) in [("event", &events), ("sensor", &sensor)] {
        let max = numbers.iter().max().copied().unwrap_or(0);
        assert_eq!(
            numbers.len() as u64,
            max,
            "{what} lines missing: {} of 1..={max} present",
            numbers.len()
        );
    }
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let Some(binary) = sensor_binary(false) else {
        return;
    };
    let Some(analyze) = find_binary("systemd-analyze") else {
        assert!(
            !buildwatch_integration_tests::ci(),
            "CI=true: systemd-analyze (Debian package systemd) is missing"
        );
        eprintln!("skipping: systemd-analyze is missing");
        return;
    };
    let scratch = Scratch::new("unit");
    let template = std::fs::read_to_string(workspace().join("sensor/dist/buildwatch.service")).unwrap();
    let bindir = binary.parent().unwrap().display().to_string();
    let unit = scratch.0.join("buildwatch.service");
    std::fs::write(&unit, template.replace("@BINDIR@", &bindir)).unwrap();
    let output = Command::new(&analyze).arg("verify").arg(&unit).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify failed: {stderr}");
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned: {stderr}"
    );
    // The check itself works: a misspelled key is reported.
    std::fs::write(
        &unit,
        template
            .replace("@BINDIR@", &bindir)
            .replace("Type=notify", "Typ=notify"),
    )
    .unwrap();
    let output = Command::new(&analyze).arg("verify").arg(&unit).output().unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Typ"),
        "a bad key went unnoticed"
    );
    for key in [
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_BPF CAP_PERFMON",
    ] {
        assert!(template.contains(key), "the unit lacks {key}");
    }
}

#[test]
fn install_keeps_an_existing_config_and_uninstall_keeps_state() {
    let Some(_) = sensor_binary(false) else { return };
    let scratch = Scratch::new("install");
    let destdir = scratch.0.join("root");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let xtask = |args: &[&str]| {
        let output = Command::new(&cargo)
            .current_dir(workspace())
            .arg("xtask")
            .args(args)
            .arg("--destdir")
            .arg(&destdir)
            .output()
            .expect("running cargo xtask");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "xtask {args:?} failed: {text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    };
    let printed = xtask(&["install"]);
    assert!(
        printed.contains("systemctl enable --now buildwatch.service"),
        "{printed}"
    );
    let binary = destdir.join("usr/local/bin/buildwatch");
    let config = destdir.join("etc/buildwatch/config.toml");
    let unit = destdir.join("etc/systemd/system/buildwatch.service");
    assert!(binary.is_file() && config.is_file() && unit.is_file());
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        unit_text.contains("ExecStart=/usr/local/bin/buildwatch run --config /etc/buildwatch/config.toml"),
        "{unit_text}"
    );
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("buildwatch "),
        "the installed binary runs"
    );

    std::fs::write(&config, "[detect]\nlookback = \"7d\"\n").unwrap();
    let printed = xtask(&["install"]);
    assert!(printed.contains("kept"), "{printed}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "[detect]\nlookback = \"7d\"\n",
        "config overwritten"
    );

    // Metrics and network syslog need IP sockets, which the unit refuses unless a drop-in
    // allows them; syslog to a unix socket does not.
    let drop_in = destdir.join("etc/systemd/system/buildwatch.service.d/network.conf");
    assert!(!drop_in.exists(), "no drop-in without [metrics]");
    for network in [
        "[metrics]\nlisten = \"127.0.0.1:9464\"\n",
        "[output]\nsyslog = \"tcp://127.0.0.1:514\"\n",
    ] {
        std::fs::write(&config, network).unwrap();
        xtask(&["install"]);
        let text = std::fs::read_to_string(&drop_in).expect("the network drop-in");
        assert!(
            text.contains("RestrictAddressFamilies=AF_INET AF_INET6"),
            "{text}"
        );
    }
    std::fs::write(&config, "[output]\nsyslog = \"unix:/dev/log\"\n").unwrap();
    xtask(&["install"]);
    assert!(!drop_in.exists(), "the drop-in goes without a network output");

    std::fs::create_dir_all(destdir.join("var/lib/buildwatch")).unwrap();
    xtask(&["uninstall"]);
    assert!(!binary.exists() && !unit.exists());
    assert!(
        config.exists() && destdir.join("var/lib/buildwatch").exists(),
        "config and state are kept"
    );
    xtask(&["uninstall", "--purge"]);
    assert!(!config.exists() && !destdir.join("var/lib/buildwatch").exists());
}

/// With `WatchdogSec=`, systemd passes WATCHDOG_USEC; the event loop itself pings at half that
/// period, so a stalled loop misses pings and gets restarted. The loop's thread is stopped alone
/// (ptrace stops one thread; the writer, metrics and worker threads run on): the pings stop, and
/// come back when it is released.
#[test]
fn the_event_loop_pings_the_watchdog() {
    let Some(binary) = sensor_binary(true) else { return };
    let scratch = Scratch::new("watchdog");
    let socket_path = scratch.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let config = TempConfig::new("watchdog", "[output]\nhealth_interval = \"1s\"\n");
    let sensor = Sensor::start_with(
        &binary,
        &config.path,
        &[],
        &[
            ("NOTIFY_SOCKET", socket_path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("1000000")),
        ],
    );
    let mut pings = 0;
    let mut buffer = [0u8; 512];
    let started = std::time::Instant::now();
    while pings < 4 {
        let n = socket.recv(&mut buffer).expect("no notification");
        if &buffer[..n] == b"WATCHDOG=1" {
            pings += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let health = sensor.wait_for(0, Duration::from_secs(10), "sensor.health", |e| {
        kind(e) == "sensor.health"
    });
    assert!(
        health["health"]["loop_stall_max_ms"].as_u64().is_some(),
        "{health}"
    );
    // The event loop runs on the main thread (a current-thread runtime): stop that thread alone.
    let stalled = StoppedThread::stop(sensor.pid());
    let states = thread_states(sensor.pid());
    assert!(
        states.iter().filter(|state| **state == 't').count() == 1 && states.iter().any(|state| *state != 't'),
        "only the loop's thread is stopped: {states:?}"
    );
    socket.set_nonblocking(true).unwrap();
    while socket.recv(&mut buffer).is_ok() {}
    std::thread::sleep(Duration::from_millis(2500));
    let mut while_stalled = 0;
    while let Ok(n) = socket.recv(&mut buffer) {
        while_stalled += usize::from(&buffer[..n] == b"WATCHDOG=1");
    }
    assert_eq!(
        while_stalled, 0,
        "pings came from elsewhere than the stalled loop"
    );
    drop(stalled);
    socket.set_nonblocking(false).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = socket
        .recv(&mut buffer)
        .expect("no ping after the loop was released");
    assert_eq!(&buffer[..n], b"WATCHDOG=1");
    let status = sensor
        .terminate(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert!(status.success());
}

/// One thread held in a ptrace stop (the others run on) until dropped.
struct StoppedThread(libc::pid_t);

impl StoppedThread {
    fn stop(tid: u32) -> Self {
        let tid = tid as libc::pid_t;
        // SAFETY: attaching to and interrupting a thread of our own child; no memory is passed.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(
                libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
                0,
                "PTRACE_INTERRUPT: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut status = 0;
        // SAFETY: waiting for the stop of the thread this thread traces.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert!(
            waited == tid && libc::WIFSTOPPED(status),
            "waitpid: {waited}, status {status:#x}"
        );
        Self(tid)
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        // SAFETY: detaching resumes the thread this thread traces.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

/// The state letter of each thread of `pid` (`t`: stopped by a tracer).
fn thread_states(pid: u32) -> Vec<char> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the sensor's threads")
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()))
        .collect()
}

#[test]
fn readiness_is_notified_after_attaching() {
    let Some(binary) = sensor_binary(true) else { return };
    let scratch = Scratch::new("notify");
    let socket_path = scratch.0.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let config = TempConfig::new("notify", "[output]\nhealth_interval = \"0s\"\n");
    let sensor = Sensor::start_with(
        &binary,
        &config.path,
        &[],
        &[("NOTIFY_SOCKET", socket_path.as_os_str())],
    );
    let mut buffer = [0u8; 512];
    let n = socket.recv(&mut buffer).expect("no readiness notification");
    // systemd may stop a service the moment it is ready: the signal must find its handler.
    let status = sensor
        .terminate(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}; stderr:\n{}", sensor.stderr());
    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
    assert!(message.starts_with("READY=1\n"), "{message}");
    assert!(message.contains("STATUS="), "{message}");
    let start = sensor.all(0, |e| kind(e) == "sensor.start");
    assert_eq!(start.len(), 1, "ready only after sensor.start");
    assert!(!start[0]["sensor"]["programs_attached"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(start[0]["sensor"]["config_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        sensor.all(0, |e| kind(e) == "sensor.stop").len(),
        1,
        "drained after the signal"
    );
    let n = socket.recv(&mut buffer).expect("no stopping notification");
    assert_eq!(&buffer[..n], b"STOPPING=1");
}

#[test]
fn sighup_reopen_loses_no_line() {
    let Some(binary) = sensor_binary(true) else { return };
    let scratch = Scratch::new("reopen");
    let output = scratch.0.join("log/events.jsonl");
    let moved = scratch.0.join("log/events.jsonl.old");
    let config = TempConfig::new(
        "reopen",
        &format!(
            "[output]\npath = \"{}\"\nhealth_interval = \"0s\"\n[process]\nall = true\n",
            output.display()
        ),
    );
    let sensor = Sensor::spawn(&binary, &config.path, &[], &[]);
    wait_for_file_line(&output, KIND_SENSOR_START);
    assert!(
        sensor.all(0, |_| true).is_empty(),
        "with a file output nothing goes to stdout"
    );
    burst(200);
    // logrotate without copytruncate: move the file, then HUP.
    std::fs::rename(&output, &moved).unwrap();
    burst(100);
    sensor.signal(libc::SIGHUP);
    wait_for_file(&output);
    burst(200);
    let status = sensor
        .terminate(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert!(status.success(), "{}", sensor.stderr());
    let before = json_lines(&moved);
    let after = json_lines(&output);
    assert!(
        before.len() > 200 && after.len() > 200,
        "{} lines before, {} after",
        before.len(),
        after.len()
    );
    assert_eq!(
        kind(after.last().unwrap()),
        "sensor.stop",
        "flushed to the last line"
    );
    let all: Vec<Value> = before.into_iter().chain(after).collect();
    assert_no_gaps(&all);
    assert!(all.iter().all(|l| kind(l) != "sensor.loss"), "lines were dropped");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&output).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(output.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn size_rotation_loses_no_line() {
    let Some(binary) = sensor_binary(true) else { return };
    let scratch = Scratch::new("rotate");
    let output = scratch.0.join("events.jsonl");
    let config = TempConfig::new(
        "rotate",
        &format!(
            "[output]\npath = \"{}\"\nmax_size = 65536\nmax_backups = 1000\nhealth_interval = \"0s\"\n[process]\nall = true\n",
            output.display()
        ),
    );
    let sensor = Sensor::spawn(&binary, &config.path, &[], &[]);
    // Other tests' processes make lines too: sensor.start may already be in a rotated file.
    let first = PathBuf::from(format!("{}.1", output.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !first.exists() && !file_has(&output, KIND_SENSOR_START) {
        assert!(Instant::now() < deadline, "the sensor did not start writing");
        std::thread::sleep(Duration::from_millis(50));
    }
    burst(600);
    let status = sensor
        .terminate(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert!(status.success(), "{}", sensor.stderr());
    let mut all = Vec::new();
    let mut files = 0;
    for n in (1..=1000).rev() {
        let backup = PathBuf::from(format!("{}.{n}", output.display()));
        if backup.exists() {
            files += 1;
            assert!(
                std::fs::metadata(&backup).unwrap().len() <= 65536,
                "{} too big",
                backup.display()
            );
            all.extend(json_lines(&backup));
        }
    }
    all.extend(json_lines(&output));
    assert!(files >= 3, "only {files} rotations");
    assert_no_gaps(&all);
    assert_eq!(kind(all.last().unwrap()), "sensor.stop");
}

#[test]
fn health_and_queue_loss_are_reported() {
    let Some(binary) = sensor_binary(true) else { return };
    let config = TempConfig::new(
        "health",
        "[output]\nhealth_interval = \"1s\"\nqueue_lines = 100\n[process]\nall = true\n",
    );
    let scratch = Scratch::new("health");
    let notify_path = scratch.0.join("notify.sock");
    let notifications = UnixDatagram::bind(&notify_path).unwrap();
    notifications
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // stdout is a pipe nobody reads for a while: the writer blocks, the queue fills, lines drop.
    let mut child = Command::new(&binary)
        .args([OsStr::new("run"), OsStr::new("--config"), config.path.as_os_str()])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buffer = [0u8; 512];
    let n = notifications
        .recv(&mut buffer)
        .expect("the sensor never became ready");
    assert!(buffer[..n].starts_with(b"READY=1"));
    burst(1500);
    std::thread::sleep(Duration::from_secs(1));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // Reading again: the next checks report the drops and health.
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success());
    let text = reader.join().unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("whole JSON lines"))
        .collect();
    let loss = lines
        .iter()
        .find(|l| {
            kind(l) == "sensor.loss"
                && l["loss"]["queue_drops"]
                    .as_object()
                    .is_some_and(|d| !d.is_empty())
        })
        .unwrap_or_else(|| panic!("no sensor.loss with queue drops in {} lines", lines.len()));
    let dropped: u64 = loss["loss"]["queue_drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(dropped > 0);
    let health: Vec<&Value> = lines.iter().filter(|l| kind(l) == "sensor.health").collect();
    assert!(!health.is_empty(), "no sensor.health line");
    let last = &health.last().unwrap()["health"];
    assert_eq!(last["queue"]["capacity"], 100);
    // Raw events fill the capacity; conclusions and sensor lines may use a reserve of a quarter
    // beyond it.
    let high_water = last["queue"]["high_water"].as_u64().unwrap_or_default();
    assert!((100..=125).contains(&high_water), "{last}");
    for field in [
        "events",
        "kernel_drops",
        "decode_errors",
        "processes_tracked",
        "connections_tracked",
        "rss_bytes",
        "uptime_seconds",
    ] {
        assert!(!last[field].is_null(), "health lacks {field}: {last}");
    }
    assert!(last["detect"]["ledger_records"].is_number());
    let stop = lines.last().unwrap();
    assert_eq!(
        kind(stop),
        "sensor.stop",
        "the stop line is written after the drops"
    );
    assert!(stop["stats"]["queue"]["drops"]
        .as_object()
        .is_some_and(|d| !d.is_empty()));
}

#[test]
fn ecs_format_keeps_every_line() {
    let Some(binary) = sensor_binary(true) else { return };
    let scratch = Scratch::new("ecs");
    let output = scratch.0.join("events.ecs.jsonl");
    let config = TempConfig::new(
        "ecs",
        &format!(
            "[output]\npath = \"{}\"\nformat = \"ecs\"\nhealth_interval = \"0s\"\n[process]\nall = true\n",
            output.display()
        ),
    );
    let sensor = Sensor::spawn(&binary, &config.path, &[], &[]);
    wait_for_file_line(&output, "\"action\":\"sensor.start\"");
    burst(20);
    let status = sensor
        .terminate(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert!(status.success());
    let docs = json_lines(&output);
    for doc in &docs {
        assert!(
            doc["@timestamp"].is_string() && doc["ecs"]["version"].is_string(),
            "{doc}"
        );
        assert!(
            doc["buildwatch"].is_object(),
            "the buildwatch line is kept: {doc}"
        );
    }
    let exec = docs
        .iter()
        .find(|d| d["event"]["action"] == "process.exec" && d["process"]["executable"] == "/usr/bin/true")
        .expect("an exec of /bin/true in ECS form");
    assert_eq!(exec["event"]["category"][0], "process");
    assert!(
        exec["process"]["pid"].is_number() && exec["user"]["id"].is_string(),
        "{exec}"
    );
    assert_eq!(docs.last().unwrap()["event"]["action"], "sensor.stop");
    // Ids stay gap-free in ECS form too.
    let ids: Vec<Value> = docs
        .iter()
        .map(|d| serde_json::json!({"id": d["event"]["id"]}))
        .collect();
    assert_no_gaps(&ids);
}

#[test]
fn output_kinds_select_lines() {
    let Some(binary) = sensor_binary(true) else { return };
    let config = TempConfig::new(
        "kinds",
        "[output]\nkinds = [\"process.exec\"]\nhealth_interval = \"0s\"\n[process]\nall = true\n",
    );
    let sensor = Sensor::start(&binary, &config.path);
    burst(5);
    sensor.wait_for(0, Duration::from_secs(30), "an exec line", |e| {
        kind(e) == "process.exec"
    });
    let status = sensor
        .terminate(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert!(status.success());
    let lines = sensor.all(0, |_| true);
    let kinds: BTreeSet<&str> = lines.iter().map(kind).collect();
    assert!(kinds.contains("process.exec"), "{kinds:?}");
    assert!(
        kinds
            .iter()
            .all(|k| *k == "process.exec" || k.starts_with("sensor.")),
        "only the selected kind and the sensor's own lines: {kinds:?}"
    );
    assert_eq!(
        kinds,
        BTreeSet::from(["process.exec", "sensor.start", "sensor.stop"]),
        "only the selected kind and the sensor's own lines"
    );
}

#[test]
fn check_config_prints_effective_settings() {
    let Some(binary) = sensor_binary(false) else {
        return;
    };
    let config = TempConfig::new("check", "[detect]\nlookback = \"7d\"\n");
    let output = Command::new(&binary)
        .arg("check-config")
        .arg(&config.path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("valid"), "{text}");
    assert!(
        text.contains("lookback = \"7days\"") || text.contains("lookback = \"7d\""),
        "{text}"
    );
    assert!(text.contains("state_dir = "), "defaults filled in: {text}");
    let bad = TempConfig::new("check-bad", "[output]\nmax_size = 5\n");
    let output = Command::new(&binary)
        .arg("check-config")
        .arg(&bad.path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("output.path"));
    let help = Command::new(&binary).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["run", "replay", "check-config", "Exit codes"] {
        assert!(help.contains(command), "--help lacks {command}: {help}");
    }
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON text of a sensor.start line (in our format; ECS has it as `event.action`).
const KIND_SENSOR_START: &str = "\"kind\":\"sensor.start\"";

fn file_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).unwrap_or_default().contains(needle)
}

fn wait_for_file_line(path: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !file_has(path, needle) {
        assert!(Instant::now() < deadline, "no {needle} in {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Purges the package when the test ends, passed or not.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "buildwatch"]).output();
    }
}

#[test]
fn deb_package_installs_verifies_and_purges() {
    let Some(_) = sensor_binary(true) else { return };
    let scratch = Scratch::new("deb");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(&cargo)
        .current_dir(workspace())
        .args(["xtask", "deb", "--out"])
        .arg(&scratch.0)
        .output()
        .expect("running cargo xtask deb");
    assert!(
        built.status.success(),
        "cargo xtask deb failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let package = std::fs::read_dir(&scratch.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let dpkg = |args: &[&str]| {
        let output = Command::new("dpkg").args(args).output().expect("running dpkg");
        assert!(
            output.status.success(),
            "dpkg {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let _purge = Purge;
    dpkg(&["-i", &package.to_string_lossy()]);
    let unit = Path::new("/lib/systemd/system/buildwatch.service");
    let config = Path::new("/etc/buildwatch/config.toml");
    assert!(Path::new("/usr/bin/buildwatch").is_file() && unit.is_file() && config.is_file());
    for example in ["prometheus.yml", "buildwatch-receiver.conf"] {
        let path = Path::new("/usr/share/doc/buildwatch/examples").join(example);
        assert!(path.is_file(), "{} is not packaged", path.display());
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    let check = Command::new("/usr/bin/buildwatch")
        .arg("check-config")
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check-config of the packaged config: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // A changed conffile survives a remove; a purge takes it.
    std::fs::write(config, "[detect]\nlookback = \"7d\"\n").unwrap();
    dpkg(&["-r", "buildwatch"]);
    assert!(!Path::new("/usr/bin/buildwatch").exists() && !unit.exists());
    assert_eq!(
        std::fs::read_to_string(config).unwrap(),
        "[detect]\nlookback = \"7d\"\n"
    );
    dpkg(&["-P", "buildwatch"]);
    assert!(!config.exists(), "purge removes the configuration");
}
