//! Correlation: raw socket bytes and execs -> HTTP requests -> Docker operations -> build
//! sessions and the image ledger -> detections. Kernel-free and driven by event timestamps, so it
//! behaves the same live, in tests and on a replayed recording.
//!
//! A local client's request is seen twice, as the client's write and as the daemon's read. The
//! two halves are paired by method and target within [`PAIR_WAIT_NS`]: the client half names the
//! process, the daemon half the daemon, its endpoint and a TCP peer. An operation is reported once
//! both halves are in, or when the wait is over (a remote client has no local half).
pub mod allow;
mod building;
pub mod builds;
mod execs;
mod images;
pub mod ledger;
mod operations;
mod pulls;
mod reporting;
pub mod rules;
mod sessions;
pub mod settings;
mod stream;
mod traffic;
mod transfers;

pub use self::transfers::loaded_images;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use sensor_common::QuietRequest;
use serde::Serialize;

use self::{
    allow::Allowlist,
    builds::{Build, BuildState, MAX_BUILD_NS},
    ledger::{Ledger, Source},
    stream::Stream,
    transfers::{StoreSnapshot, Transfer},
};
use crate::{
    decode::Header,
    docker::api::ApiRequest,
    host::SharedHost,
    model::{
        detection::{DetectStats, DetectionView},
        ids::{BuildId, OperationId},
        line::LineKind,
        operation::{Operation, OperationView},
        origin::Origin,
        process::ProcessView,
        socket::{Dir, Endpoint, Role},
    },
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
    /// An API endpoint reachable from a peer (`api_exposed`).
    Exposure(Box<Origin>),
    /// A process, by its pid and the time of the exec (or of the sensor's start) at which it
    /// was found to be what it is (`daemon_impersonation`).
    Process {
        origin: Box<Origin>,
        tgid: u32,
        seen_ns: u64,
    },
}

impl Subject {
    /// What makes a finding about this subject distinct from every other finding of its rule,
    /// and the same when a recording is replayed: the detection's id is hashed from it.
    fn identity(&self) -> Vec<String> {
        match self {
            Subject::Build(build) => vec![build.id.to_string()],
            Subject::Operation(operation) => vec![operation.id.to_string()],
            Subject::Exposure(origin) => vec![format!(
                "{} {}",
                origin.endpoint.as_deref().unwrap_or_default(),
                origin.peer_ip().map(|ip| ip.to_string()).unwrap_or_default()
            )],
            Subject::Process { tgid, seen_ns, .. } => {
                vec!["process".into(), tgid.to_string(), seen_ns.to_string()]
            }
        }
    }
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
    pub fn kind(&self) -> LineKind {
        match self {
            Finding::Operation { .. } => LineKind::DockerOperation,
            Finding::Detection { .. } => LineKind::Detection,
            Finding::Build { .. } => LineKind::Build,
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
    /// The kernel connection's quiet epoch at this record, and whether the quiet period before
    /// it ended exactly at the end of a chunked body.
    pub quiet_epoch: u32,
    pub clean_end: bool,
}

/// One side of a request.
#[derive(Debug, Clone)]
struct Half {
    conn_id: u64,
    evidence: Vec<String>,
}

struct Reported {
    id: OperationId,
    key: String,
    first_ns: u64,
    had_client: bool,
}

const MAX_REPORTED: usize = 256;

struct Pending {
    id: OperationId,
    key: String,
    operation: Operation,
    request: Option<ApiRequest>,
    first_ns: u64,
    client: Option<(Half, ProcessView)>,
    daemon: Option<Half>,
    origin: Origin,
    body: Option<(Vec<u8>, bool)>,
    needs_body: bool,
    /// A load's or import's image store as the daemon's side of its head found it: listed
    /// then, not when the operation is reported (a small load is over in milliseconds).
    store_before: Option<StoreSnapshot>,
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
    transfers: Vec<Transfer>,
    exposed: HashSet<(String, IpAddr)>,
    started: VecDeque<(String, u64)>,
    /// Build-step connections: conn_id -> build id.
    step_connections: HashMap<u64, BuildId>,
    /// Which build each step container and process belongs to.
    steps: builds::StepOwners,
    /// Operations reported recently, so a half that arrives after its operation was reported
    /// alone is recognised.
    reported: VecDeque<Reported>,
    findings: Vec<(u64, Finding)>,
    stats: DetectStats,
    pulls: pulls::Pulls,
    /// Dockerfiles sessions sent before their build opened: (daemon tgid, time, session, file).
    synced_dockerfiles: VecDeque<(u32, u64, Option<String>, SyncedDockerfile)>,
    /// Connections whose next bytes are not needed, for the kernel (see `traffic`).
    quiet_requests: Vec<(u64, QuietRequest)>,
    /// Builds opened whose store is still to be listed (see `building`).
    stores_to_list: Vec<BuildId>,
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
            quiet_requests: Vec::new(),
            stores_to_list: Vec::new(),
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
        let ids: Vec<BuildId> = self
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
        let expired: Vec<BuildId> = self
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
        let subject = Subject::Process {
            origin: Box::new(origin),
            tgid: process.pid,
            seen_ns: now,
        };
        self.report(now, verdict, subject, evidence, allowed);
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
        let open: Vec<BuildId> = self.builds.iter().map(|b| b.id.clone()).collect();
        for id in open {
            self.finish_build(&id, now, BuildState::Unfinished);
        }
        let transfers: Vec<OperationId> = self.transfers.iter().map(|t| t.id.clone()).collect();
        for id in transfers {
            self.finish_transfer(&id, now);
        }
    }

    // ---- correlation -----------------------------------------------------------------------

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

#[cfg(test)]
mod tests;
