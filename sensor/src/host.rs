//! What the engine asks the running system besides kernel events: /proc (process identity,
//! listening addresses) and build-context files. Live, the answers come from the system; while
//! recording they are also kept, so that a replay gets exactly the same answers in the same
//! order and reaches exactly the same conclusions.
use std::{
    cell::RefCell,
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    rc::Rc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    daemons::DaemonIdentity,
    decode::Endpoint,
    docker::{
        daemon_api::{self, ApiSocket},
        dockerfile::{self, ClientFiles, Dockerfile},
        store,
    },
    output::schema::ProcessView,
    procfs::{self, ExecDetails, ProcSnapshot},
    saferead::Credentials,
    worker,
};

/// How long one /proc question may take before the event loop gives up on it.
const PROC_DEADLINE: Duration = Duration::from_millis(250);
/// How long reading an image store may take.
const STORE_DEADLINE: Duration = Duration::from_millis(900);
/// How long a daemon whose API did not answer is left alone.
const API_REST: Duration = Duration::from_secs(10);

pub trait Host {
    /// Every process now running.
    fn processes(&self) -> Vec<ProcSnapshot>;
    fn snapshot(&self, tgid: u32) -> Option<ProcSnapshot>;
    fn exec_details(&self, tgid: u32) -> ExecDetails;
    fn listening_address(&self, tgid: u32, fd: i32) -> Option<Endpoint>;
    /// A daemon-less build's Dockerfile, read as its client would (see `saferead`); the error
    /// says why it was not read.
    fn dockerfile(
        &self,
        client: &ProcessView,
        context: &str,
        name: Option<&str>,
    ) -> Result<Dockerfile, String>;
    /// The image a Docker container was created from.
    fn container_image(&self, container_id: &str) -> Option<String>;
    /// The images a dockerd store took in between two kernel (CLOCK_BOOTTIME) times, read from
    /// its data root: what a build, load or import wrote (the classic store only).
    fn images_written(&self, store: &str, from_boot_ns: u64, to_boot_ns: u64) -> Vec<WrittenImage>;
    /// Every image of a store, as its daemon lists it; `None` when the daemon cannot be asked.
    fn store_images(&self, store: &str) -> Option<Vec<WrittenImage>>;
    /// Whether a process claiming a daemon's name runs a daemon binary and serves the API.
    fn daemon_identity(&self, tgid: u32) -> DaemonIdentity;
    /// The image a reference (a name, a full or short id) resolves to in a store now, and
    /// whether a registry served it.
    fn tagged_image(&self, store: &str, reference: &str) -> Option<TaggedImage>;
    /// Where a trusted daemon's store can be asked (`None`: no longer).
    fn serve_api(&self, _store: &str, _socket: Option<ApiSocket>) {}
}

/// What a name points to in dockerd's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedImage {
    pub id: String,
    /// The same image has a `name@sha256:` reference: a registry served this content.
    pub registry_digest: bool,
}

/// What makes a process a daemon (from the configuration).
#[derive(Debug, Clone)]
pub struct DaemonPolicy {
    pub binaries: Vec<PathBuf>,
    /// The host's root filesystem as the sensor sees it, to resolve `binaries` in.
    pub host_root: PathBuf,
    pub unix_sockets: Vec<PathBuf>,
    pub tcp_ports: Vec<u16>,
}

impl Default for DaemonPolicy {
    fn default() -> Self {
        Self {
            binaries: Vec::new(),
            host_root: PathBuf::from("/"),
            unix_sockets: Vec::new(),
            tcp_ports: Vec::new(),
        }
    }
}

/// An image that entered dockerd's store, dated on the kernel clock like events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenImage {
    /// `sha256:<64 hex>`.
    pub id: String,
    /// When its config says it was created (a build's product: during the build; a loaded or
    /// pulled image: whenever its builder made it, usually before this boot).
    pub created_boot_ns: Option<i128>,
    /// `name:tag` as the store names it.
    pub names: Vec<String>,
    /// A pull tied it to a registry manifest (`name@sha256:` in the store).
    #[serde(default)]
    pub registry_digest: bool,
}

