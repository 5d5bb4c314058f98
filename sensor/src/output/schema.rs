//! The JSON line schema. Every line has `id`, `kind`, `time` (RFC 3339, ns) and `host`; the rest
//! depends on the kind. docs/events.md documents each field.
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use serde::Serialize;

use super::queue::QueueStats;
use crate::{
    clock,
    model::{
        daemon::DaemonView,
        detection::DetectStats,
        line::LineKind,
        probe::SkippedProbe,
        process::ProcessView,
        socket::{Dir, Role},
    },
};

/// A daemon the sensor began or stopped trusting, or whose endpoints changed: what its
/// provenance is kept under and which endpoints it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonBody {
    pub daemon: DaemonView,
}

/// Something the operator should know that is not a loss (a ledger reset, say).
#[derive(Debug, Serialize)]
pub struct WarningBody<'a> {
    pub warning: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<&'a str>,
}

/// The kinds to write for an `output.kinds` selection: those listed, and always the `sensor.*`
/// lines (start, health, loss, stop), so the pipeline's own state is never filtered out.
/// `output.kinds = ["all"]`: every line, raw `socket.data` included.
pub const ALL_KINDS: &str = "all";

pub fn selected_kinds(selection: &[String]) -> Vec<LineKind> {
    LineKind::ALL
        .into_iter()
        .filter(|kind| kind.is_sensor() || selection.iter().any(|s| s == kind.as_str()))
        .collect()
}

#[derive(Debug, Serialize)]
pub struct Line<B: Serialize> {
    pub id: String,
    pub kind: LineKind,
    pub time: String,
    pub host: String,
    #[serde(flatten)]
    pub body: B,
}

/// Stamps lines with ids, wall-clock times and the host name.
pub struct Emitter {
    run_id: String,
    next: u64,
    /// `sensor.*` lines are numbered apart (`<run_id>-s<n>`), so the ids of event lines depend
    /// on the engine's inputs only and a replay reproduces them.
    next_sensor: u64,
    host: String,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME, to turn kernel boot times into wall times.
    boot_to_wall_ns: i128,
}

impl Emitter {
    pub fn new(host: String) -> Self {
        let wall = clock::clock_ns(libc::CLOCK_REALTIME);
        let run_id = format!(
            "{:08x}",
            (wall as u64 ^ u64::from(std::process::id()) << 32) as u32
        );
        Self::with_clock(host, run_id, clock::boot_to_wall_ns())
    }

