//! Kernel records: the decoder must reject, never panic on, any bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = buildwatch::decode::decode(data);
});
