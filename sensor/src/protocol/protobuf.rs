//! The protobuf wire format, as far as reading a few known fields needs: no schema compiler,
//! unknown fields skipped, every length checked against the bytes there are.

/// One field of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// 32- and 64-bit fixed fields (not used by the messages read here).
    Fixed,
}

/// The fields of `message` in order; `None` when it is not a well-formed message.
pub fn fields(message: &[u8]) -> Option<Vec<(u32, Value<'_>)>> {
    let mut out = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let (key, used) = varint(rest)?;
        rest = &rest[used..];
        let number = u32::try_from(key >> 3).ok().filter(|n| *n > 0)?;
        let value = match key & 7 {
            0 => {
                let (value, used) = varint(rest)?;
                rest = &rest[used..];
                Value::Varint(value)
            }
            1 => {
                rest = rest.get(8..)?;
                Value::Fixed
            }
            2 => {
                let (length, used) = varint(rest)?;
                let length = usize::try_from(length).ok()?;
                let bytes = rest.get(used..used.checked_add(length)?)?;
                rest = &rest[used + length..];
                Value::Bytes(bytes)
            }
            5 => {
                rest = rest.get(4..)?;
                Value::Fixed
            }
            _ => return None,
        };
        out.push((number, value));
    }
    Some(out)
}

/// The fields of the start of a message whose end is missing: every whole field, then the
/// captured part of a length-delimited field the end cut (as its bytes). Stops at the first
/// field it cannot read.
pub fn prefix_fields(message: &[u8]) -> Vec<(u32, Value<'_>)> {
    let mut out = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        let Some((key, used)) = varint(rest) else {
            break;
        };
        rest = &rest[used..];
        let Some(number) = u32::try_from(key >> 3).ok().filter(|n| *n > 0) else {
            break;
        };
        match key & 7 {
            0 => {
                let Some((value, used)) = varint(rest) else {
                    break;
                };
                rest = &rest[used..];
                out.push((number, Value::Varint(value)));
            }
            2 => {
                let Some((length, used)) = varint(rest) else {
                    break;
                };
                let available = &rest[used..];
                let length = usize::try_from(length).unwrap_or(usize::MAX);
                if length >= available.len() {
                    out.push((number, Value::Bytes(available)));
                    break;
                }
                out.push((number, Value::Bytes(&available[..length])));
                rest = &available[length..];
            }
            _ => break,
        }
    }
    out
}

fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// A `map<string, string>` entry (key 1, value 2).
pub fn string_entry(entry: &[u8]) -> Option<(String, String)> {
    let mut key = None;
    let mut value = String::new();
    for (number, field) in fields(entry)? {
        match (number, field) {
            (1, Value::Bytes(bytes)) => key = Some(String::from_utf8_lossy(bytes).into_owned()),
            (2, Value::Bytes(bytes)) => value = String::from_utf8_lossy(bytes).into_owned(),
            _ => {}
        }
    }
    Some((key?, value))
}

/// Labels kept of an image or container.
const MAX_LABELS: usize = 32;

/// The `map<string, string>` field `number` of `message`, bounded.
pub fn labels(message: &[u8], number: u32) -> Vec<(String, String)> {
    fields(message)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(n, value)| match (n, value) {
            (n, Value::Bytes(entry)) if n == number => string_entry(entry),
            _ => None,
        })
        .take(MAX_LABELS)
        .map(|(key, value)| (bounded(key.as_bytes()), bounded(value.as_bytes())))
        .collect()
}

/// The first length-delimited field `number` of `message`.
pub fn bytes_field(message: &[u8], number: u32) -> Option<&[u8]> {
    fields(message)?.into_iter().find_map(|(n, value)| match value {
        Value::Bytes(bytes) if n == number => Some(bytes),
        _ => None,
    })
}

/// Every length-delimited field `number` of `message`.
pub fn repeated_bytes(message: &[u8], number: u32) -> Vec<&[u8]> {
    fields(message)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(n, value)| match value {
            Value::Bytes(bytes) if n == number => Some(bytes),
            _ => None,
        })
        .collect()
}

pub fn string_field(message: &[u8], number: u32) -> Option<String> {
    bytes_field(message, number).map(bounded)
}

pub fn varint_field(message: &[u8], number: u32) -> Option<u64> {
    fields(message)?.into_iter().find_map(|(n, value)| match value {
        Value::Varint(v) if n == number => Some(v),
        _ => None,
    })
}

/// Text from the wire, cut at 1 KiB (names, digests, paths: longer is an attack, not a name).
pub fn bounded(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]);
    text.into_owned()
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn bytes_field(number: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = encode_varint(u64::from(number) << 3 | 2);
        out.extend(encode_varint(bytes.len() as u64));
        out.extend_from_slice(bytes);
        out
    }

    pub fn varint_field(number: u32, value: u64) -> Vec<u8> {
        let mut out = encode_varint(u64::from(number) << 3);
        out.extend(encode_varint(value));
        out
    }

    pub fn entry(key: &str, value: &str) -> Vec<u8> {
        let mut out = bytes_field(1, key.as_bytes());
        out.extend(bytes_field(2, value.as_bytes()));
        out
    }

    fn encode_varint(mut value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn fields_and_bounds() {
        let mut message = varint_field(1, 300);
        message.extend(bytes_field(4, &entry("name", "app:1")));
        let parsed = fields(&message).unwrap();
        assert_eq!(parsed[0], (1, Value::Varint(300)));
        let Value::Bytes(inner) = parsed[1].1 else {
            panic!()
        };
        assert_eq!(string_entry(inner), Some(("name".into(), "app:1".into())));
        assert_eq!(fields(&[0x22, 0x05, b'a']), None, "a length past the end");
        assert_eq!(
            fields(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            None
        );
        assert_eq!(fields(&[0x07]), None, "wire type 7");
        assert_eq!(fields(&[0x00, 0x01]), None, "field number 0");
    }

    #[test]
    fn the_start_of_a_cut_message_gives_its_whole_fields_and_the_cut_one() {
        let mut inner = bytes_field(1, b"c1");
        inner.extend(bytes_field(3, b"evil:1"));
        inner.extend(bytes_field(5, &[b'{'; 100]));
        let mut message = bytes_field(1, &inner);
        message.extend(varint_field(2, 7));
        // Cut inside the spec (field 5 of the nested message).
        let cut = &message[..message.len() - 60];
        assert_eq!(fields(cut), None);
        let outer = prefix_fields(cut);
        assert_eq!(outer.len(), 1);
        let Value::Bytes(container) = outer[0].1 else {
            panic!("{outer:?}");
        };
        let inner = prefix_fields(container);
        assert_eq!(inner[0], (1, Value::Bytes(b"c1")));
        assert_eq!(inner[1], (3, Value::Bytes(b"evil:1")));
        assert_eq!(inner[2].0, 5);
        assert!(matches!(inner[2].1, Value::Bytes(b) if b.len() < 100));
        // A varint cut in the middle ends the reading, nothing invented.
        assert!(prefix_fields(&[0x08, 0x80]).is_empty());
    }
}