pub type SharedHost = Rc<dyn Host>;

/// The running system, through a /proc mount.
pub struct LiveHost {
    proc_root: PathBuf,
    docker_data_root: PathBuf,
    daemons: DaemonPolicy,
    /// The API socket of each trusted daemon's store.
    apis: RefCell<BTreeMap<String, ApiSocket>>,
    /// Stores whose daemon did not answer in time, not asked again before then: a slow API
    /// must not hold the event loop question after question.
    api_resting: RefCell<BTreeMap<String, Instant>>,
    /// Sent with every API request, so the engine knows the sensor's own connections.
    marker: String,
}

impl LiveHost {
    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_path_buf(),
            docker_data_root: PathBuf::from("/var/lib/docker"),
            daemons: DaemonPolicy::default(),
            apis: RefCell::new(BTreeMap::new()),
            api_resting: RefCell::new(BTreeMap::new()),
            marker: String::new(),
        }
    }

    pub fn with_api_marker(mut self, marker: &str) -> Self {
        self.marker = marker.to_string();
        self
    }

    /// A store's data root: its own (`docker:<root>`), else the configured one.
    fn data_root(&self, store: &str) -> PathBuf {
        store
            .strip_prefix("docker:")
            .filter(|root| root.starts_with('/'))
            .map_or_else(|| self.docker_data_root.clone(), PathBuf::from)
    }

    fn api(&self, store: &str) -> Option<ApiSocket> {
        if self
            .api_resting
            .borrow()
            .get(store)
            .is_some_and(|until| Instant::now() < *until)
        {
            return None;
        }
        self.apis.borrow().get(store).cloned()
    }

    /// A question to `store`'s daemon failed. Only silence (a deadline, no connection, an I/O
    /// error) rests the API: an error status is an answer, and a client who can make the daemon
    /// refuse a reference must not be able to turn the questions off.
    fn api_failed(&self, store: &str, why: &dyn std::fmt::Display, silent: bool) {
        if !silent {
            tracing::debug!("{store}'s API refused a question: {why}");
            return;
        }
        tracing::warn!("{store}'s API did not answer ({why}); not asked for {API_REST:?}");
        self.api_resting
            .borrow_mut()
            .insert(store.to_string(), Instant::now() + API_REST);
    }

    pub fn with_daemon_policy(mut self, policy: DaemonPolicy) -> Self {
        self.daemons = policy;
        self
    }

    pub fn with_docker_data_root(mut self, root: &Path) -> Self {
        self.docker_data_root = root.to_path_buf();
        self
    }
}

impl LiveHost {
    /// Runs a /proc question off the event loop; a process that makes its /proc files hang
    /// gets no answer, not the sensor's attention.
    fn proc<T: Send + 'static>(
        &self,
        deadline: Duration,
        question: impl FnOnce(&Path) -> T + Send + 'static,
    ) -> Option<T> {
        let root = self.proc_root.clone();
        let answer = worker::run(deadline, move || question(&root));
        if answer.is_none() {
            tracing::warn!("a /proc or image-store read did not finish within {deadline:?}; skipped");
        }
        answer
    }
}

impl Host for LiveHost {
    fn processes(&self) -> Vec<ProcSnapshot> {
        // The whole table at start: many small reads, each bounded by the worker's deadline.
        let tgids = self.proc(PROC_DEADLINE, procfs::all_tgids).unwrap_or_default();
        tgids.into_iter().filter_map(|tgid| self.snapshot(tgid)).collect()
    }

    fn snapshot(&self, tgid: u32) -> Option<ProcSnapshot> {
        self.proc(PROC_DEADLINE, move |root| procfs::snapshot(root, tgid))
            .flatten()
    }

