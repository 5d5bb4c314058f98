//! Builds from their request to their end: the Dockerfile, base images, the build rule, egress,
//! and the images the build wrote.
use super::{
    builds::{self, Build, BuildState, Egress},
    ledger::Source,
    rules,
    transfers::served_by_dockerd,
    Detector, Finding, Subject, SyncedDockerfile, MAX_OPEN_BUILDS, SYNCED_DOCKERFILE_KEEP_NS,
};
use crate::{
    docker::dockerfile::{self, Dockerfile},
    model::{
        detection::DetectionView,
        ids::BuildId,
        operation::{BuildParams, Builder, OperationView},
        origin::Transport,
        socket::Dir,
    },
};

impl Detector {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_build(
        &mut self,
        at: u64,
        now: u64,
        view: &OperationView,
        builder: Builder,
        params: BuildParams,
        body: Option<(Vec<u8>, bool)>,
        conn_ids: Vec<u64>,
        evidence: Vec<String>,
    ) {
        let id = BuildId::of(&view.id);
        let (instructions, dockerfile_unread) = match (&body, &params.context_dir, &view.origin.client) {
            (Some((bytes, _)), _, _) => (
                dockerfile::from_context(bytes, params.dockerfile.as_deref()),
                None,
            ),
            (None, Some(context), Some(client)) => {
                match self
                    .host
                    .dockerfile(client, context, params.dockerfile.as_deref())
                {
                    Ok(found) => (Some(found), None),
                    Err(why) => (None, Some(why)),
                }
            }
            _ => (None, None),
        };
        let mut build = Build {
            id: id.clone(),
            builder,
            state: BuildState::Open,
            origin: view.origin.clone(),
            params,
            instructions,
            dockerfile_unread,
            base_images: Vec::new(),
            replaced_pulled: Vec::new(),
            steps: Vec::new(),
            steps_dropped: 0,
            egress: Vec::new(),
            images: Vec::new(),
            start: self.wall_time(at),
            end: None,
            duration_ms: None,
            detection_id: None,
            severity: None,
            evidence: evidence.clone(),
            start_ns: at,
            daemon_tgid: view.origin.daemon.as_ref().map(|d| d.pid),
            store: view.store().map(String::from),
            // Listed once the build's detection is out (`list_stores_of_new_builds`).
            store_before: None,
            builder_tgid: (view.origin.transport == Transport::Exec)
                .then(|| view.origin.client.as_ref().map(|c| c.pid))
                .flatten(),
            conn_ids: conn_ids.clone(),
            egress_detected: false,
            raised_for_egress: false,
        };
        if view.store().is_some() && builder.uses_docker_image_store() && served_by_dockerd(&view.origin) {
            self.stores_to_list.push(id.clone());
        }
        if build.builder == Builder::Buildx && build.instructions.is_none() {
            build.instructions = self.claim_synced_dockerfile(&build, at);
        }
        build.add_dockerfile_bases();
        if let Some(instructions) = &build.instructions {
            for run in instructions.run.clone() {
                let argv = vec!["/bin/sh".to_string(), "-c".to_string(), run];
                if let Some(detail) = rules::egress_command(&argv) {
                    build.add_egress(Egress {
                        kind: "dockerfile",
                        detail,
                        destination: None,
                        sni: None,
                    });
                }
            }
        }
        // Rule 1, against the ledger as it was before this build.
        let allow = &self.settings.allow;
        let since = self.wall_ns(at) - i128::from(self.settings.lookback_ns);
        let targets: Vec<(String, String)> = build
            .params
            .tags
            .iter()
            .map(|t| (t.repository(), t.to_string()))
            .collect();
        let store = view.store();
        let unpulled: Vec<String> = targets
            .iter()
            .filter(|(repository, _)| {
                !store.is_some_and(|store| {
                    self.ledger
                        .pulled_since(store, repository, since, &|r| allow.trusts_registry(r))
                })
            })
            .map(|(_, reference)| reference.clone())
            .collect();
        let untagged = targets.is_empty();
        let builder_name = serde_json::to_value(builder)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let mut verdict = rules::build_without_pull(
            &build.origin,
            &builder_name,
            &unpulled,
            untagged,
            &build.egress_details(),
        );
        if let Some(verdict) = &mut verdict {
            if store.is_none() {
                verdict.reasons.push(
                    "unconfirmed: no trusted daemon's side of this request was seen, so no pull can excuse it"
                        .into(),
                );
            }
            verdict.reasons.extend(self.reset_reason(at));
        }
        let wall = self.wall_ns(at);
        if let Some(store) = store {
            for tag in &build.params.tags {
                if self
                    .ledger
                    .provenance(store, tag, &|r| allow.trusts_registry(r))
                    .pulled
                {
                    build.replaced_pulled.push(tag.to_string());
                }
                self.ledger
                    .record(store, tag, Source::Build, wall, Some(id.to_string()));
            }
        }
        if let Some(verdict) = &mut verdict {
            verdict.reasons.extend(
                build
                    .replaced_pulled
                    .iter()
                    .map(|tag| format!("{tag} named pulled content before this build took the name over")),
            );
        }
        if let Some(verdict) = verdict {
            let suppressed = self
                .settings
                .allow
                .origin(&build.origin, &|id| self.host.container_image(id))
                .or_else(|| self.settings.allow.all_repositories(&targets));
            if !self.suppress(&verdict, suppressed) {
                let detection = DetectionView::new(verdict, &[id.as_str()], evidence);
                build.detection_id = Some(detection.id.clone());
                build.severity = Some(detection.severity);
                build.raised_for_egress = !build.egress.is_empty();
                self.count_detection(&detection);
                self.findings.push((
                    now,
                    Finding::Detection {
                        detection,
                        build: Some(Box::new(build.clone())),
                        operation: None,
                        api: None,
                    },
                ));
            }
        }
        for conn_id in &conn_ids {
            for dir in [Dir::Send, Dir::Recv] {
                if let Some(stream) = self.streams.get_mut(&(*conn_id, dir)) {
                    stream.build = Some(id.clone());
                }
            }
        }
        if self.builds.len() >= MAX_OPEN_BUILDS {
            let oldest = self.builds[0].id.clone();
            self.finish_build(&oldest, now, BuildState::Unfinished);
        }
        self.builds.push(build);
    }

