//! The writer thread: takes lines off the queue and writes them to stdout, a file and/or
//! syslog. The file is reopened on request (SIGHUP, after logrotate moved it) and rotated by
//! size when configured; both happen between lines, after a flush, so no line is torn or lost.
use std::{
    fs::{self, File},
    io::{self, BufWriter, Write as _},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use super::{
    queue::{LineQueue, QueuedLine},
    syslog::{self, SyslogTarget},
};
use crate::files;

/// How long the writer waits for lines before checking for a reopen request.
const IDLE_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq)]
pub struct FileSettings {
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes (0: never).
    pub max_size: u64,
    /// Rotated files kept: `events.jsonl.1` (newest) .. `.N`.
    pub max_backups: u32,
}

struct FileTarget {
    settings: FileSettings,
    out: File,
    size: u64,
    /// A failed write stopped inside a line: the next write starts a new line first.
    torn: bool,
    /// A reopen failed (the path became a symlink, say): lines are counted as lost, not
    /// written to the old file, until a reopen succeeds (tried again with each batch).
    detached: bool,
}

impl FileTarget {
    fn open(settings: FileSettings) -> anyhow::Result<Self> {
        let file = files::open_append(&settings.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            settings,
            out: file,
            size,
            torn: false,
            detached: false,
        })
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        let opened = files::open_append(&self.settings.path);
        self.detached = opened.is_err();
        let file = opened?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.out = file;
        Ok(())
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        let path = &self.settings.path;
        let backup = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        let keep = self.settings.max_backups.max(1);
        let _ = fs::remove_file(backup(keep));
        for n in (1..keep).rev() {
            let _ = fs::rename(backup(n), backup(n + 1));
        }
        fs::rename(path, backup(1)).with_context(|| format!("cannot rotate {}", path.display()))?;
        self.reopen()
    }

    /// Writes whole lines, rotating between them; returns the kinds of the lines that did not
    /// make it (a full disk), so they are counted, and recovers once writes work again.
    fn write_lines(&mut self, lines: &[QueuedLine]) -> (Vec<&'static str>, Option<anyhow::Error>) {
        if self.detached {
            if let Err(err) = self.reopen() {
                return (lines.iter().map(|l| l.kind).collect(), Some(err));
            }
        }
        let mut lost = Vec::new();
        let mut error = None;
        let mut start = 0;
        while start < lines.len() {
            let limit = self.settings.max_size;
            let mut end = start;
            let mut bytes = 0u64;
            while end < lines.len() {
                let next = lines[end].bytes.len() as u64;
                if limit > 0 && end > start && self.size + bytes + next > limit {
                    break;
                }
                bytes += next;
                end += 1;
            }
            if limit > 0 && self.size > 0 && self.size + bytes > limit {
                if let Err(err) = self.rotate() {
                    error.get_or_insert(err);
                }
            }
            let batch = &lines[start..end];
            if let Err(err) = self.write_batch(batch, &mut lost) {
                error.get_or_insert(err);
            }
            start = end;
        }
        (lost, error)
    }

    fn write_batch(&mut self, batch: &[QueuedLine], lost: &mut Vec<&'static str>) -> anyhow::Result<()> {
        let mut buffer = Vec::with_capacity(batch.iter().map(|l| l.bytes.len()).sum::<usize>() + 1);
        let prefix = usize::from(self.torn);
        if self.torn {
            buffer.push(b'\n');
        }
        let mut ends = Vec::with_capacity(batch.len());
        for line in batch {
            buffer.extend_from_slice(&line.bytes);
            ends.push(buffer.len());
        }
        let mut written = 0;
        let result = loop {
            if written == buffer.len() {
                break Ok(());
            }
            match self.out.write(&buffer[written..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
        };
        self.size += written as u64;
        if written >= prefix {
            self.torn = false;
        }
        if result.is_err() {
            let complete = ends.iter().take_while(|end| **end <= written).count();
            lost.extend(batch[complete..].iter().map(|l| l.kind));
            // Stopped inside a line (not at a line end): start the next write afresh.
            if written > 0 && !ends.contains(&written) && written != prefix {
                self.torn = true;
            }
        }
        result.context("writing event lines to the output file")
    }
}

/// Where lines go.
pub struct Targets {
    stdout: Option<BufWriter<io::Stdout>>,
    file: Option<FileTarget>,
    syslog: Option<SyslogTarget>,
}

impl Targets {
    /// Opens the file now, so a bad path fails at start with a clear message. A syslog
    /// receiver is connected on the first message, and waited for when away.
    pub fn open(
        stdout: bool,
        file: Option<FileSettings>,
        syslog: Option<SyslogTarget>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            stdout: stdout.then(|| BufWriter::new(io::stdout())),
            file: file.map(FileTarget::open).transpose()?,
            syslog,
        })
    }

    /// Writes a batch to every target; returns the kinds of lines a target lost, and the first
    /// error.
    fn write(&mut self, lines: &[QueuedLine]) -> (Vec<&'static str>, Option<anyhow::Error>) {
        let mut lost = Vec::new();
        let mut error = None;
        if let Some(out) = &mut self.stdout {
            let result = lines
                .iter()
                .try_for_each(|line| out.write_all(&line.bytes))
                .and_then(|()| out.flush());
            if let Err(err) = result {
                // What was buffered is gone with the pipe.
                lost.extend(lines.iter().map(|l| l.kind));
                error = Some(anyhow::Error::new(err).context("writing to stdout"));
            }
        }
        if let Some(file) = &mut self.file {
            let (file_lost, file_error) = file.write_lines(lines);
            lost.extend(file_lost);
            if error.is_none() {
                error = file_error;
            }
        }
        if let Some(syslog) = &mut self.syslog {
            lost.extend(syslog.write(lines));
        }
        (lost, error)
    }
}

