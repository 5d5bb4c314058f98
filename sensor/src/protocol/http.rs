//! HTTP/1.1 requests out of one direction of a connection, fed as the kernel saw the bytes:
//! in pieces of any size (a request may arrive one byte per syscall), with holes where a syscall
//! moved more than the sensor copied, several requests per connection, chunked or sized bodies.
//! After an upgrade request (`/session`, `/grpc`, exec/attach) the rest is not HTTP/1 and is
//! handed out as raw bytes.
//!
//! Only requests are parsed: the kernel captures what clients write and what daemons read.
use std::collections::VecDeque;

/// Longest request head accepted before the stream is declared out of sync: Go's
/// `http.DefaultMaxHeaderBytes`, which dockerd uses. Bounded by bytes, not by header count.
pub const MAX_HEAD: usize = 1 << 20;
/// Body bytes kept per request (enough for a container-create JSON or a small build context).
pub const MAX_BODY: usize = 64 * 1024;
/// Header slots tried first; a head with more is parsed again with room for all it can hold.
const FEW_HEADERS: usize = 64;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 7] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"PATCH ",
    b"OPTIONS ",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// Path and query as sent (percent-encoded).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub upgrade: bool,
    /// Stream offset of the head's first byte and its length (to name the kernel events that
    /// carried it).
    pub offset: u64,
    pub len: u64,
    /// The head was completed by a read after the one that finished the previous request:
    /// on a daemon's side (Go reads the next request only once the handler returned, apart
    /// from one byte) this means the previous response ended. A pipelined head that arrived
    /// in the same read as the previous body says nothing.
    pub after_previous: bool,
    /// An `application/x-www-form-urlencoded` body, which Go merges into the parameters
    /// (ahead of the query's): the head is handed out once it is in.
    pub form: Option<Vec<u8>>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpEvent {
    /// A complete request head; its body (if any) follows as `Body`.
    Head(RequestHead),
    /// The request's body as far as it was kept: `complete` is false when bytes were not
    /// captured or it exceeded [`MAX_BODY`].
    Body { bytes: Vec<u8>, complete: bool },
    /// Bytes after an upgrade request (HTTP/2, raw streams).
    Upgraded(Vec<u8>),
    /// The stream could not be parsed from here on; parsing resumes at the next request line.
    Desync(&'static str),
}

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Sized,
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Sized {
        remaining: u64,
    },
    ChunkSize,
    ChunkData {
        remaining: u64,
    },
    ChunkEnd,
    Trailers,
    Upgraded,
    /// Lost: looking for the start of a request line.
    Resync,
}

/// One direction of one connection.
#[derive(Debug)]
pub struct RequestStream {
    state: State,
    buffer: VecDeque<u8>,
    /// Stream offset of `buffer[0]`.
    offset: u64,
    body: Vec<u8>,
    body_complete: bool,
    /// The body prefix was already handed out (it filled [`MAX_BODY`]).
    body_reported: bool,
    /// The head announced an upgrade, which starts after its body.
    upgrade_after_body: bool,
    /// While resyncing: `buffer[0]` starts a line.
    line_start: bool,
    events: Vec<HttpEvent>,
    wants_body: fn(&RequestHead) -> bool,
    /// The current request's body is kept.
    keeping: bool,
    /// Bytes of the buffer already searched for the end of a head (no quadratic re-parse of a
    /// head that grows a byte at a time).
    scanned: usize,
    /// Feeds so far, and the feed in which the last request ended.
    feeds: u64,
    ended_in_feed: u64,
    /// A form-encoded request's head, held until its body is in.
    form_head: Option<RequestHead>,
}

impl Default for RequestStream {
    fn default() -> Self {
        Self {
            state: State::Head,
            buffer: VecDeque::new(),
            offset: 0,
            body: Vec::new(),
            body_complete: true,
            body_reported: false,
            upgrade_after_body: false,
            line_start: false,
            events: Vec::new(),
            wants_body: |_| true,
            keeping: true,
            scanned: 0,
            feeds: 0,
            ended_in_feed: 0,
            form_head: None,
        }
    }
}

