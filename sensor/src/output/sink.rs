//! Where JSON lines go: stdout, or appended to a file (created 0600 in a 0700 directory).
use std::{
    fs::{self, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

use anyhow::Context as _;
use serde::Serialize;

pub struct Sink {
    writer: BufWriter<Box<dyn io::Write + Send>>,
}

impl Sink {
    pub fn stdout() -> Self {
        Self::writer(io::stdout())
    }

    /// Any writer.
    pub fn writer(writer: impl io::Write + Send + 'static) -> Self {
        Self {
            writer: BufWriter::new(Box::new(writer)),
        }
    }

    pub fn file(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create output directory {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot open output file {}", path.display()))?;
        Ok(Self {
            writer: BufWriter::new(Box::new(file)),
        })
    }

    /// Writes one line; a line is never split across writes of other lines.
    pub fn write<T: Serialize>(&mut self, line: &T) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.writer, line).context("serializing an event")?;
        self.writer.write_all(b"\n").context("writing an event")?;
        Ok(())
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush().context("flushing events")
    }
}
