//! Asking a trusted dockerd what is in its image store, over its own API socket: the same answer
//! for dockerd's classic store and for containerd's, where the on-disk layout differs.
//!
//! The socket is reached through `/proc/<daemon>/root`, so a daemon in another mount namespace
//! (docker-in-docker) is asked at its own path, and the listener must be the daemon itself
//! (SO_PEERCRED): a socket file another process swapped in gets no question. Requests carry the
//! sensor's secret marker, so the engine can tell its own connections from a client's when the
//! daemon reads them. Blocking, with short timeouts: callers run it on a worker (see `host`).
use std::{
    io::{Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// The API version asked for: served by Docker 20.10 and by every later release.
const API_VERSION: &str = "v1.41";
const IO_TIMEOUT: Duration = Duration::from_millis(700);
/// A store of ten thousand images lists in a few MiB.
const MAX_RESPONSE: usize = 16 << 20;
/// Header carrying the marker of the sensor's own requests.
pub const MARKER_HEADER: &str = "X-Buildwatch-Query";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("{path} is served by pid {actual:?}, not by daemon {expected}")]
    NotTheDaemon {
        path: String,
        expected: u32,
        actual: Option<i32>,
    },
    #[error("I/O with the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon's answer is not HTTP/JSON: {0}")]
    Malformed(String),
    #[error("the daemon answered {0}")]
    Status(u16),
}

impl ApiError {
    /// The daemon did not answer (as opposed to answering with an error).
    pub fn is_silence(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::NotTheDaemon { .. } | Self::Io(_)
        )
    }
}

/// One daemon's API socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSocket {
    pub tgid: u32,
    /// The path in the daemon's own mount namespace.
    pub path: PathBuf,
}

/// An image as the daemon lists or inspects it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ApiImage {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "RepoTags", default, deserialize_with = "null_as_empty")]
    pub repo_tags: Vec<String>,
    #[serde(rename = "RepoDigests", default, deserialize_with = "null_as_empty")]
    pub repo_digests: Vec<String>,
    /// Unix seconds in a listing, RFC 3339 in an inspect.
    #[serde(rename = "Created", default)]
    pub created: serde_json::Value,
}

impl ApiImage {
    /// Its `created` time in Unix ns (a listing gives whole seconds).
    pub fn created_ns(&self) -> Option<i128> {
        match &self.created {
            serde_json::Value::Number(seconds) => seconds.as_i64().map(|s| i128::from(s) * 1_000_000_000),
            serde_json::Value::String(text) => humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
                .or_else(|_| humantime::parse_rfc3339(text))
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i128),
            _ => None,
        }
    }

    /// A registry manifest is tied to it. The classic store lists `name@<manifest digest>`
    /// only for content a registry served (or that was pushed); containerd's store lists
    /// `name@<its own id>` for every named image, which says nothing about a registry.
    pub fn has_registry_digest(&self) -> bool {
        self.repo_digests
            .iter()
            .filter_map(|d| d.rsplit_once('@').map(|(_, digest)| digest))
            .any(|digest| digest.starts_with("sha256:") && digest != self.id)
    }

    /// Names other than `<none>:<none>`.
    pub fn names(&self) -> Vec<String> {
        self.repo_tags
            .iter()
            .filter(|t| !t.starts_with("<none>"))
            .cloned()
            .collect()
    }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct ApiContainer {
    #[serde(rename = "Config")]
    config: ApiContainerConfig,
}

#[derive(Deserialize)]
struct ApiContainerConfig {
    /// The reference it was created with (a name, or an id).
    #[serde(rename = "Image")]
    image: String,
}

/// Every image of the store (`GET /images/json`).
pub fn list_images(socket: &ApiSocket, marker: &str, proc_root: &Path) -> Result<Vec<ApiImage>, ApiError> {
    let body = get(socket, marker, proc_root, "/images/json")?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Malformed(e.to_string()))
}

/// What `reference` (a name, a full or short id) resolves to now; `None` when the daemon knows
/// no such image.
pub fn inspect_image(
    socket: &ApiSocket,
    marker: &str,
    proc_root: &Path,
    reference: &str,
) -> Result<Option<ApiImage>, ApiError> {
    let Some(escaped) = path_segment(reference) else {
        return Ok(None);
    };
    match get(socket, marker, proc_root, &format!("/images/{escaped}/json")) {
        Ok(body) => serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ApiError::Malformed(e.to_string())),
        Err(ApiError::Status(404)) => Ok(None),
        Err(err) => Err(err),
    }
}

