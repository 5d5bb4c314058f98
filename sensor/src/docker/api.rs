//! Docker Engine and Podman API requests -> typed operations. Paths may carry a `/vN.NN` prefix
//! or none, Podman's native API lives under `/libpod/`, query keys may repeat (`t=`) and are
//! percent-encoded. Build-arg values are never kept, only their keys.
use serde_json::Value;

use crate::{
    model::{
        image_ref::ImageRef,
        operation::{Api, BuildParams, Builder, CreateParams, Operation, SensitiveMount},
    },
    protocol::http::RequestHead,
};

/// A request split into what classification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    pub method: String,
    /// Path without the version prefix and without `/libpod`, percent-decoded per segment.
    pub path: Vec<String>,
    pub api: Api,
    pub version: Option<String>,
    pub query: Vec<(String, String)>,
}

impl ApiRequest {
    pub fn parse(head: &RequestHead) -> Self {
        let target = origin_form(&head.target);
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect();
        let mut version = None;
        if segments.first().is_some_and(|s| is_version(s)) {
            version = Some(segments.remove(0));
        }
        let mut api = Api::Docker;
        if segments.first().is_some_and(|s| s == "libpod") {
            segments.remove(0);
            api = Api::Libpod;
        }
        Self {
            method: head.method.to_ascii_uppercase(),
            path: segments,
            api,
            version,
            // As Go's `r.Form`: a form-encoded body's values first, then the query's.
            query: head
                .form
                .as_deref()
                .map(|body| form_urlencoded::parse(body).into_owned().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(form_urlencoded::parse(query.as_bytes()).into_owned())
                .collect(),
        }
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn params<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.query
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        self.param(key)
            .is_some_and(|v| matches!(v, "1" | "true" | "True"))
    }

    /// The path as a display string (`/images/create`).
    pub fn route(&self) -> String {
        format!("/{}", self.path.join("/"))
    }
}

/// The path and query of a request target: an absolute-form target
/// (`http://docker/v1.41/build?t=x`), which Go's server accepts, loses its scheme and authority.
fn origin_form(target: &str) -> &str {
    let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
    let Some(rest) = ["http://", "https://"]
        .iter()
        .find(|scheme| lower.starts_with(*scheme))
        .map(|scheme| &target[scheme.len()..])
    else {
        return target;
    };
    match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => &rest[at..],
        Some(at) => &rest[at..],
        None => "/",
    }
}

