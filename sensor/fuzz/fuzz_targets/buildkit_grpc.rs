//! BuildKit's gRPC decoded (HTTP/2 frames, HPACK, gRPC messages, Solve requests, file-sync
//! packets), in pieces and with gaps where the capture left bytes out.
#![no_main]
use buildwatch::protocol::{buildkit::SessionFacts, buildkit_grpc::SessionDecoder};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&shape, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(shape % 61) * 71 + 1;
    let mut decoder = SessionDecoder::default();
    let mut facts = SessionFacts::default();
    for (i, chunk) in stream.chunks(piece).enumerate() {
        decoder.feed(chunk, &mut facts);
        if shape & 0x80 != 0 && i % 3 == 2 {
            decoder.gap(u64::from(chunk[0]));
        }
    }
});