    fn exec_details(&self, tgid: u32) -> ExecDetails {
        self.proc(PROC_DEADLINE, move |root| procfs::exec_details(root, tgid))
            .unwrap_or_default()
    }

    fn listening_address(&self, tgid: u32, fd: i32) -> Option<Endpoint> {
        self.proc(PROC_DEADLINE, move |root| {
            procfs::listening_address(root, tgid, fd)
        })
        .flatten()
    }

    fn dockerfile(
        &self,
        client: &ProcessView,
        context: &str,
        name: Option<&str>,
    ) -> Result<Dockerfile, String> {
        let pid = client.pid;
        let groups = self
            .proc(PROC_DEADLINE, move |root| procfs::groups(root, pid))
            .flatten()
            .ok_or_else(|| format!("pid {pid} ended before its Dockerfile could be read"))?;
        let files = ClientFiles {
            pid,
            cwd: client.cwd.clone(),
            credentials: Credentials {
                uid: client.uid,
                gid: client.gid,
                groups,
            },
        };
        dockerfile::from_directory(&self.proc_root, &files, context, name)
    }

    fn container_image(&self, container_id: &str) -> Option<String> {
        let data_roots: Vec<PathBuf> = std::iter::once(self.docker_data_root.clone())
            .chain(self.apis.borrow().keys().map(|store| self.data_root(store)))
            .collect();
        let stores: Vec<String> = self.apis.borrow().keys().cloned().collect();
        let apis: Vec<ApiSocket> = stores.iter().filter_map(|store| self.api(store)).collect();
        let (id, marker) = (container_id.to_string(), self.marker.clone());
        self.proc(STORE_DEADLINE, move |proc_root| {
            apis.iter()
                .find_map(|api| {
                    daemon_api::container_image(api, &marker, proc_root, &id)
                        .ok()
                        .flatten()
                })
                .or_else(|| {
                    data_roots
                        .iter()
                        .find_map(|root| store::container_image(root, &id))
                })
        })
        .flatten()
    }

    fn store_images(&self, store: &str) -> Option<Vec<WrittenImage>> {
        let api = self.api(store)?;
        let marker = self.marker.clone();
        let boot_to_wall = procfs::boot_to_wall_ns();
        let listed = self.proc(STORE_DEADLINE, move |proc_root| {
            daemon_api::list_images(&api, &marker, proc_root)
        });
        let Some(listed) = listed else {
            self.api_failed(store, &"deadline", true);
            return None;
        };
        match listed {
            Ok(images) => Some(
                images
                    .into_iter()
                    .map(|image| WrittenImage {
                        created_boot_ns: image.created_ns().map(|wall| wall - boot_to_wall),
                        names: image.names(),
                        registry_digest: image.has_registry_digest(),
                        id: image.id,
                    })
                    .collect(),
            ),
            Err(err) => {
                self.api_failed(store, &err, err.is_silence());
                None
            }
        }
    }

    fn serve_api(&self, store: &str, socket: Option<ApiSocket>) {
        let mut apis = self.apis.borrow_mut();
        match socket {
            Some(socket) => {
                apis.insert(store.to_string(), socket);
            }
            None => {
                apis.remove(store);
            }
        }
    }

    fn images_written(&self, store: &str, from_boot_ns: u64, to_boot_ns: u64) -> Vec<WrittenImage> {
        // Docker dates files and images by the wall clock; converted with the offset of now, not
        // of the sensor's start, which NTP may have moved since.
        let boot_to_wall = procfs::boot_to_wall_ns();
        let data_root = self.data_root(store);
        let found = self
            .proc(STORE_DEADLINE, move |_| {
                store::images_written(
                    &data_root,
                    i128::from(from_boot_ns) + boot_to_wall,
                    i128::from(to_boot_ns) + boot_to_wall,
                )
            })
            .unwrap_or_default();
        found
            .into_iter()
            .map(|image| WrittenImage {
                id: image.id,
                created_boot_ns: image.created_ns.map(|wall| wall - boot_to_wall),
                names: image.names,
                registry_digest: image.registry_digest,
            })
            .collect()
    }

