//! Where every image came from: registry pulls (client API pulls, daemon fetches, podman pulls),
//! builds, loads, imports, commits and tags, with their wall-clock time. Kept in memory, bounded,
//! and persisted atomically (temp file + rename) so a restart keeps history.
use std::{
    collections::VecDeque,
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::model::image_ref::ImageRef;

const FILE_NAME: &str = "ledger.json";
const FORMAT_VERSION: u32 = 2;
/// Version 1 had no stores: its records were all dockerd's, at its default data root.
const V1_STORE: &str = "docker:/var/lib/docker";
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
    /// The image store it happened in (`docker:/var/lib/docker`, `podman:uid-1000`): one
    /// daemon's history never speaks for another's.
    #[serde(default)]
    pub store: String,
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

/// What the ledger knows about one reference: where the content it names now came from. A name
/// is a pointer that moves: its latest definition (a pull, build, load, import, commit or tag)
/// decides, so a name that was pulled once and then built over is the build's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Provenance {
    pub pulled: bool,
    /// Where its current content came from when not a registry (build, load, import, commit),
    /// tags followed.
    pub origins: Vec<Source>,
    /// The name had pulled content before it was redefined.
    pub replaced_pull: bool,
}

pub struct Ledger {
    records: VecDeque<Record>,
    max_records: usize,
    dirty: bool,
    /// Writes the file off the event loop.
    persister: Option<persist::Persister>,
    /// When a corrupt ledger was moved aside (Unix ns): pulls before it are unknown.
    reset_ns: Option<i128>,
}

/// What opening the ledger found wrong, for a `sensor.warning` line.
#[derive(Debug, Clone, Serialize)]
pub struct OpenWarning {
    pub message: String,
    /// Where the unreadable file went.
    pub moved_to: Option<String>,
}

impl Ledger {
    pub fn in_memory(max_records: usize) -> Self {
        Self {
            records: VecDeque::new(),
            max_records,
            dirty: false,
            persister: None,
            reset_ns: None,
        }
    }

