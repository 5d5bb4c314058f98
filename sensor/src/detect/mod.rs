//! Correlation: raw socket bytes and execs -> HTTP requests -> Docker operations -> build
//! sessions and the image ledger -> detections. Kernel-free and driven by event timestamps, so it
//! behaves the same live, in tests and on a replayed recording.
//!
//! A local client's request is seen twice, as the client's write and as the daemon's read. The
//! two halves are paired by method and target within [`PAIR_WAIT_NS`]: the client half names the
//! process, the daemon half the daemon, its endpoint and a TCP peer. An operation is reported once
//! both halves are in, or when the wait is over (a remote client has no local half).
pub mod allow;
pub mod builds;
mod execs;
mod images;
pub mod ledger;
mod pulls;
pub mod rules;
mod traffic;
pub mod views;

use self::traffic::Stream;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use serde::Serialize;

use self::{
    allow::Allowlist,
    builds::{BaseImage, Build, BuildState, Egress, MAX_BUILD_NS},
    ledger::{Ledger, Provenance, Source},
    rules::Verdict,
    views::{DetectionView, OperationView, Origin, Transport},
};
use crate::{
    decode::{Dir, Endpoint, Header, Role},
    docker::{
        api::{self, ApiRequest, BuildParams, Builder, Operation},
        dockerfile::{self, Dockerfile},
        reference::{self, ImageRef},
    },
    host::SharedHost,
    output::schema::ProcessView,
    protocol::buildkit_grpc::SyncedDockerfile,
};

/// How long the two halves of a local request wait for each other.
pub const PAIR_WAIT_NS: u64 = 300_000_000;
/// How long an operation that needs its body (create, exec, build) waits for it. Keeps
/// detections within a second of the request.
pub const BODY_WAIT_NS: u64 = 800_000_000;
/// Data lines remembered per stream to name a request's evidence.
const MAX_CARRIERS: usize = 64;
/// Container ids and names recently started or exec'd through the API: their processes are not
/// build steps.
const STARTED_RETENTION_NS: u64 = 30_000_000_000;
const MAX_STARTED: usize = 1024;
/// Requests waiting for their other half; beyond this the oldest is reported unpaired.
const MAX_PENDING: usize = 4096;
/// Streams parsed at once (each holds at most a request head and a kept body). Streams of
/// connections whose close was lost are dropped when the table is full.
const MAX_STREAMS: usize = 4096;
/// Builds open at once; beyond this the oldest is closed as unfinished.
const MAX_OPEN_BUILDS: usize = 1024;
/// How long a Dockerfile from a session waits for its build to open, and how many wait.
const SYNCED_DOCKERFILE_KEEP_NS: u64 = 30_000_000_000;
const MAX_SYNCED_DOCKERFILES: usize = 16;
/// Build-step connections followed at once (their first bytes name the destination).
const MAX_STEP_CONNECTIONS: usize = 4096;
/// (endpoint, peer) pairs api_exposed remembers having reported.
const MAX_EXPOSED: usize = 4096;

/// What a detection is about.
enum Subject {
    Build(Box<Build>),
    Operation(Box<OperationView>),
    Api(Box<Origin>),
}

/// Settings the detector needs from the configuration.
pub struct Settings {
    pub allow: Allowlist,
    pub lookback_ns: u64,
    /// CLOCK_REALTIME - CLOCK_BOOTTIME when the run started: event boot times -> wall times.
    pub boot_to_wall_ns: i128,
}

/// A daemon-less builder that started: its own registry traffic is to be followed.
pub struct BuilderStart {
    pub name: String,
    pub store: String,
}

/// What correlation produced, for the engine to write as lines.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Finding {
    Operation {
        operation: Box<OperationView>,
    },
    Detection {
        detection: DetectionView,
        #[serde(skip_serializing_if = "Option::is_none")]
        build: Option<Box<Build>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        operation: Option<Box<OperationView>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        api: Option<Box<Origin>>,
    },
    Build {
        build: Box<Build>,
    },
}

impl Finding {
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Operation { .. } => "docker.operation",
            Finding::Detection { .. } => "detection",
            Finding::Build { .. } => "build",
        }
    }
}

