//! Credentials never leave the sensor: registry auth headers (`X-Registry-Auth`,
//! `X-Registry-Config`) and HTTP authorization headers are blanked in captured bytes, and so are
//! build-arg values (the `buildargs=` query value in captured bytes, `--build-arg K=V` values in
//! command lines; the keys stay in build objects). The redactor keeps state per stream, so a
//! header split across two syscalls is still caught.
use std::collections::HashMap;

use crate::decode::Dir;

const SENSITIVE_HEADERS: [&[u8]; 4] = [
    b"x-registry-auth",
    b"x-registry-config",
    b"authorization",
    b"proxy-authorization",
];
const MARKER: &[u8] = b" <redacted>";
const QUERY_KEY: &[u8] = b"buildargs=";
const QUERY_MARKER: &[u8] = b"<redacted>";
const REDACTED_VALUE: &str = "<redacted>";
/// Longest line prefix remembered: enough for the longest sensitive header name and its colon.
const MAX_NAME: usize = 24;
/// Streams remembered at once; state of closed connections is dropped by the caller.
const MAX_STREAMS: usize = 16_384;

#[derive(Debug, Default, Clone)]
struct StreamState {
    /// Lower-cased start of the current line, up to `MAX_NAME` bytes.
    line: Vec<u8>,
    /// Inside a sensitive header's value: drop bytes until the end of the line.
    redacting: bool,
    /// The last bytes of the line, lower-cased, to spot `buildargs=` anywhere in it.
    window: Vec<u8>,
    /// Inside a `buildargs=` query value: drop bytes until `&`, a space or the end of the line.
    redacting_query: bool,
}

impl StreamState {
    fn redact(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut output = Vec::with_capacity(input.len());
        let mut redacted = false;
        for &byte in input {
            if self.redacting_query {
                if matches!(byte, b'&' | b' ' | b'\r' | b'\n') {
                    self.redacting_query = false;
                    self.window.clear();
                } else {
                    continue;
                }
            }
            if self.redacting {
                if byte == b'\r' || byte == b'\n' {
                    self.redacting = false;
                    self.line.clear();
                    output.push(byte);
                }
                continue;
            }
            output.push(byte);
            self.window.push(byte.to_ascii_lowercase());
            if self.window.len() > QUERY_KEY.len() {
                self.window.remove(0);
            }
            if self.window == QUERY_KEY {
                self.redacting_query = true;
                redacted = true;
                output.extend_from_slice(QUERY_MARKER);
            }
            match byte {
                b'\n' | b'\r' => self.line.clear(),
                b':' if SENSITIVE_HEADERS.contains(&self.line.as_slice()) => {
                    self.redacting = true;
                    redacted = true;
                    output.extend_from_slice(MARKER);
                }
                _ if self.line.len() < MAX_NAME => self.line.push(byte.to_ascii_lowercase()),
                _ => {}
            }
        }
        (output, redacted)
    }
}

/// Redaction state for every open stream, keyed by (connection id, direction).
#[derive(Default)]
pub struct Redactor {
    streams: HashMap<(u64, Dir), StreamState>,
}

/// Blanks the values of `--build-arg K=V` and `--build-arg=K=V` in a command line.
pub fn argv(args: &mut [String]) {
    let mut value_next = false;
    for arg in args.iter_mut() {
        if std::mem::take(&mut value_next) {
            if let Some((key, _)) = arg.split_once('=') {
                *arg = format!("{key}={REDACTED_VALUE}");
            }
            continue;
        }
        if arg == "--build-arg" {
            value_next = true;
        } else if let Some(pair) = arg.strip_prefix("--build-arg=") {
            if let Some((key, _)) = pair.split_once('=') {
                *arg = format!("--build-arg={key}={REDACTED_VALUE}");
            }
        }
    }
}

