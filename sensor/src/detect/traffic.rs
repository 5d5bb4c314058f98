//! The API traffic side of correlation: per-direction byte streams into HTTP requests, requests
//! into operations waiting for their other half (BuildKit sessions after an upgrade go to
//! `sessions`), and a daemon's own registry (and other) connections.
use sensor_common::{QuietRequest, QUIET_CHUNKED, QUIET_UNTIL_CLOSE, QUIET_UNTIL_REPLY};

use super::{
    builds::{BaseImage, BuildState, Egress},
    ledger::Source,
    stream::Stream,
    DataInput, Detector, Half, Pending, BODY_WAIT_NS, MAX_CARRIERS, MAX_PENDING, MAX_STREAMS,
};
use crate::{
    docker::{
        api::{self, ApiRequest},
        dockerfile,
    },
    model::{
        ids::{BuildId, OperationId},
        image_ref::{registry_host, ImageRef},
        operation::Operation,
        origin::{Origin, ServingDaemon, Transport},
        socket::{Endpoint, Role},
    },
    protocol::{
        dns,
        http::{Framing, HttpEvent, RequestHead},
        tls,
    },
};

impl Detector {
    pub fn on_data(&mut self, input: DataInput<'_>) {
        let key = (input.conn_id, input.direction);
        if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&key) {
            tracing::warn!("{MAX_STREAMS} API streams open at once; dropping their parse state");
            self.streams.clear();
        }
        let stream = self.streams.entry(key).or_insert_with(Stream::new);
        stream.offset += input.skipped_before;
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
        let quiet_ended = stream.quiet_since.is_some_and(|epoch| epoch != input.quiet_epoch);
        if quiet_ended {
            stream.quiet_since = None;
        }
        let outbound = matches!(input.role, Role::DaemonOutbound | Role::BuildStep);
        // Every datagram to a resolver is one query (retries, A then AAAA); none is HTTP.
        if outbound && matches!(input.peer, Endpoint::Tcp(_, dns::PORT)) {
            if input.role == Role::BuildStep {
                self.step_dns(&input);
            }
            return;
        }
        if start == 0 && outbound && tls::is_handshake(input.bytes) {
            stream.opaque = true;
            self.ask_quiet(&input, QUIET_UNTIL_CLOSE);
            self.outbound_tls(&input);
            return;
        }
        if input.skipped_before > 0 {
            if let Some(decoder) = &mut stream.decoded {
                decoder.gap(input.skipped_before);
            }
        }
        let mut events = if quiet_ended && input.skipped_before > 0 {
            stream.http.skipped_rest(input.skipped_before, input.clean_end)
        } else {
            stream.http.gap(input.skipped_before)
        };
        events.extend(stream.http.feed(input.bytes));
        let missing = u64::from(input.total_len).saturating_sub(input.bytes.len() as u64);
        events.extend(stream.http.gap(missing));
        for event in events {
            self.http_event(&input, event);
        }
        if missing > 0 {
            if let Some(decoder) = self.streams.get_mut(&key).and_then(|s| s.decoded.as_mut()) {
                decoder.gap(missing);
            }
        }
        self.quiet_if_unneeded(&input);
        self.tick(input.header.boot_ns);
    }

    /// Asks the kernel to stop copying what this stream will not read: the rest of a body not
    /// kept (or whose kept prefix is in), a raw attach stream.
    fn quiet_if_unneeded(&mut self, input: &DataInput<'_>) {
        let Some(stream) = self.streams.get(&(input.conn_id, input.direction)) else {
            return;
        };
        if stream.quiet_since.is_some() {
            return;
        }
        let mode = if stream.http.is_upgraded() {
            if !stream.raw_upgrade {
                return;
            }
            QUIET_UNTIL_CLOSE
        } else {
            match stream.http.unneeded_rest() {
                Some(Framing::Chunked) => QUIET_CHUNKED,
                Some(Framing::Sized) => QUIET_UNTIL_REPLY,
                None => return,
            }
        };
        self.ask_quiet(input, mode);
    }

    fn ask_quiet(&mut self, input: &DataInput<'_>, mode: u32) {
        if let Some(stream) = self.streams.get_mut(&(input.conn_id, input.direction)) {
            stream.quiet_since = Some(input.quiet_epoch);
        }
        self.quiet_requests.push((
            input.conn_id,
            QuietRequest {
                epoch: input.quiet_epoch,
                mode,
            },
        ));
    }

    /// What the kernel may stop copying, by connection id, since the last call.
    pub fn take_quiet_requests(&mut self) -> Vec<(u64, QuietRequest)> {
        std::mem::take(&mut self.quiet_requests)
    }

    fn http_event(&mut self, input: &DataInput<'_>, event: HttpEvent) {
        let key = (input.conn_id, input.direction);
        match event {
            HttpEvent::Head(head) => {
                if let Some(stream) = self.streams.get_mut(&key) {
                    stream.raw_upgrade = head.upgrade && !carries_session(&head);
                }
                self.http_head(input, head);
            }
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

    fn http_head(&mut self, input: &DataInput<'_>, head: RequestHead) {
        match input.role {
            Role::DaemonOutbound => self.outbound_request(input, &head),
            Role::BuildStep => self.step_request(input, &head),
            Role::Client | Role::DaemonAccepted => self.api_request(input, head),
        }
    }

    pub(super) fn origin_of(&self, input: &DataInput<'_>) -> Origin {
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
                    daemon: Some(ServingDaemon {
                        pid: input.header.tgid,
                        comm: input.header.comm.clone(),
                        store: input.daemon_store.map(String::from),
                    }),
                    store: input.daemon_store.map(String::from),
                }
            }
            _ => Origin {
                transport: transport(input.peer),
                endpoint: Some(input.peer.to_string()),
                peer: None,
                client: None,
                daemon: None,
                store: None,
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
        // A new request read by the daemon after the previous one ended means that request's
        // response (a build's output) ended: Go reads the next request only once the handler
        // returned. A client's pipelined write, or a head buffered with the previous body, says
        // nothing; those builds end with the connection or a later head.
        if input.role == Role::DaemonAccepted && head.after_previous {
            if let Some(build_id) = self.streams.get_mut(&key).and_then(|s| s.build.take()) {
                self.finish_build(&build_id, now, BuildState::Finished);
            }
            if let Some(transfer_id) = self.streams.get_mut(&key).and_then(|s| s.transfer.take()) {
                self.finish_transfer(&transfer_id, now);
            }
        }
        let origin = self.origin_of(input);
        if input.role == Role::DaemonAccepted {
            self.check_exposed(&origin, now, &evidence);
        }
        let request = ApiRequest::parse(&head);
        let Some(operation) = api::classify(&request) else {
            return;
        };
        if let (Role::DaemonAccepted, Operation::BuildkitSession { grpc: false }) = (input.role, &operation) {
            let uuid = head
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("X-Docker-Expose-Session-Uuid"))
                .map(|(_, value)| value.chars().take(128).collect());
            if let Some(stream) = self.streams.get_mut(&key) {
                stream.session_uuid = uuid;
            }
        }
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
                .find(|b| b.id == BuildId::of(&recent.id))
                .map(|b| b.id.clone());
            if let Some(stream) = self.streams.get_mut(&key) {
                stream.build = build;
            }
            if let Some(build) = self.builds.iter_mut().find(|b| b.id == BuildId::of(&recent.id)) {
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
                pending.join(half, is_client, &input.process, origin);
                pending.id.clone()
            }
            None => {
                let id = OperationId::new(&[&input.conn_id.to_string(), &head.offset.to_string(), &pair_key]);
                let needs_body = operation.needs_body();
                let mut pending = Pending {
                    id: id.clone(),
                    key: pair_key,
                    operation,
                    request: Some(request),
                    first_ns: now,
                    client: None,
                    daemon: None,
                    origin: origin.clone(),
                    body: None,
                    needs_body,
                    store_before: None,
                };
                pending.join(half, is_client, &input.process, origin);
                if self.pending.len() >= MAX_PENDING {
                    let oldest = self.pending.remove(0);
                    self.finalize(oldest, now);
                }
                self.pending.push(pending);
                id
            }
        };
        if input.role == Role::DaemonAccepted {
            self.list_store_for_transfer(&id, input.daemon_store);
        }
        if let Some(stream) = self.streams.get_mut(&key) {
            stream.awaiting_body = Some(id);
        }
    }

    /// A load or import read by a daemon: its store is listed now, before the daemon can have
    /// taken the images in, as the baseline of the transfer's end.
    fn list_store_for_transfer(&mut self, id: &OperationId, store: Option<&str>) {
        let Some(store) = store else { return };
        let is_transfer = self.pending.iter().any(|p| {
            p.id == *id
                && p.store_before.is_none()
                && matches!(p.operation, Operation::Load | Operation::Import { .. })
        });
        if !is_transfer {
            return;
        }
        let snapshot = self.snapshot_store(store);
        if let Some(pending) = self.pending.iter_mut().find(|p| p.id == *id) {
            pending.store_before = snapshot;
        }
    }

    fn body(&mut self, now: u64, id: &OperationId, bytes: Vec<u8>, complete: bool) {
        if let Some(pending) = self.pending.iter_mut().find(|p| p.id == *id) {
            if pending.body.is_none() {
                pending.body = Some((bytes, complete));
            }
            self.tick(now);
            return;
        }
        // Reported already: a build context that arrived late still tells the Dockerfile.
        let build_id = BuildId::of(id);
        let Some(build) = self.builds.iter_mut().find(|b| b.id == build_id) else {
            return;
        };
        if build.instructions.is_none() {
            build.instructions = dockerfile::from_context(&bytes, build.params.dockerfile.as_deref());
            build.add_dockerfile_bases();
        }
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
            // A manifest read (GET/HEAD) is a fetch; a push's PUT is not.
            let reads = matches!(head.method.as_str(), "GET" | "HEAD");
            if let (true, Some((name, reference))) = (reads, rest.rsplit_once("/manifests/")) {
                self.registry_fetch(input, now, &host, name, reference);
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

    /// What a build step asked for over plain HTTP.
    fn step_request(&mut self, input: &DataInput<'_>, head: &RequestHead) {
        let host = head.header("host").unwrap_or_default();
        let detail = format!("{} http://{host}{}", head.method, truncate(&head.target, 200));
        self.step_egress(input, "step_connection", detail, None);
    }

    /// A build step asked DNS for a name: the host it means to reach.
    fn step_dns(&mut self, input: &DataInput<'_>) {
        for question in dns::questions(input.bytes) {
            let detail = format!(
                "{} asked {} for {} ({})",
                input.process.comm,
                input.peer,
                truncate(&question.name, 255),
                question.kind
            );
            self.step_egress(input, "step_dns", detail, None);
        }
    }

    /// Egress of the build whose step owns this connection, evidenced by this data line.
    fn step_egress(
        &mut self,
        input: &DataInput<'_>,
        kind: &'static str,
        detail: String,
        sni: Option<String>,
    ) {
        let Some(build_id) = self.step_connections.get(&input.conn_id).cloned() else {
            return;
        };
        let egress = Egress {
            kind,
            detail,
            destination: Some(input.peer.to_string()),
            sni,
        };
        self.build_egress(
            &build_id,
            input.header.boot_ns,
            egress,
            vec![input.line_id.to_string()],
        );
    }

    fn outbound_tls(&mut self, input: &DataInput<'_>) {
        let now = input.header.boot_ns;
        let Some(sni) = tls::client_hello_sni(input.bytes) else {
            return;
        };
        if input.role == Role::BuildStep {
            self.step_egress(input, "step_connection", format!("TLS to {sni}"), Some(sni));
            return;
        }
        if is_registry_host(&sni) || self.settings.allow.lists_registry(&sni) {
            // A TLS registry hides the path: the connection itself confirms a pull from it.
            self.pulls.contacted(input.header.tgid, &sni, now);
            self.confirm_pulls(now);
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

    fn registry_fetch(&mut self, input: &DataInput<'_>, now: u64, host: &str, name: &str, reference: &str) {
        let tgid = input.header.tgid;
        let registry = registry_host(host);
        self.pulls.contacted(tgid, &registry, now);
        let digest = reference.starts_with("sha256:").then(|| reference.to_string());
        let text = match &digest {
            Some(digest) => format!("{registry}/{name}@{digest}"),
            None => format!("{registry}/{name}:{reference}"),
        };
        let Some(image) = ImageRef::parse(&text) else {
            return;
        };
        // Only a trusted daemon's connections are tracked as outbound (the kernel follows the
        // daemons the agent verified), so this fetch is the daemon's own.
        if let Some(store) = input.daemon_store {
            self.ledger.record(
                store,
                &image,
                Source::RegistryFetch,
                self.wall_ns(now),
                Some(registry.clone()),
            );
        }
        self.confirm_pulls(now);
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
        let ids: Vec<BuildId> = self
            .builds
            .iter()
            .filter(|b| b.daemon_tgid == Some(tgid) || b.builder_tgid == Some(tgid))
            .map(|b| b.id.clone())
            .collect();
        for id in ids {
            self.build_egress(&id, now, egress.clone(), Vec::new());
        }
    }
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

/// An upgrade to a BuildKit session or gRPC stream (HTTP/2 the sensor decodes), not to a raw
/// attach or exec stream.
fn carries_session(head: &RequestHead) -> bool {
    let path = head.target.split('?').next().unwrap_or_default();
    path.ends_with("/session") || path.ends_with("/grpc")
}
