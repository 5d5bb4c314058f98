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
pub mod ledger;
pub mod rules;
pub mod views;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use serde::Serialize;

use self::{
    allow::Allowlist,
    builds::{BaseImage, Build, BuildState, Egress, Step, MAX_BUILD_NS},
    ledger::{Ledger, Source},
    rules::Verdict,
    views::{stable_id, DaemonView, DetectionView, OperationView, Origin, Transport},
};
use crate::{
    decode::{Dir, Endpoint, Header, Role},
    docker::{
        api::{self, ApiRequest, BuildParams, Builder, Operation},
        commands, dockerfile,
        reference::{registry_host, ImageRef},
    },
    host::SharedHost,
    output::schema::ProcessView,
    protocol::{
        buildkit::{Marker, SessionScanner},
        http::{HttpEvent, RequestHead, RequestStream},
        tls,
    },
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

struct Stream {
    http: RequestStream,
    /// Bytes seen so far (captured and not).
    offset: u64,
    /// (start, end, line id) of recent data lines.
    carriers: VecDeque<(u64, u64, String)>,
    session: Option<SessionScanner>,
    /// The pending operation waiting for this stream's next body.
    awaiting_body: Option<String>,
    /// The build this stream's last request opened.
    build: Option<String>,
    grpc_solve_reported: bool,
    /// A TLS connection: nothing after the ClientHello is readable.
    opaque: bool,
}

impl Stream {
    fn new() -> Self {
        Self {
            http: RequestStream::with_body_filter(api::wants_body),
            offset: 0,
            carriers: VecDeque::new(),
            session: None,
            awaiting_body: None,
            build: None,
            grpc_solve_reported: false,
            opaque: false,
        }
    }

    fn evidence(&self, start: u64, end: u64) -> Vec<String> {
        self.carriers
            .iter()
            .filter(|(s, e, _)| *s < end.max(start + 1) && *e > start)
            .map(|(_, _, id)| id.clone())
            .collect()
    }
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
    exposed: HashSet<(String, IpAddr)>,
    started: VecDeque<(String, u64)>,
    /// Operations reported recently, so a half that arrives after its operation was reported
    /// alone is recognised.
    reported: VecDeque<Reported>,
    findings: Vec<(u64, Finding)>,
    stats: DetectStats,
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
            exposed: HashSet::new(),
            started: VecDeque::new(),
            reported: VecDeque::new(),
            findings: Vec::new(),
            stats: DetectStats::default(),
        }
    }

    /// Whether a tick could change anything: a request waits for its other half or body, or a
    /// build is open (and may expire).
    pub fn has_timed_work(&self) -> bool {
        !self.pending.is_empty() || !self.builds.is_empty()
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

    fn wall_ns(&self, boot_ns: u64) -> i128 {
        i128::from(boot_ns) + self.settings.boot_to_wall_ns
    }

    fn wall_time(&self, boot_ns: u64) -> String {
        let ns = self.wall_ns(boot_ns).max(0) as u64;
        humantime::format_rfc3339_nanos(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns))
            .to_string()
    }

    // ---- inputs ----------------------------------------------------------------------------

    pub fn on_data(&mut self, input: DataInput<'_>) {
        let key = (input.conn_id, input.direction);
        if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&key) {
            tracing::warn!("{MAX_STREAMS} API streams open at once; dropping their parse state");
            self.streams.clear();
        }
        let stream = self.streams.entry(key).or_insert_with(Stream::new);
        let start = stream.offset;
        stream.offset += u64::from(input.total_len.max(input.bytes.len() as u32));
        stream
            .carriers
            .push_back((start, stream.offset, input.line_id.to_string()));
        if stream.carriers.len() > MAX_CARRIERS {
            stream.carriers.pop_front();
        }
        if stream.opaque {
            return;
        }
        if start == 0 && input.role == Role::DaemonOutbound && tls::is_handshake(input.bytes) {
            stream.opaque = true;
            self.outbound_tls(&input);
            return;
        }
        let mut events = stream.http.feed(input.bytes);
        let missing = u64::from(input.total_len).saturating_sub(input.bytes.len() as u64);
        events.extend(stream.http.gap(missing));
        for event in events {
            self.http_event(&input, event);
        }
        self.tick(input.header.boot_ns);
    }

    fn http_event(&mut self, input: &DataInput<'_>, event: HttpEvent) {
        let key = (input.conn_id, input.direction);
        match event {
            HttpEvent::Head(head) => match input.role {
                Role::DaemonOutbound => self.outbound_request(input, &head),
                Role::Client | Role::DaemonAccepted => self.api_request(input, head),
            },
            HttpEvent::Body { bytes, complete } => {
                let awaiting = self.streams.get_mut(&key).and_then(|s| s.awaiting_body.take());
                if let Some(id) = awaiting {
                    self.body(input.header.boot_ns, &id, bytes, complete);
                }
            }
            HttpEvent::Upgraded(bytes) => self.upgraded(input, &bytes),
            HttpEvent::Desync(reason) => {
                self.stats.http_desyncs += 1;
                tracing::debug!(conn_id = input.conn_id, reason, "HTTP stream out of sync");
            }
        }
    }

    fn origin_of(&self, input: &DataInput<'_>) -> Origin {
        let transport = |endpoint: &Endpoint| match endpoint {
            Endpoint::Tcp(..) => Transport::Tcp,
            _ => Transport::Unix,
        };
        match input.role {
            Role::DaemonAccepted => {
                let endpoint = input.local.filter(|l| **l != Endpoint::Unknown);
                let tcp =
                    matches!(input.peer, Endpoint::Tcp(..)) || matches!(endpoint, Some(Endpoint::Tcp(..)));
                Origin {
                    transport: if tcp { Transport::Tcp } else { Transport::Unix },
                    endpoint: endpoint.map(ToString::to_string),
                    peer: matches!(input.peer, Endpoint::Tcp(..)).then(|| input.peer.to_string()),
                    client: None,
                    daemon: Some(DaemonView {
                        pid: input.header.tgid,
                        comm: input.header.comm.clone(),
                    }),
                }
            }
            _ => Origin {
                transport: transport(input.peer),
                endpoint: Some(input.peer.to_string()),
                peer: None,
                client: None,
                daemon: None,
            },
        }
    }

    fn api_request(&mut self, input: &DataInput<'_>, head: RequestHead) {
        let now = input.header.boot_ns;
        let key = (input.conn_id, input.direction);
        let evidence = self
            .streams
            .get(&key)
            .map(|s| s.evidence(head.offset, head.offset + head.len))
            .unwrap_or_default();
        // A new request on a connection means the previous response (a build's output) ended.
        if let Some(build_id) = self.streams.get_mut(&key).and_then(|s| s.build.take()) {
            self.finish_build(&build_id, now, BuildState::Finished);
        }
        let origin = self.origin_of(input);
        if input.role == Role::DaemonAccepted {
            self.check_exposed(&origin, now, &evidence);
        }
        let request = ApiRequest::parse(&head);
        let Some(operation) = api::classify(&request) else {
            return;
        };
        let pair_key = format!("{} {}", head.method, head.target);
        let half = Half {
            conn_id: input.conn_id,
            evidence,
        };
        let is_client = input.role == Role::Client;
        // The late half of a request already reported alone (a loopback TCP client whose write
        // was processed after dockerd's read): it belongs to that operation, not a new one.
        if let Some(recent) = self.reported.iter().find(|r| {
            r.key == pair_key
                && now.saturating_sub(r.first_ns) < 2 * BODY_WAIT_NS
                && r.had_client != is_client
        }) {
            let build = self
                .builds
                .iter()
                .find(|b| b.id == build_id_of(&recent.id))
                .map(|b| b.id.clone());
            if let Some(stream) = self.streams.get_mut(&key) {
                stream.build = build;
            }
            if let Some(build) = self.builds.iter_mut().find(|b| b.id == build_id_of(&recent.id)) {
                build.conn_ids.push(input.conn_id);
            }
            return;
        }
        // The other half of a request already seen?
        let found = self.pending.iter_mut().find(|p| {
            p.key == pair_key
                && now.saturating_sub(p.first_ns) < 2 * BODY_WAIT_NS
                && if is_client {
                    p.client.is_none()
                } else {
                    p.daemon.is_none()
                }
        });
        let id = match found {
            Some(pending) => {
                if is_client {
                    pending.client = Some((half, input.process.clone()));
                    if pending.origin.endpoint.is_none() {
                        pending.origin.endpoint = Some(input.peer.to_string());
                    }
                } else {
                    pending.daemon = Some(half);
                    let client = pending.origin.client.take();
                    pending.origin = Origin { client, ..origin };
                }
                pending.id.clone()
            }
            None => {
                let id = stable_id(
                    "op",
                    &[&input.conn_id.to_string(), &head.offset.to_string(), &pair_key],
                );
                let needs_body = operation.needs_body();
                let mut pending = Pending {
                    id: id.clone(),
                    key: pair_key,
                    operation,
                    request: Some(request),
                    first_ns: now,
                    client: None,
                    daemon: None,
                    origin,
                    body: None,
                    needs_body,
                };
                if is_client {
                    let process = input.process.clone();
                    pending.origin.client = Some(process.clone());
                    pending.client = Some((half, process));
                } else {
                    pending.daemon = Some(half);
                }
                if self.pending.len() >= MAX_PENDING {
                    let oldest = self.pending.remove(0);
                    self.finalize(oldest, now);
                }
                self.pending.push(pending);
                id
            }
        };
        if let Some(stream) = self.streams.get_mut(&key) {
            stream.awaiting_body = Some(id);
        }
    }

    fn body(&mut self, now: u64, id: &str, bytes: Vec<u8>, complete: bool) {
        if let Some(pending) = self.pending.iter_mut().find(|p| p.id == id) {
            if pending.body.is_none() {
                pending.body = Some((bytes, complete));
            }
            self.tick(now);
            return;
        }
        // Reported already: a build context that arrived late still tells the Dockerfile.
        let build_id = build_id_of(id);
        let Some(build) = self.builds.iter_mut().find(|b| b.id == build_id) else {
            return;
        };
        if build.instructions.is_none() {
            build.instructions = dockerfile::from_context(&bytes, build.params.dockerfile.as_deref());
            add_dockerfile_bases(build);
        }
    }

    fn upgraded(&mut self, input: &DataInput<'_>, bytes: &[u8]) {
        let key = (input.conn_id, input.direction);
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let scanner = stream.session.get_or_insert_with(SessionScanner::default);
        if !scanner.scan(bytes) {
            return;
        }
        let facts = scanner.facts.clone();
        if !facts.markers.contains(&Marker::Solve) {
            return;
        }
        let now = input.header.boot_ns;
        let params = BuildParams {
            tags: facts.tags.iter().filter_map(|t| ImageRef::parse(t)).collect(),
            dockerfile: facts.dockerfile.clone(),
            remote_context: facts.remote_context.clone(),
            build_arg_keys: facts.build_arg_keys.clone(),
            ..BuildParams::default()
        };
        let first = !stream.grpc_solve_reported;
        stream.grpc_solve_reported = true;
        let evidence = stream
            .carriers
            .back()
            .map(|c| vec![c.2.clone()])
            .unwrap_or_default();
        let pair_key = "h2 /moby.buildkit.v1.Control/Solve".to_string();
        let learned = !facts.tags.is_empty() || facts.markers.contains(&Marker::DockerfileFrontend);
        // Update a solve still waiting for its facts, or start one.
        let is_client = input.role == Role::Client;
        let daemon_origin = self.origin_of(input);
        if let Some(pending) = self
            .pending
            .iter_mut()
            .find(|p| p.key == pair_key && now.saturating_sub(p.first_ns) < 2 * BODY_WAIT_NS)
        {
            if let Operation::Build { params: known, .. } = &mut pending.operation {
                for tag in params.tags {
                    if !known.tags.contains(&tag) {
                        known.tags.push(tag);
                    }
                }
                known.dockerfile = known.dockerfile.take().or(params.dockerfile);
                known.remote_context = known.remote_context.take().or(params.remote_context);
                known.build_arg_keys.extend(params.build_arg_keys);
            }
            if learned {
                pending.body = Some((Vec::new(), true));
            }
            let half = Half {
                conn_id: input.conn_id,
                evidence,
            };
            if is_client && pending.client.is_none() {
                let process = input.process.clone();
                pending.origin.client = Some(process.clone());
                pending.client = Some((half, process));
            } else if !is_client && pending.daemon.is_none() {
                pending.daemon = Some(half);
                let client = pending.origin.client.take();
                pending.origin = Origin {
                    client,
                    ..daemon_origin
                };
            }
        } else if first {
            let half = Half {
                conn_id: input.conn_id,
                evidence,
            };
            let origin = daemon_origin;
            let mut pending = Pending {
                id: stable_id("op", &[&input.conn_id.to_string(), "solve"]),
                key: pair_key,
                operation: Operation::Build {
                    builder: Builder::Buildx,
                    params,
                },
                request: None,
                first_ns: now,
                client: None,
                daemon: None,
                origin,
                body: learned.then(|| (Vec::new(), true)),
                needs_body: true,
            };
            if is_client {
                let process = input.process.clone();
                pending.origin.client = Some(process.clone());
                pending.client = Some((half, process));
            } else {
                pending.daemon = Some(half);
            }
            self.pending.push(pending);
        }
        self.tick(now);
    }

    /// A daemon's own request to a registry (or elsewhere).
    fn outbound_request(&mut self, input: &DataInput<'_>, head: &RequestHead) {
        let now = input.header.boot_ns;
        let host = head
            .header("host")
            .map(String::from)
            .unwrap_or_else(|| input.peer.to_string());
        let path = head.target.split('?').next().unwrap_or_default();
        if let Some(rest) = path.strip_prefix("/v2/") {
            if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
                self.registry_fetch(input.header.tgid, now, &host, name, reference);
            }
            return;
        }
        let detail = format!("{} http://{host}{}", head.method, truncate(&head.target, 200));
        self.daemon_egress(
            input.header.tgid,
            now,
            Egress {
                kind: "daemon_connection",
                detail,
                destination: Some(input.peer.to_string()),
                sni: None,
            },
        );
    }

    fn outbound_tls(&mut self, input: &DataInput<'_>) {
        let now = input.header.boot_ns;
        let Some(sni) = tls::client_hello_sni(input.bytes) else {
            return;
        };
        if is_registry_host(&sni) || self.settings.allow.lists_registry(&sni) {
            return;
        }
        self.daemon_egress(
            input.header.tgid,
            now,
            Egress {
                kind: "daemon_connection",
                detail: format!("TLS to {sni}"),
                destination: Some(input.peer.to_string()),
                sni: Some(sni),
            },
        );
    }

    fn registry_fetch(&mut self, tgid: u32, now: u64, host: &str, name: &str, reference: &str) {
        let registry = registry_host(host);
        let digest = reference.starts_with("sha256:").then(|| reference.to_string());
        let text = match &digest {
            Some(digest) => format!("{registry}/{name}@{digest}"),
            None => format!("{registry}/{name}:{reference}"),
        };
        let Some(image) = ImageRef::parse(&text) else {
            return;
        };
        self.ledger.record(
            &image,
            Source::RegistryFetch,
            self.wall_ns(now),
            Some(registry.clone()),
        );
        let base = BaseImage {
            registry,
            repository: image.repository(),
            reference: image.to_string(),
            digest,
            fetched: true,
            in_dockerfile: false,
        };
        for build in self
            .builds
            .iter_mut()
            .filter(|b| b.daemon_tgid == Some(tgid) || b.builder_tgid == Some(tgid))
        {
            build.add_base_image(base.clone());
        }
    }

    fn daemon_egress(&mut self, tgid: u32, now: u64, egress: Egress) {
        let ids: Vec<String> = self
            .builds
            .iter()
            .filter(|b| b.daemon_tgid == Some(tgid) || b.builder_tgid == Some(tgid))
            .map(|b| b.id.clone())
            .collect();
        for id in ids {
            self.build_egress(&id, now, egress.clone(), Vec::new());
        }
    }

    /// An exec: a daemon-less builder starting, or a build step.
    pub fn on_exec(&mut self, header: &Header, line_id: &str, process: &ProcessView) {
        let now = header.boot_ns;
        let argv = process.argv.clone().unwrap_or_default();
        let remote_client = argv
            .iter()
            .any(|a| matches!(a.as_str(), "--remote" | "-r" | "--url" | "--connection"))
            || process
                .exe
                .as_deref()
                .is_some_and(|e| e.ends_with("podman-remote"));
        if !remote_client {
            if let Some(operation) = commands::classify(process.exe.as_deref(), &argv) {
                self.command_operation(header, line_id, process, operation);
                return;
            }
        }
        if self.builds.is_empty() || !builds::runs_under_runtime(process) {
            return;
        }
        self.expire_started(now);
        if let Some(id) = &process.container_id {
            if self.started.iter().any(|(s, _)| id.starts_with(s.as_str())) {
                return;
            }
        }
        let ancestors: Vec<u32> = process.ancestry.iter().flatten().map(|a| a.pid).collect();
        let build = self
            .builds
            .iter()
            .rev()
            .find(|b| {
                b.builder_tgid
                    .or(b.daemon_tgid)
                    .is_some_and(|t| ancestors.contains(&t))
            })
            .or_else(|| self.builds.iter().rev().find(|b| b.builder_tgid.is_none()));
        let Some(build_id) = build.map(|b| b.id.clone()) else {
            return;
        };
        let step = Step {
            pid: process.pid,
            exe: process.exe.clone(),
            argv: argv.clone(),
            time: self.wall_time(now),
            container_id: process.container_id.clone(),
            evidence: line_id.to_string(),
        };
        let Some(build) = self.builds.iter_mut().find(|b| b.id == build_id) else {
            return;
        };
        build.add_step(step);
        if let Some(detail) = rules::egress_command(&argv) {
            let egress = Egress {
                kind: "step_command",
                detail,
                destination: None,
                sni: None,
            };
            self.build_egress(&build_id, now, egress, vec![line_id.to_string()]);
        }
    }

    fn command_operation(
        &mut self,
        header: &Header,
        line_id: &str,
        process: &ProcessView,
        operation: Operation,
    ) {
        let origin = Origin {
            transport: Transport::Exec,
            endpoint: None,
            peer: None,
            client: Some(process.clone()),
            daemon: None,
        };
        let pending = Pending {
            id: stable_id(
                "op",
                &[&header.tgid.to_string(), &header.boot_ns.to_string(), "exec"],
            ),
            key: String::new(),
            operation,
            request: None,
            first_ns: header.boot_ns,
            client: Some((
                Half {
                    conn_id: 0,
                    evidence: vec![line_id.to_string()],
                },
                process.clone(),
            )),
            daemon: None,
            origin,
            body: None,
            needs_body: false,
        };
        self.finalize(pending, header.boot_ns);
    }

    pub fn on_exit(&mut self, tgid: u32, now: u64) {
        let ids: Vec<String> = self
            .builds
            .iter()
            .filter(|b| b.builder_tgid == Some(tgid))
            .map(|b| b.id.clone())
            .collect();
        for id in ids {
            self.finish_build(&id, now, BuildState::Finished);
        }
    }

    pub fn on_close(&mut self, conn_id: u64, now: u64) {
        self.tick(now);
        for dir in [Dir::Send, Dir::Recv] {
            self.streams.remove(&(conn_id, dir));
        }
        let ids: Vec<String> = self
            .builds
            .iter()
            .filter(|b| b.conn_ids.contains(&conn_id))
            .map(|b| b.id.clone())
            .collect();
        for id in ids {
            self.finish_build(&id, now, BuildState::Finished);
        }
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
        let view = OperationView {
            id: pending.id.clone(),
            operation: pending.operation.clone(),
            api,
            method: pending.request.as_ref().map(|r| r.method.clone()),
            path: pending.request.as_ref().map(ApiRequest::route),
            api_version: pending.request.as_ref().and_then(|r| r.version.clone()),
            origin: pending.origin.clone(),
            evidence: evidence.clone(),
        };
        *self.stats.operations.entry(pending.operation.name()).or_default() += 1;
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
                self.ledger
                    .record(&image, Source::Pull, wall, Some(image.registry.clone()));
            }
            Operation::Import { image, source } => {
                if let Some(image) = &image {
                    self.ledger.record(image, Source::Import, wall, Some(source));
                }
                let images: Vec<String> = image.iter().map(ToString::to_string).collect();
                self.side_loaded(now, view, "imported", &images, evidence);
            }
            Operation::Load => {
                let images = pending
                    .body
                    .as_ref()
                    .map(|(bytes, _)| loaded_images(bytes))
                    .unwrap_or_default();
                for image in &images {
                    self.ledger.record(image, Source::Load, wall, None);
                }
                let names: Vec<String> = images.iter().map(ToString::to_string).collect();
                self.side_loaded(now, view, "loaded", &names, evidence);
            }
            Operation::Tag { source, target } => {
                let via = ImageRef::parse(&source).map(|s| s.to_string()).unwrap_or(source);
                self.ledger.record(&target, Source::Tag, wall, Some(via));
            }
            Operation::Commit {
                image: Some(image),
                container,
            } => {
                self.ledger.record(&image, Source::Commit, wall, Some(container));
            }
            Operation::ContainerCreate(params) => {
                let Some(image) = params.image.as_deref().and_then(ImageRef::parse) else {
                    return;
                };
                let allow = &self.settings.allow;
                let provenance = self.ledger.provenance(&image, &|r| allow.trusts_registry(r));
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
                let verdict =
                    rules::run_of_unpulled_image(&view.origin, &image.to_string(), &origins, &params);
                let allowed = self.allowed(&view);
                self.report(
                    now,
                    verdict,
                    Subject::Operation(Box::new(view)),
                    evidence,
                    allowed,
                );
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
        let instructions = match (&body, &params.context_dir) {
            (Some((bytes, _)), _) => dockerfile::from_context(bytes, params.dockerfile.as_deref()),
            (None, Some(context)) => {
                let cwd = view.origin.client.as_ref().and_then(|c| c.cwd.as_deref());
                self.host.dockerfile(cwd, context, params.dockerfile.as_deref())
            }
            (None, None) => None,
        };
        let mut build = Build {
            id: id.clone(),
            builder,
            state: BuildState::Open,
            origin: view.origin.clone(),
            params,
            instructions,
            base_images: Vec::new(),
            steps: Vec::new(),
            steps_dropped: 0,
            egress: Vec::new(),
            start: self.wall_time(at),
            end: None,
            duration_ms: None,
            detection_id: None,
            severity: None,
            evidence: evidence.clone(),
            start_ns: at,
            daemon_tgid: view.origin.daemon.as_ref().map(|d| d.pid),
            builder_tgid: (view.origin.transport == Transport::Exec)
                .then(|| view.origin.client.as_ref().map(|c| c.pid))
                .flatten(),
            conn_ids: conn_ids.clone(),
            egress_detected: false,
            raised_for_egress: false,
        };
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
        let unpulled: Vec<String> = targets
            .iter()
            .filter(|(repository, _)| {
                !self
                    .ledger
                    .pulled_since(repository, since, &|r| allow.trusts_registry(r))
            })
            .map(|(_, reference)| reference.clone())
            .collect();
        let untagged = targets.is_empty();
        let builder_name = serde_json::to_value(builder)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let verdict = rules::build_without_pull(
            &build.origin,
            &builder_name,
            &unpulled,
            untagged,
            &build.egress_details(),
        );
        let wall = self.wall_ns(at);
        for tag in &build.params.tags {
            self.ledger.record(tag, Source::Build, wall, Some(id.clone()));
        }
        if let Some(verdict) = verdict {
            let suppressed = self
                .settings
                .allow
                .origin(&build.origin)
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
        build.state = state;
        build.end = Some(self.wall_time(now));
        build.duration_ms = Some(now.saturating_sub(build.start_ns) / 1_000_000);
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

    /// Rule 3 for a load or import.
    fn side_loaded(
        &mut self,
        now: u64,
        view: OperationView,
        how: &str,
        images: &[String],
        evidence: Vec<String>,
    ) {
        let verdict = rules::image_side_loaded(&view.origin, how, images);
        let allowed = self.allowed(&view);
        self.report(
            now,
            verdict,
            Subject::Operation(Box::new(view)),
            evidence,
            allowed,
        );
    }

    /// Why an operation's client or target is allowlisted, if it is.
    fn allowed(&self, operation: &OperationView) -> Option<String> {
        self.settings.allow.origin(&operation.origin).or_else(|| {
            image_of(&operation.operation).and_then(|target| self.settings.allow.all_repositories(&[target]))
        })
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
fn loaded_images(tar_bytes: &[u8]) -> Vec<ImageRef> {
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

/// Registries whose TLS connections are image fetches, not egress.
fn is_registry_host(host: &str) -> bool {
    const REGISTRIES: [&str; 10] = [
        "docker.io",
        "registry-1.docker.io",
        "auth.docker.io",
        "production.cloudflare.docker.com",
        "ghcr.io",
        "quay.io",
        "gcr.io",
        "registry.k8s.io",
        "mcr.microsoft.com",
        "public.ecr.aws",
    ];
    REGISTRIES
        .iter()
        .any(|r| host == *r || host.ends_with(&format!(".{r}")))
        || host.ends_with(".amazonaws.com") && host.contains(".dkr.ecr.")
        || host.ends_with("pkg.dev")
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests;
