//! One direction of a connection, in pieces of any size, with holes where the kernel skipped
//! bytes: the first byte of each piece says how long it is and whether it is a hole.
#![no_main]
use buildwatch::protocol::http::{HttpEvent, RequestStream};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut stream = RequestStream::default();
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        let len = usize::from(control & 0x7f).min(tail.len());
        let (piece, next) = tail.split_at(len);
        let events = if control & 0x80 != 0 && len > 0 {
            stream.gap(u64::from(piece[0]) * 97)
        } else {
            stream.feed(piece)
        };
        for event in events {
            if let HttpEvent::Head(head) = event {
                assert!(head.len > 0);
            }
        }
        rest = next;
    }
});
