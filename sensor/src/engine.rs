//! Raw kernel events in, JSON lines out: keeps the process, daemon and connection tables current
//! and renders each event with what they know. Independent of the kernel, so it runs the same
//! on live events and in tests.
use std::collections::BTreeMap;

use crate::{
    connections::ConnectionTable,
    daemons::{Daemons, ProcessFacts, Verdict},
    decode::{Header, RawEvent, SocketData, SocketOpen},
    detect::{DataInput, Detector},
    docker::daemon_api,
    existing::ExistingConnection,
    model::{line::LineKind, socket::Role},
    output::{
        schema::{
            DaemonBody, DataBody, DataView, LossBody, LossView, ProcessBody, SocketBody, SocketView, Stats,
        },
        Emitter, Sink,
    },
    process_table::{self, ProcessTable},
    recording::Input,
    redact::Redactor,
};

const EINPROGRESS: i32 = 115;

pub struct Engine {
    pub processes: ProcessTable,
    pub connections: ConnectionTable,
    pub daemons: Daemons,
    pub emitter: Emitter,
    pub detector: Detector,
    redactor: Redactor,
    events: BTreeMap<&'static str, u64>,
    decode_errors: u64,
    kernel_drops: BTreeMap<&'static str, u64>,
    reported_loss: LossView,
    own_queries: OwnQueries,
}

impl Engine {
    pub fn new(
        processes: ProcessTable,
        connections: ConnectionTable,
        daemons: Daemons,
        emitter: Emitter,
        detector: Detector,
    ) -> Self {
        Self {
            processes,
            connections,
            daemons,
            emitter,
            detector,
            redactor: Redactor::default(),
            events: BTreeMap::new(),
            decode_errors: 0,
            kernel_drops: BTreeMap::new(),
            reported_loss: LossView::default(),
            own_queries: OwnQueries::default(),
        }
    }

    /// The marker the host's API requests carry (see `docker::daemon_api`).
    pub fn with_api_marker(mut self, marker: &str) -> Self {
        self.own_queries.marker = marker.to_string();
        self
    }

    /// Marks every already-running daemon (after the process table was seeded).
    fn discover_daemons(&mut self, now: u64) {
        // In pid order: the host's answers are recorded in the order they are asked, and a
        // replay must ask in the same order (the table's own order is a hash map's).
        let mut found: Vec<u32> = self.processes.iter().map(|p| p.pid).collect();
        found.sort_unstable();
        for pid in found {
            self.check_daemon(pid, now, None);
        }
    }

    /// Re-evaluates whether `tgid` is a daemon (after its exec, or at start); reports a process
    /// that takes a daemon's name without being one.
    fn check_daemon(&mut self, tgid: u32, now: u64, exec_line: Option<&str>) {
        let Some(process) = self.processes.get(tgid).cloned() else {
            return;
        };
        let facts = ProcessFacts {
            comm: &process.comm,
            exe: process.exe.as_deref(),
            argv: &process.argv,
            uid: process.uid,
        };
        if let Verdict::Impersonation { name } = self.daemons.update(tgid, now, &facts) {
            let ancestry = self.processes.ancestry(tgid);
            let header = Header {
                boot_ns: now,
                pid: tgid,
                tgid,
                uid: process.uid,
                gid: process.gid,
                cgroup_id: 0,
                comm: process.comm.clone(),
            };
            let view = process_table::full_view(&header, &process, ancestry);
            self.detector.on_impersonation(now, &name, &view, exec_line);
        }
    }

    /// Masks credentials in captured bytes (length-preserving, see `redact`), before the input
    /// is applied or recorded: nothing downstream, recordings included, ever holds them.
    pub fn prepare(&mut self, mut input: Input) -> Input {
        match &mut input {
            Input::Event(RawEvent::Data { data, .. }) => {
                if data.skipped_before > 0 {
                    self.redactor.gap(data.conn_id, data.direction);
                }
                data.redacted = self
                    .redactor
                    .redact(data.conn_id, data.direction, &mut data.bytes);
                if (data.bytes.len() as u32) < data.total_len {
                    self.redactor.gap(data.conn_id, data.direction);
                }
            }
            Input::Event(RawEvent::Close { conn_id, .. }) => self.redactor.close(*conn_id),
            _ => {}
        }
        input
    }