    fn daemon_identity(&self, tgid: u32) -> DaemonIdentity {
        // A daemon with tens of thousands of connections takes a while to list.
        let policy = self.daemons.clone();
        self.proc(STORE_DEADLINE, move |root| {
            procfs::daemon_identity(root, tgid, &policy)
        })
        .unwrap_or_default()
    }

    fn tagged_image(&self, store: &str, reference: &str) -> Option<TaggedImage> {
        let reference = reference.to_string();
        if let Some(api) = self.api(store) {
            let marker = self.marker.clone();
            let answer = self.proc(STORE_DEADLINE, move |proc_root| {
                daemon_api::inspect_image(&api, &marker, proc_root, &reference)
            });
            let Some(answer) = answer else {
                self.api_failed(store, &"deadline", true);
                return None;
            };
            return match answer {
                Ok(image) => image.map(|image| TaggedImage {
                    registry_digest: image.has_registry_digest(),
                    id: image.id,
                }),
                Err(err) => {
                    self.api_failed(store, &err, err.is_silence());
                    None
                }
            };
        }
        let data_root = self.data_root(store);
        self.proc(PROC_DEADLINE, move |_| {
            store::tagged_image(&data_root, &reference)
        })
        .flatten()
        .map(|(id, registry_digest)| TaggedImage { id, registry_digest })
    }
}

/// One answer the host gave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Processes(Vec<ProcSnapshot>),
    Snapshot(Option<ProcSnapshot>),
    ExecDetails(ExecDetails),
    ListeningAddress(Option<Endpoint>),
    Dockerfile(Result<Dockerfile, String>),
    ContainerImage(Option<String>),
    ImagesWritten(Vec<WrittenImage>),
    StoreImages(Option<Vec<WrittenImage>>),
    DaemonIdentity(DaemonIdentity),
    TaggedImage(Option<TaggedImage>),
}

/// The live system, keeping every answer until `take_answers`.
pub struct RecordingHost {
    live: LiveHost,
    answers: RefCell<Vec<Answer>>,
}

impl RecordingHost {
    pub fn new(live: LiveHost) -> Self {
        Self {
            live,
            answers: RefCell::new(Vec::new()),
        }
    }

    pub fn take_answers(&self) -> Vec<Answer> {
        std::mem::take(&mut *self.answers.borrow_mut())
    }

    fn keep<T: Clone>(&self, value: T, answer: impl FnOnce(T) -> Answer) -> T {
        self.answers.borrow_mut().push(answer(value.clone()));
        value
    }
}

impl Host for RecordingHost {
    fn processes(&self) -> Vec<ProcSnapshot> {
        self.keep(self.live.processes(), Answer::Processes)
    }

    fn snapshot(&self, tgid: u32) -> Option<ProcSnapshot> {
        self.keep(self.live.snapshot(tgid), Answer::Snapshot)
    }

    fn exec_details(&self, tgid: u32) -> ExecDetails {
        self.keep(self.live.exec_details(tgid), Answer::ExecDetails)
    }

    fn listening_address(&self, tgid: u32, fd: i32) -> Option<Endpoint> {
        self.keep(self.live.listening_address(tgid, fd), Answer::ListeningAddress)
    }

    fn dockerfile(
        &self,
        client: &ProcessView,
        context: &str,
        name: Option<&str>,
    ) -> Result<Dockerfile, String> {
        self.keep(self.live.dockerfile(client, context, name), Answer::Dockerfile)
    }

    fn container_image(&self, container_id: &str) -> Option<String> {
        self.keep(self.live.container_image(container_id), Answer::ContainerImage)
    }

    fn images_written(&self, store: &str, from_boot_ns: u64, to_boot_ns: u64) -> Vec<WrittenImage> {
        self.keep(
            self.live.images_written(store, from_boot_ns, to_boot_ns),
            Answer::ImagesWritten,
        )
    }

