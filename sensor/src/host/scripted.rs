//! A host whose answers a test scripts.
use std::{cell::RefCell, collections::HashMap};

use super::{Host, TaggedImage, WrittenImage};
use crate::{
    docker::dockerfile::Dockerfile,
    model::{daemon::DaemonIdentity, process::ProcessView, socket::Endpoint},
    procfs::{ExecDetails, ProcSnapshot},
};

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
