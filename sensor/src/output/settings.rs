//! `[output]`: where lines go, in which format, and which kinds.
use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::{
    schema::ALL_KINDS,
    syslog::{Address, Facility},
};
use crate::model::line::LineKind;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// buildwatch's own schema (docs/events.md).
    #[default]
    Json,
    /// Elastic Common Schema field names, the buildwatch line under `buildwatch`.
    Ecs,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Output {
    /// Append JSON lines to this file (0600, directory 0700). `--output` overrides it.
    pub path: Option<PathBuf>,
    /// Write to stdout too. Default: stdout only when neither a file nor syslog is set.
    pub stdout: Option<bool>,
    /// Rotate the file when it would grow past this many bytes (0: never; logrotate with
    /// SIGHUP works either way).
    pub max_size: u64,
    /// Rotated files kept (`events.jsonl.1` newest .. `.N`).
    pub max_backups: u32,
    /// Lines waiting for the sinks at most; beyond it lines are dropped and reported.
    pub queue_lines: usize,
    /// Interval of `sensor.health` lines ("60s"; "0s" turns them off).
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    pub format: Format,
    /// Line kinds to write. Empty (the default): every kind but `socket.data`, whose lines are
    /// written only when a detection, operation or build cites them (just before it).
    /// `["all"]`: every line, every raw `socket.data` included. A list of kinds: those only
    /// (`sensor.*` lines are always written); for example ["detection", "build",
    /// "docker.operation"] leaves out the raw process and socket events (detections still cite
    /// their ids; a `--record` recording holds them). Recordings always hold every event.
    pub kinds: Vec<String>,
    /// Also send each line as an RFC 5424 message: "unix:/dev/log", "udp://host:514" or
    /// "tcp://host:514" (octet counting, RFC 6587; a line counts as sent once the receiver's
    /// TCP acknowledged it, and is sent again after a reset).
    pub syslog: Option<String>,
    pub syslog_facility: Facility,
    /// Line kinds sent to syslog. Empty (the default): the lines the other outputs get.
    pub syslog_kinds: Vec<String>,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            path: None,
            stdout: None,
            max_size: 0,
            max_backups: 5,
            queue_lines: super::queue::DEFAULT_CAPACITY,
            health_interval: Duration::from_secs(60),
            format: Format::Json,
            kinds: Vec::new(),
            syslog: None,
            syslog_facility: Facility::default(),
            syslog_kinds: Vec::new(),
        }
    }
}

impl Output {
    /// Default: stdout when events go nowhere else.
    pub fn writes_stdout(&self) -> bool {
        self.stdout
            .unwrap_or(self.path.is_none() && self.syslog.is_none())
    }

    pub fn syslog_address(&self) -> anyhow::Result<Option<Address>> {
        self.syslog.as_deref().map(str::parse).transpose()
    }

    /// `syslog_kinds` as the queue names them (validated).
    pub fn syslog_kinds(&self) -> Vec<&'static str> {
        self.syslog_kinds
            .iter()
            .filter_map(|kind| LineKind::parse(kind))
            .map(LineKind::as_str)
            .collect()
    }
}

impl Output {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_size > 0 && self.path.is_none() {
            bail!("output.max_size rotates the output file: set output.path too");
        }
        if self.max_backups == 0 {
            bail!("output.max_backups must be at least 1");
        }
        if self.kinds.len() > 1 && self.kinds.iter().any(|kind| kind == ALL_KINDS) {
            bail!("output.kinds: \"all\" stands alone");
        }
        if let Some(unknown) = self
            .kinds
            .iter()
            .find(|kind| *kind != ALL_KINDS && LineKind::parse(kind).is_none())
        {
            let known: Vec<&str> = LineKind::ALL.iter().map(|k| k.as_str()).collect();
            bail!(
                "output.kinds: {unknown:?} is not a line kind (one of {}, or \"all\")",
                known.join(", ")
            );
        }
        if let Some(unknown) = self
            .syslog_kinds
            .iter()
            .find(|kind| LineKind::parse(kind).is_none())
        {
            bail!("output.syslog_kinds: {unknown:?} is not a line kind");
        }
        if !self.syslog_kinds.is_empty() && self.syslog.is_none() {
            bail!("output.syslog_kinds needs output.syslog");
        }
        self.syslog_address()?;
        if self.queue_lines == 0 {
            bail!("output.queue_lines must be at least 1");
        }
        if !self.writes_stdout() && self.path.is_none() && self.syslog.is_none() {
            bail!("output.stdout = false needs output.path or output.syslog: events would go nowhere");
        }
        Ok(())
    }
}