    /// Applies one input (live or from a recording, already prepared).
    pub fn apply(&mut self, input: Input, sink: &mut Sink) -> anyhow::Result<()> {
        match input {
            Input::Seed(now) => {
                self.processes.seed();
                self.discover_daemons(now);
                self.write_findings(sink)
            }
            Input::Event(event) => self.handle(event, sink),
            Input::Existing {
                tgid,
                conn_id,
                boot_ns,
                connection,
            } => self.existing_connection(sink, tgid, conn_id, boot_ns, &connection),
            Input::Tick(now) => self.tick(now, sink),
            Input::Finish(now) => self.finish(now, sink),
        }
    }

    /// Whether a clock tick could change anything now (a request waits for its other half or
    /// its body, or a build is open). Ticks that cannot are not recorded.
    pub fn has_timed_work(&self, now: u64) -> bool {
        self.detector.has_timed_work() || self.daemons.has_due_checks(now)
    }

    /// Handles one kernel event: its own line, then whatever correlation concluded from it.
    pub fn handle(&mut self, event: RawEvent, sink: &mut Sink) -> anyhow::Result<()> {
        self.handle_event(event, sink)?;
        self.write_findings(sink)
    }

    /// Lets correlation report what is due at boot time `now` (pairing and body waits), and
    /// saves the ledger if it changed.
    pub fn tick(&mut self, now: u64, sink: &mut Sink) -> anyhow::Result<()> {
        self.daemons.recheck(now);
        self.detector.tick(now);
        self.write_findings(sink)?;
        self.persist_ledger();
        Ok(())
    }

    /// The sensor is stopping: report everything pending, close open builds, save the ledger.
    pub fn finish(&mut self, now: u64, sink: &mut Sink) -> anyhow::Result<()> {
        self.detector.flush(now);
        self.write_findings(sink)?;
        self.persist_ledger();
        Ok(())
    }

    fn persist_ledger(&mut self) {
        if let Err(err) = self.detector.persist() {
            tracing::warn!("{err:#}");
        }
    }

    fn write_findings(&mut self, sink: &mut Sink) -> anyhow::Result<()> {
        for (at, daemon) in self.daemons.take_changes() {
            *self.events.entry(LineKind::SensorDaemon.as_str()).or_default() += 1;
            let line = self
                .emitter
                .line(LineKind::SensorDaemon, Some(at), DaemonBody { daemon });
            sink.write(&line)?;
        }
        for (at, finding) in self.detector.take_findings() {
            *self.events.entry(finding.kind().as_str()).or_default() += 1;
            let line = self.emitter.line(finding.kind(), Some(at), &finding);
            sink.write(&line)?;
        }
        self.detector.list_stores_of_new_builds();
        Ok(())
    }

