//! Build contexts and `docker load` archives (tar, cut anywhere) and Dockerfile text.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = buildwatch::docker::dockerfile::from_context(data, None);
    let _ = buildwatch::docker::dockerfile::from_context(data, Some("./Dockerfile.x"));
    let _ = buildwatch::docker::dockerfile::parse("Dockerfile", &String::from_utf8_lossy(data));
    let _ = buildwatch::detect::loaded_images(data);
});