    /// An emitter continuing a recorded run: same host name, run id and clock offset.
    pub fn with_clock(host: String, run_id: String, boot_to_wall_ns: i128) -> Self {
        Self {
            run_id,
            next: 0,
            next_sensor: 0,
            host,
            boot_to_wall_ns,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn line<B: Serialize>(&mut self, kind: LineKind, boot_ns: Option<u64>, body: B) -> Line<B> {
        let id = if kind.is_sensor() {
            self.next_sensor += 1;
            format!("{}-s{}", self.run_id, self.next_sensor)
        } else {
            self.next += 1;
            format!("{}-{}", self.run_id, self.next)
        };
        let wall_ns = match boot_ns {
            Some(boot) => i128::from(boot) + self.boot_to_wall_ns,
            None => clock::clock_ns(libc::CLOCK_REALTIME),
        };
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(wall_ns.max(0) as u64);
        Line {
            id,
            kind,
            time: humantime::format_rfc3339_nanos(time).to_string(),
            host: self.host.clone(),
            body,
        }
    }

    /// CLOCK_REALTIME - CLOCK_BOOTTIME at start: kernel boot times to wall times.
    pub fn boot_to_wall_ns(&self) -> i128 {
        self.boot_to_wall_ns
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }
}

#[derive(Debug, Serialize)]
pub struct ProcessBody {
    pub process: ProcessView,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_pid: Option<u32>,
    /// exec: the thread that called exec, when not the process leader.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SocketView {
    pub conn_id: u64,
    pub fd: i32,
    pub role: Role,
    pub peer: String,
    /// The watched daemon's listening address (accept) when it could be resolved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_fd: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<i32>,
    /// The connection was open before the sensor started (found in /proc, not seen opening).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

#[derive(Debug, Serialize)]
pub struct SocketBody {
    pub process: ProcessView,
    pub socket: SocketView,
}

#[derive(Debug, Serialize)]
pub struct DataView {
    pub direction: Dir,
    pub segment: u8,
    /// Bytes the syscall moved.
    pub length: u32,
    /// Bytes captured (a prefix of `length`).
    pub captured: u32,
    /// Bytes the connection moved before this record that no record carried (a spent budget,
    /// a full ring).
    #[serde(skip_serializing_if = "is_zero")]
    pub skipped_before: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
    /// `text` (valid UTF-8, JSON-escaped) or `base64` (anything else).
    pub encoding: &'static str,
    pub content: String,
}

impl DataView {
    pub fn new(
        direction: Dir,
        segment: u8,
        length: u32,
        captured: u32,
        bytes: &[u8],
        redacted: bool,
    ) -> Self {
        let (encoding, content) = encode(bytes);
        Self {
            direction,
            segment,
            length,
            captured,
            skipped_before: 0,
            redacted,
            encoding,
            content,
        }
    }

    pub fn after_skipping(mut self, skipped: u64) -> Self {
        self.skipped_before = skipped;
        self
    }
}

/// Text when the bytes are valid UTF-8 (JSON escapes control characters, so nothing is lost and
/// an HTTP head followed by a tar body stays readable); base64 otherwise.
pub fn encode(bytes: &[u8]) -> (&'static str, String) {
    match std::str::from_utf8(bytes) {
        Ok(text) => ("text", text.to_string()),
        Err(_) => ("base64", base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

#[derive(Debug, Serialize)]
pub struct DataBody {
    pub process: ProcessView,
    pub socket: SocketView,
    pub data: DataView,
}

#[derive(Debug, Serialize)]
pub struct StartBody {
    pub sensor: SensorInfo,
}

#[derive(Debug, Serialize)]
pub struct SensorInfo {
    pub version: &'static str,
    pub run_id: String,
    pub pid: u32,
    pub kernel: String,
    pub programs_attached: Vec<String>,
    pub programs_skipped: Vec<SkippedProbe>,
    pub config: Option<String>,
    /// SHA-256 of the effective configuration (file and defaults).
    pub config_sha256: String,
    pub capture_bytes: u32,
    pub watched_unix_sockets: Vec<String>,
    pub watched_tcp_ports: Vec<u16>,
    pub daemons: Vec<String>,
    pub daemon_pids: Vec<u32>,
    /// `--record`: where the engine's inputs are recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LossBody {
    pub loss: LossView,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct LossView {
    /// Records the kernel could not write (ring buffer full), per event kind, since start.
    pub kernel_drops: BTreeMap<&'static str, u64>,
    /// Lines dropped because the output queue was full (sinks too slow), per kind, since start.
    pub queue_drops: BTreeMap<&'static str, u64>,
    /// Records the agent could not decode, since start.
    pub decode_errors: u64,
    /// Lines a sink failed to write (full disk), per kind, since start.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub output_errors: BTreeMap<&'static str, u64>,
    /// Kernel table inserts refused because the table was full, per table, since start.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub table_full: BTreeMap<&'static str, u64>,
    /// Bytes the kernel did not capture because a connection spent its byte budget, per side.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub budget_skipped_bytes: BTreeMap<&'static str, u64>,
    /// Image ledger writes that failed (each is retried), since start.
    #[serde(skip_serializing_if = "is_zero")]
    pub ledger_write_errors: u64,
    /// /proc or file reads abandoned at their deadline, since start.
    #[serde(skip_serializing_if = "is_zero")]
    pub reads_abandoned: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
pub struct StopBody {
    pub stats: Stats,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Lines written per kind since start.
    pub events: BTreeMap<&'static str, u64>,
    pub decode_errors: u64,
    /// Records the kernel dropped, per kind, since start.
    pub kernel_drops: BTreeMap<&'static str, u64>,
    pub processes_tracked: usize,
    pub connections_tracked: usize,
    pub detect: DetectStats,
    /// The output queue (absent in replays).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// Bytes read from the kernel's rings since start (record headers included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ring_bytes: Option<u64>,
    /// Bytes that moved on tracked connections and that the kernel did not copy because the
    /// agent did not need them (bodies it does not read, raw attach streams, TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_skipped_bytes: Option<u64>,
    /// The longest the event loop spent on one wake-up since start, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loop_stall_max_ms: Option<u64>,
    /// Everything lost so far (as in `sensor.loss`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<LossView>,
}

#[derive(Debug, Serialize)]
pub struct HealthBody {
    pub health: Stats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_encodings() {
        assert_eq!(
            encode(b"GET / HTTP/1.1\r\n\r\n"),
            ("text", "GET / HTTP/1.1\r\n\r\n".to_string())
        );
        assert_eq!(encode(b"\x00\x01PRI"), ("text", "\u{0}\u{1}PRI".to_string()));
        assert_eq!(encode(b"\xff\x00"), ("base64", "/wA=".to_string()));
        assert_eq!(
            encode(&[0xe2, 0x82]).0,
            "base64",
            "a cut UTF-8 sequence keeps its bytes"
        );
    }

    #[test]
    fn lines_have_the_common_fields() {
        let mut emitter = Emitter::new("host1".into());
        let line = emitter.line(
            LineKind::SensorLoss,
            Some(1),
            LossBody {
                loss: LossView {
                    decode_errors: 2,
                    ..LossView::default()
                },
            },
        );
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["kind"], "sensor.loss");
        assert_eq!(json["host"], "host1");
        assert_eq!(json["loss"]["decode_errors"], 2);
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
        assert!(
            json["id"].as_str().unwrap().ends_with("-s1"),
            "sensor lines are numbered apart"
        );
    }
}
