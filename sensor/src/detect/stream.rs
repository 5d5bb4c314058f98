//! One direction of one tracked connection as correlation follows it: the HTTP parser, what
//! the stream carried (the lines that name a request's evidence) and what it is part of.
use std::collections::VecDeque;

use crate::{
    docker::api,
    model::ids::{BuildId, OperationId},
    protocol::{buildkit::SessionScanner, buildkit_grpc::SessionDecoder, http::RequestStream},
};

/// One direction of one tracked connection.
pub struct Stream {
    pub http: RequestStream,
    /// Bytes seen so far (captured and not).
    pub offset: u64,
    /// (start, end, line id) of recent data lines.
    pub carriers: VecDeque<(u64, u64, String)>,
    pub session: Option<SessionScanner>,
    /// The session decoded (HTTP/2, gRPC), on the daemon's side only: what it reads.
    pub decoded: Option<SessionDecoder>,
    /// The BuildKit session a `POST /session` upgrade exposes (`X-Docker-Expose-Session-Uuid`),
    /// as its build's Solve request names it.
    pub session_uuid: Option<String>,
    /// The pending operation waiting for this stream's next body.
    pub awaiting_body: Option<OperationId>,
    /// The build this stream's last request opened.
    pub build: Option<BuildId>,
    /// The load or import this stream's last request started.
    pub transfer: Option<OperationId>,
    pub grpc_solve_reported: bool,
    /// A TLS connection: nothing after the ClientHello is readable.
    pub opaque: bool,
    /// The quiet epoch of the kernel's connection when this stream asked it to skip the rest
    /// of the current message (`None`: capturing).
    pub quiet_since: Option<u32>,
    /// The last request upgraded to a raw stream (attach, exec), which nothing here reads.
    pub raw_upgrade: bool,
}

impl Stream {
    pub fn new() -> Self {
        Self {
            http: RequestStream::with_body_filter(api::wants_body),
            offset: 0,
            carriers: VecDeque::new(),
            session: None,
            decoded: None,
            session_uuid: None,
            awaiting_body: None,
            build: None,
            transfer: None,
            grpc_solve_reported: false,
            opaque: false,
            quiet_since: None,
            raw_upgrade: false,
        }
    }

    pub fn evidence(&self, start: u64, end: u64) -> Vec<String> {
        self.carriers
            .iter()
            .filter(|(s, e, _)| *s < end.max(start + 1) && *e > start)
            .map(|(_, _, id)| id.clone())
            .collect()
    }
}
