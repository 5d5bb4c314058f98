//! What the engine asks the running system besides kernel events: /proc (process identity,
//! listening addresses), build-context files and the trusted daemons' image stores. Live, the
//! answers come from the system (`live`); while recording they are also kept, so that a replay
//! gets exactly the same answers in the same order and reaches exactly the same conclusions
//! (`recorded`).
pub mod live;
pub mod recorded;
#[cfg(test)]
pub mod scripted;

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::{
    docker::{daemon_api::ApiSocket, dockerfile::Dockerfile},
    model::{daemon::DaemonIdentity, process::ProcessView, socket::Endpoint},
    procfs::{ExecDetails, ProcSnapshot},
};

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
