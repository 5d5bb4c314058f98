//! Syslog over TCP that can say what the receiver has: plain TCP syslog (RFC 6587) has no
//! application acknowledgement, and a socket accepts bytes long after the receiver stopped
//! (a write into a half-closed connection succeeds, the peer then resets). So a message counts
//! as sent only once the receiver's TCP acknowledged it (`tcpi_bytes_acked`), and:
//! - a connection the receiver closed (FIN) had everything acknowledged read by the receiver
//!   (Linux resets, not closes, a socket closed with unread data): only what was not yet
//!   acknowledged is sent again on the next connection;
//! - a connection reset may have dropped bytes the receiver's kernel acknowledged but the
//!   receiver never read: the messages acknowledged in the last `RETAIN_FOR` (at most
//!   `RETAIN_BYTES`) are sent again too. A receiver that is reading takes bytes off its socket
//!   within milliseconds; one that stalls closes its window, which keeps them unacknowledged.
//!
//! Messages may so arrive twice after a reset, never not at all while the receiver's side
//! holds less than `RETAIN_BYTES`; each carries its line id for deduplication.
use std::{
    collections::VecDeque,
    io::{self, Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use super::Framed;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one call may spend writing before it returns to the writer loop.
const WRITE_BUDGET: Duration = Duration::from_millis(500);
pub const RETAIN_FOR: Duration = Duration::from_secs(10);
pub const RETAIN_BYTES: usize = 4 << 20;

/// What the receiver did with the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Open,
    /// The receiver closed after reading everything it acknowledged.
    Closed,
    /// Reset or failed: acknowledged bytes may not have been read.
    Reset,
}

struct Written {
    message: Framed,
    /// Offset of its last byte + 1 on this connection.
    end: u64,
}

struct Acknowledged {
    message: Framed,
    at: Instant,
}

pub struct Connection {
    stream: TcpStream,
    /// Bytes handed to the kernel on this connection.
    written: u64,
    /// Handed to the kernel (the last maybe in part), not yet acknowledged.
    in_flight: VecDeque<Written>,
    /// Acknowledged recently: sent again if the connection is reset.
    retained: VecDeque<Acknowledged>,
    retained_bytes: usize,
}

fn bytes_acked(stream: &TcpStream) -> io::Result<u64> {
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_bytes_acked)
}