/// A data record as the engine hands it over, with the id of the line it was written as.
pub struct DataInput<'a> {
    pub header: &'a Header,
    pub line_id: &'a str,
    pub conn_id: u64,
    pub role: Role,
    pub direction: Dir,
    pub peer: &'a Endpoint,
    /// The daemon's listening address (accepted connections).
    pub local: Option<&'a Endpoint>,
    pub bytes: &'a [u8],
    pub total_len: u32,
    /// The process: for client connections as described at connect time (exe, argv, ancestry).
    pub process: ProcessView,
    /// The image store of the trusted daemon on this connection's daemon side.
    pub daemon_store: Option<&'a str>,
    /// Bytes this direction moved before these that the kernel did not capture (budget spent,
    /// ring full): skipped exactly, so parsing resynchronises.
    pub skipped_before: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct DetectStats {
    pub operations: BTreeMap<&'static str, u64>,
    pub detections: BTreeMap<&'static str, u64>,
    /// Detections an allowlist entry suppressed.
    pub suppressed: BTreeMap<&'static str, u64>,
    /// Streams that stopped parsing as HTTP somewhere and had to resync.
    pub http_desyncs: u64,
    pub builds_open: usize,
    pub ledger_records: usize,
}

/// One side of a request.
#[derive(Debug, Clone)]
struct Half {
    conn_id: u64,
    evidence: Vec<String>,
}

struct Reported {
    id: String,
    key: String,
    first_ns: u64,
    had_client: bool,
}

const MAX_REPORTED: usize = 256;

struct Pending {
    id: String,
    key: String,
    operation: Operation,
    request: Option<ApiRequest>,
    first_ns: u64,
    client: Option<(Half, ProcessView)>,
    daemon: Option<Half>,
    origin: Origin,
    body: Option<(Vec<u8>, bool)>,
    needs_body: bool,
}

impl Pending {
    /// Adds one half. `origin` is what that half's connection tells: the client half its
    /// process and endpoint, the daemon half the daemon, its endpoint and the TCP peer (which
    /// win over the client's view).
    fn join(&mut self, half: Half, is_client: bool, process: &ProcessView, origin: Origin) {
        if is_client {
            self.client = Some((half, process.clone()));
            self.origin.client = Some(process.clone());
            if self.origin.endpoint.is_none() {
                self.origin.endpoint = origin.endpoint;
            }
        } else {
            self.daemon = Some(half);
            let client = self.origin.client.take();
            self.origin = Origin { client, ..origin };
        }
    }

    fn ready(&self, now: u64) -> bool {
        let paired = self.client.is_some() && self.daemon.is_some()
            || self.daemon.is_some() && self.origin.peer_ip().is_some_and(|ip| !ip.is_loopback())
            || now >= self.first_ns + PAIR_WAIT_NS;
        let body = !self.needs_body || self.body.is_some() || now >= self.first_ns + BODY_WAIT_NS;
        paired && body
    }
}

pub struct Detector {
    settings: Settings,
    host: SharedHost,
    ledger: Ledger,
    streams: HashMap<(u64, Dir), Stream>,
    pending: Vec<Pending>,
    builds: Vec<Build>,
    transfers: Vec<images::Transfer>,
    exposed: HashSet<(String, IpAddr)>,
    started: VecDeque<(String, u64)>,
    /// Build-step connections: conn_id -> build id.
    step_connections: HashMap<u64, String>,
    /// Which build each step container and process belongs to.
    steps: builds::StepOwners,
    /// Operations reported recently, so a half that arrives after its operation was reported
    /// alone is recognised.
    reported: VecDeque<Reported>,
    findings: Vec<(u64, Finding)>,
    stats: DetectStats,
    pulls: pulls::Pulls,
    /// Dockerfiles sessions sent before their build opened: (daemon tgid, time, file).
    synced_dockerfiles: VecDeque<(u32, u64, SyncedDockerfile)>,
}

impl Detector {
    pub fn new(settings: Settings, ledger: Ledger, host: SharedHost) -> Self {
        Self {
            settings,
            host,
            ledger,
            streams: HashMap::new(),
            pending: Vec::new(),
            builds: Vec::new(),
            transfers: Vec::new(),
            exposed: HashSet::new(),
            started: VecDeque::new(),
            step_connections: HashMap::new(),
            steps: builds::StepOwners::default(),
            reported: VecDeque::new(),
            findings: Vec::new(),
            stats: DetectStats::default(),
            pulls: pulls::Pulls::default(),
            synced_dockerfiles: VecDeque::new(),
        }
    }

    /// Whether a build is open (the kernel then follows build steps' connections).
    pub fn has_open_builds(&self) -> bool {
        !self.builds.is_empty()
    }

