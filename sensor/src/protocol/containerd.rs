//! containerd's gRPC API as containerd reads it from a client (HTTP/2 prior knowledge on its
//! socket), decoded into the calls that say where images come from and what runs: images
//! created, updated and deleted; content written, with its digest; leases; containers created,
//! with their image, labels and what their OCI spec grants; tasks created and started; the
//! transfer service's pulls and imports; and the CRI's image and runtime services (`cri.rs`).
//! Every call carries the namespace its `containerd-namespace` header named.
//!
//! The bytes come from whoever connected to the socket: every length is checked, every
//! collection bounded, and nothing of a registry credential is kept.
use std::collections::BTreeMap;

use super::{
    cri::{self, CriCall},
    h2::{H2Event, H2Reader},
    protobuf::{self, bounded, bytes_field, labels, string_field, varint_field, Value},
};

const IMAGES: &str = "/containerd.services.images.v1.Images/";
const CONTENT_WRITE: &str = "/containerd.services.content.v1.Content/Write";
const LEASES_CREATE: &str = "/containerd.services.leases.v1.Leases/Create";
const CONTAINERS_CREATE: &str = "/containerd.services.containers.v1.Containers/Create";
const TASKS: &str = "/containerd.services.tasks.v1.Tasks/";
const TRANSFER: &str = "/containerd.services.transfer.v1.Transfer/Transfer";
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// The CRI's services (`runtime.v1.ImageService`, `runtime.v1.RuntimeService`), served on the
/// same socket by containerd's CRI plugin.
const CRI_PREFIX: &str = "/runtime.v1.";
/// Streams whose request headers are remembered at once (older ones are forgotten first).
const MAX_STREAMS: usize = 256;
/// An OCI spec is read up to this size.
const MAX_SPEC: usize = 1 << 20;

/// `WriteContentRequest.action`.
const WRITE_COMMIT: u64 = 2;

/// An OCI descriptor: what an image name points at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// What a container's OCI spec grants that matters for a run of an unknown image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecFacts {
    /// CAP_SYS_ADMIN in the bounding set (`ctr run --privileged` grants every capability).
    pub sys_admin: bool,
    /// Sources of bind mounts from the host.
    pub host_mounts: Vec<String>,
    /// Namespaces shared with the host (`pid`, `network`, `ipc`, `uts`), by their absence.
    pub host_namespaces: Vec<String>,
    /// The process's argv.
    pub args: Vec<String>,
}

/// One call a client made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerdCall {
    ImageCreate {
        name: String,
        target: Descriptor,
        labels: Vec<(String, String)>,
    },
    ImageUpdate {
        name: String,
        target: Descriptor,
    },
    ImageDelete {
        name: String,
    },
    /// A content write committed: the client wrote these bytes itself.
    ContentCommit {
        reference: String,
        expected: String,
        total: u64,
    },
    LeaseCreate {
        id: String,
    },
    ContainerCreate {
        id: String,
        image: String,
        snapshotter: String,
        runtime: String,
        labels: Vec<(String, String)>,
        spec: Option<SpecFacts>,
    },
    TaskCreate {
        container_id: String,
    },
    TaskStart {
        container_id: String,
        exec_id: String,
    },
    /// The transfer service: `source_type`/`destination_type` are the `Any` type names
    /// (`containerd.types.transfer.OCIRegistry` for a pull, `...ImageImportStream` for an
    /// import), `reference` the registry reference or the image store's name.
    Transfer {
        source_type: String,
        source_reference: String,
        destination_type: String,
        destination_reference: String,
    },
    Cri(CriCall),
}

/// A call with the stream and namespace it came on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub stream: u32,
    /// `containerd-namespace`; `None` when the client sent none (containerd then refuses
    /// namespaced calls, but the CRI's calls need none).
    pub namespace: Option<String>,
    pub call: ContainerdCall,
}

#[derive(Default)]
pub struct ContainerdDecoder {
    h2: H2Reader,
    namespaces: BTreeMap<u32, String>,
}

impl ContainerdDecoder {
    /// Whether decoding still follows the stream.
    pub fn decoding(&self) -> bool {
        self.h2.failed().is_none()
    }

    /// `len` bytes moved that the capture left out; returns what the start of a message they
    /// cut still says (a container create whose OCI spec went past the capture: its id and
    /// image come first).
    pub fn gap(&mut self, len: u64) -> Vec<Call> {
        let mut calls = Vec::new();
        for event in self.h2.gap(len) {
            if let H2Event::Truncated {
                stream,
                path: Some(path),
                prefix,
            } = event
            {
                if let Some(call) = truncated_call(&path, &prefix) {
                    calls.push(Call {
                        stream,
                        namespace: self.namespaces.get(&stream).cloned(),
                        call,
                    });
                }
            }
        }
        calls
    }

