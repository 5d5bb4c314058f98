//! What the engine asks the running system besides kernel events: /proc (process identity,
//! listening addresses) and build-context files. Live, the answers come from the system; while
//! recording they are also kept, so that a replay gets exactly the same answers in the same
//! order and reaches exactly the same conclusions.
use std::{
    cell::RefCell,
    collections::VecDeque,
    path::{Path, PathBuf},
    rc::Rc,
};

use serde::{Deserialize, Serialize};

use crate::{
    decode::Endpoint,
    docker::{
        dockerfile::{self, Dockerfile},
        store,
    },
    procfs::{self, ExecDetails, ProcSnapshot},
};

pub trait Host {
    /// Every process now running.
    fn processes(&self) -> Vec<ProcSnapshot>;
    fn snapshot(&self, tgid: u32) -> Option<ProcSnapshot>;
    fn exec_details(&self, tgid: u32) -> ExecDetails;
    fn listening_address(&self, tgid: u32, fd: i32) -> Option<Endpoint>;
    fn dockerfile(&self, cwd: Option<&str>, context: &str, name: Option<&str>) -> Option<Dockerfile>;
    /// The image a Docker container was created from.
    fn container_image(&self, container_id: &str) -> Option<String>;
    /// The images dockerd's store took in between two kernel (CLOCK_BOOTTIME) times: what a
    /// build, load or import wrote.
    fn images_written(&self, from_boot_ns: u64, to_boot_ns: u64) -> Vec<WrittenImage>;
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
}

impl LiveHost {
    pub fn new(proc_root: &Path) -> Self {
        Self {
            proc_root: proc_root.to_path_buf(),
            docker_data_root: PathBuf::from("/var/lib/docker"),
        }
    }

    pub fn with_docker_data_root(mut self, root: &Path) -> Self {
        self.docker_data_root = root.to_path_buf();
        self
    }
}

impl Host for LiveHost {
    fn processes(&self) -> Vec<ProcSnapshot> {
        procfs::all_tgids(&self.proc_root)
            .into_iter()
            .filter_map(|tgid| procfs::snapshot(&self.proc_root, tgid))
            .collect()
    }

    fn snapshot(&self, tgid: u32) -> Option<ProcSnapshot> {
        procfs::snapshot(&self.proc_root, tgid)
    }

    fn exec_details(&self, tgid: u32) -> ExecDetails {
        procfs::exec_details(&self.proc_root, tgid)
    }

    fn listening_address(&self, tgid: u32, fd: i32) -> Option<Endpoint> {
        procfs::listening_address(&self.proc_root, tgid, fd)
    }

    fn dockerfile(&self, cwd: Option<&str>, context: &str, name: Option<&str>) -> Option<Dockerfile> {
        dockerfile::from_directory(cwd, context, name)
    }

    fn container_image(&self, container_id: &str) -> Option<String> {
        store::container_image(&self.docker_data_root, container_id)
    }

    fn images_written(&self, from_boot_ns: u64, to_boot_ns: u64) -> Vec<WrittenImage> {
        // Docker dates files and images by the wall clock; converted with the offset of now, not
        // of the sensor's start, which NTP may have moved since.
        let boot_to_wall = procfs::boot_to_wall_ns();
        store::images_written(
            &self.docker_data_root,
            i128::from(from_boot_ns) + boot_to_wall,
            i128::from(to_boot_ns) + boot_to_wall,
        )
        .into_iter()
        .map(|image| WrittenImage {
            id: image.id,
            created_boot_ns: image.created_ns.map(|wall| wall - boot_to_wall),
            names: image.names,
            registry_digest: image.registry_digest,
        })
        .collect()
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
    Dockerfile(Option<Dockerfile>),
    ContainerImage(Option<String>),
    ImagesWritten(Vec<WrittenImage>),
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

    fn dockerfile(&self, cwd: Option<&str>, context: &str, name: Option<&str>) -> Option<Dockerfile> {
        self.keep(self.live.dockerfile(cwd, context, name), Answer::Dockerfile)
    }

    fn container_image(&self, container_id: &str) -> Option<String> {
        self.keep(self.live.container_image(container_id), Answer::ContainerImage)
    }

    fn images_written(&self, from_boot_ns: u64, to_boot_ns: u64) -> Vec<WrittenImage> {
        self.keep(
            self.live.images_written(from_boot_ns, to_boot_ns),
            Answer::ImagesWritten,
        )
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

    fn dockerfile(&self, _cwd: Option<&str>, _context: &str, _name: Option<&str>) -> Option<Dockerfile> {
        self.next(|a| match a {
            Answer::Dockerfile(d) => Some(d),
            _ => None,
        })
        .flatten()
    }

    fn container_image(&self, _container_id: &str) -> Option<String> {
        self.next(|a| match a {
            Answer::ContainerImage(i) => Some(i),
            _ => None,
        })
        .flatten()
    }

    fn images_written(&self, _from_boot_ns: u64, _to_boot_ns: u64) -> Vec<WrittenImage> {
        self.next(|a| match a {
            Answer::ImagesWritten(i) => Some(i),
            _ => None,
        })
        .unwrap_or_default()
    }
}