    /// Opens the ledger kept in `state_dir` (created 0700 when missing). A corrupt or unreadable
    /// file is moved aside and the ledger starts empty: a sensor that refused to start would be
    /// blind until someone acted. The warning says so, and detections within `lookback` of the
    /// reset mention it.
    pub fn open(state_dir: &Path, max_records: usize) -> anyhow::Result<(Self, Option<OpenWarning>)> {
        crate::files::ensure_private_dir(state_dir)
            .with_context(|| format!("state directory {}", state_dir.display()))?;
        let path = state_dir.join(FILE_NAME);
        let mut ledger = Self {
            persister: Some(persist::Persister::spawn(path.clone())?),
            ..Self::in_memory(max_records)
        };
        let loaded = match crate::saferead::read_checked(None, &path, MAX_FILE_BYTES) {
            Ok(bytes) => parse_file(&bytes),
            Err(crate::saferead::Refusal::Open { reason, .. }) if reason.contains("No such file") => {
                Ok(Vec::new())
            }
            Err(refusal) => Err(refusal.to_string()),
        };
        let warning = match loaded {
            Ok(records) => {
                ledger.records = records.into();
                ledger.trim();
                None
            }
            Err(why) => {
                let now = crate::clock::clock_ns(libc::CLOCK_REALTIME);
                let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), now / 1_000_000_000));
                let moved_to = fs::rename(&path, &aside)
                    .ok()
                    .map(|()| aside.display().to_string());
                ledger.reset_ns = Some(now);
                ledger.dirty = true;
                Some(OpenWarning {
                    message: format!(
                        "image ledger {} was unreadable ({why}); starting with an empty ledger: pulls before now are unknown",
                        path.display()
                    ),
                    moved_to,
                })
            }
        };
        Ok((ledger, warning))
    }

    /// When the ledger was reset (a corrupt file moved aside), Unix ns.
    pub fn reset_ns(&self) -> Option<i128> {
        self.reset_ns
    }

    /// Failed writes since start (retried until one succeeds).
    pub fn write_errors(&self) -> u64 {
        self.persister.as_ref().map_or(0, persist::Persister::errors)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    pub fn record(
        &mut self,
        store: &str,
        image: &ImageRef,
        source: Source,
        time_ns: i128,
        via: Option<String>,
    ) {
        self.push(store, image.to_string(), image.repository(), source, time_ns, via);
    }

    /// An image a build, load or import wrote, by its id (`sha256:<hex>`): runs by id find it.
    pub fn record_image_id(
        &mut self,
        store: &str,
        id: &str,
        source: Source,
        time_ns: i128,
        via: Option<String>,
    ) {
        self.push(store, id.to_string(), String::new(), source, time_ns, via);
    }

    fn push(
        &mut self,
        store: &str,
        reference: String,
        repository: String,
        source: Source,
        time_ns: i128,
        via: Option<String>,
    ) {
        self.records.push_back(Record {
            store: store.to_string(),
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
    pub fn pulled_since(
        &self,
        store: &str,
        repository: &str,
        since_ns: i128,
        trusted: &dyn Fn(&str) -> bool,
    ) -> bool {
        self.records.iter().any(|r| {
            r.store == store
                && r.repository == repository
                && r.source.is_registry()
                && r.time_ns >= since_ns
                && trusted(registry_of(&r.repository))
        })
    }

    /// The provenance of one reference, following tags back to their sources.
    pub fn provenance(&self, store: &str, image: &ImageRef, trusted: &dyn Fn(&str) -> bool) -> Provenance {
        self.provenance_from(store, image.to_string(), trusted)
    }

    /// The full id (`sha256:<64 hex>`) the ledger knows for an id or id prefix, with its
    /// provenance; `None` when no recorded image has that id.
    pub fn provenance_of_id(
        &self,
        store: &str,
        id: &str,
        trusted: &dyn Fn(&str) -> bool,
    ) -> Option<(String, Provenance)> {
        let full = self
            .records
            .iter()
            .rev()
            .find(|r| r.store == store && same_image(&r.reference, id))?
            .reference
            .clone();
        let provenance = self.provenance_from(store, full.clone(), trusted);
        Some((full, provenance))
    }

    fn provenance_from(&self, store: &str, start: String, trusted: &dyn Fn(&str) -> bool) -> Provenance {
        let mut provenance = Provenance::default();
        let mut reference = start;
        let mut seen = Vec::new();
        for _ in 0..MAX_TAG_DEPTH {
            if seen.contains(&reference) {
                break;
            }
            let records: Vec<&Record> = self
                .records
                .iter()
                .filter(|r| r.store == store && same_image(&r.reference, &reference))
                .collect();
            let pulled = |r: &&Record| r.source.is_registry() && trusted(registry_of(&r.repository));
            // A registry fetch (a FROM) does not move a local name; everything else does.
            let Some(latest) = records.iter().rev().find(|r| r.source != Source::RegistryFetch) else {
                provenance.pulled = records.iter().any(pulled);
                return provenance;
            };
            let earlier_pull = records
                .iter()
                .take_while(|r| !std::ptr::eq(**r, *latest))
                .any(pulled);
            match latest.source {
                Source::Pull => {
                    provenance.pulled = pulled(latest);
                    return provenance;
                }
                Source::Tag => {
                    provenance.replaced_pull |= earlier_pull;
                    seen.push(reference);
                    match latest.via.clone() {
                        Some(via) => reference = via,
                        None => return provenance,
                    }
                }
                source => {
                    provenance.replaced_pull |= earlier_pull;
                    provenance.origins.push(source);
                    return provenance;
                }
            }
        }
        provenance
    }

    /// Hands the ledger to the writer thread when it changed since the last hand-over (atomic
    /// replace with fsync of the file and its directory; failures are counted and retried).
    pub fn persist(&mut self) -> anyhow::Result<()> {
        let Some(persister) = &self.persister else {
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
        persister.write(bytes);
        self.dirty = false;
        Ok(())
    }

    /// Waits until everything handed over is on disk (or failed); at shutdown.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        self.persist()?;
        if let Some(persister) = &self.persister {
            persister.wait_idle();
        }
        Ok(())
    }
}

/// Largest ledger file read (a 100,000-record ledger is about 20 MB).
const MAX_FILE_BYTES: u64 = 256 << 20;

/// The records of a ledger file (any supported version); the error says what is wrong.
pub fn parse_file(bytes: &[u8]) -> Result<Vec<Record>, String> {
    let file: LedgerFile = serde_json::from_slice(bytes).map_err(|err| format!("not a ledger: {err}"))?;
    match file.version {
        FORMAT_VERSION => Ok(file.records),
        1 => Ok(file
            .records
            .into_iter()
            .map(|record| Record {
                store: V1_STORE.to_string(),
                ..record
            })
            .collect()),
        other => Err(format!(
            "format version {other}, this buildwatch reads {FORMAT_VERSION}"
        )),
    }
}

mod persist {
    //! The ledger's writer thread: the latest snapshot wins, each write is a new file (O_EXCL,
    //! O_NOFOLLOW, 0600) fsynced and renamed over the old one, then the directory is fsynced.
    use std::{
        path::PathBuf,
        sync::{
            atomic::{AtomicU64, Ordering},
            Arc, Condvar, Mutex,
        },
        time::Duration,
    };

    use anyhow::Context as _;

    const RETRY: Duration = Duration::from_secs(1);

    #[derive(Default)]
    struct State {
        latest: Option<Vec<u8>>,
        busy: bool,
        closed: bool,
    }

    pub struct Persister {
        shared: Arc<(Mutex<State>, Condvar)>,
        errors: Arc<AtomicU64>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Persister {
        pub fn spawn(path: PathBuf) -> anyhow::Result<Self> {
            let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
            let errors = Arc::new(AtomicU64::new(0));
            let (state, counter) = (Arc::clone(&shared), Arc::clone(&errors));
            let thread = std::thread::Builder::new()
                .name("buildwatch-ledger".into())
                .spawn(move || run(&path, &state, &counter))
                .context("cannot start the ledger writer thread")?;
            Ok(Self {
                shared,
                errors,
                thread: Some(thread),
            })
        }

        pub fn write(&self, bytes: Vec<u8>) {
            let (lock, wake) = &*self.shared;
            lock.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .latest = Some(bytes);
            wake.notify_all();
        }

        pub fn errors(&self) -> u64 {
            self.errors.load(Ordering::Relaxed)
        }

        /// Waits (at most a few seconds) until nothing is pending.
        pub fn wait_idle(&self) {
            let (lock, wake) = &*self.shared;
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut state = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            while state.latest.is_some() || state.busy {
                let now = std::time::Instant::now();
                if now >= deadline {
                    return;
                }
                state = wake
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
        }
    }

    impl Drop for Persister {
        fn drop(&mut self) {
            let (lock, wake) = &*self.shared;
            lock.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .closed = true;
            wake.notify_all();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn run(path: &std::path::Path, shared: &(Mutex<State>, Condvar), errors: &AtomicU64) {
        let (lock, wake) = shared;
        loop {
            let bytes = {
                let mut state = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                while state.latest.is_none() && !state.closed {
                    state = wake
                        .wait(state)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                match state.latest.take() {
                    Some(bytes) => {
                        state.busy = true;
                        bytes
                    }
                    None => return,
                }
            };
            let result = crate::files::replace_atomically(path, &bytes);
            let mut state = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            state.busy = false;
            if let Err(err) = result {
                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("cannot save the image ledger (retrying every second): {err:#}");
                }
                // Retry with these bytes unless newer ones arrived meanwhile.
                if state.latest.is_none() && !state.closed {
                    state.latest = Some(bytes);
                    drop(state);
                    std::thread::sleep(RETRY);
                    continue;
                }
            }
            wake.notify_all();
        }
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
    const S: &str = "docker:/var/lib/docker";

    /// Names move: pulled, then built over (or tagged over with a built image), a name is the
    /// build's; pulled again, it is the registry's again.
    #[test]
    fn the_latest_definition_of_a_name_decides() {
        let mut ledger = Ledger::in_memory(20);
        let app = image("127.0.0.1:5000/accapp:1");
        ledger.record(S, &app, Source::Pull, 1, None);
        assert!(ledger.provenance(S, &app, ANY).pulled);
        ledger.record(S, &app, Source::Build, 2, Some("build-1".into()));
        let rebuilt = ledger.provenance(S, &app, ANY);
        assert!(!rebuilt.pulled && rebuilt.replaced_pull, "{rebuilt:?}");
        assert_eq!(rebuilt.origins, [Source::Build]);
        // A FROM fetching its manifest again does not move the local name.
        ledger.record(S, &app, Source::RegistryFetch, 3, None);
        assert!(!ledger.provenance(S, &app, ANY).pulled);
        ledger.record(S, &app, Source::Pull, 4, None);
        assert!(ledger.provenance(S, &app, ANY).pulled);
        // `docker tag <built id> app:1` after a pull.
        let id = format!("sha256:{}", "ee".repeat(32));
        ledger.record_image_id(S, &id, Source::Build, 5, None);
        ledger.record(S, &app, Source::Tag, 6, Some(id.clone()));
        let tagged = ledger.provenance(S, &app, ANY);
        assert_eq!(tagged.origins, [Source::Build]);
        assert!(tagged.replaced_pull);
        // Only ever fetched by a build's FROM: pulled.
        let base = image("127.0.0.1:5000/base:1");
        ledger.record(S, &base, Source::RegistryFetch, 7, None);
        assert!(ledger.provenance(S, &base, ANY).pulled);
    }

    #[test]
    fn one_stores_pull_never_excuses_another() {
        let mut ledger = Ledger::in_memory(10);
        ledger.record("podman:uid-1000", &image("app:1"), Source::Pull, 100, None);
        assert!(!ledger.pulled_since(S, "docker.io/library/app", 0, ANY));
        assert!(ledger.pulled_since("podman:uid-1000", "docker.io/library/app", 0, ANY));
        assert!(!ledger.provenance(S, &image("app:1"), ANY).pulled);
    }

    #[test]
    fn pulls_within_the_window() {
        let mut ledger = Ledger::in_memory(10);
        ledger.record(S, &image("app:1"), Source::Pull, 100, Some("docker.io".into()));
        ledger.record(S, &image("evil:1"), Source::Build, 150, None);
        assert!(ledger.pulled_since(S, "docker.io/library/app", 50, ANY));
        assert!(!ledger.pulled_since(S, "docker.io/library/app", 101, ANY));
        assert!(!ledger.pulled_since(S, "docker.io/library/evil", 0, ANY));
        assert!(!ledger.pulled_since(S, "docker.io/library/app", 0, &|r| r == "127.0.0.1:5000"));
    }

    #[test]
    fn provenance_follows_tags() {
        let mut ledger = Ledger::in_memory(10);
        ledger.record(S, &image("evil:1"), Source::Build, 1, None);
        ledger.record(
            S,
            &image("nice:2"),
            Source::Tag,
            2,
            Some(image("evil:1").to_string()),
        );
        ledger.record(S, &image("alpine"), Source::Pull, 3, None);
        let tagged = ledger.provenance(S, &image("nice:2"), ANY);
        assert_eq!(tagged.origins, [Source::Build]);
        assert!(!tagged.pulled);
        assert!(ledger.provenance(S, &image("alpine:latest"), ANY).pulled);
        assert_eq!(
            ledger.provenance(S, &image("unknown"), ANY),
            Provenance::default()
        );
    }

    #[test]
    fn built_image_ids_are_found_by_prefix_and_through_tags() {
        let mut ledger = Ledger::in_memory(10);
        let full = format!("sha256:{}", "ab12".repeat(16));
        ledger.record_image_id(S, &full, Source::Build, 1, Some("build-1".into()));
        let (id, provenance) = ledger.provenance_of_id(S, "sha256:ab12ab12ab12", ANY).unwrap();
        assert_eq!(id, full);
        assert_eq!(provenance.origins, [Source::Build]);
        assert!(ledger.provenance_of_id(S, "sha256:cd34cd34cd34", ANY).is_none());
        // `docker tag <id> innocent:1`
        ledger.record(
            S,
            &image("innocent:1"),
            Source::Tag,
            2,
            Some("sha256:ab12ab12ab12ab12".into()),
        );
        assert_eq!(
            ledger.provenance(S, &image("innocent:1"), ANY).origins,
            [Source::Build]
        );
        // An id is never a repository that was pulled.
        assert!(!ledger.pulled_since(S, "", 0, ANY));
    }

    #[test]
    fn bounded_persisted_and_reset_when_corrupt() {
        let dir = std::env::temp_dir().join(format!("bw-ledger-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        {
            let (mut ledger, warning) = Ledger::open(&dir, 2).unwrap();
            assert!(warning.is_none());
            for (i, name) in ["a", "b", "c"].iter().enumerate() {
                ledger.record(S, &image(name), Source::Pull, i as i128, None);
            }
            ledger.sync().unwrap();
        }
        let (ledger, _) = Ledger::open(&dir, 2).unwrap();
        assert_eq!(ledger.len(), 2);
        assert!(!ledger.pulled_since(S, "docker.io/library/a", 0, ANY));
        assert!(ledger.pulled_since(S, "docker.io/library/c", 0, ANY));
        drop(ledger);
        fs::write(dir.join(FILE_NAME), b"{not json").unwrap();
        let (ledger, warning) = Ledger::open(&dir, 2).unwrap();
        let warning = warning.expect("a corrupt ledger is reported");
        assert!(warning.message.contains("unreadable"), "{}", warning.message);
        let aside = warning.moved_to.expect("moved aside");
        assert!(aside.contains("ledger.json.corrupt-"), "{aside}");
        assert_eq!(fs::read(&aside).unwrap(), b"{not json");
        assert_eq!(ledger.len(), 0);
        assert!(ledger.reset_ns().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn version_1_ledgers_belong_to_the_default_docker_store() {
        let v1 = br#"{"version":1,"records":[{"reference":"docker.io/library/a:1","repository":"docker.io/library/a","source":"pull","time_ns":5}]}"#;
        let records = parse_file(v1).unwrap();
        assert_eq!(records[0].store, V1_STORE);
    }
}
