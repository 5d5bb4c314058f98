//! RFC 5424 messages: `<PRI>1 TIMESTAMP HOSTNAME buildwatch PROCID MSGID - MSG`, the MSG being
//! the JSON line itself, so a receiver that writes `%msg%` gets the line the file would hold.
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{model::detection::Severity, output::queue::QueuedLine};

pub const APP_NAME: &str = "buildwatch";

/// The syslog facility messages are sent under (RFC 5424, section 6.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    User,
    #[default]
    Daemon,
    Auth,
    Authpriv,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    const fn code(self) -> u8 {
        match self {
            Facility::User => 1,
            Facility::Daemon => 3,
            Facility::Auth => 4,
            Facility::Authpriv => 10,
            Facility::Local0 => 16,
            Facility::Local1 => 17,
            Facility::Local2 => 18,
            Facility::Local3 => 19,
            Facility::Local4 => 20,
            Facility::Local5 => 21,
            Facility::Local6 => 22,
            Facility::Local7 => 23,
        }
    }
}

/// RFC 5424 severities: a detection's own severity, warnings for the sensor's losses and
/// warnings, informational for the rest.
fn severity_code(line: &QueuedLine) -> u8 {
    const CRITICAL: u8 = 2;
    const ERROR: u8 = 3;
    const WARNING: u8 = 4;
    const INFORMATIONAL: u8 = 6;
    match (line.kind, line.severity) {
        (_, Some(Severity::Critical)) => CRITICAL,
        (_, Some(Severity::High)) => ERROR,
        (_, Some(Severity::Medium)) | ("detection" | "sensor.loss" | "sensor.warning", None) => WARNING,
        _ => INFORMATIONAL,
    }
}

/// The fields every message of this sensor shares.
pub struct Header {
    facility: Facility,
    /// Printable ASCII only (RFC 5424 HOSTNAME), "-" when unknown.
    hostname: String,
    pid: u32,
}

impl Header {
    pub fn new(facility: Facility, hostname: &str, pid: u32) -> Self {
        let hostname: String = hostname
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(255)
            .collect();
        Self {
            facility,
            hostname: if hostname.is_empty() { "-".into() } else { hostname },
            pid,
        }
    }

    /// One message, without transport framing.
    pub fn message(&self, line: &QueuedLine, time: SystemTime) -> Vec<u8> {
        let pri = self.facility.code() * 8 + severity_code(line);
        let json = line.bytes.strip_suffix(b"\n").unwrap_or(&line.bytes);
        // Line kinds are short printable ASCII, as MSGID requires (at most 32 characters).
        let mut message = format!(
            "<{pri}>1 {} {} {APP_NAME} {} {} - ",
            humantime::format_rfc3339_micros(time),
            self.hostname,
            self.pid,
            line.kind
        )
        .into_bytes();
        message.extend_from_slice(json);
        message
    }
}

/// RFC 6587 octet counting: `LEN SP MSG`, for stream transports.
pub fn octet_counted(message: &[u8]) -> Vec<u8> {
    let mut framed = format!("{} ", message.len()).into_bytes();
    framed.extend_from_slice(message);
    framed
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn line(kind: &'static str, severity: Option<Severity>) -> QueuedLine {
        QueuedLine {
            kind,
            severity,
            bytes: b"{\"kind\":\"x\",\"text\":\"caf\xc3\xa9\"}\n".to_vec(),
        }
    }

    #[test]
    fn message_follows_rfc_5424_with_the_json_line_as_msg() {
        let header = Header::new(Facility::Daemon, "node 1\u{e9}", 42);
        let time = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let message = header.message(&line("detection", Some(Severity::High)), time);
        assert_eq!(
            String::from_utf8(message).unwrap(),
            "<27>1 2023-11-14T22:13:20.123456Z node1 buildwatch 42 detection - {\"kind\":\"x\",\"text\":\"caf\u{e9}\"}"
        );
    }

    #[test]
    fn severity_follows_the_detection_and_the_facility_is_configurable() {
        let pri = |facility, kind, severity| {
            let message = Header::new(facility, "h", 1).message(&line(kind, severity), UNIX_EPOCH);
            let text = String::from_utf8(message).unwrap();
            text[1..text.find('>').unwrap()].parse::<u8>().unwrap()
        };
        assert_eq!(pri(Facility::Daemon, "detection", Some(Severity::Critical)), 26);
        assert_eq!(pri(Facility::Daemon, "detection", Some(Severity::Medium)), 28);
        assert_eq!(pri(Facility::Daemon, "sensor.loss", None), 28);
        assert_eq!(pri(Facility::Daemon, "process.exec", None), 30);
        assert_eq!(pri(Facility::Local0, "build", None), 134);
        assert_eq!(Header::new(Facility::Auth, "", 1).hostname, "-");
    }

    #[test]
    fn octet_counting_prefixes_the_length_in_bytes() {
        assert_eq!(octet_counted("é".as_bytes()), b"2 \xc3\xa9");
    }
}