/// The image reference a container was created with (`Config.Image`, what allowlists name);
/// `None` when the daemon has no such container.
pub fn container_image(
    socket: &ApiSocket,
    marker: &str,
    proc_root: &Path,
    container: &str,
) -> Result<Option<String>, ApiError> {
    let Some(escaped) = path_segment(container) else {
        return Ok(None);
    };
    match get(socket, marker, proc_root, &format!("/containers/{escaped}/json")) {
        Ok(body) => serde_json::from_slice::<ApiContainer>(&body)
            .map(|c| Some(c.config.image))
            .map_err(|e| ApiError::Malformed(e.to_string())),
        Err(ApiError::Status(404)) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A reference as a URL path: image references and ids only use these characters.
fn path_segment(reference: &str) -> Option<&str> {
    let valid = !reference.is_empty()
        && reference.len() <= 512
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@".contains(&b))
        && !reference.contains("..");
    valid.then_some(reference)
}

fn connect(socket: &ApiSocket, proc_root: &Path) -> Result<UnixStream, ApiError> {
    let relative = socket.path.strip_prefix("/").unwrap_or(&socket.path);
    let through_root = proc_root
        .join(socket.tgid.to_string())
        .join("root")
        .join(relative);
    let stream = UnixStream::connect(&through_root).map_err(|source| ApiError::Connect {
        path: through_root.display().to_string(),
        source,
    })?;
    let peer = peer_pid(&stream);
    if peer.and_then(|p| u32::try_from(p).ok()) != Some(socket.tgid) {
        return Err(ApiError::NotTheDaemon {
            path: socket.path.display().to_string(),
            expected: socket.tgid,
            actual: peer,
        });
    }
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// The pid that created the listening socket at the other end (SO_PEERCRED).
fn peer_pid(stream: &UnixStream) -> Option<i32> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into the ucred it is given.
    let result = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut credentials).cast(),
            &raw mut length,
        )
    };
    (result == 0 && credentials.pid > 0).then_some(credentials.pid)
}

/// One GET over HTTP/1.0 (the daemon closes the connection after the body: no chunking).
fn get(socket: &ApiSocket, marker: &str, proc_root: &Path, path: &str) -> Result<Vec<u8>, ApiError> {
    let mut stream = connect(socket, proc_root)?;
    let request =
        format!("GET /{API_VERSION}{path} HTTP/1.0\r\n{MARKER_HEADER}: {marker}\r\nHost: docker\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut response)?;
    if response.len() > MAX_RESPONSE {
        return Err(ApiError::Malformed(format!("answer over {MAX_RESPONSE} bytes")));
    }
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> Result<Vec<u8>, ApiError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(response) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(ApiError::Malformed("truncated head".into())),
        Err(err) => return Err(ApiError::Malformed(err.to_string())),
    };
    match parsed.code {
        Some(200) => Ok(response[head_len..].to_vec()),
        Some(code) => Err(ApiError::Status(code)),
        None => Err(ApiError::Malformed("no status".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_path_safe() {
        assert_eq!(path_segment("127.0.0.1:5000/app:1"), Some("127.0.0.1:5000/app:1"));
        assert_eq!(path_segment("sha256:0a78"), Some("sha256:0a78"));
        assert_eq!(path_segment("../containers/x"), None);
        assert_eq!(path_segment("a b"), None);
        assert_eq!(path_segment("a?b"), None);
        assert_eq!(path_segment(""), None);
    }

    #[test]
    fn listing_and_inspect_shapes() {
        let listed: Vec<ApiImage> = serde_json::from_str(
            r#"[{"Id":"sha256:aa","RepoTags":["app:1","<none>:<none>"],"RepoDigests":null,"Created":1764546278}]"#,
        )
        .unwrap();
        assert_eq!(listed[0].names(), ["app:1"]);
        assert!(listed[0].repo_digests.is_empty());
        assert_eq!(listed[0].created_ns(), Some(1_764_546_278_000_000_000));
        let inspected: ApiImage = serde_json::from_str(
            r#"{"Id":"sha256:bb","RepoTags":[],"RepoDigests":["r/app@sha256:cc"],"Created":"2026-11-30T23:44:38.306771790Z"}"#,
        )
        .unwrap();
        assert_eq!(inspected.created_ns(), Some(1_796_082_278_306_771_790));
        assert!(inspected.has_registry_digest());
        let containerd: ApiImage = serde_json::from_str(
            r#"{"Id":"sha256:dd","RepoTags":["built:1"],"RepoDigests":["built@sha256:dd"]}"#,
        )
        .unwrap();
        assert!(
            !containerd.has_registry_digest(),
            "containerd names every image by its own digest"
        );
        assert!(!listed[0].has_registry_digest());
    }

    #[test]
    fn responses() {
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[]").unwrap(),
            b"[]"
        );
        assert!(matches!(
            parse_response(b"HTTP/1.0 404 Not Found\r\n\r\n{}"),
            Err(ApiError::Status(404))
        ));
        assert!(matches!(parse_response(b"garbage"), Err(ApiError::Malformed(_))));
    }
}
