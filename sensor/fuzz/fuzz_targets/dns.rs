//! A build step's datagrams to a resolver.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = buildwatch::protocol::dns::questions(data);
});