    fn store_images(&self, store: &str) -> Option<Vec<WrittenImage>> {
        self.keep(self.live.store_images(store), Answer::StoreImages)
    }

    fn serve_api(&self, store: &str, socket: Option<ApiSocket>) {
        self.live.serve_api(store, socket);
    }

    fn daemon_identity(&self, tgid: u32) -> DaemonIdentity {
        self.keep(self.live.daemon_identity(tgid), Answer::DaemonIdentity)
    }

    fn tagged_image(&self, store: &str, reference: &str) -> Option<TaggedImage> {
        self.keep(self.live.tagged_image(store, reference), Answer::TaggedImage)
    }
}

/// Answers from a recording, handed out in the order they were recorded.
#[derive(Default)]
pub struct ReplayHost {
    answers: RefCell<VecDeque<Answer>>,
    mismatches: RefCell<u64>,
}

impl ReplayHost {
    /// The answers recorded with the next input.
    pub fn load(&self, answers: Vec<Answer>) {
        let mut queue = self.answers.borrow_mut();
        if !queue.is_empty() {
            *self.mismatches.borrow_mut() += queue.len() as u64;
            queue.clear();
        }
        queue.extend(answers);
    }

    /// Questions the recording had no matching answer for (a recording from another version).
    pub fn mismatches(&self) -> u64 {
        *self.mismatches.borrow()
    }

    fn next<T>(&self, pick: impl FnOnce(Answer) -> Option<T>) -> Option<T> {
        let answer = self.answers.borrow_mut().pop_front();
        let picked = answer.and_then(pick);
        if picked.is_none() {
            *self.mismatches.borrow_mut() += 1;
        }
        picked
    }
}

impl Host for ReplayHost {
    fn processes(&self) -> Vec<ProcSnapshot> {
        self.next(|a| match a {
            Answer::Processes(p) => Some(p),
            _ => None,
        })
        .unwrap_or_default()
    }

    fn snapshot(&self, _tgid: u32) -> Option<ProcSnapshot> {
        self.next(|a| match a {
            Answer::Snapshot(s) => Some(s),
            _ => None,
        })
        .flatten()
    }

    fn exec_details(&self, _tgid: u32) -> ExecDetails {
        self.next(|a| match a {
            Answer::ExecDetails(d) => Some(d),
            _ => None,
        })
        .unwrap_or_default()
    }

    fn listening_address(&self, _tgid: u32, _fd: i32) -> Option<Endpoint> {
        self.next(|a| match a {
            Answer::ListeningAddress(l) => Some(l),
            _ => None,
        })
        .flatten()
    }

    fn dockerfile(
        &self,
        _client: &ProcessView,
        _context: &str,
        _name: Option<&str>,
    ) -> Result<Dockerfile, String> {
        self.next(|a| match a {
            Answer::Dockerfile(d) => Some(d),
            _ => None,
        })
        .unwrap_or_else(|| Err("not in the recording".into()))
    }

    fn container_image(&self, _container_id: &str) -> Option<String> {
        self.next(|a| match a {
            Answer::ContainerImage(i) => Some(i),
            _ => None,
        })
        .flatten()
    }

    fn images_written(&self, _store: &str, _from_boot_ns: u64, _to_boot_ns: u64) -> Vec<WrittenImage> {
        self.next(|a| match a {
            Answer::ImagesWritten(i) => Some(i),
            _ => None,
        })
        .unwrap_or_default()
    }

    fn store_images(&self, _store: &str) -> Option<Vec<WrittenImage>> {
        self.next(|a| match a {
            Answer::StoreImages(i) => Some(i),
            _ => None,
        })
        .flatten()
    }

    fn daemon_identity(&self, _tgid: u32) -> DaemonIdentity {
        self.next(|a| match a {
            Answer::DaemonIdentity(i) => Some(i),
            _ => None,
        })
        .unwrap_or_default()
    }

