//! BuildKit and buildx sessions after their h2c upgrade. The stream is HTTP/2 and its header
//! block is HPACK-compressed, so gRPC method paths appear Huffman-coded; decoding HPACK would need
//! every byte of the stream since its start, which a 4 KiB-per-syscall capture cannot promise.
//! Instead the scanner looks for the Huffman codes of the paths that matter and for the
//! protobuf strings of a solve request, which stay plain.
use std::{collections::BTreeSet, sync::LazyLock};

/// Bytes kept from the previous piece so a marker split across two syscalls is still found.
const OVERLAP: usize = 512;
/// Tags and build-arg keys kept per session: the stream is the client's to fill, and the facts
/// are compared after every piece.
const MAX_TAGS: usize = 64;
const MAX_BUILD_ARG_KEYS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Marker {
    /// A call to `/moby.buildkit.v1.Control/Solve`: a build.
    Solve,
    /// Any other `/moby.buildkit.v1.Control/` call.
    Control,
    /// The build context being sent (`/moby.filesync.v1.FileSync/DiffCopy`).
    FileSync,
    /// The Dockerfile frontend named in a solve request.
    DockerfileFrontend,
}

static HUFFMAN_MARKERS: LazyLock<Vec<(Marker, Vec<u8>)>> = LazyLock::new(|| {
    vec![
        (Marker::Solve, huffman("/moby.buildkit.v1.Control/Solve", true)),
        (Marker::Control, huffman("/moby.buildkit.v1.Control/", false)),
        (Marker::FileSync, huffman("/moby.filesync.v1.FileSync/", false)),
    ]
});

/// The HPACK Huffman code of `text`. A whole string literal is matched with its padding; a
/// prefix only up to its last full byte (what follows changes the last, partial byte).
fn huffman(text: &str, whole: bool) -> Vec<u8> {
    let mut coded = Vec::new();
    if httlib_huffman::encode(text.as_bytes(), &mut coded).is_err() {
        // Every byte has a code; an empty marker never matches.
        return Vec::new();
    }
    if !whole {
        coded.pop();
    }
    coded
}

/// What a session revealed so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionFacts {
    pub markers: BTreeSet<Marker>,
    /// Image names from the image exporter's `name` attribute.
    pub tags: BTreeSet<String>,
    pub build_arg_keys: BTreeSet<String>,
    pub dockerfile: Option<String>,
    /// A remote build context (`context` attribute that is a URL).
    pub remote_context: Option<String>,
    /// The session the Solve request names (its file sync runs there).
    pub session: Option<String>,
}

