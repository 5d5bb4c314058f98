//! The engine's end of the output: serializes each line and hands it to the bounded queue the
//! writer thread drains (live), or writes it straight to a writer (replay, tests).
use std::{
    collections::{HashMap, VecDeque},
    io::{self, BufWriter, Write as _},
};

use anyhow::Context as _;
use serde::Serialize;

use super::settings::Format;
use super::{
    ecs,
    queue::{LineQueue, QueuedLine},
    schema::{selected_kinds, Line, ALL_KINDS},
};
use crate::model::{detection::Severity, line::LineKind};

enum Target {
    Queue(LineQueue),
    Direct(BufWriter<Box<dyn io::Write + Send>>),
}

impl Target {
    fn emit(&mut self, line: QueuedLine) -> anyhow::Result<bool> {
        match self {
            Target::Queue(queue) => Ok(queue.push(line)),
            Target::Direct(writer) => {
                writer.write_all(&line.bytes).context("writing an event")?;
                Ok(true)
            }
        }
    }
}

pub struct Sink {
    target: Target,
    /// Only lines of these kinds are written (replay prints detections only by default).
    only: Option<Vec<LineKind>>,
    format: Format,
    /// `socket.data` lines kept back until a line cites them (the default output).
    held: Option<Held>,
}

/// Bytes of `socket.data` lines held back at most; the oldest go first.
const HELD_BYTES: usize = 8 << 20;

/// Lines written only when a later line names them in its `evidence`.
#[derive(Default)]
struct Held {
    lines: HashMap<String, QueuedLine>,
    order: VecDeque<String>,
    bytes: usize,
}

impl Held {
    fn keep(&mut self, id: String, line: QueuedLine) {
        self.bytes += line.bytes.len();
        self.order.push_back(id.clone());
        self.lines.insert(id, line);
        while self.bytes > HELD_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(line) = self.lines.remove(&oldest) {
                self.bytes -= line.bytes.len();
            }
        }
    }

    fn take(&mut self, id: &str) -> Option<QueuedLine> {
        let line = self.lines.remove(id)?;
        self.bytes -= line.bytes.len();
        // Its id stays in `order` until it reaches the front; a missing entry is skipped then.
        Some(line)
    }
}

/// The ids a line's `evidence` arrays name (in buildwatch's own schema).
fn cited_ids(json: &[u8]) -> Vec<String> {
    const FIELD: &[u8] = b"\"evidence\":";
    let mut ids = Vec::new();
    let mut rest = json;
    while let Some(at) = rest.windows(FIELD.len()).position(|w| w == FIELD) {
        rest = &rest[at + FIELD.len()..];
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Vec<String>>();
        if let Some(Ok(list)) = values.next() {
            ids.extend(list);
        }
    }
    ids
}

impl Sink {
    pub fn queue(queue: LineQueue) -> Self {
        Self {
            target: Target::Queue(queue),
            only: None,
            format: Format::Json,
            held: None,
        }
    }

    /// Any writer, written synchronously.
    pub fn writer(writer: impl io::Write + Send + 'static) -> Self {
        Self {
            target: Target::Direct(BufWriter::new(Box::new(writer))),
            only: None,
            format: Format::Json,
            held: None,
        }
    }

    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    pub fn only(mut self, kinds: Vec<LineKind>) -> Self {
        self.only = Some(kinds);
        self
    }

    /// The default output: `socket.data` lines are written only when a later line (a
    /// detection, an operation, a build) cites them, just before it.
    pub fn socket_data_when_cited(mut self) -> Self {
        self.held = Some(Held::default());
        self
    }

    /// The lines `output.kinds` selects (see `output::settings::Output::kinds`).
    pub fn kinds(self, kinds: &[String]) -> Self {
        match kinds {
            [] => self.socket_data_when_cited(),
            [all] if all == ALL_KINDS => self,
            kinds => self.only(selected_kinds(kinds)),
        }
    }

    /// Writes one line; false when a full queue dropped it (and counted the drop, see
    /// `LineQueue`): the engine never waits for a sink.
    pub fn write<B: Serialize>(&mut self, line: &Line<B>) -> anyhow::Result<bool> {
        if self
            .only
            .as_ref()
            .is_some_and(|kinds| !kinds.contains(&line.kind))
        {
            return Ok(true);
        }
        let mut bytes = match self.format {
            Format::Json => serde_json::to_vec(line),
            Format::Ecs => {
                serde_json::to_value(line).and_then(|value| serde_json::to_vec(&ecs::to_ecs(value)))
            }
        }
        .context("serializing an event")?;
        bytes.push(b'\n');
        let severity = match line.kind {
            LineKind::Detection => detection_severity(line),
            _ => None,
        };
        let queued = QueuedLine {
            kind: line.kind.as_str(),
            severity,
            bytes,
        };
        if let Some(held) = &mut self.held {
            match line.kind {
                LineKind::SocketData => {
                    held.keep(line.id.clone(), queued);
                    return Ok(true);
                }
                LineKind::Detection | LineKind::DockerOperation | LineKind::Build => {
                    let json = serde_json::to_vec(line).context("serializing an event")?;
                    for id in cited_ids(&json) {
                        if let Some(cited) = held.take(&id) {
                            self.target.emit(cited)?;
                        }
                    }
                }
                _ => {}
            }
        }
        self.target.emit(queued)
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        match &mut self.target {
            Target::Queue(_) => Ok(()),
            Target::Direct(writer) => writer.flush().context("flushing events"),
        }
    }
}

/// The severity of a detection line (a rare line: reading it back costs nothing that matters).
fn detection_severity<B: Serialize>(line: &Line<B>) -> Option<Severity> {
    let value = serde_json::to_value(line).ok()?;
    Severity::ALL
        .into_iter()
        .find(|severity| value["detection"]["severity"] == severity.as_str())
}

/// A writer tests read back as JSON lines.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl Captured {
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Cites {
        evidence: Vec<String>,
    }

    fn line<B: Serialize>(id: &str, kind: LineKind, body: B) -> Line<B> {
        Line {
            id: id.to_string(),
            kind,
            time: String::new(),
            host: String::new(),
            body,
        }
    }

    #[test]
    fn socket_data_is_written_when_cited_and_only_once() {
        let out = Captured::default();
        let mut sink = Sink::writer(out.clone()).socket_data_when_cited();
        for id in ["d1", "d2", "d3"] {
            sink.write(&line(id, LineKind::SocketData, Cites { evidence: vec![] }))
                .unwrap();
        }
        let detection = Cites {
            evidence: vec!["d2".into(), "p1".into()],
        };
        sink.write(&line("x1", LineKind::Detection, detection)).unwrap();
        let again = Cites {
            evidence: vec!["d2".into(), "d3".into()],
        };
        sink.write(&line("x2", LineKind::DockerOperation, again)).unwrap();
        sink.flush().unwrap();
        let ids: Vec<String> = out
            .lines()
            .iter()
            .map(|l| l["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["d2", "x1", "d3", "x2"]);
    }

    #[test]
    fn held_lines_are_bounded() {
        let mut held = Held::default();
        let big = vec![b'x'; HELD_BYTES / 2 + 1];
        for id in ["a", "b", "c"] {
            held.keep(
                id.to_string(),
                QueuedLine {
                    kind: "socket.data",
                    severity: None,
                    bytes: big.clone(),
                },
            );
        }
        assert!(held.bytes <= HELD_BYTES);
        assert!(held.take("a").is_none() && held.take("c").is_some());
    }
}
