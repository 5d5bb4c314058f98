//! The Kubernetes CRI (`runtime.v1`) as containerd's CRI plugin reads it from the kubelet or
//! any other client of its socket: image pulls and removals, pod sandboxes, containers. Field
//! numbers are those of k8s.io/cri-api's api.proto. A pull's `AuthConfig` (registry
//! credentials) is never read.
use super::protobuf::{bytes_field, labels, repeated_bytes, string_field, varint_field};

/// `NamespaceMode.NODE`: the pod or container shares the node's namespace.
const NAMESPACE_NODE: u64 = 2;

/// A pod, as `PodSandboxMetadata` names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodMetadata {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// What a sandbox's or container's Linux security context grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub privileged: bool,
    /// Namespaces shared with the node: `network`, `pid`, `ipc`.
    pub host_namespaces: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriCall {
    PullImage {
        image: String,
        /// The pod the pull is for, when the kubelet says.
        pod: Option<PodMetadata>,
    },
    RemoveImage {
        image: String,
    },
    RunPodSandbox {
        pod: PodMetadata,
        security: Security,
        runtime_handler: String,
    },
    CreateContainer {
        pod_sandbox_id: String,
        name: String,
        image: String,
        /// Host paths mounted into the container.
        host_mounts: Vec<String>,
        security: Security,
        /// The pod, from the request's copy of the sandbox config.
        pod: Option<PodMetadata>,
        labels: Vec<(String, String)>,
    },
    StartContainer {
        container_id: String,
    },
}

/// The CRI call one request message of `path` makes, when it is one that matters here.
pub fn call(path: &str, message: &[u8]) -> Option<CriCall> {
    match path {
        "/runtime.v1.ImageService/PullImage" => Some(CriCall::PullImage {
            image: image_spec(bytes_field(message, 1)?)?,
            pod: bytes_field(message, 3).and_then(pod_metadata),
        }),
        "/runtime.v1.ImageService/RemoveImage" => Some(CriCall::RemoveImage {
            image: image_spec(bytes_field(message, 1)?)?,
        }),
        "/runtime.v1.RuntimeService/RunPodSandbox" => {
            let config = bytes_field(message, 1)?;
            Some(CriCall::RunPodSandbox {
                pod: pod_metadata(config)?,
                // LinuxPodSandboxConfig (8) → LinuxSandboxSecurityContext (2).
                security: bytes_field(config, 8)
                    .and_then(|linux| bytes_field(linux, 2))
                    .map(|context| security(context, 6, 1))
                    .unwrap_or_default(),
                runtime_handler: string_field(message, 2).unwrap_or_default(),
            })
        }
        "/runtime.v1.RuntimeService/CreateContainer" => {
            let config = bytes_field(message, 2)?;
            let host_mounts = repeated_bytes(config, 7)
                .into_iter()
                .filter_map(|mount| string_field(mount, 2))
                .filter(|host| !host.is_empty())
                .take(64)
                .collect();
            Some(CriCall::CreateContainer {
                pod_sandbox_id: string_field(message, 1).unwrap_or_default(),
                name: bytes_field(config, 1)
                    .and_then(|metadata| string_field(metadata, 1))
                    .unwrap_or_default(),
                image: bytes_field(config, 2).and_then(image_spec).unwrap_or_default(),
                host_mounts,
                // LinuxContainerConfig (15) → LinuxContainerSecurityContext (2).
                security: bytes_field(config, 15)
                    .and_then(|linux| bytes_field(linux, 2))
                    .map(|context| security(context, 2, 3))
                    .unwrap_or_default(),
                pod: bytes_field(message, 3).and_then(pod_metadata),
                labels: labels(config, 9),
            })
        }
        "/runtime.v1.RuntimeService/StartContainer" => Some(CriCall::StartContainer {
            container_id: string_field(message, 1)?,
        }),
        _ => None,
    }
}

/// `ImageSpec.image` (1); the user's own spelling (18) when the kubelet sends it.
fn image_spec(spec: &[u8]) -> Option<String> {
    string_field(spec, 1)
        .filter(|image| !image.is_empty())
        .or_else(|| string_field(spec, 18))
}

/// `PodSandboxConfig.metadata` (1): name (1), uid (2), namespace (3).
fn pod_metadata(config: &[u8]) -> Option<PodMetadata> {
    let metadata = bytes_field(config, 1)?;
    Some(PodMetadata {
        name: string_field(metadata, 1).unwrap_or_default(),
        uid: string_field(metadata, 2).unwrap_or_default(),
        namespace: string_field(metadata, 3).unwrap_or_default(),
    })
}

