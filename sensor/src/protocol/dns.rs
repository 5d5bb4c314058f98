//! The names a build step asks DNS for: the host it is about to reach, even when the connection
//! that follows goes to an address the Dockerfile never spelled out.
use simple_dns::{Packet, QTYPE};

/// The port DNS clients send their queries to.
pub const PORT: u16 = 53;
/// Questions kept from one message (resolvers ask one; the rest is attacker-chosen).
const MAX_QUESTIONS: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub name: String,
    /// `A`, `AAAA`, `TXT`, ...
    pub kind: String,
}

/// The questions of a DNS query: a UDP datagram, or a TCP message with its two-byte length.
/// Empty for anything that is not a well-formed query.
pub fn questions(bytes: &[u8]) -> Vec<Question> {
    let packet = Packet::parse(bytes).ok().or_else(|| {
        let (length, message) = bytes.split_at_checked(2)?;
        (usize::from(u16::from_be_bytes([length[0], length[1]])) == message.len())
            .then(|| Packet::parse(message).ok())
            .flatten()
    });
    let Some(packet) = packet else {
        return Vec::new();
    };
    packet
        .questions
        .iter()
        .take(MAX_QUESTIONS)
        .map(|q| Question {
            name: q.qname.to_string(),
            kind: match q.qtype {
                QTYPE::TYPE(kind) => format!("{kind:?}"),
                other => format!("{other:?}"),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::{Name, Question as DnsQuestion, CLASS, TYPE};

    fn query(name: &str, kind: TYPE) -> Vec<u8> {
        let mut packet = Packet::new_query(7);
        packet.questions.push(DnsQuestion::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(kind),
            CLASS::IN.into(),
            false,
        ));
        packet.build_bytes_vec().unwrap()
    }

    #[test]
    fn udp_and_tcp_queries() {
        let udp = query("payload.evil.example", TYPE::A);
        assert_eq!(
            questions(&udp),
            [Question {
                name: "payload.evil.example".into(),
                kind: "A".into()
            }]
        );
        let mut tcp = (udp.len() as u16).to_be_bytes().to_vec();
        tcp.extend(query("payload.evil.example", TYPE::TXT));
        tcp.truncate(2 + udp.len());
        assert_eq!(questions(&tcp)[0].kind, "TXT");
    }

    #[test]
    fn anything_else_is_no_question() {
        let udp = query("payload.evil.example", TYPE::AAAA);
        for cut in 0..udp.len() {
            assert!(questions(&udp[..cut]).is_empty(), "cut at {cut}");
        }
        assert!(questions(b"GET / HTTP/1.1\r\n\r\n").is_empty());
        assert!(questions(&[0xff; 600]).is_empty());
    }
}
