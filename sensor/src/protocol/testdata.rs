//! Byte streams recorded from real daemons (`sensor/testdata/*.jsonl`, cut out of sensor runs
//! with `cargo xtask fixture`): one record per syscall, as the kernel delivered it.
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::Value;

/// One recorded syscall: bytes moved and the prefix captured.
pub struct Record {
    pub length: u32,
    pub bytes: Vec<u8>,
}

pub fn fixture(name: &str) -> Vec<Record> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            let content = record["content"].as_str().unwrap();
            let bytes = match record["encoding"].as_str().unwrap() {
                "text" => content.as_bytes().to_vec(),
                _ => base64::engine::general_purpose::STANDARD.decode(content).unwrap(),
            };
            Record {
                length: record["length"].as_u64().unwrap() as u32,
                bytes,
            }
        })
        .collect()
}
