//! The ledger file read at start (a damaged one is moved aside, never a crash).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = buildwatch::detect::ledger::parse_file(data);
});
