//! The real `buildwatch` binary, its JSON lines collected as they arrive, and waits with a
//! deadline for the events a scenario expects.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The bytes of one connection in one direction.
#[derive(Debug, Clone)]
pub struct Stream {
    pub conn_id: u64,
    pub events: Vec<Value>,
    pub text: String,
}

#[derive(Default)]
struct Collected {
    events: Vec<Value>,
    /// When each event's line was read from the sensor's stdout.
    arrivals: Vec<std::time::SystemTime>,
    /// Lines on stdout that were not JSON objects (there must be none), with how many lines
    /// came before each.
    invalid: Vec<(usize, String)>,
    /// Lines read in all.
    lines: usize,
    closed: bool,
}

/// A running sensor. When it is dropped (outside a panic), every line it printed must have
/// been a JSON object: each suite checks its sensors' stdout that way.
pub struct Sensor {
    child: Mutex<Child>,
    collected: Arc<(Mutex<Collected>, Condvar)>,
    stderr: Arc<Mutex<String>>,
    /// SIGKILLed by the test: its last line may have been cut.
    killed: std::sync::atomic::AtomicBool,
}

impl Sensor {
    /// Starts `buildwatch run --config CONFIG` and waits for its `sensor.start` line.
    pub fn start(binary: &Path, config: &Path) -> Self {
        Self::start_with(binary, config, &[], &[])
    }

    /// Same, with more arguments to `run` and environment variables.
    pub fn start_with(
        binary: &Path,
        config: &Path,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let sensor = Self::spawn(binary, config, args, env);
        sensor.wait_for(0, Duration::from_secs(30), "sensor.start", |e| {
            e["kind"] == "sensor.start"
        });
        sensor
    }