impl RequestStream {
    /// A stream that keeps the bodies of only the requests `wants_body` picks (the others are
    /// skipped and reported empty and incomplete), so memory goes where it is needed.
    pub fn with_body_filter(wants_body: fn(&RequestHead) -> bool) -> Self {
        Self {
            wants_body,
            ..Self::default()
        }
    }

    /// Feeds captured bytes; returns what they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<HttpEvent> {
        self.feeds += 1;
        if self.state == State::Upgraded {
            self.offset += bytes.len() as u64;
            return vec![HttpEvent::Upgraded(bytes.to_vec())];
        }
        self.buffer.extend(bytes);
        self.advance();
        std::mem::take(&mut self.events)
    }

    /// `len` bytes moved that were not captured. Inside a body they are skipped exactly (on the
    /// daemon side Go reads heads and chunk sizes through a 4 KiB buffer, so uncaptured bytes are
    /// body bytes); anywhere else the stream is out of sync until the next request line.
    pub fn gap(&mut self, len: u64) -> Vec<HttpEvent> {
        if len == 0 {
            return Vec::new();
        }
        match self.state {
            State::Upgraded => {}
            State::Sized { remaining } | State::ChunkData { remaining }
                if self.buffer.is_empty() && len <= remaining =>
            {
                // The prefix before the hole is all that can be parsed.
                self.body_complete = false;
                if !self.body_reported {
                    self.report_body();
                }
                let remaining = remaining - len;
                self.state = match self.state {
                    State::Sized { .. } => State::Sized { remaining },
                    _ => State::ChunkData { remaining },
                };
                if remaining == 0 {
                    self.advance();
                }
            }
            State::Resync => self.buffer.clear(),
            _ => {
                // What is buffered precedes the hole and can never complete.
                self.consume(self.buffer.len());
                self.desync("bytes of a request head or chunk header were not captured");
            }
        }
        self.offset += len;
        std::mem::take(&mut self.events)
    }

    /// How the rest of the current message is framed, when none of it is needed any more: the
    /// body of a request whose body is not kept, or whose kept prefix was handed out. `None`
    /// while the parser needs the bytes (heads, kept bodies, a body an upgrade follows).
    pub fn unneeded_rest(&self) -> Option<Framing> {
        if self.upgrade_after_body || !self.buffer.is_empty() || (self.keeping && !self.body_reported) {
            return None;
        }
        match self.state {
            State::Sized { .. } => Some(Framing::Sized),
            State::ChunkSize | State::ChunkData { .. } | State::ChunkEnd | State::Trailers => {
                Some(Framing::Chunked)
            }
            _ => None,
        }
    }

    pub fn is_upgraded(&self) -> bool {
        self.state == State::Upgraded
    }

    /// `len` bytes the kernel skipped because the rest of the message was not needed
    /// ([`Self::unneeded_rest`]), until the other direction answered or, with `clean_end`, until
    /// the chunked body ended at the end of a read. What follows starts a new request when
    /// that end is certain; otherwise the stream resynchronises at the next request line.
    pub fn skipped_rest(&mut self, len: u64, clean_end: bool) -> Vec<HttpEvent> {
        if !self.in_body() || !self.buffer.is_empty() {
            return self.gap(len);
        }
        match self.state {
            State::Sized { remaining } if len < remaining => return self.gap(len),
            State::Sized { remaining } if len > remaining => {
                self.offset += remaining;
                self.body_complete = false;
                self.finish_body();
                self.state = State::Head;
                self.desync("bytes after a skipped body were not captured");
                // The next captured read followed the reply: it may start a request.
                self.line_start = true;
                self.offset += len - remaining;
            }
            // Exactly the rest of a sized body, or a chunked one that ended at a read's end.
            _ if clean_end || matches!(self.state, State::Sized { .. }) => {
                self.offset += len;
                self.body_complete = false;
                self.body_done();
            }
            _ => {
                self.desync("a skipped chunked body did not end at a read's end");
                self.line_start = true;
                self.offset += len;
            }
        }
        std::mem::take(&mut self.events)
    }

    fn in_body(&self) -> bool {
        matches!(
            self.state,
            State::Sized { .. }
                | State::ChunkSize
                | State::ChunkData { .. }
                | State::ChunkEnd
                | State::Trailers
        )
    }

    fn desync(&mut self, reason: &'static str) {
        if self.in_body() {
            self.body_complete = false;
            self.finish_body();
        }
        self.events.push(HttpEvent::Desync(reason));
        self.line_start = false;
        self.state = State::Resync;
    }

    fn consume(&mut self, len: usize) {
        self.buffer.drain(..len);
        self.offset += len as u64;
        self.scanned = self.scanned.saturating_sub(len);
    }

    fn keep_body(&mut self, len: usize) {
        if self.body_reported || !self.keeping {
            self.consume(len);
            return;
        }
        let room = MAX_BODY.saturating_sub(self.body.len());
        self.body.extend(self.buffer.iter().take(len.min(room)));
        self.consume(len);
        if len > room && !self.body_reported {
            // Whatever follows is not kept: hand out the prefix now rather than at the end of a
            // long upload.
            self.body_complete = false;
            self.report_body();
        }
    }

    fn report_body(&mut self) {
        let bytes = std::mem::take(&mut self.body);
        if let Some(mut head) = self.form_head.take() {
            head.form = Some(bytes.clone());
            self.events.push(HttpEvent::Head(head));
        }
        self.events.push(HttpEvent::Body {
            bytes,
            complete: self.body_complete,
        });
        self.body_reported = true;
    }

    fn finish_body(&mut self) {
        if !self.body_reported {
            self.report_body();
        }
        self.body.clear();
        self.body_reported = false;
        self.body_complete = true;
        self.keeping = true;
    }

    fn body_done(&mut self) {
        self.finish_body();
        self.ended_in_feed = self.feeds;
        if std::mem::take(&mut self.upgrade_after_body) {
            self.upgrade();
        } else {
            self.state = State::Head;
        }
    }

    fn upgrade(&mut self) {
        self.state = State::Upgraded;
        if !self.buffer.is_empty() {
            let rest: Vec<u8> = self.buffer.drain(..).collect();
            self.offset += rest.len() as u64;
            self.events.push(HttpEvent::Upgraded(rest));
        }
    }

    fn advance(&mut self) {
        while self.step() {}
    }

    /// One parsing step; false when more bytes are needed.
    fn step(&mut self) -> bool {
        match self.state {
            State::Head => self.parse_head(),
            State::Sized { remaining } => {
                let take = (remaining as usize).min(self.buffer.len());
                self.keep_body(take);
                let remaining = remaining - take as u64;
                if remaining == 0 {
                    self.body_done();
                    true
                } else {
                    self.state = State::Sized { remaining };
                    false
                }
            }
            State::ChunkSize => self.parse_chunk_size(),
            State::ChunkData { remaining } => {
                let take = (remaining as usize).min(self.buffer.len());
                self.keep_body(take);
                let remaining = remaining - take as u64;
                if remaining == 0 {
                    self.state = State::ChunkEnd;
                    true
                } else {
                    self.state = State::ChunkData { remaining };
                    false
                }
            }
            State::ChunkEnd => self.expect_crlf(),
            State::Trailers => self.parse_trailers(),
            State::Upgraded => {
                self.upgrade();
                false
            }
            State::Resync => self.resync(),
        }
    }

    fn parse_head(&mut self) -> bool {
        // Tolerate stray CRLFs between requests (RFC 9112 2.2).
        while self.buffer.front().is_some_and(|b| *b == b'\r' || *b == b'\n') {
            self.consume(1);
        }
        if self.buffer.is_empty() {
            return false;
        }
        let bytes = self.buffer.make_contiguous();
        // HTTP/2 with prior knowledge (gRPC on containerd's and buildkitd's sockets).
        let preface_len = bytes.len().min(H2_PREFACE.len());
        if bytes[..preface_len] == H2_PREFACE[..preface_len] {
            if preface_len < H2_PREFACE.len() {
                return false;
            }
            self.upgrade();
            return false;
        }
        // Parse only once the head can be complete: an empty line ends it.
        let from = self.scanned.saturating_sub(3);
        let complete = bytes[from..].windows(4).any(|w| w == b"\r\n\r\n")
            || bytes[from.saturating_sub(1)..].windows(2).any(|w| w == b"\n\n");
        if !complete {
            self.scanned = bytes.len();
            if bytes.len() > MAX_HEAD {
                self.desync("request head longer than 1 MiB");
                return true;
            }
            // Garbage is recognised at once (checked once per head: the request line must
            // parse as far as it goes), without waiting for an end that may never come.
            if from == 0 {
                let mut none = [httparse::EMPTY_HEADER; 0];
                let verdict = httparse::Request::new(&mut none).parse(bytes);
                if matches!(verdict, Err(err) if err != httparse::Error::TooManyHeaders) {
                    self.desync("malformed request head");
                    return true;
                }
            }
            return false;
        }
        let mut slots = FEW_HEADERS;
        loop {
            let mut headers = vec![httparse::EMPTY_HEADER; slots];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(bytes) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = RequestHead {
                        method: request.method.unwrap_or_default().to_string(),
                        target: request.path.unwrap_or_default().to_string(),
                        headers: request
                            .headers
                            .iter()
                            .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                            .collect(),
                        upgrade: false,
                        offset: self.offset,
                        len: len as u64,
                        after_previous: self.feeds > self.ended_in_feed,
                        form: None,
                    };
                    self.consume(len);
                    self.scanned = 0;
                    self.start_request(head);
                    return true;
                }
                Ok(httparse::Status::Partial) if bytes.len() <= MAX_HEAD => return false,
                Ok(httparse::Status::Partial) => {
                    self.desync("request head longer than 1 MiB");
                    return true;
                }
                // Room for as many headers as the head's bytes can hold (each takes 3 or more).
                Err(httparse::Error::TooManyHeaders) if slots < bytes.len() / 3 + 1 => {
                    slots = (bytes.len() / 3 + 1).min(MAX_HEAD / 3 + 1);
                }
                Err(_) => {
                    self.desync("malformed request head");
                    return true;
                }
            }
        }
    }

    fn start_request(&mut self, mut head: RequestHead) {
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = head.header("content-length").map(|v| v.trim().parse::<u64>());
        head.upgrade = head.header("upgrade").is_some()
            && head
                .header("connection")
                .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
        let upgrade = head.upgrade;
        let form = head.header("content-type").is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        }) && head.method.eq_ignore_ascii_case("POST")
            && (chunked || length.as_ref().is_some_and(|l| l.as_ref().is_ok_and(|n| *n > 0)));
        self.keeping = form || (self.wants_body)(&head);
        if form {
            self.form_head = Some(head);
        } else {
            self.events.push(HttpEvent::Head(head));
        }
        self.body.clear();
        self.body_complete = self.keeping;
        self.body_reported = false;
        self.upgrade_after_body = upgrade;
        match (chunked, length) {
            (true, _) => self.state = State::ChunkSize,
            (false, Some(Ok(0)) | None) => self.body_done(),
            (false, Some(Ok(remaining))) => self.state = State::Sized { remaining },
            (false, Some(Err(_))) => self.desync("invalid Content-Length"),
        }
    }

    fn parse_chunk_size(&mut self) -> bool {
        let bytes = self.buffer.make_contiguous();
        match httparse::parse_chunk_size(bytes) {
            Ok(httparse::Status::Complete((len, 0))) => {
                self.consume(len);
                self.state = State::Trailers;
                true
            }
            Ok(httparse::Status::Complete((len, size))) => {
                self.consume(len);
                self.state = State::ChunkData { remaining: size };
                true
            }
            Ok(httparse::Status::Partial) if bytes.len() < 1024 => false,
            _ => {
                self.desync("malformed chunk size");
                true
            }
        }
    }

    fn expect_crlf(&mut self) -> bool {
        if self.buffer.len() < 2 {
            return false;
        }
        if self.buffer[0] == b'\r' && self.buffer[1] == b'\n' {
            self.consume(2);
            self.state = State::ChunkSize;
        } else {
            self.desync("chunk not followed by CRLF");
        }
        true
    }

    /// After the last chunk: optional trailer fields, then an empty line.
    fn parse_trailers(&mut self) -> bool {
        let bytes = self.buffer.make_contiguous();
        let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
            if bytes.len() > MAX_HEAD {
                self.desync("trailers longer than 64 KiB");
                return true;
            }
            return false;
        };
        self.consume(end + 2);
        if end == 0 {
            self.body_done();
        }
        true
    }

    /// Drops bytes up to the next line that starts with a request method.
    fn resync(&mut self) -> bool {
        let bytes = self.buffer.make_contiguous();
        let line_starts: Vec<usize> = self
            .line_start
            .then_some(0)
            .into_iter()
            .chain(
                bytes
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| **b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        for start in line_starts {
            let rest = &bytes[start..];
            if METHODS.iter().any(|m| rest.starts_with(m)) {
                self.consume(start);
                self.state = State::Head;
                return true;
            }
            if start == bytes.len() || METHODS.iter().any(|m| m.starts_with(rest)) {
                // The end of the buffer may be the beginning of a request line.
                self.consume(start);
                self.line_start = true;
                return false;
            }
        }
        self.consume(self.buffer.len());
        self.line_start = false;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads(events: &[HttpEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                HttpEvent::Head(h) => Some(format!("{} {}", h.method, h.target)),
                _ => None,
            })
            .collect()
    }

    fn bodies(events: &[HttpEvent]) -> Vec<(Vec<u8>, bool)> {
        events
            .iter()
            .filter_map(|e| match e {
                HttpEvent::Body { bytes, complete } => Some((bytes.clone(), *complete)),
                _ => None,
            })
            .collect()
    }

    fn feed_bytewise(stream: &mut RequestStream, bytes: &[u8]) -> Vec<HttpEvent> {
        bytes.iter().flat_map(|b| stream.feed(&[*b])).collect()
    }

    #[test]
    fn keep_alive_requests_one_byte_at_a_time() {
        let wire = b"HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\nPOST /v1.41/containers/create HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"Image\":1}GET /version HTTP/1.1\r\n\r\n";
        let mut stream = RequestStream::default();
        let events = feed_bytewise(&mut stream, wire);
        assert_eq!(
            heads(&events),
            ["HEAD /_ping", "POST /v1.41/containers/create", "GET /version"]
        );
        assert_eq!(bodies(&events)[1], (b"{\"Image\":1}".to_vec(), true));
    }

    #[test]
    fn chunked_body_with_trailer_then_next_request() {
        let wire = b"POST /build?t=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /_ping HTTP/1.1\r\n\r\n";
        for split in [1, 3, wire.len()] {
            let mut stream = RequestStream::default();
            let events: Vec<HttpEvent> = wire.chunks(split).flat_map(|c| stream.feed(c)).collect();
            assert_eq!(heads(&events), ["POST /build?t=a", "GET /_ping"], "split {split}");
            assert_eq!(bodies(&events)[0], (b"hello world".to_vec(), true));
        }
    }

    #[test]
    fn uncaptured_body_bytes_are_skipped_exactly() {
        let mut stream = RequestStream::default();
        let mut events = stream.feed(b"POST /images/load HTTP/1.1\r\nContent-Length: 10000\r\n\r\n");
        events.extend(stream.feed(&[b'x'; 4096]));
        events.extend(stream.gap(10000 - 4096));
        events.extend(stream.feed(b"GET /_ping HTTP/1.1\r\n\r\n"));
        assert_eq!(heads(&events), ["POST /images/load", "GET /_ping"]);
        let (body, complete) = &bodies(&events)[0];
        assert_eq!(body.len(), 4096);
        assert!(!complete);
    }

    #[test]
    fn expect_continue_and_upgrade() {
        let mut stream = RequestStream::default();
        let mut events =
            stream.feed(b"POST /build HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
        events.extend(stream.feed(b"tar"));
        events.extend(stream.feed(
            b"POST /session HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\nPRI * HTTP/2.0\r\n",
        ));
        events.extend(stream.feed(b"\x00\x00\x04"));
        assert_eq!(heads(&events), ["POST /build", "POST /session"]);
        let upgraded: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                HttpEvent::Upgraded(b) => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(upgraded, b"PRI * HTTP/2.0\r\n\x00\x00\x04");
    }

    #[test]
    fn http2_prior_knowledge_is_handed_out_raw() {
        let mut stream = RequestStream::default();
        let mut events = stream.feed(b"PRI * HTTP/2.0\r\n");
        assert!(events.is_empty());
        events.extend(stream.feed(b"\r\nSM\r\n\r\n\x00\x00\x12\x04"));
        assert_eq!(
            events,
            [HttpEvent::Upgraded(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04".to_vec()
            )]
        );
    }

    #[test]
    fn garbage_then_a_request_recovers() {
        let mut stream = RequestStream::default();
        let mut events = stream.feed(b"\x16\x03\x01garbage\xff\r\n");
        assert!(matches!(events[0], HttpEvent::Desync(_)), "{events:?}");
        events.extend(stream.feed(b"junk\nGET /v1.41/version HTTP/1.1\r\n\r\n"));
        assert_eq!(heads(&events), ["GET /v1.41/version"]);
    }

    #[test]
    fn a_hole_in_a_head_resyncs_at_the_next_request() {
        let mut stream = RequestStream::default();
        let mut events = stream.feed(b"POST /build?t=x HTT");
        events.extend(stream.gap(100));
        events.extend(stream.feed(b"rest of head\r\n\r\nGET /_ping HTTP/1.1\r\n\r\n"));
        assert_eq!(heads(&events), ["GET /_ping"]);
        assert!(events.iter().any(|e| matches!(e, HttpEvent::Desync(_))));
    }

    #[test]
    fn body_is_bounded() {
        let mut stream = RequestStream::default();
        let size = MAX_BODY + 10;
        let mut events =
            stream.feed(format!("POST /images/load HTTP/1.1\r\nContent-Length: {size}\r\n\r\n").as_bytes());
        events.extend(stream.feed(&vec![0u8; size]));
        let (body, complete) = &bodies(&events)[0];
        assert_eq!(body.len(), MAX_BODY);
        assert!(!complete);
    }

    #[test]
    fn unwanted_bodies_are_skipped_not_kept() {
        let mut stream = RequestStream::with_body_filter(|head| head.target.contains("create"));
        let mut events = stream.feed(b"POST /images/load HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        events.extend(stream.feed(b"POST /containers/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"));
        assert_eq!(bodies(&events), [(Vec::new(), false), (b"{}".to_vec(), true)]);
    }

    #[test]
    fn the_rest_of_an_unneeded_body_is_skipped_to_the_next_request() {
        // Chunked, ended exactly: the next request parses at once.
        let mut stream = RequestStream::with_body_filter(|_| false);
        stream.feed(b"POST /images/load HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
        assert_eq!(stream.unneeded_rest(), Some(Framing::Chunked));
        stream.skipped_rest(1_000_000, true);
        assert_eq!(stream.unneeded_rest(), None);
        let events = stream.feed(b"GET /_ping HTTP/1.1\r\n\r\n");
        assert_eq!(heads(&events), ["GET /_ping"]);
        assert!(matches!(&events[0], HttpEvent::Head(h) if h.after_previous));

        // Sized: the exact remainder ends the body; more than it means unseen bytes.
        let mut stream = RequestStream::with_body_filter(|_| false);
        stream.feed(b"PUT /v2/x/blobs/uploads/1 HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        assert_eq!(stream.unneeded_rest(), Some(Framing::Sized));
        assert!(stream
            .skipped_rest(7, false)
            .iter()
            .all(|e| !matches!(e, HttpEvent::Desync(_))));
        assert_eq!(heads(&stream.feed(b"GET /v2/ HTTP/1.1\r\n\r\n")), ["GET /v2/"]);
        let mut stream = RequestStream::with_body_filter(|_| false);
        stream.feed(b"PUT /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        let events = stream.skipped_rest(50, false);
        assert!(
            events.iter().any(|e| matches!(e, HttpEvent::Desync(_))),
            "{events:?}"
        );

        // Chunked, ended by the reply alone: where it ended is unknown, so resync.
        let mut stream = RequestStream::with_body_filter(|_| false);
        stream.feed(b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
        let events = stream.skipped_rest(100, false);
        assert!(
            events.iter().any(|e| matches!(e, HttpEvent::Desync(_))),
            "{events:?}"
        );
        assert_eq!(
            heads(&stream.feed(b"GET /_ping HTTP/1.1\r\n\r\n")),
            ["GET /_ping"]
        );
    }

    #[test]
    fn a_kept_body_is_needed_until_its_prefix_is_handed_out() {
        let mut stream = RequestStream::default();
        stream.feed(b"POST /build HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello");
        assert_eq!(stream.unneeded_rest(), None);
        let big = vec![b'a'; MAX_BODY + 10];
        let mut chunk = format!("\r\n{:x}\r\n", big.len()).into_bytes();
        chunk.extend(&big[..MAX_BODY]);
        let events = stream.feed(&chunk[..]);
        assert!(events.iter().any(|e| matches!(e, HttpEvent::Body { .. })));
        assert_eq!(stream.unneeded_rest(), Some(Framing::Chunked));
    }

    #[test]
    fn form_bodies_hold_their_head_and_pipelined_heads_say_so() {
        let mut stream = RequestStream::default();
        let wire = b"POST /v1.41/images/create HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 22\r\n\r\nfromImage=alpine&tag=3GET /_ping HTTP/1.1\r\n\r\n";
        let events = stream.feed(wire);
        let HttpEvent::Head(head) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(head.form.as_deref(), Some(&b"fromImage=alpine&tag=3"[..]));
        let pings: Vec<&RequestHead> = events
            .iter()
            .filter_map(|e| match e {
                HttpEvent::Head(h) if h.target == "/_ping" => Some(h),
                _ => None,
            })
            .collect();
        assert!(!pings[0].after_previous, "pipelined in the same read");
        let later = stream.feed(b"GET /version HTTP/1.1\r\n\r\n");
        assert!(matches!(&later[0], HttpEvent::Head(h) if h.after_previous));
    }

    #[test]
    fn big_heads_with_many_headers_parse_without_quadratic_work() {
        let mut head = b"POST /v1.41/build?t=big HTTP/1.1\r\n".to_vec();
        for i in 0..20_000 {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        assert!(head.len() < MAX_HEAD);
        let mut stream = RequestStream::default();
        let started = std::time::Instant::now();
        let events: Vec<HttpEvent> = head.chunks(7).flat_map(|c| stream.feed(c)).collect();
        assert_eq!(heads(&events), ["POST /v1.41/build?t=big"]);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn endless_head_is_cut_off() {
        let mut stream = RequestStream::default();
        let mut events = stream.feed(b"GET / HTTP/1.1\r\n");
        for _ in 0..(MAX_HEAD / 4096 + 4) {
            events.extend(stream.feed(&[b'a'; 4096]));
        }
        assert!(events.iter().any(|e| matches!(e, HttpEvent::Desync(_))));
        assert!(stream.buffer.len() <= MAX_HEAD + 4096);
    }
}