    fn handle_event(&mut self, event: RawEvent, sink: &mut Sink) -> anyhow::Result<()> {
        match event {
            RawEvent::Fork { header, child_pid } => {
                self.processes.on_fork(&header, child_pid);
                let process = process_table::view(&header, self.processes.get(header.tgid));
                self.write(
                    sink,
                    LineKind::ProcessFork,
                    &header,
                    ProcessBody {
                        process,
                        child_pid: Some(child_pid),
                        old_pid: None,
                        filename: None,
                    },
                )
                .map(drop)
            }
            RawEvent::Argv {
                header,
                args,
                truncated,
            } => {
                self.processes.on_argv(&header, args, truncated);
                Ok(())
            }
            RawEvent::Exec {
                header,
                old_pid,
                filename,
            } => {
                let process = self.processes.on_exec(&header, old_pid, &filename).clone();
                let ancestry = self.processes.ancestry(header.tgid);
                let view = process_table::full_view(&header, &process, ancestry);
                let body = ProcessBody {
                    process: view.clone(),
                    child_pid: None,
                    old_pid: (old_pid != header.tgid).then_some(old_pid),
                    filename: Some(filename),
                };
                let id = self.write(sink, LineKind::ProcessExec, &header, body)?;
                self.check_daemon(header.tgid, header.boot_ns, Some(&id));
                if let Some(builder) = self.detector.on_exec(&header, &id, &view) {
                    // A daemon-less builder's own registry traffic is followed like a daemon's.
                    self.daemons
                        .trust_builder(header.tgid, &builder.name, builder.store, header.boot_ns);
                }
                Ok(())
            }
            RawEvent::Exit { header } => {
                let process = process_table::view(&header, self.processes.get(header.tgid));
                self.processes.on_exit(&header);
                self.daemons.remove(header.tgid, header.boot_ns);
                self.connections.process_exited(header.tgid);
                self.detector.on_exit(header.tgid, header.boot_ns);
                self.write(
                    sink,
                    LineKind::ProcessExit,
                    &header,
                    ProcessBody {
                        process,
                        child_pid: None,
                        old_pid: None,
                        filename: None,
                    },
                )
                .map(drop)
            }
            RawEvent::Connect { header, socket } => {
                self.socket_opened(sink, LineKind::SocketConnect, header, socket)
            }
            RawEvent::Accept { header, socket } => {
                self.socket_opened(sink, LineKind::SocketAccept, header, socket)
            }
            RawEvent::Data { header, data } => self.data(sink, header, data),
            RawEvent::Close {
                header,
                conn_id,
                fd,
                role,
            } => {
                if self.own_queries.closed(conn_id) {
                    self.connections.close(conn_id);
                    return Ok(());
                }
                let known = self.connections.close(conn_id);
                self.detector.on_close(conn_id, header.boot_ns);
                let socket = SocketView {
                    conn_id,
                    fd,
                    role,
                    peer: known
                        .as_ref()
                        .map(|c| c.peer.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                    local: known.and_then(|c| c.local).map(|l| l.to_string()),
                    listen_fd: None,
                    result: None,
                    existing: false,
                };
                let process = process_table::view(&header, self.processes.get(header.tgid));
                self.write(
                    sink,
                    LineKind::SocketClose,
                    &header,
                    SocketBody { process, socket },
                )
                .map(drop)
            }
        }
    }

    fn socket_opened(
        &mut self,
        sink: &mut Sink,
        kind: LineKind,
        header: Header,
        socket: SocketOpen,
    ) -> anyhow::Result<()> {
        // A build step's failed connect is reported but was never tracked: nothing will close it.
        let tracked = socket.role != Role::BuildStep || socket.result == 0 || socket.result == -EINPROGRESS;
        let local = if tracked {
            self.connections.open(header.tgid, &socket).local.clone()
        } else {
            None
        };
        let process = match self.processes.current(header.tgid).cloned() {
            Some(known) => {
                let ancestry = self.processes.ancestry(header.tgid);
                process_table::full_view(&header, &known, ancestry)
            }
            None => process_table::view(&header, None),
        };
        if socket.role == Role::Client {
            self.connections.set_client(socket.conn_id, process.clone());
        }
        let build_step = (socket.role == Role::BuildStep).then(|| process.clone());
        let view = SocketView {
            conn_id: socket.conn_id,
            fd: socket.fd,
            role: socket.role,
            peer: socket.peer.to_string(),
            local: local.map(|l| l.to_string()),
            listen_fd: socket.listen_fd,
            result: (kind == LineKind::SocketConnect).then_some(socket.result),
            existing: false,
        };
        let id = self.write(
            sink,
            kind,
            &header,
            SocketBody {
                process,
                socket: view,
            },
        )?;
        if let Some(process) = build_step {
            self.detector.on_step_connect(
                &header,
                &id,
                &process,
                socket.conn_id,
                &socket.peer,
                socket.result,
            );
        }
        Ok(())
    }

    /// A connection a daemon had before the sensor started, now tracked (see `existing`).
    fn existing_connection(
        &mut self,
        sink: &mut Sink,
        tgid: u32,
        conn_id: u64,
        boot_ns: u64,
        connection: &ExistingConnection,
    ) -> anyhow::Result<()> {
        let known = self.processes.get_or_load(tgid).cloned();
        let header = Header {
            boot_ns,
            pid: tgid,
            tgid,
            uid: known.as_ref().map_or(0, |p| p.uid),
            gid: known.as_ref().map_or(0, |p| p.gid),
            cgroup_id: 0,
            comm: known.as_ref().map(|p| p.comm.clone()).unwrap_or_default(),
        };
        self.connections
            .adopt(conn_id, tgid, connection.peer.clone(), connection.local.clone());
        let process = match known {
            Some(known) => {
                let ancestry = self.processes.ancestry(tgid);
                process_table::full_view(&header, &known, ancestry)
            }
            None => process_table::view(&header, None),
        };
        let socket = SocketView {
            conn_id,
            fd: connection.fd,
            role: connection.role,
            peer: connection.peer.to_string(),
            local: Some(connection.local.to_string()),
            listen_fd: None,
            result: None,
            existing: true,
        };
        let kind = if connection.role == Role::DaemonAccepted {
            LineKind::SocketAccept
        } else {
            LineKind::SocketConnect
        };
        self.write(sink, kind, &header, SocketBody { process, socket })
            .map(drop)
    }

    fn data(&mut self, sink: &mut Sink, header: Header, data: SocketData) -> anyhow::Result<()> {
        if data.role == Role::DaemonAccepted && self.own_queries.is_own(data.conn_id, &data.bytes) {
            return Ok(());
        }
        let connection = self.connections.get(data.conn_id);
        let local_endpoint = connection.and_then(|c| c.local.clone());
        let local = local_endpoint.as_ref().map(|l| l.to_string());
        let short_view = process_table::view(&header, self.processes.get(header.tgid));
        let process = connection
            .and_then(|c| c.client.clone())
            .unwrap_or_else(|| short_view.clone());
        let socket = SocketView {
            conn_id: data.conn_id,
            fd: data.fd,
            role: data.role,
            peer: data.peer.to_string(),
            local,
            listen_fd: None,
            result: None,
            existing: false,
        };
        let body = DataBody {
            process: short_view,
            socket,
            data: DataView::new(
                data.direction,
                data.segment,
                data.total_len,
                data.bytes.len() as u32,
                &data.bytes,
                data.redacted,
            )
            .after_skipping(data.skipped_before),
        };
        let id = self.write(sink, LineKind::SocketData, &header, body)?;
        let daemon_store = match data.role {
            Role::DaemonAccepted | Role::DaemonOutbound => {
                self.daemons.get(header.tgid).map(|d| d.store.clone())
            }
            _ => None,
        };
        self.detector.on_data(DataInput {
            daemon_store: daemon_store.as_deref(),
            skipped_before: data.skipped_before,
            quiet_epoch: data.quiet_epoch,
            clean_end: data.clean_end,
            header: &header,
            line_id: &id,
            conn_id: data.conn_id,
            role: data.role,
            direction: data.direction,
            peer: &data.peer,
            local: local_endpoint.as_ref(),
            bytes: &data.bytes,
            total_len: data.total_len,
            process,
        });
        Ok(())
    }

    /// Writes a line and returns its id.
    fn write<B: serde::Serialize>(
        &mut self,
        sink: &mut Sink,
        kind: LineKind,
        header: &Header,
        body: B,
    ) -> anyhow::Result<String> {
        *self.events.entry(kind.as_str()).or_default() += 1;
        let line = self.emitter.line(kind, Some(header.boot_ns), body);
        sink.write(&line)?;
        Ok(line.id)
    }

    pub fn decode_error(&mut self) {
        self.decode_errors += 1;
    }

    /// Writes `sensor.loss` when anything lost (cumulative counts: kernel drops, queue drops,
    /// output errors, full tables...) or the decode errors grew since the last report.
    pub fn report_loss(&mut self, mut loss: LossView, sink: &mut Sink) -> anyhow::Result<()> {
        loss.decode_errors = self.decode_errors;
        if loss == self.reported_loss {
            return Ok(());
        }
        let body = LossBody { loss: loss.clone() };
        let line = self.emitter.line(LineKind::SensorLoss, None, body);
        // A report the full queue dropped is retried at the next check.
        if sink.write(&line)? {
            *self.events.entry(LineKind::SensorLoss.as_str()).or_default() += 1;
            self.kernel_drops = loss.kernel_drops.clone();
            self.reported_loss = loss;
        }
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        Stats {
            events: self.events.clone(),
            decode_errors: self.decode_errors,
            kernel_drops: self.kernel_drops.clone(),
            processes_tracked: self.processes.len(),
            connections_tracked: self.connections.len(),
            detect: self.detector.stats(),
            ..Stats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use serde_json::Value;

    use super::*;
    use crate::{
        model::{
            daemon::DaemonIdentity,
            socket::{Dir, Endpoint},
        },
        output::sink::Captured,
    };

    /// An engine whose host knows pid 11 as a dockerd serving TCP 2375, and pids 30 and 31 as
    /// processes that are no daemon binary.
    fn engine() -> Engine {
        let scripted = std::rc::Rc::new(crate::host::scripted::ScriptedHost::default());
        scripted.identities.borrow_mut().insert(
            11,
            DaemonIdentity {
                answered: true,
                known_binary: true,
                serves: vec!["tcp:2375".into()],
                ..Default::default()
            },
        );
        for impostor in [30, 31] {
            scripted.identities.borrow_mut().insert(
                impostor,
                DaemonIdentity {
                    answered: true,
                    ..Default::default()
                },
            );
        }
        let host: crate::host::SharedHost = scripted;
        let detector = Detector::new(
            crate::detect::Settings {
                allow: crate::detect::allow::Allowlist::default(),
                lookback_ns: 3600 * 1_000_000_000,
                boot_to_wall_ns: 0,
            },
            crate::detect::ledger::Ledger::in_memory(100),
            host.clone(),
        );
        Engine::new(
            ProcessTable::new(host.clone()),
            ConnectionTable::new(host.clone()),
            Daemons::new(&["dockerd".to_string(), "containerd".to_string()], host, None),
            Emitter::new("test-host".into()),
            detector,
        )
    }

    fn header(tgid: u32, comm: &str, boot_ns: u64) -> Header {
        Header::for_test(tgid, comm, boot_ns)
    }

    fn run(events: Vec<RawEvent>) -> (Engine, Vec<Value>) {
        let mut engine = engine();
        let captured = Captured::default();
        let mut sink = Sink::writer(captured.clone());
        for event in events {
            let input = engine.prepare(Input::Event(event));
            engine.apply(input, &mut sink).unwrap();
        }
        sink.flush().unwrap();
        (engine, captured.lines())
    }

    #[test]
    fn exec_merges_argv_and_marks_daemons() {
        let (engine, lines) = run(vec![
            RawEvent::Fork {
                header: header(10, "bash", 1),
                child_pid: 11,
            },
            RawEvent::Argv {
                header: header(11, "bash", 2),
                args: vec!["dockerd".into(), "-H".into(), "tcp://0.0.0.0:2375".into()],
                truncated: false,
            },
            RawEvent::Exec {
                header: header(11, "dockerd", 3),
                old_pid: 11,
                filename: "/usr/sbin/dockerd".into(),
            },
        ]);
        assert_eq!(lines[0]["kind"], "process.fork");
        assert_eq!(lines[0]["child_pid"], 11);
        assert_eq!(lines.len(), 3, "argv records are merged into the exec line");
        let exec = &lines[1];
        assert_eq!(
            lines[2]["kind"], "sensor.daemon",
            "its trust is reported: {}",
            lines[2]
        );
        assert_eq!(lines[2]["daemon"]["pid"], 11);
        assert_eq!(lines[2]["daemon"]["trusted"], true);
        assert_eq!(exec["kind"], "process.exec");
        assert_eq!(exec["process"]["argv"][2], "tcp://0.0.0.0:2375");
        assert_eq!(exec["process"]["ppid"], 10);
        assert_eq!(exec["process"]["exe"], "/usr/sbin/dockerd");
        assert_eq!(engine.daemons.tgids(), [11]);
        assert!(exec.get("old_pid").is_none());
    }

    /// Two processes taking daemons' names at once (a dockerd and a containerd at other paths)
    /// are two findings with two ids, and a replay of the same inputs gives the same two.
    #[test]
    fn two_impersonators_are_two_findings() {
        let events = || {
            [
                (30, "dockerd", "/tmp/x/dockerd"),
                (31, "containerd", "/home/eve/containerd"),
            ]
            .into_iter()
            .enumerate()
            .flat_map(|(i, (pid, comm, exe))| {
                let at = 10 * (i as u64 + 1);
                [
                    RawEvent::Fork {
                        header: header(1, "bash", at),
                        child_pid: pid,
                    },
                    RawEvent::Exec {
                        header: header(pid, comm, at + 1),
                        old_pid: pid,
                        filename: exe.into(),
                    },
                ]
            })
            .collect::<Vec<_>>()
        };
        let ids = |lines: &[Value]| -> Vec<String> {
            lines
                .iter()
                .filter(|l| l["kind"] == "detection" && l["detection"]["rule"] == "daemon_impersonation")
                .map(|l| l["detection"]["id"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        let (_, lines) = run(events());
        let found = ids(&lines);
        assert_eq!(found.len(), 2, "{lines:?}");
        assert_ne!(found[0], found[1], "two impersonators, two findings");
        let (_, replayed) = run(events());
        assert_eq!(ids(&replayed), found, "the same inputs, the same ids");
    }

    #[test]
    fn data_lines_carry_the_listener_and_redact_credentials() {
        let peer = Endpoint::Tcp(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 40000);
        let socket = SocketOpen {
            conn_id: 77,
            fd: 9,
            listen_fd: Some(5),
            result: 0,
            role: Role::DaemonAccepted,
            peer: peer.clone(),
        };
        let request =
            b"POST /v1.41/images/create?fromImage=alpine HTTP/1.1\r\nX-Registry-Auth: c2VjcmV0\r\n\r\n";
        let data = SocketData {
            conn_id: 77,
            fd: 9,
            role: Role::DaemonAccepted,
            direction: Dir::Recv,
            segment: 0,
            total_len: request.len() as u32,
            skipped_before: 0,
            quiet_epoch: 0,
            clean_end: false,
            peer,
            bytes: request.to_vec(),
            redacted: false,
        };
        let (engine, lines) = run(vec![
            RawEvent::Accept {
                header: header(20, "dockerd", 1),
                socket,
            },
            RawEvent::Data {
                header: header(20, "dockerd", 2),
                data,
            },
            RawEvent::Close {
                header: header(20, "dockerd", 3),
                conn_id: 77,
                fd: 9,
                role: Role::DaemonAccepted,
            },
        ]);
        assert_eq!(lines[0]["kind"], "socket.accept");
        assert_eq!(lines[0]["socket"]["peer"], "10.0.0.2:40000");
        assert_eq!(lines[0]["socket"]["listen_fd"], 5);
        let data = &lines[1];
        assert_eq!(data["kind"], "socket.data");
        assert_eq!(data["data"]["redacted"], true);
        let content = data["data"]["content"].as_str().unwrap();
        assert!(!content.contains("c2VjcmV0"), "{content}");
        assert!(content.starts_with("POST /v1.41/images/create?fromImage=alpine HTTP/1.1\r\n"));
        assert_eq!(data["data"]["length"], request.len());
        let exposed = &lines[2];
        assert_eq!(exposed["kind"], "detection");
        assert_eq!(exposed["detection"]["rule"], "api_exposed");
        assert_eq!(exposed["detection"]["evidence"][0], data["id"]);
        let pull = &lines[3];
        assert_eq!(pull["kind"], "docker.operation");
        assert_eq!(pull["operation"]["type"], "pull");
        assert_eq!(pull["operation"]["image"], "docker.io/library/alpine:latest");
        assert_eq!(pull["operation"]["peer"], "10.0.0.2:40000");
        assert!(!pull.to_string().contains("c2VjcmV0"));
        assert_eq!(lines[4]["kind"], "socket.close");
        assert_eq!(lines[4]["socket"]["peer"], "10.0.0.2:40000");
        assert_eq!(engine.connections.len(), 0);
        // Not a trusted daemon (its identity was never confirmed): its pull is unconfirmed and
        // changes no provenance.
        assert_eq!(pull["operation"]["confirmed"], false);
        assert_eq!(engine.detector.stats().ledger_records, 0);
        let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] != w[1]), "ids are unique: {ids:?}");
    }

    #[test]
    fn loss_is_reported_once_per_change() {
        let mut engine = engine();
        let captured = Captured::default();
        let mut sink = Sink::writer(captured.clone());
        let data = || LossView {
            kernel_drops: BTreeMap::from([("socket.data", 3)]),
            ..LossView::default()
        };
        engine.report_loss(LossView::default(), &mut sink).unwrap();
        engine.report_loss(data(), &mut sink).unwrap();
        engine.report_loss(data(), &mut sink).unwrap();
        engine.decode_error();
        engine.report_loss(data(), &mut sink).unwrap();
        let queue = LossView {
            queue_drops: BTreeMap::from([("socket.data", 7)]),
            ..data()
        };
        engine.report_loss(queue, &mut sink).unwrap();
        sink.flush().unwrap();
        let lines = captured.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["loss"]["kernel_drops"]["socket.data"], 3);
        assert_eq!(lines[1]["loss"]["decode_errors"], 1);
        assert_eq!(lines[2]["loss"]["queue_drops"]["socket.data"], 7);
        assert_eq!(engine.stats().kernel_drops.get("socket.data"), Some(&3));
    }
}

/// The daemon-side connections of the sensor's own API requests: not a client's traffic, so
/// neither written nor correlated. Recognised by a marker no one else knows, in the first read.
#[derive(Default)]
struct OwnQueries {
    marker: String,
    connections: std::collections::HashSet<u64>,
}

impl OwnQueries {
    fn is_own(&mut self, conn_id: u64, bytes: &[u8]) -> bool {
        if self.connections.contains(&conn_id) {
            return true;
        }
        let own = !self.marker.is_empty() && bytes.starts_with(b"GET /") && {
            let needle = format!("{}: {}\r\n", daemon_api::MARKER_HEADER, self.marker);
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        };
        if own && self.connections.len() < 4096 {
            self.connections.insert(conn_id);
        }
        own
    }

    fn closed(&mut self, conn_id: u64) -> bool {
        self.connections.remove(&conn_id)
    }
}