/// A security context: `privileged` and `namespace_options` are fields of different numbers
/// in the sandbox's and the container's contexts.
fn security(context: &[u8], privileged_field: u32, namespaces_field: u32) -> Security {
    let mut host_namespaces = Vec::new();
    if let Some(options) = bytes_field(context, namespaces_field) {
        for (number, kind) in [(1, "network"), (2, "pid"), (3, "ipc")] {
            if varint_field(options, number) == Some(NAMESPACE_NODE) {
                host_namespaces.push(kind.to_string());
            }
        }
    }
    Security {
        privileged: varint_field(context, privileged_field).is_some_and(|v| v != 0),
        host_namespaces,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::protobuf::tests::{bytes_field as field, entry, varint_field as varint};

    fn pod_config(name: &str, namespace: &str, uid: &str) -> Vec<u8> {
        let mut metadata = field(1, name.as_bytes());
        metadata.extend(field(2, uid.as_bytes()));
        metadata.extend(field(3, namespace.as_bytes()));
        field(1, &metadata)
    }

    #[test]
    fn a_pull_names_its_image_and_pod_and_never_its_credentials() {
        let mut auth = field(1, b"user");
        auth.extend(field(2, b"hunter2"));
        let mut message = field(1, &field(1, b"docker.io/library/evil:1"));
        message.extend(field(2, &auth));
        message.extend(field(3, &pod_config("web-0", "prod", "u-1")));
        let call = call("/runtime.v1.ImageService/PullImage", &message).unwrap();
        assert_eq!(
            call,
            CriCall::PullImage {
                image: "docker.io/library/evil:1".into(),
                pod: Some(PodMetadata {
                    name: "web-0".into(),
                    namespace: "prod".into(),
                    uid: "u-1".into()
                })
            }
        );
        assert!(!format!("{call:?}").contains("hunter2"));
    }

    #[test]
    fn a_privileged_container_with_the_host_root_and_pid_namespace() {
        let mut mount = field(1, b"/host");
        mount.extend(field(2, b"/"));
        let namespaces = varint(2, NAMESPACE_NODE);
        let mut context = varint(2, 1);
        context.extend(field(3, &namespaces));
        let mut config = field(1, &field(1, b"shell"));
        config.extend(field(2, &field(1, b"evil:1")));
        config.extend(field(7, &mount));
        config.extend(field(9, &entry("app", "x")));
        config.extend(field(15, &field(2, &context)));
        let mut message = field(1, b"sandbox-1");
        message.extend(field(2, &config));
        message.extend(field(3, &pod_config("web-0", "prod", "u-1")));
        let Some(CriCall::CreateContainer {
            pod_sandbox_id,
            name,
            image,
            host_mounts,
            security,
            pod,
            labels,
        }) = call("/runtime.v1.RuntimeService/CreateContainer", &message)
        else {
            panic!("not a CreateContainer");
        };
        assert_eq!(pod_sandbox_id, "sandbox-1");
        assert_eq!(name, "shell");
        assert_eq!(image, "evil:1");
        assert_eq!(host_mounts, ["/"]);
        assert!(security.privileged);
        assert_eq!(security.host_namespaces, ["pid"]);
        assert_eq!(pod.unwrap().namespace, "prod");
        assert_eq!(labels, [("app".to_string(), "x".to_string())]);
    }

    #[test]
    fn a_host_network_sandbox() {
        let namespaces = varint(1, NAMESPACE_NODE);
        let context = field(1, &namespaces);
        let mut config = pod_config("web-0", "prod", "u-1");
        config.extend(field(8, &field(2, &context)));
        let message = field(1, &config);
        let Some(CriCall::RunPodSandbox { pod, security, .. }) =
            call("/runtime.v1.RuntimeService/RunPodSandbox", &message)
        else {
            panic!("not a RunPodSandbox");
        };
        assert_eq!(pod.name, "web-0");
        assert_eq!(security.host_namespaces, ["network"]);
        assert!(!security.privileged);
    }

    #[test]
    fn garbage_is_no_call() {
        for path in [
            "/runtime.v1.ImageService/PullImage",
            "/runtime.v1.RuntimeService/CreateContainer",
            "/runtime.v1.RuntimeService/StartContainer",
        ] {
            assert_eq!(call(path, &[0xff, 0xff, 0xff]), None, "{path}");
            assert_eq!(call(path, &[]), None, "{path}");
        }
        assert_eq!(crate::protocol::protobuf::bounded(&[b'a'; 5000]).len(), 1024);
    }
}
