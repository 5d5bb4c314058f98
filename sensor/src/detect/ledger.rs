//! Where every image came from: registry pulls (client API pulls, daemon fetches, podman pulls),
//! builds, loads, imports, commits and tags, with their wall-clock time. Kept in memory, bounded,
//! and persisted atomically (temp file + rename) so a restart keeps history.
use std::{
    collections::VecDeque,
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::docker::reference::ImageRef;

const FILE_NAME: &str = "ledger.json";
const FORMAT_VERSION: u32 = 1;
/// How deep `tag` records are followed back to their source.
const MAX_TAG_DEPTH: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A client asked the daemon to pull (`images/create?fromImage`, `podman pull`).
    Pull,
    /// The daemon fetched a manifest from a registry itself (a build's FROM, a `docker run` of a
    /// missing image).
    RegistryFetch,
    Build,
    Load,
    Import,
    Commit,
    Tag,
}

impl Source {
    pub fn is_registry(self) -> bool {
        matches!(self, Source::Pull | Source::RegistryFetch)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Normalised reference (`docker.io/library/alpine:latest`), or an image id
    /// (`sha256:<64 hex>`) for the images a build, load or import wrote.
    pub reference: String,
    /// Its repository (`docker.io/library/alpine`); empty for an image id.
    pub repository: String,
    pub source: Source,
    /// Unix time, nanoseconds.
    pub time_ns: i128,
    /// The registry host of a pull, the source image (reference or id) of a tag, the build id of
    /// a build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct LedgerFile {
    version: u32,
    records: Vec<Record>,
}

/// What the ledger knows about one reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Provenance {
    pub pulled: bool,
    /// Non-registry origins (build, load, import, commit), oldest first, tags followed.
    pub origins: Vec<Source>,
}

pub struct Ledger {
    records: VecDeque<Record>,
    max_records: usize,
    path: Option<PathBuf>,
    dirty: bool,
}

impl Ledger {
    pub fn in_memory(max_records: usize) -> Self {
        Self {
            records: VecDeque::new(),
            max_records,
            path: None,
            dirty: false,
        }
    }

    /// Opens the ledger kept in `state_dir` (created 0700 when missing). An unreadable or
    /// corrupt file is an error: starting empty would silently forget every pull.
    pub fn open(state_dir: &Path, max_records: usize) -> anyhow::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("cannot create state directory {}", state_dir.display()))?;
        let path = state_dir.join(FILE_NAME);
        let mut ledger = Self {
            path: Some(path.clone()),
            ..Self::in_memory(max_records)
        };
        match fs::read(&path) {
            Ok(bytes) => {
                let file: LedgerFile = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "image ledger {} is corrupt (move it away to start a new one)",
                        path.display()
                    )
                })?;
                if file.version != FORMAT_VERSION {
                    anyhow::bail!(
                        "image ledger {} has format version {}, this buildwatch reads {FORMAT_VERSION}",
                        path.display(),
                        file.version
                    );
                }
                ledger.records = file.records.into();
                ledger.trim();
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read image ledger {}", path.display()))
            }
        }
        Ok(ledger)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.iter().cloned().collect()
    }

    /// An in-memory ledger holding `records` (a replay starts from the recorded ledger).
    pub fn from_records(records: Vec<Record>, max_records: usize) -> Self {
        let mut ledger = Self::in_memory(max_records);
        ledger.records = records.into();
        ledger.trim();
        ledger
    }

    pub fn record(&mut self, image: &ImageRef, source: Source, time_ns: i128, via: Option<String>) {
        self.push(image.to_string(), image.repository(), source, time_ns, via);
    }

    /// An image a build, load or import wrote, by its id (`sha256:<hex>`): runs by id find it.
    pub fn record_image_id(&mut self, id: &str, source: Source, time_ns: i128, via: Option<String>) {
        self.push(id.to_string(), String::new(), source, time_ns, via);
    }

    fn push(
        &mut self,
        reference: String,
        repository: String,
        source: Source,
        time_ns: i128,
        via: Option<String>,
    ) {
        self.records.push_back(Record {
            reference,
            repository,
            source,
            time_ns,
            via,
        });
        self.trim();
        self.dirty = true;
    }

    fn trim(&mut self) {
        while self.records.len() > self.max_records {
            self.records.pop_front();
        }
    }

    /// Whether `repository` was pulled from a registry at or after `since_ns`, from one of
    /// `trusted` registries when that list is not empty.
    pub fn pulled_since(&self, repository: &str, since_ns: i128, trusted: &dyn Fn(&str) -> bool) -> bool {
        self.records.iter().any(|r| {
            r.repository == repository
                && r.source.is_registry()
                && r.time_ns >= since_ns
                && trusted(registry_of(&r.repository))
        })
    }

    /// The provenance of one reference, following tags back to their sources.
    pub fn provenance(&self, image: &ImageRef, trusted: &dyn Fn(&str) -> bool) -> Provenance {
        self.provenance_from(image.to_string(), trusted)
    }

    /// The full id (`sha256:<64 hex>`) the ledger knows for an id or id prefix, with its
    /// provenance; `None` when no recorded image has that id.
    pub fn provenance_of_id(&self, id: &str, trusted: &dyn Fn(&str) -> bool) -> Option<(String, Provenance)> {
        let full = self
            .records
            .iter()
            .rev()
            .find(|r| same_image(&r.reference, id))?
            .reference
            .clone();
        let provenance = self.provenance_from(full.clone(), trusted);
        Some((full, provenance))
    }

    fn provenance_from(&self, start: String, trusted: &dyn Fn(&str) -> bool) -> Provenance {
        let mut provenance = Provenance::default();
        let mut wanted = vec![start];
        let mut seen = Vec::new();
        for _ in 0..MAX_TAG_DEPTH {
            let Some(reference) = wanted.pop() else { break };
            if seen.contains(&reference) {
                continue;
            }
            for record in self
                .records
                .iter()
                .filter(|r| same_image(&r.reference, &reference))
            {
                match record.source {
                    source if source.is_registry() => {
                        provenance.pulled |= trusted(registry_of(&record.repository));
                    }
                    Source::Tag => wanted.extend(record.via.clone()),
                    source => {
                        if !provenance.origins.contains(&source) {
                            provenance.origins.push(source);
                        }
                    }
                }
            }
            seen.push(reference);
        }
        provenance
    }

    /// Writes the ledger when it changed since the last write.
    pub fn persist(&mut self) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let file = LedgerFile {
            version: FORMAT_VERSION,
            records: self.records.iter().cloned().collect(),
        };
        let bytes = serde_json::to_vec(&file).context("serializing the image ledger")?;
        let temp = path.with_extension("json.tmp");
        let mut out = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("cannot write {}", temp.display()))?;
        out.write_all(&bytes)
            .and_then(|()| out.sync_all())
            .with_context(|| format!("cannot write {}", temp.display()))?;
        fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))?;
        self.dirty = false;
        Ok(())
    }
}

