//! HPACK (RFC 7541) header-block decoding: static and dynamic tables, integers, literal and
//! Huffman strings (Huffman codes through `httlib-huffman`). Written here because the HPACK
//! crates at hand panic on malformed blocks (our fuzzer found an index past a truncated integer
//! in `httlib-hpack` 0.1.3 within seconds; `hpack` 0.3 unwraps a size update), and the bytes
//! come from whoever writes to a Docker socket. Every read is bounds-checked; every size is
//! capped.
use std::collections::VecDeque;

/// Names and values of the static table (RFC 7541 Appendix A), index 1 first.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// A header field: name and value, as bytes.
pub type Field = (Vec<u8>, Vec<u8>);

/// Per-entry overhead the table size counts (RFC 7541 4.1).
const ENTRY_OVERHEAD: usize = 32;
/// Fields decoded from one block at most.
const MAX_FIELDS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("the block ends inside a field")]
    Truncated,
    #[error("an integer longer than 4 continuation bytes")]
    IntegerTooLong,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("a table size update to {0} bytes, over the limit")]
    TableTooLarge(usize),
    #[error("a string is not valid Huffman code")]
    Huffman,
    #[error("more than {MAX_FIELDS} fields in one block")]
    TooManyFields,
}

pub struct HpackDecoder {
    /// Newest first: index 62 is `dynamic[0]`.
    dynamic: VecDeque<Field>,
    size: usize,
    max_size: usize,
    /// What the table may be resized to (the receiver's SETTINGS_HEADER_TABLE_SIZE, which the
    /// sensor does not see: a generous bound).
    limit: usize,
}

impl HpackDecoder {
    pub fn new(limit: usize) -> Self {
        Self {
            dynamic: VecDeque::new(),
            size: 0,
            max_size: 4096.min(limit),
            limit,
        }
    }

    /// The fields of one whole header block (HEADERS plus its CONTINUATIONs).
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut fields = Vec::new();
        let mut rest = block;
        while let Some(&first) = rest.first() {
            if fields.len() >= MAX_FIELDS {
                return Err(HpackError::TooManyFields);
            }
            if first & 0x80 != 0 {
                let (index, used) = integer(rest, 7)?;
                rest = &rest[used..];
                fields.push(self.entry(index)?);
            } else if first & 0x40 != 0 {
                let (field, used) = self.literal(rest, 6)?;
                rest = &rest[used..];
                self.insert(field.clone());
                fields.push(field);
            } else if first & 0x20 != 0 {
                let (size, used) = integer(rest, 5)?;
                rest = &rest[used..];
                if size > self.limit {
                    return Err(HpackError::TableTooLarge(size));
                }
                self.max_size = size;
                self.evict();
            } else {
                // Without indexing (0000) or never indexed (0001): not added to the table.
                let (field, used) = self.literal(rest, 4)?;
                rest = &rest[used..];
                fields.push(field);
            }
        }
        Ok(fields)
    }

    fn entry(&self, index: usize) -> Result<Field, HpackError> {
        match index {
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            }
            _ => index
                .checked_sub(62)
                .and_then(|i| self.dynamic.get(i))
                .cloned()
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    /// A literal field whose name index has a `prefix`-bit prefix; returns it and bytes used.
    fn literal(&self, bytes: &[u8], prefix: u8) -> Result<(Field, usize), HpackError> {
        let (index, mut used) = integer(bytes, prefix)?;
        let name = if index == 0 {
            let (name, name_used) = string(&bytes[used..])?;
            used += name_used;
            name
        } else {
            self.entry(index)?.0
        };
        let (value, value_used) = string(&bytes[used..])?;
        Ok(((name, value), used + value_used))
    }

    fn insert(&mut self, field: Field) {
        let size = field.0.len() + field.1.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // An entry larger than the table empties it (RFC 7541 4.4).
            self.dynamic.clear();
            self.size = 0;
            return;
        }
        self.dynamic.push_front(field);
        self.size += size;
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            let Some((name, value)) = self.dynamic.pop_back() else {
                self.size = 0;
                return;
            };
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
    }
}

