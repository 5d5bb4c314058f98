//! Recording and replaying the host's answers: the live system keeping every answer it gives,
//! and a recording's answers handed out in the order they were given.
use std::{cell::RefCell, collections::VecDeque};

use serde::{Deserialize, Serialize};

use super::{live::LiveHost, Host, TaggedImage, WrittenImage};
use crate::{
    docker::{daemon_api::ApiSocket, dockerfile::Dockerfile},
    model::{daemon::DaemonIdentity, process::ProcessView, socket::Endpoint},
    procfs::{ExecDetails, ProcSnapshot},
};

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
