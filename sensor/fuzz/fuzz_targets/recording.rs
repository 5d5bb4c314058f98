//! Recording lines given to `buildwatch replay` (a recording may come from anywhere).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for line in String::from_utf8_lossy(data).lines() {
        let _ = buildwatch::recording::parse_header(line);
        let _ = buildwatch::recording::parse_step(line);
    }
});