/// Whether a recorded reference is the one wanted: equal, or for ids (`sha256:...`) the
/// recorded full id starts with the wanted prefix, as Docker resolves short ids.
fn same_image(recorded: &str, wanted: &str) -> bool {
    if wanted.starts_with("sha256:") {
        recorded.starts_with(wanted)
    } else {
        recorded == wanted
    }
}

fn registry_of(repository: &str) -> &str {
    repository.split('/').next().unwrap_or(repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text: &str) -> ImageRef {
        ImageRef::parse(text).unwrap()
    }

    const ANY: &dyn Fn(&str) -> bool = &|_| true;

    #[test]
    fn pulls_within_the_window() {
        let mut ledger = Ledger::in_memory(10);
        ledger.record(&image("app:1"), Source::Pull, 100, Some("docker.io".into()));
        ledger.record(&image("evil:1"), Source::Build, 150, None);
        assert!(ledger.pulled_since("docker.io/library/app", 50, ANY));
        assert!(!ledger.pulled_since("docker.io/library/app", 101, ANY));
        assert!(!ledger.pulled_since("docker.io/library/evil", 0, ANY));
        assert!(!ledger.pulled_since("docker.io/library/app", 0, &|r| r == "127.0.0.1:5000"));
    }

    #[test]
    fn provenance_follows_tags() {
        let mut ledger = Ledger::in_memory(10);
        ledger.record(&image("evil:1"), Source::Build, 1, None);
        ledger.record(
            &image("nice:2"),
            Source::Tag,
            2,
            Some(image("evil:1").to_string()),
        );
        ledger.record(&image("alpine"), Source::Pull, 3, None);
        let tagged = ledger.provenance(&image("nice:2"), ANY);
        assert_eq!(tagged.origins, [Source::Build]);
        assert!(!tagged.pulled);
        assert!(ledger.provenance(&image("alpine:latest"), ANY).pulled);
        assert_eq!(ledger.provenance(&image("unknown"), ANY), Provenance::default());
    }

    #[test]
    fn built_image_ids_are_found_by_prefix_and_through_tags() {
        let mut ledger = Ledger::in_memory(10);
        let full = format!("sha256:{}", "ab12".repeat(16));
        ledger.record_image_id(&full, Source::Build, 1, Some("build-1".into()));
        let (id, provenance) = ledger.provenance_of_id("sha256:ab12ab12ab12", ANY).unwrap();
        assert_eq!(id, full);
        assert_eq!(provenance.origins, [Source::Build]);
        assert!(ledger.provenance_of_id("sha256:cd34cd34cd34", ANY).is_none());
        // `docker tag <id> innocent:1`
        ledger.record(
            &image("innocent:1"),
            Source::Tag,
            2,
            Some("sha256:ab12ab12ab12ab12".into()),
        );
        assert_eq!(
            ledger.provenance(&image("innocent:1"), ANY).origins,
            [Source::Build]
        );
        // An id is never a repository that was pulled.
        assert!(!ledger.pulled_since("", 0, ANY));
    }

    #[test]
    fn bounded_and_persisted() {
        let dir = std::env::temp_dir().join(format!("bw-ledger-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        {
            let mut ledger = Ledger::open(&dir, 2).unwrap();
            for (i, name) in ["a", "b", "c"].iter().enumerate() {
                ledger.record(&image(name), Source::Pull, i as i128, None);
            }
            ledger.persist().unwrap();
        }
        let ledger = Ledger::open(&dir, 2).unwrap();
        assert_eq!(ledger.len(), 2);
        assert!(!ledger.pulled_since("docker.io/library/a", 0, ANY));
        assert!(ledger.pulled_since("docker.io/library/c", 0, ANY));
        fs::write(dir.join(FILE_NAME), b"{not json").unwrap();
        let err = Ledger::open(&dir, 2).err().unwrap();
        assert!(format!("{err:#}").contains("corrupt"), "{err:#}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
