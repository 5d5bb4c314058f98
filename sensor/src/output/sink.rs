//! The engine's end of the output: serializes each line and hands it to the bounded queue the
//! writer thread drains (live), or writes it straight to a writer (replay, tests).
use std::io::{self, BufWriter, Write as _};

use anyhow::Context as _;
use serde::Serialize;

use super::settings::Format;
use super::{
    ecs,
    queue::{LineQueue, QueuedLine},
    schema::{Line, LineKind},
};

enum Target {
    Queue(LineQueue),
    Direct(BufWriter<Box<dyn io::Write + Send>>),
}

pub struct Sink {
    target: Target,
    /// Only lines of these kinds are written (replay prints detections only by default).
    only: Option<Vec<LineKind>>,
    format: Format,
}

impl Sink {
    pub fn queue(queue: LineQueue) -> Self {
        Self {
            target: Target::Queue(queue),
            only: None,
            format: Format::Json,
        }
    }

    /// Any writer, written synchronously.
    pub fn writer(writer: impl io::Write + Send + 'static) -> Self {
        Self {
            target: Target::Direct(BufWriter::new(Box::new(writer))),
            only: None,
            format: Format::Json,
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
        match &mut self.target {
            Target::Queue(queue) => Ok(queue.push(QueuedLine {
                kind: line.kind.as_str(),
                bytes,
            })),
            Target::Direct(writer) => {
                writer.write_all(&bytes).context("writing an event")?;
                Ok(true)
            }
        }
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        match &mut self.target {
            Target::Queue(_) => Ok(()),
            Target::Direct(writer) => writer.flush().context("flushing events"),
        }
    }
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