    /// Starts the sensor without waiting for anything on stdout (its output may go to a file).
    pub fn spawn(
        binary: &Path,
        config: &Path,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        let mut command = Command::new(binary);
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(args)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("BUILDWATCH_TEST_LOG").unwrap_or_else(|_| "info".into()),
            );
        Self::follow(command)
    }

    /// Collects the lines of a command that runs a sensor elsewhere (`docker run` of the
    /// image, attached): its stdout is the sensor's.
    pub fn follow(mut command: Command) -> Self {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {program}: {err}"));
        let collected = Arc::new((Mutex::new(Collected::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&collected);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lock, ready) = &*sink;
                let mut collected = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match serde_json::from_str::<Value>(&line) {
                    Ok(value) if value.is_object() => {
                        collected.events.push(value);
                        collected.arrivals.push(std::time::SystemTime::now());
                    }
                    _ => {
                        let before = collected.lines;
                        collected.invalid.push((before, line));
                    }
                }
                collected.lines += 1;
                ready.notify_all();
            }
            let (lock, ready) = &*sink;
            lock.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .closed = true;
            ready.notify_all();
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr_sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                stderr_sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Self {
            child: Mutex::new(child),
            collected,
            stderr,
            killed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The sensor's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .id()
    }

    /// When the line with this id came out of the sensor.
    pub fn arrival(&self, id: &str) -> Option<std::time::SystemTime> {
        let collected = self
            .collected
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = collected.events.iter().position(|e| e["id"] == id)?;
        collected.arrivals.get(index).copied()
    }

    /// Index of the next event; pass it to `wait_for` to only look at what happens after now.
    pub fn mark(&self) -> usize {
        self.collected
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .events
            .len()
    }

    /// Waits until an event at or after `from` satisfies `predicate`; panics with context when
    /// the deadline passes.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        predicate: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_until(from, timeout, what, |events| {
            events.iter().find(|e| predicate(e)).cloned()
        })
    }

    /// Waits until the bytes one connection moved in one direction (all `socket.data` events of
    /// `role` and `direction` with the same `conn_id`, concatenated in order) contain every
    /// needle. Requests may arrive in several reads (Go's HTTP server reads one byte first on a
    /// kept-alive connection), so scenarios look at streams, not single records.
    pub fn wait_for_stream(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        role: &str,
        direction: &str,
        needles: &[&str],
    ) -> Stream {
        self.wait_until(from, timeout, what, |events| {
            let mut streams: Vec<Stream> = Vec::new();
            let data = events.iter().filter(|e| {
                event::kind(e) == "socket.data"
                    && event::role(e) == role
                    && e["data"]["direction"] == direction
            });
            for event in data {
                let conn_id = event["socket"]["conn_id"].as_u64().unwrap_or_default();
                let index = match streams.iter().position(|s| s.conn_id == conn_id) {
                    Some(index) => index,
                    None => {
                        streams.push(Stream {
                            conn_id,
                            events: Vec::new(),
                            text: String::new(),
                        });
                        streams.len() - 1
                    }
                };
                streams[index].text.push_str(&event::content(event));
                streams[index].events.push(event.clone());
            }
            streams
                .into_iter()
                .find(|s| needles.iter().all(|n| s.text.contains(n)))
        })
    }

    /// Re-evaluates `check` over the events since `from` whenever new ones arrive, until it
    /// returns something or the deadline passes (then panics with the recent events).
    fn wait_until<T>(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        check: impl Fn(&[Value]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + crate::scaled(timeout);
        let (lock, ready) = &*self.collected;
        let mut collected = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let since = collected.events.get(from..).unwrap_or_default();
            if let Some(found) = check(since) {
                return found;
            }
            let now = Instant::now();
            if now >= deadline || collected.closed {
                let recent: Vec<String> = since
                    .iter()
                    .filter(|e| e["kind"] != "process.fork" && e["kind"] != "process.exit")
                    .rev()
                    .take(40)
                    .map(|e| truncate(&e.to_string(), 600))
                    .collect();
                let state = if collected.closed { "exited" } else { "running" };
                drop(collected);
                panic!(
                    "no {what} within {timeout:?} (sensor {state}); last events since the mark, newest first:\n{}\nsensor stderr:\n{}",
                    recent.join("\n"),
                    self.stderr()
                );
            }
            collected = ready
                .wait_timeout(collected, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Every event at or after `from` that satisfies `predicate`.
    pub fn all(&self, from: usize, predicate: impl Fn(&Value) -> bool) -> Vec<Value> {
        let collected = self
            .collected
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        collected
            .events
            .iter()
            .skip(from)
            .filter(|e| predicate(e))
            .cloned()
            .collect()
    }

    /// Lines on stdout that were not JSON objects; after a SIGKILL, a cut last line is not
    /// counted.
    pub fn invalid_lines(&self) -> Vec<String> {
        let collected = self
            .collected
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let killed = self.killed.load(std::sync::atomic::Ordering::Relaxed);
        collected
            .invalid
            .iter()
            .filter(|(before, _)| !(killed && collected.closed && before + 1 == collected.lines))
            .map(|(_, line)| line.clone())
            .collect()
    }

    pub fn is_running(&self) -> bool {
        let status = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_wait();
        match status {
            Ok(None) => true,
            Ok(Some(_)) => false,
            Err(err) => panic!("cannot tell whether the sensor runs: {err}"),
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends a signal (SIGHUP to reopen the output file).
    pub fn signal(&self, signal: i32) {
        let child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    /// SIGKILL (a crash): nothing is flushed or saved; waits for the exit.
    pub fn kill(&self) {
        self.killed.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then waits for the exit (and for stdout to close).
    pub fn terminate(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                drop(child);
                self.wait_closed(deadline);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_closed(&self, deadline: Instant) {
        let (lock, ready) = &*self.collected;
        let mut collected = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while !collected.closed {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            collected = ready
                .wait_timeout(collected, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            if matches!(child.try_wait(), Ok(None)) {
                self.killed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            return;
        }
        // Its stdout is a stream of JSON lines and nothing else, in every suite.
        self.wait_closed(Instant::now() + Duration::from_secs(5));
        let invalid = self.invalid_lines();
        assert!(
            invalid.is_empty(),
            "the sensor printed {} non-JSON lines on stdout, the first: {:?}",
            invalid.len(),
            invalid.first()
        );
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// How long a scenario waits for a line it expects.
pub const EXPECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long after the line that shows the sensor saw some traffic a verdict about that traffic
/// may still come: an operation waits at most 0.8 s for its body, a side load 2 s for the names
/// of what it loaded, and a question to the daemon at most 0.9 s; the suites' own allowance for
/// a detection is a second after its request.
pub const VERDICT_ALLOWANCE: Duration = Duration::from_secs(3);

impl Sensor {
    /// The first detection of `rule` after `mark` that satisfies `predicate`.
    pub fn detection(
        &self,
        mark: usize,
        rule: &str,
        what: &str,
        predicate: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_for(mark, EXPECT_TIMEOUT, what, |e| {
            event::kind(e) == "detection" && e["detection"]["rule"] == rule && predicate(e)
        })
    }

    /// "Stays quiet", the only way the suites write it: first waits for the `proof`, a line that
    /// shows the sensor saw the very traffic in question (its operation line, a confirmed pull,
    /// the build's summary, the next operation on the same connection), then lets the verdict
    /// allowance pass after it, then asserts that no line after `mark` is `forbidden`. Returns
    /// the proof.
    pub fn stays_quiet(
        &self,
        mark: usize,
        proof: &str,
        seen: impl Fn(&Value) -> bool,
        quiet: &str,
        forbidden: impl Fn(&Value) -> bool,
    ) -> Value {
        let shown = self.wait_for(mark, EXPECT_TIMEOUT, proof, seen);
        let arrived = shown["id"]
            .as_str()
            .and_then(|id| self.arrival(id))
            .unwrap_or_else(std::time::SystemTime::now);
        let due = arrived + crate::scaled(VERDICT_ALLOWANCE);
        if let Ok(left) = due.duration_since(std::time::SystemTime::now()) {
            std::thread::sleep(left);
        }
        let found = self.all(mark, forbidden);
        assert!(
            found.is_empty(),
            "{quiet}, yet the sensor wrote (having seen {proof}: {}):\n{}",
            truncate(&shown.to_string(), 600),
            found
                .iter()
                .map(|e| truncate(&e.to_string(), 600))
                .collect::<Vec<_>>()
                .join("\n")
        );
        shown
    }

    /// The `docker.operation` line of a pull of `image` after `mark` that the daemon's own
    /// registry traffic confirmed.
    pub fn confirmed_pull(&self, mark: usize, image: &str) -> Value {
        self.wait_for(
            mark,
            EXPECT_TIMEOUT,
            &format!("the pull of {image}, confirmed"),
            |e| is_confirmed_pull(e, image),
        )
    }

    /// Asserts that every detection this sensor wrote has an id of its own (a SIEM that
    /// deduplicates on `detection.id` keeps every finding); returns how many there were.
    pub fn assert_unique_detection_ids(&self) -> usize {
        let detections = self.all(0, |e| event::kind(e) == "detection");
        let mut seen = std::collections::HashMap::new();
        for detection in &detections {
            let id = detection["detection"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("a detection without an id: {detection}"));
            if let Some(first) = seen.insert(id.to_string(), detection) {
                panic!(
                    "two findings share the id {id}:\n{}\n{}",
                    truncate(&first.to_string(), 600),
                    truncate(&detection.to_string(), 600)
                );
            }
        }
        detections.len()
    }

    /// The first `build` line (written when a build ends) after `mark` whose build satisfies
    /// `predicate`.
    pub fn build_summary(&self, mark: usize, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        self.wait_for(mark, EXPECT_TIMEOUT, what, |e| {
            event::kind(e) == "build" && predicate(&e["build"])
        })
    }
}

/// Whether a line is the `docker.operation` of a pull of `image` that the daemon's own registry
/// traffic confirmed.
pub fn is_confirmed_pull(line: &Value, image: &str) -> bool {
    event::kind(line) == "docker.operation"
        && line["operation"]["type"] == "pull"
        && line["operation"]["image"] == image
        && line["operation"]["confirmed"] == true
}

pub mod event {
    use base64::Engine as _;
    use serde_json::Value;

    /// A JSON array as strings (non-strings in their JSON form).
    pub fn strings(value: &Value) -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))
            .collect()
    }

    /// Whether a build lists `tag` among its tags.
    pub fn has_tag(build: &Value, tag: &str) -> bool {
        build["tags"].as_array().into_iter().flatten().any(|t| t == tag)
    }

    pub fn kind(event: &Value) -> &str {
        event["kind"].as_str().unwrap_or_default()
    }

    /// Captured bytes of a `socket.data` event (base64 decoded), as lossy text.
    pub fn content(event: &Value) -> String {
        let content = event["data"]["content"].as_str().unwrap_or_default();
        if event["data"]["encoding"] == "base64" {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(content)
                .unwrap_or_default();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            content.to_string()
        }
    }

    /// A line's `time`; a missing or malformed time fails the test.
    pub fn time(event: &Value) -> std::time::SystemTime {
        let text = event["time"]
            .as_str()
            .unwrap_or_else(|| panic!("a line without a time: {event}"));
        humantime::parse_rfc3339(text).unwrap_or_else(|err| panic!("time {text:?}: {err}"))
    }

    pub fn role(event: &Value) -> &str {
        event["socket"]["role"].as_str().unwrap_or_default()
    }

    pub fn pid(event: &Value) -> u64 {
        event["process"]["pid"].as_u64().unwrap_or_default()
    }

    pub fn argv(event: &Value) -> Vec<String> {
        event["process"]["argv"]
            .as_array()
            .map(|args| args.iter().filter_map(|a| a.as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    pub fn ancestry_pids(event: &Value) -> Vec<u64> {
        event["process"]["ancestry"]
            .as_array()
            .map(|chain| chain.iter().filter_map(|a| a["pid"].as_u64()).collect())
            .unwrap_or_default()
    }

    pub fn ancestry_comms(event: &Value) -> Vec<String> {
        event["process"]["ancestry"]
            .as_array()
            .map(|chain| {
                chain
                    .iter()
                    .filter_map(|a| a["comm"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
}