impl Connection {
    pub fn open(address: &str) -> io::Result<Self> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        for resolved in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&resolved, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream.set_write_timeout(Some(WRITE_BUDGET))?;
                    return Ok(Self {
                        stream,
                        written: 0,
                        in_flight: VecDeque::new(),
                        retained: VecDeque::new(),
                        retained_bytes: 0,
                    });
                }
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    /// Moves what the receiver acknowledged out of flight; returns how many messages that was,
    /// and the connection's health. `tcpi_bytes_acked` counts real acknowledgements only, so
    /// it stays true after a reset (unlike the send queue, which a reset empties).
    pub fn acknowledge(&mut self) -> (usize, Health) {
        let health = self.health();
        let Ok(bytes_acked) = bytes_acked(&self.stream) else {
            return (0, Health::Reset);
        };
        let now = Instant::now();
        let mut count = 0;
        while self.in_flight.front().is_some_and(|w| w.end <= bytes_acked) {
            let Some(Written { message, .. }) = self.in_flight.pop_front() else {
                break;
            };
            self.retained_bytes += message.bytes.len();
            self.retained.push_back(Acknowledged { message, at: now });
            count += 1;
        }
        while let Some(oldest) = self.retained.front() {
            if now.duration_since(oldest.at) < RETAIN_FOR && self.retained_bytes <= RETAIN_BYTES {
                break;
            }
            self.retained_bytes -= oldest.message.bytes.len();
            self.retained.pop_front();
        }
        (count, health)
    }

    /// Whether the receiver closed or reset: a receiver sends nothing, so a readable socket
    /// means end of stream or an error (anything else it sends is read and ignored). A FIN
    /// that came before a reset still reads as the end of stream (the kernel marks the socket
    /// done at the FIN): the reset then only answers bytes sent after the receiver closed.
    fn health(&mut self) -> Health {
        if self.stream.set_nonblocking(true).is_err() {
            return Health::Reset;
        }
        let mut scratch = [0u8; 1024];
        // A receiver that keeps sending cannot hold the writer here: it is read at most this
        // much per check.
        let mut reads_left = 64;
        let health = loop {
            match self.stream.read(&mut scratch) {
                Ok(0) => break Health::Closed,
                Ok(_) if reads_left == 0 => break Health::Open,
                Ok(_) => reads_left -= 1,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break Health::Open,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break Health::Reset,
            }
        };
        if self.stream.set_nonblocking(false).is_err() {
            return Health::Reset;
        }
        health
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Where the newest message in flight resumes, when the kernel has not taken all of it.
    fn unwritten_offset(&self) -> Option<usize> {
        let last = self.in_flight.back()?;
        let start = last.end - last.message.bytes.len() as u64;
        (last.end > self.written).then(|| (self.written - start) as usize)
    }

    /// Writes the rest of a partly written message, then messages from `backlog`, for at most
    /// `WRITE_BUDGET`. Returns false when the connection failed.
    pub fn write_from(&mut self, backlog: &mut VecDeque<Framed>, backlog_bytes: &mut usize) -> bool {
        let deadline = Instant::now() + WRITE_BUDGET;
        loop {
            if self.unwritten_offset().is_none() {
                let Some(message) = backlog.pop_front() else {
                    return true;
                };
                *backlog_bytes -= message.bytes.len();
                let end = self.written + message.bytes.len() as u64;
                self.in_flight.push_back(Written { message, end });
            }
            let Some(offset) = self.unwritten_offset() else {
                continue;
            };
            let Some(last) = self.in_flight.back() else {
                return true;
            };
            match self.stream.write(&last.message.bytes[offset..]) {
                Ok(0) => return false,
                Ok(n) => self.written += n as u64,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // The receiver is slow: the rest waits for the next call.
                Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return true
                }
                Err(_) => return false,
            }
            if Instant::now() >= deadline {
                return true;
            }
        }
    }

    /// Ends the connection, giving back what the next one must send again, oldest first.
    pub fn close(mut self, health: Health) -> Vec<Framed> {
        let mut messages = Vec::new();
        if health == Health::Reset {
            messages.extend(self.retained.drain(..).map(|a| a.message));
        }
        messages.extend(self.in_flight.drain(..).map(|w| w.message));
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        messages
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn framed(text: &str) -> Framed {
        Framed {
            kind: "test",
            bytes: text.as_bytes().to_vec(),
        }
    }

    fn wait_for(connection: &mut Connection, expected: Health) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, health) = connection.acknowledge();
            if health == expected {
                return;
            }
            assert!(Instant::now() < deadline, "never {expected:?}, last {health:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_receiver_that_read_and_closed_gets_only_the_unacknowledged_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut connection = Connection::open(&listener.local_addr().unwrap().to_string()).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        let mut backlog: VecDeque<Framed> = ["one ", "two "].map(framed).into();
        let mut bytes = 8;
        assert!(connection.write_from(&mut backlog, &mut bytes));
        let mut received = [0u8; 8];
        peer.read_exact(&mut received).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut acknowledged = 0;
        while acknowledged < 2 {
            acknowledged += connection.acknowledge().0;
            assert!(Instant::now() < deadline);
        }
        drop(peer);
        wait_for(&mut connection, Health::Closed);
        // A write into the half-closed connection is accepted by the kernel but never read.
        let mut late: VecDeque<Framed> = [framed("late ")].into();
        let mut late_bytes = 5;
        connection.write_from(&mut late, &mut late_bytes);
        let again: Vec<_> = connection
            .close(Health::Closed)
            .iter()
            .map(|m| m.bytes.clone())
            .collect();
        assert_eq!(again, [b"late ".to_vec()]);
    }

    #[test]
    fn a_reset_gives_back_what_was_acknowledged_but_maybe_not_read() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut connection = Connection::open(&listener.local_addr().unwrap().to_string()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        let mut backlog: VecDeque<Framed> = ["unread "].map(framed).into();
        let mut bytes = 7;
        assert!(connection.write_from(&mut backlog, &mut bytes));
        let deadline = Instant::now() + Duration::from_secs(5);
        while connection.acknowledge().0 == 0 {
            assert!(Instant::now() < deadline);
        }
        // Closed with unread data: the kernel resets the connection.
        drop(peer);
        wait_for(&mut connection, Health::Reset);
        let returned = connection.close(Health::Reset);
        assert_eq!(returned.len(), 1, "the acknowledged, unread message comes back");
    }
}