impl Redactor {
    /// Returns the bytes with credentials blanked, and whether anything was blanked.
    pub fn redact(&mut self, conn_id: u64, direction: Dir, bytes: &[u8]) -> (Vec<u8>, bool) {
        if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&(conn_id, direction)) {
            self.streams.clear();
        }
        self.streams
            .entry((conn_id, direction))
            .or_default()
            .redact(bytes)
    }

    /// Bytes the kernel saw but did not copy (beyond the capture size) break the stream; what
    /// follows may be mid-line, so forget the line but keep redacting if we were.
    pub fn gap(&mut self, conn_id: u64, direction: Dir) {
        if let Some(state) = self.streams.get_mut(&(conn_id, direction)) {
            state.line.clear();
            // Without the rest of the line we cannot know where it ends; keep `redacting`.
            state.line.push(0);
        }
    }

    pub fn close(&mut self, conn_id: u64) {
        self.streams.retain(|(id, _), _| *id != conn_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_arg_values_are_blanked() {
        let (text, redacted) = redact_all(&[
            b"POST /v1.41/build?buildargs=%7B%22TOKEN%22%3A%22s3c",
            b"ret%22%7D&t=x HTTP/1.1\r\n",
        ]);
        assert!(redacted);
        assert_eq!(text, "POST /v1.41/build?buildargs=<redacted>&t=x HTTP/1.1\r\n");
        let mut args: Vec<String> = ["docker", "build", "--build-arg", "TOKEN=s3cret", "--build-arg=B=v", "--build-arg", "FROM_ENV", "."]
            .map(String::from)
            .to_vec();
        argv(&mut args);
        assert_eq!(
            args,
            ["docker", "build", "--build-arg", "TOKEN=<redacted>", "--build-arg=B=<redacted>", "--build-arg", "FROM_ENV", "."]
        );
    }

    fn redact_all(chunks: &[&[u8]]) -> (String, bool) {
        let mut redactor = Redactor::default();
        let mut out = Vec::new();
        let mut any = false;
        for chunk in chunks {
            let (bytes, redacted) = redactor.redact(1, Dir::Send, chunk);
            out.extend(bytes);
            any |= redacted;
        }
        (String::from_utf8(out).unwrap(), any)
    }

    #[test]
    fn registry_auth_value_is_blanked() {
        let request = b"POST /v1.41/images/create?fromImage=x HTTP/1.1\r\nHost: docker\r\nX-Registry-Auth: eyJ1c2VybmFtZSI6ImFkbWluIiwicGFzc3dvcmQiOiJzM2NyM3QifQ==\r\nContent-Length: 0\r\n\r\n";
        let (out, redacted) = redact_all(&[request]);
        assert!(redacted);
        assert!(!out.contains("eyJ1c2"), "{out}");
        assert!(
            out.contains("X-Registry-Auth: <redacted>\r\nContent-Length: 0\r\n"),
            "{out}"
        );
    }

    #[test]
    fn header_split_across_writes_is_blanked() {
        let (out, redacted) = redact_all(&[
            b"GET /v2/ HTTP/1.1\r\nx-regis",
            b"try-config: c2VjcmV0",
            b"c2VjcmV0\r\nA: b\r\n",
        ]);
        assert!(redacted);
        assert!(!out.contains("c2VjcmV0"), "{out}");
        assert!(
            out.ends_with("x-registry-config: <redacted>\r\nA: b\r\n"),
            "{out}"
        );
    }

    #[test]
    fn header_name_inside_a_value_is_not_a_header() {
        let (out, redacted) = redact_all(&[b"X-Note: authorization: fine\r\n"]);
        assert!(!redacted);
        assert_eq!(out, "X-Note: authorization: fine\r\n");
    }

    #[test]
    fn authorization_to_registry_is_blanked() {
        let (out, _) =
            redact_all(&[b"GET /v2/base/manifests/1 HTTP/1.1\r\nAuthorization: Bearer abc.def\r\n\r\n"]);
        assert!(!out.contains("abc.def"));
    }
}