    fn tagged_image(&self, _store: &str, _reference: &str) -> Option<TaggedImage> {
        self.next(|a| match a {
            Answer::TaggedImage(t) => Some(t),
            _ => None,
        })
        .flatten()
    }
}

#[cfg(test)]
pub mod tests {
    use std::{cell::RefCell, collections::HashMap};

    use super::*;

    /// A daemon API that accepts and never answers is asked once, then left alone for a while;
    /// one that answers with an error status stays asked.
    #[test]
    fn a_silent_api_is_rested_and_a_refusing_one_is_not() {
        use std::{io::Write as _, os::unix::net::UnixListener};
        let dir = std::env::temp_dir().join(format!("bw-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let silent_path = dir.join("silent.sock");
        let refusing_path = dir.join("refusing.sock");
        let _ = std::fs::remove_file(&silent_path);
        let _ = std::fs::remove_file(&refusing_path);
        let silent = UnixListener::bind(&silent_path).unwrap();
        let refusing = UnixListener::bind(&refusing_path).unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in silent.incoming().flatten() {
                held.push(stream);
            }
        });
        std::thread::spawn(move || {
            for mut stream in refusing.incoming().flatten() {
                let mut request = [0u8; 512];
                let _ = std::io::Read::read(&mut stream, &mut request);
                let _ = stream.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n{}");
            }
        });
        let host = LiveHost::new(Path::new("/proc")).with_api_marker("m");
        let me = std::process::id();
        host.serve_api(
            "docker:/silent",
            Some(ApiSocket {
                tgid: me,
                path: silent_path,
            }),
        );
        host.serve_api(
            "docker:/refusing",
            Some(ApiSocket {
                tgid: me,
                path: refusing_path,
            }),
        );
        let started = Instant::now();
        assert_eq!(host.store_images("docker:/silent"), None);
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "asked, and waited"
        );
        let again = Instant::now();
        assert_eq!(host.store_images("docker:/silent"), None);
        assert_eq!(host.tagged_image("docker:/silent", "app:1"), None);
        assert!(
            again.elapsed() < Duration::from_millis(50),
            "rested: not asked again"
        );
        for _ in 0..2 {
            assert_eq!(host.tagged_image("docker:/refusing", "app:1"), None);
        }
        assert!(
            host.api("docker:/refusing").is_some(),
            "an error status is an answer"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A host whose answers a test scripts; everything unscripted is unknown.
    #[derive(Default)]
    pub struct ScriptedHost {
        pub identities: RefCell<HashMap<u32, DaemonIdentity>>,
        pub images: RefCell<Vec<WrittenImage>>,
    }

    impl Host for ScriptedHost {
        fn processes(&self) -> Vec<ProcSnapshot> {
            Vec::new()
        }
        fn snapshot(&self, _tgid: u32) -> Option<ProcSnapshot> {
            None
        }
        fn exec_details(&self, _tgid: u32) -> ExecDetails {
            ExecDetails::default()
        }
        fn listening_address(&self, _tgid: u32, _fd: i32) -> Option<Endpoint> {
            None
        }
        fn dockerfile(
            &self,
            _client: &ProcessView,
            _context: &str,
            _name: Option<&str>,
        ) -> Result<Dockerfile, String> {
            Err("scripted".into())
        }
        fn container_image(&self, _container_id: &str) -> Option<String> {
            None
        }
        fn images_written(&self, _store: &str, _from_boot_ns: u64, _to_boot_ns: u64) -> Vec<WrittenImage> {
            self.images.borrow().clone()
        }
        fn store_images(&self, _store: &str) -> Option<Vec<WrittenImage>> {
            None
        }
        fn daemon_identity(&self, tgid: u32) -> DaemonIdentity {
            self.identities.borrow().get(&tgid).cloned().unwrap_or_default()
        }
        fn tagged_image(&self, _store: &str, _reference: &str) -> Option<TaggedImage> {
            None
        }
    }
}