    /// Decodes the next bytes the daemon read; returns the calls they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Call> {
        let mut calls = Vec::new();
        for event in self.h2.feed(bytes) {
            match event {
                H2Event::Headers { stream, fields } => {
                    if let Some((_, namespace)) = fields.iter().find(|(name, _)| name == NAMESPACE_HEADER) {
                        if self.namespaces.len() >= MAX_STREAMS {
                            self.namespaces.pop_first();
                        }
                        self.namespaces.insert(stream, bounded(namespace.as_bytes()));
                    }
                }
                H2Event::Message {
                    stream,
                    path: Some(path),
                    bytes,
                } => {
                    if let Some(call) = call(&path, &bytes) {
                        calls.push(Call {
                            stream,
                            namespace: self.namespaces.get(&stream).cloned(),
                            call,
                        });
                    }
                }
                H2Event::Message { .. } | H2Event::Truncated { .. } => {}
            }
        }
        calls
    }
}

/// What the captured start of a cut request message says: a container create's id, image,
/// snapshotter and runtime (written before its spec), without the spec's facts.
fn truncated_call(path: &str, prefix: &[u8]) -> Option<ContainerdCall> {
    if path != CONTAINERS_CREATE {
        return None;
    }
    let container = prefix_bytes(prefix, 1)?;
    let fields = protobuf::prefix_fields(container);
    let text = |number: u32| {
        fields.iter().find_map(|(n, value)| match value {
            Value::Bytes(bytes) if *n == number => Some(bounded(bytes)),
            _ => None,
        })
    };
    let runtime = fields
        .iter()
        .find_map(|(n, value)| match value {
            Value::Bytes(bytes) if *n == 4 => string_field(bytes, 1),
            _ => None,
        })
        .unwrap_or_default();
    // The id may itself be cut: only a field followed by another is surely whole.
    let id_whole = fields
        .iter()
        .position(|(n, _)| *n == 1)
        .is_some_and(|i| i + 1 < fields.len());
    Some(ContainerdCall::ContainerCreate {
        id: text(1).filter(|_| id_whole)?,
        image: text(3).unwrap_or_default(),
        snapshotter: text(6).unwrap_or_default(),
        runtime,
        labels: Vec::new(),
        spec: None,
    })
}

/// Field `number` of the start of a cut message (whole or cut itself).
fn prefix_bytes(prefix: &[u8], number: u32) -> Option<&[u8]> {
    protobuf::prefix_fields(prefix)
        .into_iter()
        .find_map(|(n, value)| match value {
            Value::Bytes(bytes) if n == number => Some(bytes),
            _ => None,
        })
}

/// The call one request message of `path` makes, when it is one that matters here.
fn call(path: &str, message: &[u8]) -> Option<ContainerdCall> {
    if let Some(method) = path.strip_prefix(IMAGES) {
        return image_call(method, message);
    }
    if let Some(method) = path.strip_prefix(TASKS) {
        return task_call(method, message);
    }
    if path.starts_with(CRI_PREFIX) {
        return cri::call(path, message).map(ContainerdCall::Cri);
    }
    match path {
        CONTENT_WRITE => content_write(message),
        LEASES_CREATE => Some(ContainerdCall::LeaseCreate {
            id: string_field(message, 1)?,
        }),
        CONTAINERS_CREATE => container_create(message),
        TRANSFER => transfer(message),
        _ => None,
    }
}

fn image_call(method: &str, message: &[u8]) -> Option<ContainerdCall> {
    match method {
        "Create" | "Update" => {
            let image = bytes_field(message, 1)?;
            let name = string_field(image, 1)?;
            let target = bytes_field(image, 3).map(descriptor).unwrap_or_default();
            Some(if method == "Create" {
                ContainerdCall::ImageCreate {
                    name,
                    target,
                    labels: labels(image, 2),
                }
            } else {
                ContainerdCall::ImageUpdate { name, target }
            })
        }
        "Delete" => Some(ContainerdCall::ImageDelete {
            name: string_field(message, 1)?,
        }),
        _ => None,
    }
}

fn task_call(method: &str, message: &[u8]) -> Option<ContainerdCall> {
    let container_id = string_field(message, 1)?;
    match method {
        "Create" => Some(ContainerdCall::TaskCreate { container_id }),
        "Start" => Some(ContainerdCall::TaskStart {
            container_id,
            exec_id: string_field(message, 2).unwrap_or_default(),
        }),
        _ => None,
    }
}

