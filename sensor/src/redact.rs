//! Credentials never leave the sensor: the values of registry auth headers (`X-Registry-Auth`,
//! `X-Registry-Config`) and HTTP authorization headers, and build-arg values (in the `buildargs=`
//! query JSON, and `--build-arg K=V` in command lines) are masked before anything else sees the
//! bytes: output lines, correlation and recordings alike.
//!
//! Masking keeps lengths (every masked byte becomes `*`), so stream offsets, body and chunk
//! accounting stay exact and a recording replays to the same conclusions. Build-arg keys stay
//! readable. The redactor keeps state per stream, so a header split across syscalls is still
//! caught.
use std::collections::HashMap;

use crate::model::socket::Dir;

const SENSITIVE_HEADERS: [&[u8]; 4] = [
    b"x-registry-auth",
    b"x-registry-config",
    b"authorization",
    b"proxy-authorization",
];
const MASK: u8 = b'*';
const QUERY_KEY: &[u8] = b"buildargs=";
const REDACTED_VALUE: &str = "<redacted>";
/// Longest line prefix remembered: enough for the longest sensitive header name and its colon.
const MAX_NAME: usize = 24;
/// Streams remembered at once; state of closed connections is dropped by the caller.
const MAX_STREAMS: usize = 16_384;

/// Where the redactor is inside a `buildargs=` value: percent-encoded JSON such as
/// `%7B%22KEY%22%3A%22value%22%7D`. Characters of value strings are masked, keys and structure
/// kept.
#[derive(Debug, Default, Clone)]
struct BuildArgs {
    in_string: bool,
    string_is_value: bool,
    expect_value: bool,
    escaped: bool,
    /// Bytes of a `%XX` that began in the previous piece, still to mask.
    carry: usize,
    /// A character could not be decoded (a `%XX` cut between two syscalls): the structure is
    /// unknown from here, so the rest of the value is masked.
    lost: bool,
}

impl BuildArgs {
    /// Feeds one decoded character; true when it must be masked.
    fn masks(&mut self, c: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if c == b'\\' {
                self.escaped = true;
            } else if c == b'"' {
                self.in_string = false;
                return false;
            }
            return self.string_is_value;
        }
        match c {
            b'"' => {
                self.in_string = true;
                self.string_is_value = self.expect_value;
                false
            }
            b':' => {
                self.expect_value = true;
                false
            }
            b',' | b'{' | b'}' | b'[' | b']' => {
                self.expect_value = false;
                false
            }
            // `null` (an argument without a value): nothing to hide, and masking it would break
            // the JSON.
            _ => false,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct StreamState {
    /// Lower-cased start of the current line, up to `MAX_NAME` bytes.
    line: Vec<u8>,
    /// Inside a sensitive header's value: mask bytes until the end of the line.
    in_header_value: bool,
    /// The last bytes of the line, lower-cased, to spot `buildargs=` anywhere in it.
    window: Vec<u8>,
    build_args: Option<BuildArgs>,
}

impl StreamState {
    fn redact(&mut self, bytes: &mut [u8]) -> bool {
        let mut redacted = false;
        let mut i = 0;
        while i < bytes.len() {
            let byte = bytes[i];
            if let Some(args) = &mut self.build_args {
                if args.carry > 0 {
                    args.carry -= 1;
                    bytes[i] = MASK;
                    i += 1;
                    continue;
                }
                if matches!(byte, b'&' | b' ' | b'\r' | b'\n') {
                    self.build_args = None;
                    self.window.clear();
                } else {
                    let (decoded, width) = match byte {
                        b'%' => match (bytes.get(i + 1), bytes.get(i + 2)) {
                            (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                                (Some(hex(*h) << 4 | hex(*l)), 3)
                            }
                            _ => (None, 3),
                        },
                        b'+' => (Some(b' '), 1),
                        other => (Some(other), 1),
                    };
                    // A `%XX` cut by the end of the piece cannot be decoded: mask it and the rest.
                    args.lost |= decoded.is_none();
                    let mask = args.lost || decoded.is_some_and(|c| args.masks(c));
                    let end = (i + width).min(bytes.len());
                    if mask {
                        args.carry = i + width - end;
                        bytes[i..end].fill(MASK);
                        redacted = true;
                    }
                    i = end;
                    continue;
                }
            }
            if self.in_header_value {
                if byte == b'\r' || byte == b'\n' {
                    self.in_header_value = false;
                    self.line.clear();
                } else if byte != b' ' && byte != b'\t' {
                    bytes[i] = MASK;
                }
                i += 1;
                continue;
            }
            self.window.push(byte.to_ascii_lowercase());
            if self.window.len() > QUERY_KEY.len() {
                self.window.remove(0);
            }
            if self.window == QUERY_KEY {
                self.build_args = Some(BuildArgs::default());
            }
            match byte {
                b'\n' | b'\r' => {
                    self.line.clear();
                    self.window.clear();
                }
                b':' if SENSITIVE_HEADERS.contains(&self.line.as_slice()) => {
                    self.in_header_value = true;
                    redacted = true;
                }
                _ if self.line.len() < MAX_NAME => self.line.push(byte.to_ascii_lowercase()),
                _ => {}
            }
            i += 1;
        }
        redacted
    }
}

fn hex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit.to_ascii_lowercase() - b'a' + 10,
    }
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

/// Redaction state for every open stream, keyed by (connection id, direction).
#[derive(Default)]
pub struct Redactor {
    streams: HashMap<(u64, Dir), StreamState>,
}

impl Redactor {
    /// Masks credentials in place; true when anything was masked.
    pub fn redact(&mut self, conn_id: u64, direction: Dir, bytes: &mut [u8]) -> bool {
        if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&(conn_id, direction)) {
            self.streams.clear();
        }
        self.streams
            .entry((conn_id, direction))
            .or_default()
            .redact(bytes)
    }

