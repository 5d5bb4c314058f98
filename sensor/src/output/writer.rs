//! The writer thread: takes lines off the queue and writes them to stdout and/or a file. The
//! file is reopened on request (SIGHUP, after logrotate moved it) and rotated by size when
//! configured; both happen between lines, after a flush, so no line is torn or lost.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use super::queue::{LineQueue, QueuedLine};

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
    out: BufWriter<File>,
    size: u64,
}

impl FileTarget {
    fn open(settings: FileSettings) -> anyhow::Result<Self> {
        let file = open_append(&settings.path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            settings,
            out: BufWriter::new(file),
            size,
        })
    }

    fn reopen(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("flushing before reopening")?;
        let file = open_append(&self.settings.path)?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.out = BufWriter::new(file);
        Ok(())
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("flushing before rotating")?;
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

    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let limit = self.settings.max_size;
        if limit > 0 && self.size > 0 && self.size + bytes.len() as u64 > limit {
            self.rotate()?;
        }
        self.out.write_all(bytes).context("writing an event line")?;
        self.size += bytes.len() as u64;
        Ok(())
    }
}

/// Creates the directory (0700) when missing and opens the file for appending (0600).
fn open_append(path: &Path) -> anyhow::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create output directory {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open output file {}", path.display()))
}

/// Where lines go.
pub struct Targets {
    stdout: Option<BufWriter<io::Stdout>>,
    file: Option<FileTarget>,
}

impl Targets {
    /// Opens the file now, so a bad path fails at start with a clear message.
    pub fn open(stdout: bool, file: Option<FileSettings>) -> anyhow::Result<Self> {
        Ok(Self {
            stdout: stdout.then(|| BufWriter::new(io::stdout())),
            file: file.map(FileTarget::open).transpose()?,
        })
    }

    fn write(&mut self, line: &QueuedLine) -> anyhow::Result<()> {
        if let Some(out) = &mut self.stdout {
            out.write_all(&line.bytes).context("writing to stdout")?;
        }
        if let Some(file) = &mut self.file {
            file.write(&line.bytes)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(out) = &mut self.stdout {
            out.flush().context("flushing stdout")?;
        }
        if let Some(file) = &mut self.file {
            file.out.flush().context("flushing the output file")?;
        }
        Ok(())
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
                let result = lines
                    .iter()
                    .try_for_each(|line| targets.write(line))
                    .and_then(|()| targets.flush());
                match result {
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
        })
        .context("cannot start the output writer thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize) -> QueuedLine {
        QueuedLine {
            kind: "test",
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
            Targets::open(false, Some(settings)).unwrap(),
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