/// `WriteContentRequest`: only the commit says what was written (its expected digest).
fn content_write(message: &[u8]) -> Option<ContainerdCall> {
    let action = varint_field(message, 1).unwrap_or(0);
    (action == WRITE_COMMIT).then(|| ContainerdCall::ContentCommit {
        reference: string_field(message, 2).unwrap_or_default(),
        expected: string_field(message, 4).unwrap_or_default(),
        total: varint_field(message, 3).unwrap_or(0),
    })
}

fn container_create(message: &[u8]) -> Option<ContainerdCall> {
    let container = bytes_field(message, 1)?;
    let runtime = bytes_field(container, 4)
        .and_then(|runtime| string_field(runtime, 1))
        .unwrap_or_default();
    let spec = bytes_field(container, 5)
        .and_then(|any| bytes_field(any, 2))
        .and_then(spec_facts);
    Some(ContainerdCall::ContainerCreate {
        id: string_field(container, 1)?,
        image: string_field(container, 3).unwrap_or_default(),
        snapshotter: string_field(container, 6).unwrap_or_default(),
        runtime,
        labels: labels(container, 2),
        spec,
    })
}

/// `TransferRequest`: source (1) and destination (2) are `Any`s.
fn transfer(message: &[u8]) -> Option<ContainerdCall> {
    let end = |number| -> (String, String) {
        let Some(any) = bytes_field(message, number) else {
            return Default::default();
        };
        let type_url = string_field(any, 1).unwrap_or_default();
        let type_name = type_url.rsplit('/').next().unwrap_or_default().to_string();
        // OCIRegistry.reference, ImageStore.name, ImageImportStream.stream: field 1 of each.
        let reference = bytes_field(any, 2)
            .and_then(|value| string_field(value, 1))
            .unwrap_or_default();
        (type_name, reference)
    };
    let (source_type, source_reference) = end(1);
    let (destination_type, destination_reference) = end(2);
    if source_type.is_empty() && destination_type.is_empty() {
        return None;
    }
    Some(ContainerdCall::Transfer {
        source_type,
        source_reference,
        destination_type,
        destination_reference,
    })
}

/// The facts of an OCI runtime spec (JSON, as containerd's clients marshal it).
fn spec_facts(json: &[u8]) -> Option<SpecFacts> {
    if json.len() > MAX_SPEC {
        return None;
    }
    let spec: serde_json::Value = serde_json::from_slice(json).ok()?;
    let strings = |value: &serde_json::Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .take(64)
            .map(|s| bounded(s.as_bytes()))
            .collect()
    };
    let sys_admin = strings(&spec["process"]["capabilities"]["bounding"])
        .iter()
        .any(|c| c == "CAP_SYS_ADMIN");
    let host_mounts = spec["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["type"] == "bind" || strings(&m["options"]).iter().any(|o| o == "bind" || o == "rbind"))
        .filter_map(|m| m["source"].as_str())
        .take(64)
        .map(|s| bounded(s.as_bytes()))
        .collect();
    let declared = spec["linux"]["namespaces"].as_array();
    let own: Vec<String> = declared
        .into_iter()
        .flatten()
        // A namespace joined by path is someone else's, not a new one of the container's.
        .filter(|n| n["path"].as_str().is_none_or(str::is_empty))
        .filter_map(|n| n["type"].as_str().map(str::to_string))
        .collect();
    // Without a namespace list the spec says nothing of them (not: "all the host's").
    let host_namespaces = ["pid", "network", "ipc", "uts"]
        .into_iter()
        .filter(|kind| declared.is_some() && !own.iter().any(|o| o == kind))
        .map(str::to_string)
        .collect();
    Some(SpecFacts {
        sys_admin,
        host_mounts,
        host_namespaces,
        args: strings(&spec["process"]["args"]),
    })
}

