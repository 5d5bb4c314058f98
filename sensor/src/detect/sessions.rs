//! BuildKit sessions after their h2c upgrade (or HTTP/2 with prior knowledge): the marker
//! scanner on both sides, the decoder on the daemon's, builds opened from `Solve` requests, and
//! Dockerfiles from the session's file sync given to their build.
use super::{builds, DataInput, Detector, Half, Pending, BODY_WAIT_NS};
use crate::{
    docker::dockerfile,
    model::{
        ids::OperationId,
        image_ref::ImageRef,
        operation::{BuildParams, Builder, Operation},
        socket::Role,
    },
    protocol::{
        buildkit::{Marker, SessionScanner},
        buildkit_grpc::{SessionDecoder, SyncedDockerfile},
    },
};

impl Detector {
    pub(super) fn upgraded(&mut self, input: &DataInput<'_>, bytes: &[u8]) {
        let key = (input.conn_id, input.direction);
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let scanner = stream.session.get_or_insert_with(SessionScanner::default);
        let mut learned = scanner.scan(bytes);
        let mut dockerfiles = Vec::new();
        if input.role == Role::DaemonAccepted {
            let decoder = stream.decoded.get_or_insert_with(SessionDecoder::default);
            learned |= decoder.feed(bytes, &mut scanner.facts);
            dockerfiles = std::mem::take(&mut decoder.dockerfiles);
        }
        let session = stream.session_uuid.clone();
        for dockerfile in dockerfiles {
            self.synced_dockerfile(input, session.as_deref(), dockerfile);
        }
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let Some(scanner) = &stream.session else {
            return;
        };
        if !learned {
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
            session: facts.session.clone(),
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
                known.session = params.session.or(known.session.take());
                known.build_arg_keys.extend(params.build_arg_keys);
            }
            if learned {
                pending.body = Some((Vec::new(), true));
            }
            let half = Half {
                conn_id: input.conn_id,
                evidence,
            };
            let missing = if is_client {
                pending.client.is_none()
            } else {
                pending.daemon.is_none()
            };
            if missing {
                pending.join(half, is_client, &input.process, daemon_origin);
            }
        } else if first {
            let half = Half {
                conn_id: input.conn_id,
                evidence,
            };
            let mut pending = Pending {
                id: OperationId::new(&[&input.conn_id.to_string(), "solve"]),
                key: pair_key,
                operation: Operation::Build {
                    builder: Builder::Buildx,
                    params,
                },
                request: None,
                first_ns: now,
                client: None,
                daemon: None,
                origin: daemon_origin.clone(),
                body: learned.then(|| (Vec::new(), true)),
                needs_body: true,
                store_before: None,
            };
            pending.join(half, is_client, &input.process, daemon_origin);
            self.pending.push(pending);
        }
        self.tick(now);
    }

    /// A Dockerfile a client sent through a session's file sync: the instructions of the open
    /// buildx build on that daemon whose Solve named this session (else the latest one with
    /// none yet that names that file), or of the build about to open (its request may still
    /// wait for its other half).
    pub(super) fn synced_dockerfile(
        &mut self,
        input: &DataInput<'_>,
        session: Option<&str>,
        synced: SyncedDockerfile,
    ) {
        let tgid = input.header.tgid;
        let name = builds::file_name(&synced.path);
        let candidate = |b: &&mut super::Build| {
            b.builder == Builder::Buildx
                && b.instructions.is_none()
                && b.daemon_tgid == Some(tgid)
                && b.dockerfile_name() == name
        };
        let same_session =
            |b: &&mut super::Build| session.is_some() && b.params.session.as_deref() == session;
        let index = self
            .builds
            .iter_mut()
            .rposition(|b| candidate(&b) && same_session(&b))
            .or_else(|| {
                // Without a session to match, only a build of no known session may take it.
                self.builds
                    .iter_mut()
                    .rposition(|b| candidate(&b) && (session.is_none() || b.params.session.is_none()))
            });
        if let Some(index) = index {
            let build = &mut self.builds[index];
            build.instructions = Some(dockerfile::parse(&synced.path, &synced.text));
            build.add_dockerfile_bases();
            return;
        }
        if self.synced_dockerfiles.len() >= super::MAX_SYNCED_DOCKERFILES {
            self.synced_dockerfiles.pop_front();
        }
        self.synced_dockerfiles
            .push_back((tgid, input.header.boot_ns, session.map(String::from), synced));
    }
}
