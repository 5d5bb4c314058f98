//! What a finished request means: the ledger entries of pulls, tags, commits, loads and
//! imports, builds opened, and container creates judged by the content they run.
use super::{
    ledger::{Provenance, Source},
    pulls, rules,
    transfers::{loaded_images, SideLoad},
    Detector, Finding, Pending, Reported, MAX_REPORTED, MAX_STARTED,
};
use crate::{
    docker::api::{self, ApiRequest},
    model::{
        image_ref::{self, ImageRef},
        operation::{Api, Operation, OperationView},
        origin::Transport,
    },
};

impl Detector {
    pub(super) fn finalize(&mut self, mut pending: Pending, now: u64) {
        let api = pending.request.as_ref().map(|r| r.api);
        if !pending.key.is_empty() && (pending.client.is_none() || pending.daemon.is_none()) {
            self.reported.push_back(Reported {
                id: pending.id.clone(),
                key: pending.key.clone(),
                first_ns: pending.first_ns,
                had_client: pending.client.is_some(),
            });
            if self.reported.len() > MAX_REPORTED {
                self.reported.pop_front();
            }
        }
        if let Some((body, complete)) = &pending.body {
            api::complete_with_body(
                &mut pending.operation,
                api.unwrap_or(Api::Docker),
                body,
                *complete,
            );
        }
        let mut evidence: Vec<String> = Vec::new();
        let mut conn_ids = Vec::new();
        if let Some((half, process)) = &pending.client {
            evidence.extend(half.evidence.iter().cloned());
            conn_ids.push(half.conn_id);
            pending.origin.client = Some(process.clone());
        }
        if let Some(half) = &pending.daemon {
            evidence.extend(half.evidence.iter().cloned());
            conn_ids.push(half.conn_id);
        }
        conn_ids.retain(|c| *c != 0);
        let confirmed = pending.origin.store.is_some()
            && (pending.daemon.is_some() || pending.origin.transport == Transport::Exec);
        let view = OperationView {
            id: pending.id.clone(),
            operation: pending.operation.clone(),
            api,
            method: pending.request.as_ref().map(|r| r.method.clone()),
            path: pending.request.as_ref().map(ApiRequest::route),
            api_version: pending.request.as_ref().and_then(|r| r.version.clone()),
            origin: pending.origin.clone(),
            confirmed,
            evidence: evidence.clone(),
        };
        *self.stats.operations.entry(pending.operation.name()).or_default() += 1;
        // Only what a trusted daemon (or a builder's own command line) showed changes the
        // ledger; a client's write alone is anyone's to forge.
        let store = view.store().map(String::from);
        self.findings.push((
            now,
            Finding::Operation {
                operation: Box::new(view.clone()),
            },
        ));
        // Facts are dated by the request; lines by when they were concluded.
        let at = pending.first_ns;
        let wall = self.wall_ns(at);
        match pending.operation {
            Operation::Build { builder, params } => {
                let body = pending.body.take();
                self.open_build(at, now, &view, builder, params, body, conn_ids, evidence);
            }
            Operation::Pull { image } => {
                let Some(store) = store else { return };
                match (pending.origin.transport, pending.origin.daemon.as_ref()) {
                    // A builder's own command line: its registry fetch follows under its pid.
                    (Transport::Exec, _) => {
                        self.ledger
                            .record(&store, &image, Source::Pull, wall, Some(image.registry.clone()));
                    }
                    (_, Some(daemon)) => {
                        self.pulls.wait(pulls::WaitingPull {
                            daemon_tgid: daemon.pid,
                            store,
                            image,
                            wall_ns: wall,
                            first_ns: at,
                        });
                        self.confirm_pulls(now);
                    }
                    _ => {}
                }
            }
            Operation::Import { image, source } => {
                if let (Some(image), Some(store)) = (&image, &store) {
                    self.ledger
                        .record(store, image, Source::Import, wall, Some(source));
                }
                let names: Vec<String> = image.iter().map(ToString::to_string).collect();
                let side_load = SideLoad::new(view, "imported", names, evidence, at);
                self.transfer_or_report(
                    Source::Import,
                    at,
                    conn_ids,
                    now,
                    side_load,
                    pending.store_before.take(),
                );
            }
            Operation::Load => {
                let loaded = pending
                    .body
                    .as_ref()
                    .map(|(bytes, _)| loaded_images(bytes))
                    .unwrap_or_default();
                if let Some(store) = &store {
                    for image in &loaded {
                        self.ledger.record(store, image, Source::Load, wall, None);
                    }
                }
                let names: Vec<String> = loaded.iter().map(ToString::to_string).collect();
                let side_load = SideLoad::new(view, "loaded", names, evidence, at);
                self.transfer_or_report(
                    Source::Load,
                    at,
                    conn_ids,
                    now,
                    side_load,
                    pending.store_before.take(),
                );
            }
            Operation::Tag { source, target } => {
                let via = ImageRef::parse(&source)
                    .map(|s| s.to_string())
                    .or_else(|| image_ref::image_id(&source))
                    .unwrap_or(source);
                if let Some(store) = &store {
                    self.ledger.record(store, &target, Source::Tag, wall, Some(via));
                }
            }
            Operation::Commit {
                image: Some(image),
                container,
            } => {
                if let Some(store) = &store {
                    self.ledger
                        .record(store, &image, Source::Commit, wall, Some(container));
                }
            }
            Operation::ContainerCreate(params) => {
                let (Some(requested), Some(store)) = (params.image.as_deref(), store.as_deref()) else {
                    return;
                };
                let allow = &self.settings.allow;
                let trusted = |r: &str| allow.trusts_registry(r);
                // The id the daemon will run, as it resolves the reference now: content, not a
                // name, decides when the ledger knows that content (a build, load or import).
                let resolved = self
                    .host
                    .tagged_image(store, requested)
                    .and_then(|target| self.ledger.provenance_of_id(store, &target.id, &trusted));
                let by_reference = || match (ImageRef::parse(requested), image_ref::image_id(requested)) {
                    (Some(image), _) => {
                        Some((image.to_string(), self.ledger.provenance(store, &image, &trusted)))
                    }
                    // `docker run <id>` of an untagged build names the image only by its id.
                    (None, Some(id)) => self.ledger.provenance_of_id(store, &id, &trusted),
                    (None, None) => None,
                };
                let found = match (resolved, by_reference()) {
                    (Some((_, by_content)), Some((name, by_name))) => Some((
                        name,
                        Provenance {
                            replaced_pull: by_name.replaced_pull || by_content.replaced_pull,
                            ..by_content
                        },
                    )),
                    (Some(by_content), None) => Some(by_content),
                    (None, by_name) => by_name,
                };
                let Some((image, provenance)) = found else {
                    return;
                };
                if provenance.pulled || provenance.origins.is_empty() {
                    return;
                }
                let origins: Vec<String> = provenance
                    .origins
                    .iter()
                    .map(|o| {
                        serde_json::to_value(o)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default()
                    })
                    .collect();
                let mut verdict = rules::run_of_unpulled_image(&view.origin, &image, &origins, &params);
                if provenance.replaced_pull {
                    verdict.reasons.push(format!(
                        "{image} was pulled from a registry once, then built or tagged over: the name no longer names the pulled content"
                    ));
                }
                verdict.reasons.extend(self.reset_reason(at));
                self.report_operation(now, verdict, view, evidence);
            }
            Operation::ContainerStart { container } | Operation::Exec { container, .. } => {
                self.started.push_back((container, at));
                if self.started.len() > MAX_STARTED {
                    self.started.pop_front();
                }
            }
            _ => {}
        }
    }
}