fn descriptor(bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: string_field(bytes, 1).unwrap_or_default(),
        digest: string_field(bytes, 2).unwrap_or_default(),
        size: varint_field(bytes, 3).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        h2::tests::{frame, grpc, header_block},
        protobuf::tests::{bytes_field as field, entry, varint_field as varint},
    };

    /// A client's side of one unary call on `stream`, in namespace `namespace`.
    fn request(
        encoder: &mut httlib_hpack::Encoder<'static>,
        stream: u32,
        path: &str,
        namespace: &str,
        message: &[u8],
    ) -> Vec<u8> {
        let block = header_block(
            encoder,
            &[
                (":method", "POST"),
                (":path", path),
                ("content-type", "application/grpc"),
                (NAMESPACE_HEADER, namespace),
            ],
        );
        let mut wire = frame(1, 4, stream, &block);
        wire.extend(frame(0, 1, stream, &grpc(message)));
        wire
    }

    fn decode(wire: &[u8], piece: usize) -> Vec<Call> {
        let mut decoder = ContainerdDecoder::default();
        let calls = wire.chunks(piece).flat_map(|chunk| decoder.feed(chunk)).collect();
        assert!(decoder.decoding());
        calls
    }

    #[test]
    fn an_import_then_a_privileged_container() {
        let mut encoder = httlib_hpack::Encoder::default();
        let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        wire.extend(frame(4, 0, 0, &[]));
        // ctr images import: content written by the client, then the image created.
        let mut commit = varint(1, WRITE_COMMIT);
        commit.extend(field(2, b"import-ref"));
        commit.extend(varint(3, 1234));
        commit.extend(field(4, b"sha256:aaaa"));
        wire.extend(request(&mut encoder, 1, CONTENT_WRITE, "moby", &commit));
        let mut target = field(1, b"application/vnd.oci.image.manifest.v1+json");
        target.extend(field(2, b"sha256:bbbb"));
        target.extend(varint(3, 525));
        let mut image = field(1, b"docker.io/library/evil:1");
        image.extend(field(2, &entry("io.containerd.image.name", "evil")));
        image.extend(field(3, &target));
        wire.extend(request(
            &mut encoder,
            3,
            "/containerd.services.images.v1.Images/Create",
            "moby",
            &field(1, &image),
        ));
        // ctr run --privileged --mount type=bind,src=/,dst=/host
        let spec = br#"{"process":{"args":["sh"],"capabilities":{"bounding":["CAP_CHOWN","CAP_SYS_ADMIN"]}},
            "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
                      {"destination":"/host","type":"bind","source":"/","options":["rbind","rw"]}],
            "linux":{"namespaces":[{"type":"mount"},{"type":"network"},{"type":"ipc"},{"type":"uts"}]}}"#;
        let mut any = field(1, b"types.containerd.io/opencontainers/runtime-spec/1/Spec");
        any.extend(field(2, spec));
        let mut container = field(1, b"c1");
        container.extend(field(3, b"docker.io/library/evil:1"));
        container.extend(field(4, &field(1, b"io.containerd.runc.v2")));
        container.extend(field(5, &any));
        container.extend(field(6, b"overlayfs"));
        wire.extend(request(
            &mut encoder,
            5,
            CONTAINERS_CREATE,
            "k8s.io",
            &field(1, &container),
        ));
        wire.extend(request(
            &mut encoder,
            7,
            "/containerd.services.tasks.v1.Tasks/Start",
            "k8s.io",
            &field(1, b"c1"),
        ));
        for piece in [1, 7, 4096] {
            let calls = decode(&wire, piece);
            assert_eq!(calls.len(), 4, "{calls:?}");
            assert_eq!(
                calls[0].call,
                ContainerdCall::ContentCommit {
                    reference: "import-ref".into(),
                    expected: "sha256:aaaa".into(),
                    total: 1234
                }
            );
            assert_eq!(calls[0].namespace.as_deref(), Some("moby"));
            let ContainerdCall::ImageCreate { name, target, labels } = &calls[1].call else {
                panic!("{:?}", calls[1]);
            };
            assert_eq!(name, "docker.io/library/evil:1");
            assert_eq!(target.digest, "sha256:bbbb");
            assert_eq!(target.size, 525);
            assert_eq!(labels[0].0, "io.containerd.image.name");
            let ContainerdCall::ContainerCreate {
                id,
                image,
                snapshotter,
                runtime,
                spec,
                ..
            } = &calls[2].call
            else {
                panic!("{:?}", calls[2]);
            };
            assert_eq!((id.as_str(), image.as_str()), ("c1", "docker.io/library/evil:1"));
            assert_eq!(
                (snapshotter.as_str(), runtime.as_str()),
                ("overlayfs", "io.containerd.runc.v2")
            );
            let spec = spec.as_ref().expect("the spec's facts");
            assert!(spec.sys_admin);
            assert_eq!(spec.host_mounts, ["/"]);
            assert_eq!(spec.host_namespaces, ["pid"]);
            assert_eq!(spec.args, ["sh"]);
            assert_eq!(calls[2].namespace.as_deref(), Some("k8s.io"));
            assert_eq!(
                calls[3].call,
                ContainerdCall::TaskStart {
                    container_id: "c1".into(),
                    exec_id: String::new()
                }
            );
        }
    }

    /// A recorded stream fed as the kernel delivered it, gaps included.
    fn recorded(name: &str) -> Vec<Call> {
        let mut decoder = ContainerdDecoder::default();
        let mut calls = Vec::new();
        for record in crate::protocol::testdata::fixture(name) {
            calls.extend(decoder.feed(&record.bytes));
            calls.extend(decoder.gap(u64::from(record.length).saturating_sub(record.bytes.len() as u64)));
        }
        calls
    }

    /// containerd 1.6.20's side of `ctr -n k8s.io` (recorded by the sensor, 4 KiB of each read):
    /// `images import`, `containers create --privileged --mount src=/`, `images tag`,
    /// `images rm`, and a client-side `images pull`.
    #[test]
    fn recorded_ctr_calls_on_containerd_1_6() {
        let calls = |name: &str| -> Vec<ContainerdCall> {
            let recorded = recorded(&format!("containerd16_{name}.recv.jsonl"));
            assert!(
                recorded.iter().all(|c| c.namespace.as_deref() == Some("k8s.io")),
                "{recorded:?}"
            );
            recorded.into_iter().map(|c| c.call).collect()
        };
        // The import's upload crosses frames with the capture's gaps: decoding ends after the
        // lease (what the socket cannot show, containerd's events must).
        assert!(matches!(
            calls("import")[..],
            [ContainerdCall::LeaseCreate { .. }]
        ));
        // The create's spec goes past the 4 KiB kept of its read: id and image come first.
        let create = calls("create");
        assert!(
            create.contains(&ContainerdCall::ContainerCreate {
                id: "c1".into(),
                image: "localhost/evil:1".into(),
                snapshotter: String::new(),
                runtime: "io.containerd.runc.v2".into(),
                labels: Vec::new(),
                spec: None,
            }),
            "{create:?}"
        );
        let tag = calls("tag");
        let Some(ContainerdCall::ImageCreate { name, target, .. }) = tag.get(1) else {
            panic!("{tag:?}");
        };
        assert_eq!(name, "docker.io/library/evil:2");
        assert_eq!(
            target.digest,
            "sha256:43ee3ce9989e95d38b0eee8c0e11e664da1c7db6f2cdf9dd5248d00927a80235"
        );
        assert_eq!(
            calls("rm"),
            [ContainerdCall::ImageDelete {
                name: "docker.io/library/evil:2".into()
            }]
        );
        // A client-side pull writes content itself: the manifest's commit is seen.
        assert!(calls("pull").contains(&ContainerdCall::ContentCommit {
            reference: String::new(),
            expected: "sha256:57be2c79b5b6d2fb213b2a88290cd902574914bc1d73a12d2e2bda155f65fe9f".into(),
            total: 348,
        }));
    }

    #[test]
    fn transfer_service_pull_and_import() {
        let any = |type_name: &str, reference: &str| {
            let mut any = field(1, format!("containerd.types.transfer.{type_name}").as_bytes());
            any.extend(field(2, &field(1, reference.as_bytes())));
            any
        };
        let mut pull = field(1, &any("OCIRegistry", "127.0.0.1:5000/base:1"));
        pull.extend(field(2, &any("ImageStore", "127.0.0.1:5000/base:1")));
        assert_eq!(
            call(TRANSFER, &pull),
            Some(ContainerdCall::Transfer {
                source_type: "containerd.types.transfer.OCIRegistry".into(),
                source_reference: "127.0.0.1:5000/base:1".into(),
                destination_type: "containerd.types.transfer.ImageStore".into(),
                destination_reference: "127.0.0.1:5000/base:1".into(),
            })
        );
        assert_eq!(call(TRANSFER, &[]), None);
    }

    #[test]
    fn a_spec_without_namespaces_claims_no_host_namespace() {
        let facts = spec_facts(br#"{"process":{"args":["true"]}}"#).unwrap();
        assert!(facts.host_namespaces.is_empty());
        assert!(!facts.sys_admin);
        // A namespace joined by path is the host's (or another container's).
        let facts = spec_facts(
            br#"{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/1/ns/net"},{"type":"ipc"},{"type":"uts"}]}}"#,
        )
        .unwrap();
        assert_eq!(facts.host_namespaces, ["network"]);
        assert_eq!(spec_facts(b"not json"), None);
    }

    #[test]
    fn only_a_commit_of_a_content_write_is_a_call() {
        let mut write = varint(1, 1);
        write.extend(field(6, &[0u8; 100]));
        assert_eq!(call(CONTENT_WRITE, &write), None);
        assert_eq!(call("/containerd.services.version.v1.Version/Version", &[]), None);
    }
}