impl SessionFacts {
    /// The image exporter's `name` attribute: comma-separated names, at most `MAX_TAGS` kept.
    pub fn add_tags(&mut self, value: &str) {
        for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if self.tags.len() < MAX_TAGS {
                self.tags.insert(tag.to_string());
            }
        }
    }

    /// A frontend attribute (`filename`, `context`, `build-arg:*`).
    pub fn add_frontend_attribute(&mut self, key: &str, value: String) {
        match key {
            "filename" => self.dockerfile = Some(value),
            "context" if value.contains("://") || value.starts_with("git@") => {
                self.remote_context = Some(value)
            }
            _ => {
                if let Some(arg) = key.strip_prefix("build-arg:") {
                    if self.build_arg_keys.len() < MAX_BUILD_ARG_KEYS {
                        self.build_arg_keys.insert(arg.to_string());
                    }
                }
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct SessionScanner {
    tail: Vec<u8>,
    pub facts: SessionFacts,
}

impl SessionScanner {
    /// Scans the next bytes of the upgraded stream; true when they taught something new.
    pub fn scan(&mut self, bytes: &[u8]) -> bool {
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(bytes);
        let before = self.facts.clone();
        for (marker, code) in HUFFMAN_MARKERS.iter() {
            if contains(&window, code) {
                self.facts.markers.insert(*marker);
            }
        }
        if contains(&window, b"dockerfile.v0") {
            self.facts.markers.insert(Marker::DockerfileFrontend);
        }
        for (key, value) in string_map_entries(&window) {
            match key.as_str() {
                "name" => self.facts.add_tags(&value),
                _ => self.facts.add_frontend_attribute(&key, value),
            }
        }
        let keep = window.len().min(OVERLAP);
        self.tail = window.split_off(window.len() - keep);
        self.facts != before
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Protobuf `map<string, string>` entries (field 1 key, field 2 value) whose key is one a solve
/// request uses; values are cut at 1 KiB.
fn string_map_entries(bytes: &[u8]) -> Vec<(String, String)> {
    const KEYS: [&[u8]; 4] = [b"name", b"filename", b"context", b"build-arg:"];
    let mut entries = Vec::new();
    for key in KEYS {
        let mut from = 0;
        while let Some(found) = bytes[from..].windows(key.len()).position(|w| w == key) {
            let at = from + found;
            from = at + 1;
            if at < 2 || bytes[at - 2] != 0x0a {
                continue;
            }
            let key_len = usize::from(bytes[at - 1]);
            let key_end = at + key_len;
            if key_len < key.len() || key_len > 127 || key_end >= bytes.len() || bytes[key_end] != 0x12 {
                continue;
            }
            let Ok(name) = std::str::from_utf8(&bytes[at..key_end]) else {
                continue;
            };
            if key != b"build-arg:" && name.len() != key.len() {
                continue;
            }
            let Some((value_len, value_start)) = varint(&bytes[key_end + 1..]) else {
                continue;
            };
            let start = key_end + 1 + value_start;
            let Some(value) = bytes.get(start..start + (value_len as usize).min(1024)) else {
                continue;
            };
            if let Ok(value) = std::str::from_utf8(value) {
                entries.push((name.to_string(), value.to_string()));
            }
        }
    }
    entries
}

/// A protobuf varint: (value, bytes used).
fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client streaming endless distinct names grows nothing without bound.
    #[test]
    fn facts_are_bounded() {
        let mut scanner = SessionScanner::default();
        for i in 0..2000 {
            let name = format!("evil{i}:1");
            let mut entry = vec![0x0a, 4];
            entry.extend_from_slice(b"name");
            entry.push(0x12);
            entry.push(name.len() as u8);
            entry.extend_from_slice(name.as_bytes());
            scanner.scan(&entry);
        }
        assert_eq!(scanner.facts.tags.len(), MAX_TAGS);
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn huffman_code_matches_the_one_seen_on_the_wire() {
        // Seen in a buildx session on a real dockerd (see ARCHITECTURE.md).
        assert_eq!(
            hex(&huffman("/moby.buildkit.v1.Control/", true)),
            "6293c7e978ed3512753257ee15ef1ea4d87a18"
        );
        let mut decoded = Vec::new();
        let solve = huffman("/moby.buildkit.v1.Control/Solve", true);
        httlib_huffman::decode(&solve, &mut decoded, httlib_huffman::DecoderSpeed::OneBit).unwrap();
        assert_eq!(decoded, b"/moby.buildkit.v1.Control/Solve");
    }

    fn map_entry(key: &str, value: &str) -> Vec<u8> {
        let mut entry = vec![0x0a, key.len() as u8];
        entry.extend(key.as_bytes());
        entry.push(0x12);
        entry.push(value.len() as u8);
        entry.extend(value.as_bytes());
        entry
    }

    #[test]
    fn a_solve_request_split_across_reads() {
        let mut stream =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x30\x01\x04\x00\x00\x00\x01\x83\x86".to_vec();
        stream.extend(huffman("/moby.buildkit.v1.Control/Solve", true));
        stream.extend(b"\x00\x01\x00\x00\x00\x00\x01");
        stream.extend(map_entry("name", "127.0.0.1:5000/evil:1,evil:latest"));
        stream.extend(b"\x1a\x0ddockerfile.v0");
        stream.extend(map_entry("filename", "Dockerfile.evil"));
        stream.extend(map_entry("build-arg:TOKEN", "s3cret"));
        stream.extend(map_entry("context", "https://example.org/repo.git"));
        let mut scanner = SessionScanner::default();
        for piece in stream.chunks(7) {
            scanner.scan(piece);
        }
        let facts = scanner.facts;
        assert!(facts.markers.contains(&Marker::Solve), "{facts:?}");
        assert!(facts.markers.contains(&Marker::Control));
        assert!(facts.markers.contains(&Marker::DockerfileFrontend));
        assert_eq!(
            facts.tags.iter().collect::<Vec<_>>(),
            ["127.0.0.1:5000/evil:1", "evil:latest"]
        );
        assert_eq!(facts.dockerfile.as_deref(), Some("Dockerfile.evil"));
        assert_eq!(facts.build_arg_keys.iter().collect::<Vec<_>>(), ["TOKEN"]);
        assert_eq!(
            facts.remote_context.as_deref(),
            Some("https://example.org/repo.git")
        );
    }

    #[test]
    fn random_bytes_reveal_nothing() {
        let mut scanner = SessionScanner::default();
        let noise: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        assert!(!scanner.scan(&noise));
        assert_eq!(scanner.facts, SessionFacts::default());
    }
}