    /// Whether a tick could change anything: a request waits for its other half or body, or a
    /// build is open (and may expire).
    pub fn has_timed_work(&self) -> bool {
        !self.pending.is_empty()
            || !self.builds.is_empty()
            || self.pulls.is_waiting()
            || self.transfers.iter().any(|t| t.side_load.is_some())
    }

    /// Findings produced since the last call, with the boot time they happened at.
    pub fn take_findings(&mut self) -> Vec<(u64, Finding)> {
        std::mem::take(&mut self.findings)
    }

    pub fn stats(&self) -> DetectStats {
        DetectStats {
            builds_open: self.builds.len(),
            ledger_records: self.ledger.len(),
            ..self.stats.clone()
        }
    }

    pub fn persist(&mut self) -> anyhow::Result<()> {
        self.ledger.persist()
    }

    /// Saves the ledger and waits until it is on disk (at shutdown).
    pub fn sync_ledger(&mut self) -> anyhow::Result<()> {
        self.ledger.sync()
    }

    pub fn ledger_write_errors(&self) -> u64 {
        self.ledger.write_errors()
    }

    fn wall_ns(&self, boot_ns: u64) -> i128 {
        i128::from(boot_ns) + self.settings.boot_to_wall_ns
    }

    fn wall_time(&self, boot_ns: u64) -> String {
        let ns = self.wall_ns(boot_ns).max(0) as u64;
        humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
            .to_string()
    }

    // ---- inputs ----------------------------------------------------------------------------

    pub fn on_close(&mut self, conn_id: u64, now: u64) {
        self.tick(now);
        for dir in [Dir::Send, Dir::Recv] {
            self.streams.remove(&(conn_id, dir));
        }
        self.step_connections.remove(&conn_id);
        let ids: Vec<String> = self
            .builds
            .iter()
            .filter(|b| b.conn_ids.contains(&conn_id))
            .map(|b| b.id.clone())
            .collect();
        for id in ids {
            self.finish_build(&id, now, BuildState::Finished);
        }
        self.finish_transfers_on(conn_id, now);
    }

