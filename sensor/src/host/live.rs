//! The running system, through a /proc mount: each question runs on a worker thread with a
//! deadline, and a trusted daemon's store is asked through its own API socket.
use std::{
    cell::RefCell,
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{Host, TaggedImage, WrittenImage};
use crate::{
    clock,
    docker::{
        daemon_api::{self, ApiSocket},
        dockerfile::{self, ClientFiles, Dockerfile},
        store,
    },
    model::{
        daemon::{DaemonIdentity, DaemonPolicy},
        process::ProcessView,
        socket::Endpoint,
    },
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
        let boot_to_wall = clock::boot_to_wall_ns();
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
        let boot_to_wall = clock::boot_to_wall_ns();
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

#[cfg(test)]
mod tests {
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
}