/// An integer with an N-bit prefix (RFC 7541 5.1); returns it and the bytes used.
fn integer(bytes: &[u8], prefix: u8) -> Result<(usize, usize), HpackError> {
    let first = *bytes.first().ok_or(HpackError::Truncated)?;
    let mask = (1u16 << prefix) as usize - 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok((value, 1));
    }
    for (i, byte) in bytes.iter().enumerate().skip(1) {
        if i > 4 {
            return Err(HpackError::IntegerTooLong);
        }
        value += usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(HpackError::Truncated)
}

/// A string literal (RFC 7541 5.2); returns it and the bytes used.
fn string(bytes: &[u8]) -> Result<(Vec<u8>, usize), HpackError> {
    let huffman = bytes.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let (length, used) = integer(bytes, 7)?;
    let end = used.checked_add(length).ok_or(HpackError::Truncated)?;
    let raw = bytes.get(used..end).ok_or(HpackError::Truncated)?;
    let text = if huffman {
        let mut decoded = Vec::with_capacity(raw.len() * 2);
        httlib_huffman::decode(raw, &mut decoded, httlib_huffman::DecoderSpeed::FourBits)
            .map_err(|_| HpackError::Huffman)?;
        decoded
    } else {
        raw.to_vec()
    };
    Ok((text, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks an encoder with a dynamic table and Huffman strings writes decode to the same
    /// fields, block after block (the tables stay in step).
    #[test]
    fn decodes_what_an_encoder_writes() {
        let mut encoder = httlib_hpack::Encoder::default();
        let mut decoder = HpackDecoder::new(64 * 1024);
        let blocks: [&[(&str, &str)]; 3] = [
            &[
                (":method", "POST"),
                (":path", "/moby.buildkit.v1.Control/Solve"),
                ("content-type", "application/grpc"),
            ],
            &[
                (":method", "POST"),
                (":path", "/moby.buildkit.v1.Control/Solve"),
                ("x-long", &"v".repeat(300)),
            ],
            &[
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "0"),
            ],
        ];
        for fields in blocks {
            let mut block = Vec::new();
            for (name, value) in fields {
                let flags = httlib_hpack::Encoder::HUFFMAN_VALUE
                    | httlib_hpack::Encoder::HUFFMAN_NAME
                    | httlib_hpack::Encoder::WITH_INDEXING
                    | httlib_hpack::Encoder::BEST_FORMAT;
                encoder
                    .encode(
                        (name.as_bytes().to_vec(), value.as_bytes().to_vec(), flags),
                        &mut block,
                    )
                    .unwrap();
            }
            let decoded = decoder.decode(&block).unwrap();
            let expected: Vec<(Vec<u8>, Vec<u8>)> = fields
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn rfc_7541_c_3_requests_without_huffman() {
        // Appendix C.3: three requests on one connection, the dynamic table carried over.
        let mut decoder = HpackDecoder::new(4096);
        let first = hex("828684410f7777772e6578616d706c652e636f6d");
        assert_eq!(
            decoder.decode(&first).unwrap()[3],
            (b":authority".to_vec(), b"www.example.com".to_vec())
        );
        let second = hex("828684be58086e6f2d6361636865");
        let fields = decoder.decode(&second).unwrap();
        assert_eq!(fields[3], (b":authority".to_vec(), b"www.example.com".to_vec()));
        assert_eq!(fields[4], (b"cache-control".to_vec(), b"no-cache".to_vec()));
        let third = hex("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565");
        let fields = decoder.decode(&third).unwrap();
        assert_eq!(fields[1], (b":scheme".to_vec(), b"https".to_vec()));
        assert_eq!(fields[4], (b"custom-key".to_vec(), b"custom-value".to_vec()));
        assert_eq!(decoder.size, 164, "the table size of C.3.3");
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut decoder = HpackDecoder::new(4096);
        for block in [
            &[0xff][..],
            &[0xff, 0x80, 0x80],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0x80],
            &[0xbf],
            &[0x40],
            &[0x40, 0x05, b'a'],
            &[0x00, 0x81],
            &[0x3f, 0xff, 0xff, 0x7f],
            &[0x01],
        ] {
            assert!(decoder.decode(block).is_err(), "{block:02x?}");
        }
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