/// Runs the writer on its own thread until the queue is closed and drained.
pub fn spawn(
    queue: LineQueue,
    mut targets: Targets,
    reopen: Arc<AtomicBool>,
) -> anyhow::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("buildwatch-writer".into())
        .spawn(move || {
            let mut failing = false;
            while let Some(lines) = queue.pop_all(IDLE_WAIT) {
                if reopen.swap(false, Ordering::AcqRel) {
                    if let Some(file) = &mut targets.file {
                        match file.reopen() {
                            Ok(()) => tracing::info!(path = %file.settings.path.display(), "reopened the output file"),
                            Err(err) => tracing::error!("{err:#}"),
                        }
                    }
                }
                let (lost, error) = targets.write(&lines);
                for kind in lost {
                    queue.write_error(kind);
                }
                if let Some(syslog) = &targets.syslog {
                    queue.syslog_progress(syslog.stats());
                }
                match error.map_or(Ok(()), Err) {
                    Err(err) if !failing => {
                        tracing::error!("event output failing: {err:#}");
                        failing = true;
                    }
                    Err(_) => {}
                    Ok(()) if failing => {
                        tracing::info!("event output works again");
                        failing = false;
                    }
                    Ok(()) => {}
                }
            }
            if let Some(syslog) = &mut targets.syslog {
                syslog.finish(std::time::Instant::now() + syslog::EXIT_WAIT);
                let stats = syslog.stats();
                tracing::info!(
                    target = %stats.target,
                    sent = stats.sent,
                    resent = stats.resent,
                    pending = stats.pending,
                    "syslog delivery at exit"
                );
            }
        })
        .context("cannot start the output writer thread")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn line(n: usize) -> QueuedLine {
        QueuedLine {
            kind: "test",
            severity: None,
            bytes: format!("{{\"n\":{n:05}}}\n").into_bytes(),
        }
    }

    fn lines_in(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn size_rotation_keeps_every_line_whole() {
        let dir = std::env::temp_dir().join(format!("bw-writer-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("out/events.jsonl");
        let settings = FileSettings {
            path: path.clone(),
            max_size: 1000,
            max_backups: 100,
        };
        let queue = LineQueue::new(10_000);
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = spawn(
            queue.clone(),
            Targets::open(false, Some(settings), None).unwrap(),
            reopen,
        )
        .unwrap();
        for n in 0..1000 {
            queue.push(line(n));
        }
        queue.close();
        writer.join().unwrap();
        let mut all = Vec::new();
        for n in (1..=100).rev() {
            let backup = PathBuf::from(format!("{}.{n}", path.display()));
            let lines = lines_in(&backup);
            if backup.exists() {
                assert!(fs::metadata(&backup).unwrap().len() <= 1000);
            }
            all.extend(lines);
        }
        all.extend(lines_in(&path));
        let expected: Vec<String> = (0..1000).map(|n| format!("{{\"n\":{n:05}}}")).collect();
        assert_eq!(all, expected, "every line once, whole, in order");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
