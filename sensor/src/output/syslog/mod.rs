//! `output.syslog`: RFC 5424 messages to a local socket, UDP or TCP (RFC 6587 octet counting),
//! each carrying one JSON line. Messages wait in a bounded backlog while the receiver is
//! away and go out when it is back; `SyslogStats` says what was sent and what waits.
mod address;
mod message;
pub mod stats;
mod tcp;

use std::{
    collections::VecDeque,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _, UdpSocket},
    os::unix::net::UnixDatagram,
    time::{Duration, Instant, SystemTime},
};

pub use address::Address;
pub use message::Facility;
use message::Header;
pub use stats::SyslogStats;

use super::queue::QueuedLine;

/// Messages waiting for the receiver, at most (beyond it new ones are dropped and counted).
const BACKLOG_BYTES: usize = 16 << 20;
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
const SEND_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the sensor waits at exit for the receiver to acknowledge what it was sent.
pub const EXIT_WAIT: Duration = Duration::from_secs(5);

/// One message with its transport framing.
pub struct Framed {
    pub kind: &'static str,
    pub bytes: Vec<u8>,
}

enum Connection {
    Unix(UnixDatagram),
    Udp(UdpSocket),
    Tcp(tcp::Connection),
}

pub struct SyslogTarget {
    address: Address,
    header: Header,
    /// Line kinds sent; empty: every line the other outputs get.
    kinds: Vec<&'static str>,
    connection: Option<Connection>,
    backlog: VecDeque<Framed>,
    backlog_bytes: usize,
    retry_at: Instant,
    retry_delay: Duration,
    /// The last connection error was logged (logged again only after a success).
    failing: bool,
    stats: SyslogStats,
}

impl SyslogTarget {
    pub fn new(address: Address, facility: Facility, hostname: &str, kinds: Vec<&'static str>) -> Self {
        let stats = SyslogStats {
            target: address.to_string(),
            ..SyslogStats::default()
        };
        Self {
            address,
            header: Header::new(facility, hostname, std::process::id()),
            kinds,
            connection: None,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            retry_at: Instant::now(),
            retry_delay: RETRY_FIRST,
            failing: false,
            stats,
        }
    }

    pub fn stats(&self) -> SyslogStats {
        let in_flight = match &self.connection {
            Some(Connection::Tcp(connection)) => connection.in_flight(),
            _ => 0,
        };
        SyslogStats {
            connected: self.connection.is_some(),
            pending: (self.backlog.len() + in_flight) as u64,
            ..self.stats.clone()
        }
    }

