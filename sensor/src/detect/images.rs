//! What entered dockerd's image store while a build, load or import ran, recorded in the ledger
//! by id and by name. The request alone cannot say: an untagged build's image has only an id,
//! and a `docker load` archive names its images in `manifest.json`, at its end, past what the
//! sensor captures.
use super::{
    builds::Build,
    ledger::Source,
    transfers::{served_by_dockerd, SideLoad, StoreSnapshot, Transfer},
    Detector,
};
use crate::{
    host::WrittenImage,
    model::{
        ids::{BuildId, OperationId},
        image_ref::ImageRef,
        socket::Dir,
    },
};

/// Loads and imports followed at once; the oldest is closed when more start.
const MAX_OPEN_TRANSFERS: usize = 16;
/// Slack around a build's window for the `created` time of its images (both on the kernel
/// clock after the host converted them).
const CREATED_SLACK_NS: i128 = 20_000_000;
/// A daemon's image listing gives `created` in whole seconds.
const API_CREATED_SLACK_NS: i128 = 1_000_000_000;

impl Detector {
    /// The store's images now, when its daemon can be asked.
    pub(super) fn snapshot_store(&self, store: &str) -> Option<StoreSnapshot> {
        let images = self.host.store_images(store)?;
        Some(images.into_iter().map(|image| (image.id, image.names)).collect())
    }

    /// What entered a store between `start_ns` and `now`. Asked of its daemon when it could be
    /// asked at the start too: images that are new or that gained a name. (An image already
    /// listed at the start is not taken for new by its `created` time: a listing gives whole
    /// seconds, and the previous operation's image would pass.) Otherwise read from the data
    /// root (the classic store only).
    fn images_entered(
        &self,
        store: &str,
        before: Option<&StoreSnapshot>,
        start_ns: u64,
        now: u64,
    ) -> Vec<WrittenImage> {
        let after = before.and_then(|_| self.host.store_images(store));
        let (Some(before), Some(after)) = (before, after) else {
            return self.host.images_written(store, start_ns, now);
        };
        tracing::debug!(
            store,
            before = before.len(),
            after = after.len(),
            "images listed by the daemon"
        );
        after
            .into_iter()
            .filter(|image| match before.get(&image.id) {
                None => true,
                Some(names) => image.names.iter().any(|n| !names.contains(n)),
            })
            .collect()
    }

    /// Images a Docker build wrote: those created between its request and its end. Recorded
    /// by id; returns the ids for the `build` line.
    pub(super) fn record_build_images(
        &mut self,
        store: &str,
        build_id: &BuildId,
        start_ns: u64,
        before: Option<&StoreSnapshot>,
        now: u64,
    ) -> Vec<String> {
        // A daemon's listing dates images to the second.
        let slack = if before.is_some() { API_CREATED_SLACK_NS } else { 0 };
        let window = (i128::from(start_ns) - CREATED_SLACK_NS - slack)..=(i128::from(now) + CREATED_SLACK_NS);
        let wall = self.wall_ns(now);
        let mut ids = Vec::new();
        for image in self.images_entered(store, before, start_ns, now) {
            if image.registry_digest || !image.created_boot_ns.is_some_and(|c| window.contains(&c)) {
                continue;
            }
            self.ledger
                .record_image_id(store, &image.id, Source::Build, wall, Some(build_id.to_string()));
            ids.push(image.id);
        }
        ids
    }

    /// A build that ended with a tag naming content a registry served (a fully cached
    /// `--cache-from` build gives the pulled image itself): the name is the registry's again.
    /// Registry content is known by its manifest digest in the classic store; in containerd's
    /// store (which names every image by its own digest) by the tag still naming, after the
    /// build, the pulled image it named before.
    pub(super) fn record_registry_content(&mut self, store: &str, build: &Build, now: u64) {
        let wall = self.wall_ns(now);
        for tag in &build.params.tags {
            let Some(target) = self.host.tagged_image(store, &tag.to_string()) else {
                continue;
            };
            let unmoved = build.replaced_pulled.contains(&tag.to_string())
                && build.store_before.as_ref().is_some_and(|before| {
                    before.get(&target.id).is_some_and(|names| {
                        names
                            .iter()
                            .any(|name| ImageRef::parse(name).as_ref() == Some(tag))
                    })
                });
            if (target.registry_digest || unmoved) && !build.images.contains(&target.id) {
                self.ledger.record(
                    store,
                    tag,
                    Source::Pull,
                    wall,
                    Some(format!("content {}", target.id)),
                );
            }
        }
    }

    fn report_side_load(&mut self, now: u64, side_load: SideLoad) {
        let SideLoad {
            view,
            how,
            names,
            evidence,
            ..
        } = side_load;
        self.side_loaded(now, view, how, &names, evidence);
    }