    pub(super) fn build_egress(
        &mut self,
        build_id: &BuildId,
        now: u64,
        egress: Egress,
        evidence: Vec<String>,
    ) {
        let Some(build) = self.builds.iter_mut().find(|b| b.id == *build_id) else {
            return;
        };
        if !build.add_egress(egress) {
            return;
        }
        // Only builds flagged by build_without_pull, once; egress seen happening confirms what
        // a Dockerfile line announced.
        let (Some(mut severity), false) = (build.severity, build.egress_detected) else {
            return;
        };
        build.egress_detected = true;
        if !build.raised_for_egress {
            severity = severity.raised();
            build.raised_for_egress = true;
            build.severity = Some(severity);
        }
        let verdict = rules::build_egress(severity, build_id.as_str(), &build.egress_details());
        let snapshot = build.clone();
        let mut evidence = evidence;
        evidence.extend(snapshot.evidence.iter().cloned());
        self.report(now, verdict, Subject::Build(Box::new(snapshot)), evidence, None);
    }

    pub(super) fn finish_build(&mut self, id: &BuildId, now: u64, state: BuildState) {
        let Some(index) = self.builds.iter().position(|b| b.id == *id) else {
            return;
        };
        let mut build = self.builds.remove(index);
        self.steps.forget(&build.id);
        build.state = state;
        build.end = Some(self.wall_time(now));
        build.duration_ms = Some(now.saturating_sub(build.start_ns) / 1_000_000);
        if let (true, Some(store)) = (
            build.builder.uses_docker_image_store() && served_by_dockerd(&build.origin),
            build.store.clone(),
        ) {
            build.images = self.record_build_images(
                &store,
                &build.id,
                build.start_ns,
                build.store_before.as_ref(),
                now,
            );
            self.record_registry_content(&store, &build, now);
        }
        for conn_id in &build.conn_ids {
            for dir in [Dir::Send, Dir::Recv] {
                if let Some(stream) = self.streams.get_mut(&(*conn_id, dir)) {
                    stream.build = None;
                }
            }
        }
        self.findings.push((
            now,
            Finding::Build {
                build: Box::new(build),
            },
        ));
    }

    /// A Dockerfile the build's daemon received through a session shortly before the build
    /// opened (its request still waited for its other half): the one of the build's session,
    /// else one whose session is unknown.
    pub(super) fn claim_synced_dockerfile(&mut self, build: &Build, at: u64) -> Option<Dockerfile> {
        self.synced_dockerfiles
            .retain(|(_, received, _, _)| at.saturating_sub(*received) <= SYNCED_DOCKERFILE_KEEP_NS);
        let wanted = build.dockerfile_name();
        let session = build.params.session.as_deref();
        let fits = |tgid: &u32, file: &SyncedDockerfile| {
            Some(*tgid) == build.daemon_tgid && builds::file_name(&file.path) == wanted
        };
        let index = self
            .synced_dockerfiles
            .iter()
            .rposition(|(tgid, _, from, file)| {
                fits(tgid, file) && session.is_some() && from.as_deref() == session
            })
            .or_else(|| {
                self.synced_dockerfiles.iter().rposition(|(tgid, _, from, file)| {
                    fits(tgid, file) && (from.is_none() || session.is_none())
                })
            })?;
        let (_, _, _, file) = self.synced_dockerfiles.remove(index)?;
        Some(dockerfile::parse(&file.path, &file.text))
    }
}

impl Detector {
    /// Lists the image store of each build opened since the last call, the baseline its end is
    /// compared with. Called after the build's lines are written: asking the daemon takes
    /// tens of milliseconds while it receives the build, and the detection need not wait.
    pub fn list_stores_of_new_builds(&mut self) {
        for id in std::mem::take(&mut self.stores_to_list) {
            let Some(store) = self
                .builds
                .iter()
                .find(|b| b.id == id)
                .and_then(|b| b.store.clone())
            else {
                continue;
            };
            let snapshot = self.snapshot_store(&store);
            if let Some(build) = self.builds.iter_mut().find(|b| b.id == id) {
                build.store_before = snapshot;
            }
        }
    }
}