    /// Bytes the kernel saw but did not copy (beyond the capture size) break the stream; what
    /// follows may be mid-line, so forget the line but keep masking if we were.
    pub fn gap(&mut self, conn_id: u64, direction: Dir) {
        if let Some(state) = self.streams.get_mut(&(conn_id, direction)) {
            state.line.clear();
            // Without the rest of the line we cannot know where it ends; keep masking.
            state.line.push(0);
            state.window.clear();
        }
    }

    pub fn close(&mut self, conn_id: u64) {
        self.streams.retain(|(id, _), _| *id != conn_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact_all(chunks: &[&[u8]]) -> (String, bool) {
        let mut redactor = Redactor::default();
        let mut out = Vec::new();
        let mut any = false;
        for chunk in chunks {
            let mut bytes = chunk.to_vec();
            any |= redactor.redact(1, Dir::Send, &mut bytes);
            assert_eq!(bytes.len(), chunk.len(), "lengths are kept");
            out.extend(bytes);
        }
        (String::from_utf8(out).unwrap(), any)
    }

    #[test]
    fn build_arg_values_are_masked_and_keys_kept() {
        let line = b"POST /v1.41/build?buildargs=%7B%22TOKEN%22%3A%22s3c%2Fr%22%2C%22N%22%3Anull%7D&t=x HTTP/1.1\r\n";
        let expected =
            "POST /v1.41/build?buildargs=%7B%22TOKEN%22%3A%22*******%22%2C%22N%22%3Anull%7D&t=x HTTP/1.1\r\n";
        let (text, redacted) = redact_all(&[line]);
        assert!(redacted);
        assert_eq!(text, expected);
        // Cut anywhere, even inside a %XX, nothing of the value survives; the rest of the line
        // is intact.
        for cut in 1..line.len() {
            let (text, _) = redact_all(&[&line[..cut], &line[cut..]]);
            assert!(!text.contains("s3c"), "cut {cut}: {text}");
            assert!(!text.contains("%2Fr"), "cut {cut}: {text}");
            assert!(text.ends_with("&t=x HTTP/1.1\r\n"), "cut {cut}: {text}");
            let inside_percent = line[..cut].iter().rev().take(2).any(|b| *b == b'%');
            assert!(inside_percent || text.contains("TOKEN"), "cut {cut}: {text}");
        }
        let keys: Vec<String> = form_urlencoded::parse(&expected.as_bytes()[18..])
            .find(|(k, _)| k == "buildargs")
            .and_then(|(_, v)| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&v).ok())
            .map(|m| m.keys().cloned().collect())
            .unwrap();
        assert_eq!(keys, ["N", "TOKEN"], "the masked query still parses");
    }

    #[test]
    fn build_args_in_command_lines() {
        let mut args: Vec<String> = [
            "docker",
            "build",
            "--build-arg",
            "TOKEN=s3cret",
            "--build-arg=B=v",
            "--build-arg",
            "FROM_ENV",
            ".",
        ]
        .map(String::from)
        .to_vec();
        argv(&mut args);
        assert_eq!(
            args,
            [
                "docker",
                "build",
                "--build-arg",
                "TOKEN=<redacted>",
                "--build-arg=B=<redacted>",
                "--build-arg",
                "FROM_ENV",
                "."
            ]
        );
    }

    #[test]
    fn registry_auth_value_is_masked() {
        let request = b"POST /v1.41/images/create?fromImage=x HTTP/1.1\r\nHost: docker\r\nX-Registry-Auth: eyJ1c2VybmFtZSI6ImFkbWluIn0=\r\nContent-Length: 0\r\n\r\n";
        let (out, redacted) = redact_all(&[request]);
        assert!(redacted);
        assert!(!out.contains("eyJ1c2"), "{out}");
        assert!(
            out.contains("X-Registry-Auth: ****************************\r\nContent-Length: 0\r\n"),
            "{out}"
        );
    }

    #[test]
    fn header_split_across_writes_is_masked() {
        let (out, redacted) = redact_all(&[
            b"GET /v2/ HTTP/1.1\r\nx-regis",
            b"try-config: c2VjcmV0",
            b"c2VjcmV0\r\nA: b\r\n",
        ]);
        assert!(redacted);
        assert!(!out.contains("c2VjcmV0"), "{out}");
        assert!(
            out.ends_with("x-registry-config: ****************\r\nA: b\r\n"),
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
    fn authorization_to_registry_is_masked() {
        let (out, _) =
            redact_all(&[b"GET /v2/base/manifests/1 HTTP/1.1\r\nAuthorization: Bearer abc.def\r\n\r\n"]);
        assert!(!out.contains("abc.def"));
        assert!(!out.contains("Bearer"));
    }
}