    /// Side-load detections whose load is still running at their due time go out without the
    /// names the load's end would have given.
    pub(super) fn report_overdue_side_loads(&mut self, now: u64) {
        let due: Vec<SideLoad> = self
            .transfers
            .iter_mut()
            .filter(|t| t.side_load.as_ref().is_some_and(|s| now >= s.due_ns))
            .filter_map(|t| t.side_load.take())
            .collect();
        for side_load in due {
            self.report_side_load(now, side_load);
        }
    }

    /// Follows a load or import served by dockerd until it ends; reports any other at once.
    pub(super) fn transfer_or_report(
        &mut self,
        source: Source,
        start_ns: u64,
        conn_ids: Vec<u64>,
        now: u64,
        side_load: SideLoad,
        listed_at_head: Option<StoreSnapshot>,
    ) {
        if !served_by_dockerd(&side_load.view.origin) {
            self.report_side_load(now, side_load);
            return;
        }
        let id = side_load.view.id.clone();
        // Over when any of its connections closed while the request waited (a small load ends
        // before its operation is reported, and a client's own close may never be seen): the
        // daemon's side closing ends it.
        let mut open = !conn_ids.is_empty();
        for conn_id in &conn_ids {
            let mut seen = false;
            for dir in [Dir::Send, Dir::Recv] {
                if let Some(stream) = self.streams.get_mut(&(*conn_id, dir)) {
                    stream.transfer = Some(id.clone());
                    seen = true;
                }
            }
            open &= seen;
        }
        if self.transfers.len() >= MAX_OPEN_TRANSFERS {
            let oldest = self.transfers[0].id.clone();
            self.finish_transfer(&oldest, now);
        }
        let store = side_load.view.store().map(String::from);
        self.transfers.push(Transfer {
            id: id.clone(),
            store_before: listed_at_head
                .or_else(|| store.as_deref().and_then(|store| self.snapshot_store(store))),
            store,
            source,
            start_ns,
            conn_ids,
            side_load: Some(side_load),
        });
        // The request waited for its body past the connection's close: the transfer is over.
        if !open {
            self.finish_transfer(&id, now);
        }
    }

    /// The load or import ended: what the store took in meanwhile came from it, unless it is
    /// tied to a registry manifest or a registry pull of the same name happened then too.
    pub(super) fn finish_transfer(&mut self, id: &OperationId, now: u64) {
        let Some(index) = self.transfers.iter().position(|t| t.id == *id) else {
            return;
        };
        let transfer = self.transfers.remove(index);
        for conn_id in &transfer.conn_ids {
            for dir in [Dir::Send, Dir::Recv] {
                if let Some(stream) = self.streams.get_mut(&(*conn_id, dir)) {
                    stream.transfer = None;
                }
            }
        }
        let since = self.wall_ns(transfer.start_ns);
        let wall = self.wall_ns(now);
        let mut side_load = transfer.side_load;
        let entered = match &transfer.store {
            Some(store) => self.images_entered(store, transfer.store_before.as_ref(), transfer.start_ns, now),
            None => self.host.images_written("", transfer.start_ns, now),
        };
        for image in entered {
            let names: Vec<ImageRef> = image.names.iter().filter_map(|n| ImageRef::parse(n)).collect();
            // The same content a registry served (a re-load rewrites the config file): pulled.
            if image.registry_digest || self.pulled_meanwhile(transfer.store.as_deref(), &names, since) {
                continue;
            }
            if let Some(side_load) = &mut side_load {
                let known = &mut side_load.names;
                let mut named: Vec<String> = names.iter().map(ToString::to_string).collect();
                if named.is_empty() {
                    named.push(image.id.clone());
                }
                for name in named {
                    if !known.contains(&name) {
                        known.push(name);
                    }
                }
            }
            if let Some(store) = &transfer.store {
                self.ledger.record_image_id(
                    store,
                    &image.id,
                    transfer.source,
                    wall,
                    Some(transfer.id.to_string()),
                );
                for name in &names {
                    self.ledger
                        .record(store, name, transfer.source, wall, Some(image.id.clone()));
                }
            }
            tracing::debug!(operation = %transfer.id, image = %image.id, names = ?image.names, "image entered the store");
        }
        if let Some(side_load) = side_load {
            self.report_side_load(now, side_load);
        }
    }

    fn pulled_meanwhile(&self, store: Option<&str>, names: &[ImageRef], since_wall_ns: i128) -> bool {
        let allow = &self.settings.allow;
        let Some(store) = store else { return false };
        names.iter().any(|name| {
            self.ledger
                .pulled_since(store, &name.repository(), since_wall_ns, &|r| {
                    allow.trusts_registry(r)
                })
        })
    }

    /// Closes the transfers a connection carried (it closed, or sent its next request).
    pub(super) fn finish_transfers_on(&mut self, conn_id: u64, now: u64) {
        let ids: Vec<OperationId> = self
            .transfers
            .iter()
            .filter(|t| t.conn_ids.contains(&conn_id))
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            self.finish_transfer(&id, now);
        }
    }
}
