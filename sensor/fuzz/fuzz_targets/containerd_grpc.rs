//! containerd's gRPC API and the CRI as containerd reads them (HTTP/2 prior knowledge, HPACK,
//! gRPC messages, the containerd and CRI request messages, OCI spec JSON), in pieces and with
//! gaps where the capture left bytes out.
#![no_main]
use buildwatch::protocol::containerd::ContainerdDecoder;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&shape, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(shape % 61) * 71 + 1;
    let mut decoder = ContainerdDecoder::default();
    for (i, chunk) in stream.chunks(piece).enumerate() {
        decoder.feed(chunk);
        if shape & 0x80 != 0 && i % 3 == 2 {
            decoder.gap(u64::from(chunk[0]));
        }
    }
});
