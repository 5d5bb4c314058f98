//! The process side of correlation: daemon-less builders starting from their command lines,
//! build steps exec'd under the container runtime, builders exiting.
use super::{
    builds::{self, BuildState, Egress, Step},
    rules, BuilderStart, Detector, Half, Pending, MAX_STEP_CONNECTIONS,
};
use crate::{
    daemons,
    decode::Header,
    docker::commands,
    model::{
        ids::{BuildId, OperationId},
        operation::Operation,
        origin::Origin,
        process::ProcessView,
        socket::Endpoint,
    },
    protocol::dns,
};

const EINPROGRESS: i32 = 115;
const ECONNREFUSED: i32 = 111;

impl Detector {
    /// An exec: a daemon-less builder starting (returned, so its registry traffic can be
    /// followed), or a build step.
    pub fn on_exec(&mut self, header: &Header, line_id: &str, process: &ProcessView) -> Option<BuilderStart> {
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
                let name = builder_name(process);
                let store = daemons::store_of(&name, &argv, process.uid);
                self.command_operation(header, line_id, process, operation, &store);
                return Some(BuilderStart { name, store });
            }
        }
        let build_id = self.build_of_step(process, now)?;
        let step = Step {
            pid: process.pid,
            exe: process.exe.clone(),
            argv: argv.clone(),
            time: self.wall_time(now),
            container_id: process.container_id.clone(),
            evidence: line_id.to_string(),
        };
        let build = self.builds.iter_mut().find(|b| b.id == build_id)?;
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
        None
    }

    /// The open build a process runs a step of: it runs under the container runtime (or the
    /// daemon-less builder), not in a container started through the API. A process in a step's
    /// container, or descending from a step, belongs to that step's build. Otherwise the builds
    /// whose daemon or builder is among its ancestors claim it: when several are open on one
    /// daemon, the one whose Dockerfile has this RUN command, else the latest (else the latest
    /// API build).
    pub(super) fn build_of_step(&mut self, process: &ProcessView, now: u64) -> Option<BuildId> {
        if self.builds.is_empty() || !builds::runs_under_runtime(process) {
            return None;
        }
        self.expire_started(now);
        if let Some(id) = &process.container_id {
            if self.started.iter().any(|(s, _)| id.starts_with(s.as_str())) {
                return None;
            }
        }
        let ancestors: Vec<u32> = process.ancestry.iter().flatten().map(|a| a.pid).collect();
        let known = process
            .container_id
            .as_ref()
            .and_then(|c| self.steps.by_container.get(c))
            .or_else(|| ancestors.iter().find_map(|pid| self.steps.by_pid.get(pid)))
            .filter(|id| self.builds.iter().any(|b| b.id == **id))
            .cloned();
        let build_id = known.or_else(|| {
            let command = process.argv.as_deref().unwrap_or_default();
            let mut candidates = self.builds.iter().rev().filter(|b| {
                b.builder_tgid
                    .or(b.daemon_tgid)
                    .is_some_and(|t| ancestors.contains(&t))
            });
            let first = candidates.next()?;
            Some(
                std::iter::once(first)
                    .chain(candidates)
                    .find(|b| b.instructions.as_ref().is_some_and(|d| builds::runs(d, command)))
                    .unwrap_or(first)
                    .id
                    .clone(),
            )
        });
        let build_id = build_id.or_else(|| {
            self.builds
                .iter()
                .rev()
                .find(|b| b.builder_tgid.is_none())
                .map(|b| b.id.clone())
        })?;
        self.steps.remember(process, &build_id);
        Some(build_id)
    }

    /// A build step connected out (the kernel tracks daemon descendants' connects while a build
    /// is open); `result` is connect's return value, negative when it failed.
    pub fn on_step_connect(
        &mut self,
        header: &Header,
        line_id: &str,
        process: &ProcessView,
        conn_id: u64,
        peer: &Endpoint,
        result: i32,
    ) {
        let now = header.boot_ns;
        let Some(build_id) = self.build_of_step(process, now) else {
            return;
        };
        let outcome = match -result {
            0 | EINPROGRESS => String::new(),
            ECONNREFUSED => " (refused)".to_string(),
            errno => format!(" (failed, errno {errno})"),
        };
        if outcome.is_empty() {
            if self.step_connections.len() >= MAX_STEP_CONNECTIONS {
                self.step_connections.clear();
            }
            self.step_connections.insert(conn_id, build_id.clone());
            // A resolver socket: its query, which names the host, is the egress.
            if matches!(peer, Endpoint::Tcp(_, dns::PORT)) {
                return;
            }
        }
        let egress = Egress {
            kind: "step_connection",
            detail: format!("{} connected to {peer}{outcome}", process.comm),
            destination: Some(peer.to_string()),
            sni: None,
        };
        self.build_egress(&build_id, now, egress, vec![line_id.to_string()]);
    }

    fn command_operation(
        &mut self,
        header: &Header,
        line_id: &str,
        process: &ProcessView,
        operation: Operation,
        store: &str,
    ) {
        // The builder's own store: whatever a user's builder claims, it only speaks for the
        // images of that user's builder.
        let origin = Origin::exec(process, Some(store.to_string()));
        let pending = Pending {
            id: OperationId::new(&[&header.tgid.to_string(), &header.boot_ns.to_string(), "exec"]),
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
            store_before: None,
        };
        self.finalize(pending, header.boot_ns);
    }

    pub fn on_exit(&mut self, tgid: u32, now: u64) {
        let ids: Vec<BuildId> = self
            .builds
            .iter()
            .filter(|b| b.builder_tgid == Some(tgid))
            .map(|b| b.id.clone())
            .collect();
        for id in ids {
            self.finish_build(&id, now, BuildState::Finished);
        }
    }
}

/// The builder's program name (`podman`, `buildah`, `executor`).
fn builder_name(process: &ProcessView) -> String {
    let path = process
        .exe
        .as_deref()
        .or(process.argv.as_ref().and_then(|a| a.first()).map(String::as_str))
        .unwrap_or(&process.comm);
    path.rsplit('/').next().unwrap_or(path).to_string()
}
