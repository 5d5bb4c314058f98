//! Credential masking over attacker bytes in pieces: never a panic, never a length change.
#![no_main]
use buildwatch::{model::socket::Dir, redact::Redactor};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut redactor = Redactor::default();
    let mut rest = data;
    while let Some((&control, tail)) = rest.split_first() {
        let len = usize::from(control & 0x3f).min(tail.len());
        let (piece, next) = tail.split_at(len);
        let mut bytes = piece.to_vec();
        let direction = if control & 0x40 != 0 { Dir::Send } else { Dir::Recv };
        if control & 0x80 != 0 {
            redactor.gap(1, direction);
        }
        redactor.redact(1, direction, &mut bytes);
        assert_eq!(bytes.len(), piece.len());
        rest = next;
    }
});
