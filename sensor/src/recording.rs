//! Recordings: everything the engine was given during a live run (kernel events, clock ticks,
//! connections found at start) together with every answer the host gave while handling each,
//! so `buildwatch replay` runs the same engine to the same conclusions offline, without root.
//!
//! Format: JSON lines. The first is `{"recording": Header}`; each next one is
//! `{"input": Input, "answers": [Answer, ...]}`.
use std::{
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    path::Path,
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::{
    config::Config, decode::RawEvent, detect::ledger::Record, existing::ExistingConnection,
    host::recorded::Answer,
};

pub const FORMAT_VERSION: u32 = 2;

/// What the run started from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub sensor_version: String,
    pub host: String,
    pub run_id: String,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME of the run: event times -> wall times.
    pub boot_to_wall_ns: i128,
    /// The effective configuration.
    pub config: Config,
    /// The image ledger as it was loaded at start.
    pub ledger: Vec<Record>,
    /// The marker of the sensor's own API requests in this run.
    #[serde(default)]
    pub api_marker: String,
}

/// One thing the engine was given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Input {
    /// Load every running process and find the daemons among them (start of a run, at this
    /// boot time).
    Seed(u64),
    Event(RawEvent),
    /// A connection a daemon already had at start, found in /proc.
    Existing {
        tgid: u32,
        conn_id: u64,
        boot_ns: u64,
        connection: ExistingConnection,
    },
    /// The clock reached this boot time (pairing and body waits may expire).
    Tick(u64),
    /// The run ended at this boot time.
    Finish(u64),
}

#[derive(Debug, Serialize, Deserialize)]
struct Step {
    input: Input,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    answers: Vec<Answer>,
}

#[derive(Debug, Serialize, Deserialize)]
struct HeaderLine {
    recording: Header,
}

pub struct Recorder {
    out: BufWriter<File>,
}

impl Recorder {
    /// Creates (or truncates) the recording, mode 0600: it holds captured API bytes.
    pub fn create(path: &Path, header: &Header) -> anyhow::Result<Self> {
        let file = crate::files::create_new(path).context("cannot create the recording")?;
        let mut recorder = Self {
            out: BufWriter::new(file),
        };
        recorder.line(&HeaderLine {
            recording: header.clone(),
        })?;
        Ok(recorder)
    }

    pub fn record(&mut self, input: Input, answers: Vec<Answer>) -> anyhow::Result<()> {
        self.line(&Step { input, answers })
    }

    fn line<T: Serialize>(&mut self, value: &T) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, value).context("writing the recording")?;
        self.out.write_all(b"\n").context("writing the recording")
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("flushing the recording")
    }
}

/// A recording being read: the header, then the steps one by one.
pub struct Reader {
    pub header: Header,
    lines: std::iter::Enumerate<std::io::Lines<BufReader<File>>>,
    path: String,
}

impl Reader {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open recording {}", path.display()))?;
        let mut lines = BufReader::new(file).lines().enumerate();
        let name = path.display().to_string();
        let Some((_, first)) = lines.next() else {
            bail!("{name} is empty, not a buildwatch recording");
        };
        let first = first.with_context(|| format!("cannot read {name}"))?;
        let header = parse_header(&first)
            .map_err(|err| anyhow::anyhow!("{name}:1: not a buildwatch recording header ({err})"))?;
        if header.format != FORMAT_VERSION {
            bail!(
                "{name} has recording format {}, this buildwatch reads {FORMAT_VERSION}",
                header.format
            );
        }
        Ok(Self {
            header,
            lines,
            path: name,
        })
    }

    /// The next input and its answers; an error names the line.
    pub fn next_step(&mut self) -> Option<anyhow::Result<(Input, Vec<Answer>)>> {
        let (index, line) = self.lines.next()?;
        let number = index + 1;
        Some(
            line.with_context(|| format!("cannot read {}", self.path))
                .and_then(|line| {
                    parse_step(&line).map_err(|err| {
                        anyhow::anyhow!("{}:{number}: not a recording step ({err})", self.path)
                    })
                }),
        )
    }
}

/// One step line of a recording: the input and the host's answers.
pub fn parse_step(line: &str) -> Result<(Input, Vec<Answer>), serde_json::Error> {
    serde_json::from_str::<Step>(line).map(|step| (step.input, step.answers))
}

/// The first line of a recording.
pub fn parse_header(line: &str) -> Result<Header, serde_json::Error> {
    serde_json::from_str::<HeaderLine>(line).map(|h| h.recording)
}

impl Reader {}
