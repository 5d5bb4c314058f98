//! Loads and imports as correlation follows them: the transfer whose response is still
//! streaming, the `image_side_loaded` detection waiting for the names of what was loaded, and
//! the names a `docker save` archive carries.
use std::collections::HashMap;

use crate::model::{ids::OperationId, image_ref::ImageRef, operation::OperationView, origin::Origin};

use super::ledger::Source;

/// How long an `image_side_loaded` detection waits after the request for its load to end and
/// name the images (a large archive names them only at its end).
pub const SIDE_LOAD_WAIT_NS: u64 = 2_000_000_000;

/// A store's images (id -> names) as its daemon listed them when an operation began.
pub type StoreSnapshot = HashMap<String, Vec<String>>;

/// A load or import whose response is still streaming.
pub struct Transfer {
    /// The operation's id.
    pub id: OperationId,
    /// The daemon's image store (confirmed transfers only record anything).
    pub store: Option<String>,
    pub source: Source,
    pub start_ns: u64,
    /// The store's images when it began (the daemon could be asked).
    pub store_before: Option<StoreSnapshot>,
    pub conn_ids: Vec<u64>,
    /// Its detection, until the images are known or it is due.
    pub side_load: Option<SideLoad>,
}

/// An `image_side_loaded` detection waiting for the names of what was loaded.
pub struct SideLoad {
    pub view: OperationView,
    /// "loaded" or "imported".
    pub how: &'static str,
    /// Names known so far (the archive's manifest when it was captured, the import's target).
    pub names: Vec<String>,
    pub evidence: Vec<String>,
    pub due_ns: u64,
}

impl SideLoad {
    /// The detection for a load or import requested at `at`, due `SIDE_LOAD_WAIT_NS` later.
    pub fn new(
        view: OperationView,
        how: &'static str,
        names: Vec<String>,
        evidence: Vec<String>,
        at: u64,
    ) -> Self {
        Self {
            view,
            how,
            names,
            evidence,
            due_ns: at + SIDE_LOAD_WAIT_NS,
        }
    }
}

/// Whether dockerd's image store is where the request's images go: served by dockerd, or by a
/// daemon the sensor did not see (a remote client's request whose daemon half was missed).
/// Podman serves the same API but keeps its images elsewhere.
pub fn served_by_dockerd(origin: &Origin) -> bool {
    origin.daemon.as_ref().is_none_or(|d| d.comm == "dockerd")
}

/// Image names in a `docker save` archive, as far as it was captured (`manifest.json`'s
/// RepoTags, or the legacy `repositories` file).
pub fn loaded_images(tar_bytes: &[u8]) -> Vec<ImageRef> {
    use std::io::Read as _;
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(tar_bytes);
    let Ok(entries) = archive.entries() else {
        return names;
    };
    for entry in entries {
        let Ok(mut entry) = entry else { break };
        let path = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path != "manifest.json" && path != "repositories" {
            continue;
        }
        let mut text = String::new();
        if (&mut entry).take(1 << 20).read_to_string(&mut text).is_err() {
            break;
        }
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if path == "manifest.json" {
            for image in json.as_array().into_iter().flatten() {
                for tag in image["RepoTags"].as_array().into_iter().flatten() {
                    names.extend(tag.as_str().and_then(ImageRef::parse));
                }
            }
        } else if let Some(repos) = json.as_object() {
            for (repo, tags) in repos {
                for tag in tags.as_object().into_iter().flat_map(|t| t.keys()) {
                    names.extend(ImageRef::parse(&format!("{repo}:{tag}")));
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}
