//! The first bytes of an outbound TLS connection (ClientHello and its SNI).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = buildwatch::protocol::tls::client_hello_sni(data);
});
