//! The server name a client asked for in its TLS ClientHello (the only readable part of an
//! HTTPS registry connection).
use tls_parser::{parse_tls_extensions, parse_tls_plaintext, TlsExtension, TlsMessage, TlsMessageHandshake};

/// True when the bytes start like a TLS handshake record.
pub fn is_handshake(bytes: &[u8]) -> bool {
    bytes.len() >= 3 && bytes[0] == 0x16 && bytes[1] == 0x03
}

/// The SNI host name of a ClientHello at the start of `bytes`, if it is complete and has one.
pub fn client_hello_sni(bytes: &[u8]) -> Option<String> {
    let (_, record) = parse_tls_plaintext(bytes).ok()?;
    record.msg.iter().find_map(|message| {
        let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = message else {
            return None;
        };
        let (_, extensions) = parse_tls_extensions(hello.ext?).ok()?;
        extensions.iter().find_map(|extension| match extension {
            TlsExtension::SNI(names) => names
                .iter()
                .find(|(kind, _)| kind.0 == 0)
                .and_then(|(_, name)| std::str::from_utf8(name).ok())
                .map(str::to_string),
            _ => None,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS 1.2 ClientHello for `name`, built field by field (RFC 8446 4.1.2, RFC 6066 3).
    fn client_hello(name: &str) -> Vec<u8> {
        let mut sni = vec![0u8];
        sni.extend((name.len() as u16).to_be_bytes());
        sni.extend(name.as_bytes());
        let mut sni_list = (sni.len() as u16).to_be_bytes().to_vec();
        sni_list.extend(sni);
        let mut extensions = vec![0, 0];
        extensions.extend((sni_list.len() as u16).to_be_bytes());
        extensions.extend(sni_list);
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut handshake = vec![1];
        handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend(body);
        let mut record = vec![0x16, 3, 1];
        record.extend((handshake.len() as u16).to_be_bytes());
        record.extend(handshake);
        record
    }

    #[test]
    fn sni_of_a_client_hello() {
        let hello = client_hello("registry-1.docker.io");
        assert!(is_handshake(&hello));
        assert_eq!(client_hello_sni(&hello).as_deref(), Some("registry-1.docker.io"));
    }

    #[test]
    fn truncated_or_garbage_gives_nothing() {
        let hello = client_hello("example.org");
        assert_eq!(client_hello_sni(&hello[..hello.len() - 3]), None);
        assert_eq!(client_hello_sni(b"\x16\x03\x01\xff\xff garbage"), None);
        assert_eq!(client_hello_sni(b"GET / HTTP/1.1\r\n"), None);
    }
}