    /// Reports what is due at boot time `now`.
    pub fn tick(&mut self, now: u64) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].ready(now) {
                let pending = self.pending.remove(i);
                self.finalize(pending, now);
            } else {
                i += 1;
            }
        }
        let expired: Vec<String> = self
            .builds
            .iter()
            .filter(|b| now.saturating_sub(b.start_ns) > MAX_BUILD_NS)
            .map(|b| b.id.clone())
            .collect();
        for id in expired {
            self.finish_build(&id, now, BuildState::Unfinished);
        }
        self.report_overdue_side_loads(now);
        self.confirm_pulls(now);
    }

    /// Records the pulls whose daemon contacted their registry.
    fn confirm_pulls(&mut self, now: u64) {
        for pull in self.pulls.confirmed(now) {
            let registry = pull.image.registry.clone();
            self.ledger.record(
                &pull.store,
                &pull.image,
                Source::Pull,
                pull.wall_ns,
                Some(registry),
            );
        }
    }

    /// A process took a daemon's name without being one of its binaries (T1036.005).
    pub fn on_impersonation(&mut self, now: u64, name: &str, process: &ProcessView, exec_line: Option<&str>) {
        let verdict = rules::daemon_impersonation(name, process);
        let origin = Origin::exec(process, None);
        let evidence = exec_line.map(String::from).into_iter().collect();
        let allowed = self
            .settings
            .allow
            .origin(&origin, &|id| self.host.container_image(id));
        self.report(now, verdict, Subject::Api(Box::new(origin)), evidence, allowed);
    }

    /// Why detections now may lack history: the ledger was reset within the lookback window.
    fn reset_reason(&self, at: u64) -> Option<String> {
        let reset = self.ledger.reset_ns()?;
        let wall = self.wall_ns(at);
        (wall >= reset && wall - reset <= i128::from(self.settings.lookback_ns)).then(|| {
            format!(
                "the image ledger was reset {} s before (unreadable file moved aside): earlier pulls are unknown",
                (wall - reset) / 1_000_000_000
            )
        })
    }

    /// Reports everything still waiting and closes open builds (the sensor is stopping).
    pub fn flush(&mut self, now: u64) {
        for pending in std::mem::take(&mut self.pending) {
            self.finalize(pending, now);
        }
        let open: Vec<String> = self.builds.iter().map(|b| b.id.clone()).collect();
        for id in open {
            self.finish_build(&id, now, BuildState::Unfinished);
        }
        let transfers: Vec<String> = self.transfers.iter().map(|t| t.id.clone()).collect();
        for id in transfers {
            self.finish_transfer(&id, now);
        }
    }

    // ---- correlation -----------------------------------------------------------------------

    fn finalize(&mut self, mut pending: Pending, now: u64) {
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
                api.unwrap_or(api::Api::Docker),
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
                let side_load = images::SideLoad::new(view, "imported", names, evidence, at);
                self.transfer_or_report(Source::Import, at, conn_ids, now, side_load);
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
                let side_load = images::SideLoad::new(view, "loaded", names, evidence, at);
                self.transfer_or_report(Source::Load, at, conn_ids, now, side_load);
            }
            Operation::Tag { source, target } => {
                let via = ImageRef::parse(&source)
                    .map(|s| s.to_string())
                    .or_else(|| reference::image_id(&source))
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
                let by_reference = || match (ImageRef::parse(requested), reference::image_id(requested)) {
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

    #[allow(clippy::too_many_arguments)]
    fn open_build(
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
        let id = build_id_of(&view.id);
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
            store_before: view
                .store()
                .filter(|_| builder.uses_docker_image_store() && images::served_by_dockerd(&view.origin))
                .and_then(|store| self.snapshot_store(store)),
            builder_tgid: (view.origin.transport == Transport::Exec)
                .then(|| view.origin.client.as_ref().map(|c| c.pid))
                .flatten(),
            conn_ids: conn_ids.clone(),
            egress_detected: false,
            raised_for_egress: false,
        };
        if build.builder == Builder::Buildx && build.instructions.is_none() {
            build.instructions = self.claim_synced_dockerfile(&build, at);
        }
        add_dockerfile_bases(&mut build);
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
                    .record(store, tag, Source::Build, wall, Some(id.clone()));
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
                let detection = DetectionView::new(verdict, &id, evidence);
                build.detection_id = Some(detection.id.clone());
                build.severity = Some(detection.severity);
                build.raised_for_egress = !build.egress.is_empty();
                *self.stats.detections.entry(detection.rule).or_default() += 1;
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

    fn build_egress(&mut self, build_id: &str, now: u64, egress: Egress, evidence: Vec<String>) {
        let Some(build) = self.builds.iter_mut().find(|b| b.id == build_id) else {
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
        let verdict = rules::build_egress(severity, build_id, &build.egress_details());
        let snapshot = build.clone();
        let mut evidence = evidence;
        evidence.extend(snapshot.evidence.iter().cloned());
        self.report(now, verdict, Subject::Build(Box::new(snapshot)), evidence, None);
    }

    fn finish_build(&mut self, id: &str, now: u64, state: BuildState) {
        let Some(index) = self.builds.iter().position(|b| b.id == id) else {
            return;
        };
        let mut build = self.builds.remove(index);
        self.steps.forget(&build.id);
        build.state = state;
        build.end = Some(self.wall_time(now));
        build.duration_ms = Some(now.saturating_sub(build.start_ns) / 1_000_000);
        if let (true, Some(store)) = (
            build.builder.uses_docker_image_store() && images::served_by_dockerd(&build.origin),
            build.store.clone(),
        ) {
            build.images =
                self.record_build_images(&store, &build.id, build.start_ns, build.store_before.take(), now);
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

    fn check_exposed(&mut self, origin: &Origin, now: u64, evidence: &[String]) {
        if origin.transport != Transport::Tcp {
            return;
        }
        let Some(ip) = origin.peer_ip().filter(|ip| !ip.is_loopback()) else {
            return;
        };
        let endpoint = origin.endpoint.clone().unwrap_or_else(|| "tcp".into());
        if self.exposed.len() >= MAX_EXPOSED {
            self.exposed.clear();
        }
        if !self.exposed.insert((endpoint.clone(), ip)) {
            return;
        }
        let verdict = rules::api_exposed(&endpoint, ip);
        let allowed = self.settings.allow.peer(ip);
        self.report(
            now,
            verdict,
            Subject::Api(Box::new(origin.clone())),
            evidence.to_vec(),
            allowed,
        );
    }

    /// Counts and logs a suppressed detection; true when it was suppressed.
    fn suppress(&mut self, verdict: &Verdict, reason: Option<String>) -> bool {
        let Some(reason) = reason else {
            return false;
        };
        *self.stats.suppressed.entry(verdict.rule.name()).or_default() += 1;
        tracing::debug!(rule = verdict.rule.name(), %reason, summary = %verdict.summary, "detection suppressed by the allowlist");
        true
    }

    fn report(
        &mut self,
        at: u64,
        verdict: Verdict,
        subject: Subject,
        evidence: Vec<String>,
        suppressed: Option<String>,
    ) {
        if self.suppress(&verdict, suppressed) {
            return;
        }
        let subject_id = match &subject {
            Subject::Build(build) => build.id.clone(),
            Subject::Operation(operation) => operation.id.clone(),
            Subject::Api(origin) => format!(
                "{} {}",
                origin.endpoint.as_deref().unwrap_or_default(),
                origin.peer_ip().map(|ip| ip.to_string()).unwrap_or_default()
            ),
        };
        let detection = DetectionView::new(verdict, &subject_id, evidence);
        *self.stats.detections.entry(detection.rule).or_default() += 1;
        let (build, operation, api) = match subject {
            Subject::Build(build) => (Some(build), None, None),
            Subject::Operation(operation) => (None, Some(operation), None),
            Subject::Api(origin) => (None, None, Some(origin)),
        };
        self.findings.push((
            at,
            Finding::Detection {
                detection,
                build,
                operation,
                api,
            },
        ));
    }

    /// A detection about an operation, unless its client or target is allowlisted.
    fn report_operation(&mut self, now: u64, verdict: Verdict, view: OperationView, evidence: Vec<String>) {
        let allowed = self.allowed(&view);
        self.report(
            now,
            verdict,
            Subject::Operation(Box::new(view)),
            evidence,
            allowed,
        );
    }

    /// Rule 3 for a load or import.
    pub(super) fn side_loaded(
        &mut self,
        now: u64,
        view: OperationView,
        how: &str,
        images: &[String],
        evidence: Vec<String>,
    ) {
        let verdict = rules::image_side_loaded(&view.origin, how, images);
        self.report_operation(now, verdict, view, evidence);
    }

    /// Why an operation's client or target is allowlisted, if it is.
    fn allowed(&self, operation: &OperationView) -> Option<String> {
        let container_image = |id: &str| self.host.container_image(id);
        self.settings
            .allow
            .origin(&operation.origin, &container_image)
            .or_else(|| {
                image_of(&operation.operation)
                    .and_then(|target| self.settings.allow.all_repositories(&[target]))
            })
    }

    /// A Dockerfile the build's daemon received through a session shortly before the build
    /// opened (its request still waited for its other half).
    fn claim_synced_dockerfile(&mut self, build: &Build, at: u64) -> Option<Dockerfile> {
        self.synced_dockerfiles
            .retain(|(_, received, _)| at.saturating_sub(*received) <= SYNCED_DOCKERFILE_KEEP_NS);
        let wanted = dockerfile_name(build);
        let index = self.synced_dockerfiles.iter().rposition(|(tgid, _, file)| {
            Some(*tgid) == build.daemon_tgid && file_name(&file.path) == wanted
        })?;
        let (_, _, file) = self.synced_dockerfiles.remove(index)?;
        Some(dockerfile::parse(&file.path, &file.text))
    }

    fn expire_started(&mut self, now: u64) {
        while self
            .started
            .front()
            .is_some_and(|(_, at)| now.saturating_sub(*at) > STARTED_RETENTION_NS)
        {
            self.started.pop_front();
        }
    }

    #[cfg(test)]
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

/// The file name a build's Dockerfile has (`-f` may give a path).
fn dockerfile_name(build: &Build) -> &str {
    build.params.dockerfile.as_deref().map_or("Dockerfile", file_name)
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn build_id_of(operation_id: &str) -> String {
    operation_id.replacen("op-", "build-", 1)
}

fn add_dockerfile_bases(build: &mut Build) {
    let Some(instructions) = &build.instructions else {
        return;
    };
    for from in instructions.from.clone() {
        if let Some(image) = ImageRef::parse(&from) {
            build.add_base_image(BaseImage {
                registry: image.registry.clone(),
                repository: image.repository(),
                reference: image.to_string(),
                digest: None,
                fetched: false,
                in_dockerfile: true,
            });
        }
    }
}

/// The repository and reference an operation targets, for the repository allowlist.
fn image_of(operation: &Operation) -> Option<(String, String)> {
    let image = match operation {
        Operation::ContainerCreate(params) => ImageRef::parse(params.image.as_deref()?)?,
        Operation::Import { image, .. } => image.clone()?,
        _ => return None,
    };
    Some((image.repository(), image.to_string()))
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

#[cfg(test)]
mod tests;