    /// Takes a batch (maybe empty: the writer's idle tick), sends what it can; returns the
    /// kinds of the lines it had to drop (backlog full, a message too large to send).
    pub fn write(&mut self, lines: &[QueuedLine]) -> Vec<&'static str> {
        let mut dropped = Vec::new();
        let now = SystemTime::now();
        for line in lines {
            if !self.kinds.is_empty() && !self.kinds.contains(&line.kind) {
                continue;
            }
            let message = self.header.message(line, now);
            let bytes = match self.address {
                Address::Tcp(_) => message::octet_counted(&message),
                Address::Unix(_) | Address::Udp(_) => message,
            };
            if self.backlog_bytes + bytes.len() > BACKLOG_BYTES {
                dropped.push(line.kind);
                continue;
            }
            self.backlog_bytes += bytes.len();
            self.backlog.push_back(Framed {
                kind: line.kind,
                bytes,
            });
        }
        self.deliver(&mut dropped);
        dropped
    }

    /// Tries, until `deadline`, to have every message acknowledged (at exit).
    pub fn finish(&mut self, deadline: Instant) {
        let mut dropped = Vec::new();
        self.retry_at = Instant::now();
        self.retry_delay = RETRY_FIRST;
        while Instant::now() < deadline && self.stats().pending > 0 {
            self.deliver(&mut dropped);
            std::thread::sleep(Duration::from_millis(20));
        }
        let stats = self.stats();
        if stats.pending > 0 || !dropped.is_empty() {
            tracing::warn!(
                target = %stats.target,
                pending = stats.pending,
                dropped = dropped.len(),
                "syslog: messages not delivered at exit"
            );
        }
    }

    fn deliver(&mut self, dropped: &mut Vec<&'static str>) {
        if self.connection.is_none() {
            if Instant::now() < self.retry_at || self.backlog.is_empty() {
                return;
            }
            match self.connect() {
                Ok(connection) => {
                    if self.failing {
                        tracing::info!(target = %self.address, "syslog receiver reachable again");
                    }
                    self.failing = false;
                    self.retry_delay = RETRY_FIRST;
                    self.connection = Some(connection);
                }
                Err(err) => {
                    self.connection_failed(&err);
                    return;
                }
            }
        }
        let result = match self.connection.take() {
            Some(Connection::Tcp(connection)) => self.deliver_tcp(connection),
            Some(Connection::Unix(socket)) => {
                let result = self.send_datagrams(dropped, |b| socket.send(b));
                self.connection = Some(Connection::Unix(socket));
                result
            }
            Some(Connection::Udp(socket)) => {
                let result = self.send_datagrams(dropped, |b| socket.send(b));
                self.connection = Some(Connection::Udp(socket));
                result
            }
            None => Ok(()),
        };
        if let Err(err) = result {
            self.connection = None;
            self.connection_failed(&err);
        }
    }

    /// Checks the connection before writing (nothing goes into a connection the receiver
    /// closed), writes, and counts what was acknowledged; a closed or reset connection gives
    /// its messages back to the front of the backlog.
    fn deliver_tcp(&mut self, mut connection: tcp::Connection) -> io::Result<()> {
        let (acknowledged, mut health) = connection.acknowledge();
        self.stats.sent += acknowledged as u64;
        if health == tcp::Health::Open {
            let written = connection.write_from(&mut self.backlog, &mut self.backlog_bytes);
            let (acknowledged, after) = connection.acknowledge();
            self.stats.sent += acknowledged as u64;
            health = match (written, after) {
                (false, tcp::Health::Open) => tcp::Health::Reset,
                (_, after) => after,
            };
        }
        if health == tcp::Health::Open {
            self.connection = Some(Connection::Tcp(connection));
            return Ok(());
        }
        let again = connection.close(health);
        self.stats.resent += again.len() as u64;
        self.backlog_bytes += again.iter().map(|m| m.bytes.len()).sum::<usize>();
        for message in again.into_iter().rev() {
            self.backlog.push_front(message);
        }
        Err(match health {
            tcp::Health::Closed => {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the receiver closed the connection")
            }
            _ => io::Error::new(io::ErrorKind::ConnectionReset, "the connection was reset"),
        })
    }

    /// Sends datagrams until the backlog is empty or the receiver fails; a message too large
    /// for the transport is dropped (a datagram is not split).
    fn send_datagrams(
        &mut self,
        dropped: &mut Vec<&'static str>,
        send: impl Fn(&[u8]) -> io::Result<usize>,
    ) -> io::Result<()> {
        while let Some(message) = self.backlog.front() {
            match send(&message.bytes) {
                Ok(_) => self.stats.sent += 1,
                Err(err) if err.raw_os_error() == Some(libc::EMSGSIZE) => {
                    tracing::warn!(
                        bytes = message.bytes.len(),
                        "syslog: a {} line is too large for one datagram, dropped",
                        message.kind
                    );
                    dropped.push(message.kind);
                }
                Err(err) => return Err(err),
            }
            self.backlog_bytes -= message.bytes.len();
            self.backlog.pop_front();
        }
        Ok(())
    }

    fn connect(&self) -> io::Result<Connection> {
        match &self.address {
            Address::Unix(path) => {
                let socket = UnixDatagram::unbound()?;
                socket.connect(path)?;
                socket.set_write_timeout(Some(SEND_TIMEOUT))?;
                Ok(Connection::Unix(socket))
            }
            Address::Udp(address) => {
                // Bound in the family of the receiver's address (a name may resolve to IPv6).
                let receiver = address.as_str().to_socket_addrs()?.next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address")
                })?;
                let local: SocketAddr = if receiver.is_ipv6() {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local)?;
                socket.connect(receiver)?;
                Ok(Connection::Udp(socket))
            }
            Address::Tcp(address) => tcp::Connection::open(address).map(Connection::Tcp),
        }
    }

    fn connection_failed(&mut self, err: &io::Error) {
        if !self.failing {
            tracing::warn!(
                target = %self.address,
                pending = self.backlog.len(),
                "syslog receiver unreachable, messages wait (up to {} MiB): {err}",
                BACKLOG_BYTES >> 20
            );
            self.failing = true;
        }
        self.retry_at = Instant::now() + self.retry_delay;
        self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &'static str, n: u32) -> QueuedLine {
        QueuedLine {
            kind,
            severity: None,
            bytes: format!("{{\"n\":{n}}}\n").into_bytes(),
        }
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buffer = vec![0u8; 65536];
        let n = socket.recv(&mut buffer).unwrap();
        String::from_utf8(buffer[..n].to_vec()).unwrap()
    }

    #[test]
    fn unix_datagrams_wait_for_an_absent_receiver_and_keep_to_their_kinds() {
        let dir = std::env::temp_dir().join(format!("bw-syslog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let mut target = SyslogTarget::new(Address::Unix(path.clone()), Facility::Daemon, "h", vec!["build"]);
        assert!(target
            .write(&[line("build", 1), line("process.exec", 2)])
            .is_empty());
        assert_eq!(target.stats().pending, 1, "waiting for the receiver");

        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        target.retry_at = Instant::now();
        target.write(&[line("build", 3)]);
        let first = receive(&receiver);
        assert!(first.starts_with("<30>1 "), "{first}");
        assert!(
            first.contains(" h buildwatch ") && first.ends_with(" build - {\"n\":1}"),
            "{first}"
        );
        assert!(receive(&receiver).ends_with("{\"n\":3}"));
        let stats = target.stats();
        assert_eq!((stats.sent, stats.pending, stats.connected), (2, 0, true));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn udp_sends_each_line_as_one_datagram_over_ipv4_and_ipv6() {
        for loopback in ["127.0.0.1:0", "[::1]:0"] {
            let receiver = UdpSocket::bind(loopback).unwrap();
            receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let address = Address::Udp(receiver.local_addr().unwrap().to_string());
            let mut target = SyslogTarget::new(address, Facility::Local7, "h", Vec::new());
            target.write(&[line("detection", 1)]);
            let mut buffer = [0u8; 1024];
            let n = receiver.recv(&mut buffer).unwrap();
            let text = std::str::from_utf8(&buffer[..n]).unwrap();
            assert!(
                text.starts_with("<188>1 ") && text.ends_with(" detection - {\"n\":1}"),
                "{text}"
            );
        }
    }
}
