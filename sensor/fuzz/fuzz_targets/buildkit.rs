//! BuildKit session bytes after an upgrade (HTTP/2, gRPC, protobuf attributes), in pieces.
#![no_main]
use buildwatch::protocol::buildkit::SessionScanner;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut scanner = SessionScanner::default();
    for piece in data.chunks(997) {
        scanner.scan(piece);
    }
});