fn is_version(segment: &str) -> bool {
    segment
        .strip_prefix('v')
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

fn percent_decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

/// The operation a request head asks for, if it is one buildwatch follows. Operations that need
/// their body get it later through [`complete_with_body`].
pub fn classify(request: &ApiRequest) -> Option<Operation> {
    let path: Vec<&str> = request.path.iter().map(String::as_str).collect();
    let post = request.method == "POST";
    match (post, path.as_slice()) {
        (true, ["build"]) => Some(Operation::Build {
            builder: match request.param("version") {
                Some("2") => Builder::Buildkit,
                _ if request.api == Api::Libpod => Builder::Podman,
                _ => Builder::Classic,
            },
            params: build_params(request),
        }),
        (true, ["session"]) => Some(Operation::BuildkitSession { grpc: false }),
        (true, ["grpc"]) => Some(Operation::BuildkitSession { grpc: true }),
        (true, ["images", "create"]) => {
            if let Some(name) = request.param("fromImage").filter(|n| !n.is_empty()) {
                ImageRef::from_parts(name, request.param("tag")).map(|image| Operation::Pull { image })
            } else {
                request.param("fromSrc").map(|source| Operation::Import {
                    image: request
                        .param("repo")
                        .filter(|r| !r.is_empty())
                        .and_then(|repo| ImageRef::from_parts(repo, request.param("tag"))),
                    source: source.to_string(),
                })
            }
        }
        (true, ["images", "pull"]) if request.api == Api::Libpod => request
            .param("reference")
            .and_then(ImageRef::parse)
            .map(|image| Operation::Pull { image }),
        (true, ["images", "import"]) if request.api == Api::Libpod => Some(Operation::Import {
            image: request.param("reference").and_then(ImageRef::parse),
            source: request.param("url").unwrap_or("-").to_string(),
        }),
        (true, ["images", "load"]) => Some(Operation::Load),
        (true, ["images", rest @ .., "push"]) if !rest.is_empty() => {
            ImageRef::from_parts(&rest.join("/"), request.param("tag")).map(|image| Operation::Push { image })
        }
        (true, ["images", rest @ .., "tag"]) if !rest.is_empty() => {
            let target = ImageRef::from_parts(request.param("repo")?, request.param("tag"))?;
            Some(Operation::Tag {
                source: rest.join("/"),
                target,
            })
        }
        (true, ["commit"]) => Some(Operation::Commit {
            container: request.param("container").unwrap_or_default().to_string(),
            image: request
                .param("repo")
                .filter(|r| !r.is_empty())
                .and_then(|repo| ImageRef::from_parts(repo, request.param("tag"))),
        }),
        (true, ["containers", "create"]) => Some(Operation::ContainerCreate(CreateParams {
            name: request.param("name").map(String::from),
            ..CreateParams::default()
        })),
        (true, ["containers", id, "start"]) => Some(Operation::ContainerStart {
            container: id.to_string(),
        }),
        (true, ["containers", id, "exec"]) => Some(Operation::Exec {
            container: id.to_string(),
            cmd: Vec::new(),
        }),
        _ => None,
    }
}

fn build_params(request: &ApiRequest) -> BuildParams {
    let tags = request
        .params("t")
        .flat_map(|t| t.split(','))
        .filter_map(ImageRef::parse)
        .collect();
    let build_arg_keys = request
        .param("buildargs")
        .and_then(|json| serde_json::from_str::<serde_json::Map<String, Value>>(json).ok())
        .map(|args| args.keys().cloned().collect())
        .unwrap_or_default();
    let non_empty = |key: &str| request.param(key).filter(|v| !v.is_empty()).map(String::from);
    BuildParams {
        tags,
        dockerfile: non_empty("dockerfile"),
        remote_context: non_empty("remote"),
        context_dir: None,
        build_arg_keys,
        network_mode: non_empty("networkmode"),
        session: non_empty("session"),
        pull: request.flag("pull"),
    }
}

/// Whether a request's body is worth keeping: the JSON of container create and exec, the
/// context of a build (its Dockerfile), the archive of a load (its image names).
pub fn wants_body(head: &RequestHead) -> bool {
    if !head.method.eq_ignore_ascii_case("POST") {
        return false;
    }
    let path = head.target.split('?').next().unwrap_or_default();
    ["/build", "/containers/create", "/exec", "/images/load"]
        .iter()
        .any(|end| path.ends_with(end))
}

/// Fills in what only the body tells: the container-create and exec JSON.
pub fn complete_with_body(operation: &mut Operation, api: Api, body: &[u8], complete: bool) {
    match operation {
        Operation::ContainerCreate(params) => {
            let name = params.name.take();
            *params = match serde_json::from_slice::<Value>(body) {
                Ok(json) => match api {
                    Api::Docker => docker_create(&json),
                    Api::Libpod => libpod_create(&json),
                },
                Err(_) => CreateParams {
                    image: string_field(body, if api == Api::Docker { "Image" } else { "image" }),
                    body_truncated: true,
                    ..CreateParams::default()
                },
            };
            params.name = name;
            params.body_truncated |= !complete;
            params.sensitive_mounts = params.binds.iter().filter_map(|b| sensitive(b)).collect();
        }
        Operation::Exec { cmd, .. } => {
            if let Ok(json) = serde_json::from_slice::<Value>(body) {
                *cmd = strings(&json["Cmd"]);
            }
        }
        _ => {}
    }
}

fn docker_create(json: &Value) -> CreateParams {
    let host = &json["HostConfig"];
    let mut binds = strings(&host["Binds"]);
    binds.extend(
        host["Mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["Type"] == "bind")
            .filter_map(|m| m["Source"].as_str().map(String::from)),
    );
    CreateParams {
        image: json["Image"].as_str().map(String::from),
        privileged: host["Privileged"].as_bool().unwrap_or(false),
        cap_add: strings(&host["CapAdd"]),
        binds,
        pid_host: host["PidMode"] == "host",
        network_host: host["NetworkMode"] == "host",
        ipc_host: host["IpcMode"] == "host",
        ..CreateParams::default()
    }
}

fn libpod_create(json: &Value) -> CreateParams {
    let host_ns = |key: &str| json[key]["nsmode"] == "host";
    CreateParams {
        image: json["image"].as_str().map(String::from),
        privileged: json["privileged"].as_bool().unwrap_or(false),
        cap_add: strings(&json["cap_add"]),
        binds: json["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["source"].as_str().map(String::from))
            .collect(),
        pid_host: host_ns("pidns"),
        network_host: host_ns("netns"),
        ipc_host: host_ns("ipcns"),
        ..CreateParams::default()
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

/// `"key":"value"` out of JSON cut short by the capture.
fn string_field(body: &[u8], key: &str) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let at = text.find(&format!("\"{key}\":"))?;
    let rest = text[at + key.len() + 3..].trim_start().strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// Why a bind source (`/src:/dst:ro` or a bare source) is dangerous, if it is.
fn sensitive(bind: &str) -> Option<SensitiveMount> {
    let source = bind.split(':').next().unwrap_or(bind);
    let trimmed = source.trim_end_matches('/');
    let reason = match trimmed {
        "" => "host root filesystem",
        "/etc"
        | "/root"
        | "/boot"
        | "/proc"
        | "/sys"
        | "/dev"
        | "/var/lib/docker"
        | "/var/lib/containers"
        | "/var/lib/kubelet" => "host system directory",
        "/run" | "/var/run" | "/run/containerd" | "/run/podman" | "/run/buildkit" => {
            "directory of container runtime sockets"
        }
        _ if RUNTIME_SOCKETS.iter().any(|s| trimmed.ends_with(s)) => "container runtime socket",
        _ if trimmed.starts_with("/etc/") => "host system directory",
        _ => return None,
    };
    Some(SensitiveMount {
        source: source.to_string(),
        reason,
    })
}

const RUNTIME_SOCKETS: [&str; 6] = [
    "/docker.sock",
    "/containerd.sock",
    "/podman.sock",
    "/crio.sock",
    "/buildkitd.sock",
    "/dockershim.sock",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str) -> RequestHead {
        RequestHead {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            upgrade: false,
            offset: 0,
            len: 0,
            after_previous: true,
            form: None,
        }
    }

    fn op(method: &str, target: &str) -> Option<Operation> {
        classify(&ApiRequest::parse(&head(method, target)))
    }

    #[test]
    fn build_with_repeated_tags_and_build_args() {
        let Some(Operation::Build { builder, params }) = op(
            "POST",
            "/v1.41/build?buildargs=%7B%22TOKEN%22%3A%22s3cret%22%7D&dockerfile=Dockerfile.x&t=evil%3A1&t=127.0.0.1%3A5000%2Fevil&version=1",
        ) else {
            panic!("not a build");
        };
        assert_eq!(builder, Builder::Classic);
        let tags: Vec<String> = params.tags.iter().map(ToString::to_string).collect();
        assert_eq!(tags, ["docker.io/library/evil:1", "127.0.0.1:5000/evil:latest"]);
        assert_eq!(params.build_arg_keys.iter().collect::<Vec<_>>(), ["TOKEN"]);
        assert_eq!(params.dockerfile.as_deref(), Some("Dockerfile.x"));
        assert!(!format!("{params:?}").contains("s3cret"));
    }

    #[test]
    fn absolute_targets_and_form_bodies_as_go_reads_them() {
        let Some(Operation::Build { params, .. }) = op("POST", "http://docker/v1.41/build?t=shown%3A1")
        else {
            panic!("an absolute-form build");
        };
        assert_eq!(params.tags[0].to_string(), "docker.io/library/shown:1");
        let mut form = head("POST", "/v1.41/build?t=shown%3A1");
        form.form = Some(b"t=hidden%3A2&remote=http%3A%2F%2Fevil%2Fctx.tar".to_vec());
        let Some(Operation::Build { params, .. }) = classify(&ApiRequest::parse(&form)) else {
            panic!("a form build");
        };
        let tags: Vec<String> = params.tags.iter().map(ToString::to_string).collect();
        assert_eq!(tags, ["docker.io/library/hidden:2", "docker.io/library/shown:1"]);
        assert_eq!(params.remote_context.as_deref(), Some("http://evil/ctx.tar"));
        let mut pull = head("POST", "HTTP://docker/images/create");
        pull.form = Some(b"fromImage=alpine&tag=3".to_vec());
        assert_eq!(
            classify(&ApiRequest::parse(&pull)),
            Some(Operation::Pull {
                image: ImageRef::parse("alpine:3").unwrap()
            })
        );
    }

    #[test]
    fn unversioned_buildkit_and_libpod_builds() {
        assert!(matches!(
            op("POST", "/build?version=2&t=x"),
            Some(Operation::Build {
                builder: Builder::Buildkit,
                ..
            })
        ));
        assert!(matches!(
            op("POST", "/v4.0.0/libpod/build?t=x"),
            Some(Operation::Build {
                builder: Builder::Podman,
                ..
            })
        ));
        assert_eq!(op("GET", "/v1.41/build"), None);
        assert_eq!(
            op("POST", "/session"),
            Some(Operation::BuildkitSession { grpc: false })
        );
        assert_eq!(
            op("POST", "/grpc"),
            Some(Operation::BuildkitSession { grpc: true })
        );
    }

    #[test]
    fn image_operations() {
        assert_eq!(
            op(
                "POST",
                "/v1.41/images/create?fromImage=127.0.0.1%3A5000%2Fbwbase&tag=1"
            ),
            Some(Operation::Pull {
                image: ImageRef::parse("127.0.0.1:5000/bwbase:1").unwrap()
            })
        );
        assert_eq!(
            op("POST", "/v1.41/images/create?fromSrc=-&repo=imported&tag=2"),
            Some(Operation::Import {
                image: ImageRef::parse("imported:2"),
                source: "-".into()
            })
        );
        assert_eq!(op("POST", "/images/load?quiet=1"), Some(Operation::Load));
        assert_eq!(
            op("POST", "/v1.41/images/127.0.0.1:5000%2Fapp:1/tag?repo=evil&tag=2"),
            Some(Operation::Tag {
                source: "127.0.0.1:5000/app:1".into(),
                target: ImageRef::parse("evil:2").unwrap()
            })
        );
        assert_eq!(
            op("POST", "/v1.41/images/127.0.0.1:5000/app/push?tag=1"),
            Some(Operation::Push {
                image: ImageRef::parse("127.0.0.1:5000/app:1").unwrap()
            })
        );
        assert_eq!(
            op("POST", "/v4.0.0/libpod/images/pull?reference=alpine"),
            Some(Operation::Pull {
                image: ImageRef::parse("alpine").unwrap()
            })
        );
        assert!(matches!(
            op("POST", "/commit?container=abc&repo=snap"),
            Some(Operation::Commit { .. })
        ));
        assert_eq!(op("GET", "/v1.41/images/json"), None);
    }

    #[test]
    fn container_create_flags_host_access() {
        let mut create = op("POST", "/v1.41/containers/create?name=x").unwrap();
        let body = br#"{"Env":[],"Cmd":["sh"],"Image":"evil:1","HostConfig":{"Privileged":true,"Binds":["/:/host","/var/run/docker.sock:/var/run/docker.sock","/tmp/a:/a"],"PidMode":"host","CapAdd":["SYS_ADMIN"]}}"#;
        complete_with_body(&mut create, Api::Docker, body, true);
        let Operation::ContainerCreate(params) = create else {
            panic!()
        };
        assert_eq!(params.image.as_deref(), Some("evil:1"));
        assert_eq!(params.name.as_deref(), Some("x"));
        assert!(params.privileged && params.pid_host && !params.network_host);
        assert_eq!(params.cap_add, ["SYS_ADMIN"]);
        let reasons: Vec<&str> = params.sensitive_mounts.iter().map(|m| m.reason).collect();
        assert_eq!(reasons, ["host root filesystem", "container runtime socket"]);
    }

    #[test]
    fn truncated_create_body_still_names_the_image() {
        let mut create = op("POST", "/containers/create").unwrap();
        complete_with_body(
            &mut create,
            Api::Docker,
            br#"{"Cmd":["sh"],"Image":"evil:1","HostConfig":{"Privi"#,
            false,
        );
        let Operation::ContainerCreate(params) = create else {
            panic!()
        };
        assert_eq!(params.image.as_deref(), Some("evil:1"));
        assert!(params.body_truncated);
    }

    #[test]
    fn libpod_create() {
        let mut create = op("POST", "/v4.0.0/libpod/containers/create").unwrap();
        complete_with_body(
            &mut create,
            Api::Libpod,
            br#"{"image":"evil:1","privileged":true,"mounts":[{"source":"/etc","destination":"/h"}],"netns":{"nsmode":"host"}}"#,
            true,
        );
        let Operation::ContainerCreate(params) = create else {
            panic!()
        };
        assert!(params.privileged && params.network_host);
        assert_eq!(params.sensitive_mounts[0].reason, "host system directory");
    }
}
