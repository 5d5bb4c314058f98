//! Ring buffer records -> typed events. Records come from the kernel, but the agent must not
//! trust their shape: every malformed record is a [`DecodeError`], counted by the caller.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sensor_common::{
    data_record_size, ArgvEvent, CloseEvent, DataEvent, Direction, EventHeader, EventKind, ExecEvent,
    ExitEvent, ForkEvent, SockAddr, SocketEvent, SocketRole, AF_INET, AF_INET6, AF_UNIX, ARGV_ARG_LEN,
    ARGV_MAX_ARGS, ARGV_TRUNCATED_ARG, ARGV_TRUNCATED_COUNT, DATA_CAPACITIES, EXEC_PATH_LEN,
};
use serde::{Deserialize, Serialize};

use crate::model::socket::{Dir, Endpoint, Role};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than an event header")]
    TooShort { len: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind} record is {actual} bytes, expected {expected}")]
    SizeMismatch {
        kind: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{kind} record has invalid {field} = {value}")]
    InvalidField {
        kind: &'static str,
        field: &'static str,
        value: u64,
    },
}

/// Fields every event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: String,
}

#[cfg(test)]
impl Header {
    /// A header for process `tgid` (its leader thread) as tests need it.
    pub fn for_test(tgid: u32, comm: &str, boot_ns: u64) -> Self {
        Self {
            boot_ns,
            pid: tgid,
            tgid,
            uid: 0,
            gid: 0,
            cgroup_id: 1,
            comm: comm.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketOpen {
    pub conn_id: u64,
    pub fd: i32,
    pub listen_fd: Option<i32>,
    pub result: i32,
    pub role: Role,
    pub peer: Endpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketData {
    pub conn_id: u64,
    pub fd: i32,
    pub role: Role,
    pub direction: Dir,
    pub segment: u8,
    /// Bytes the syscall moved in this segment.
    pub total_len: u32,
    /// Bytes the connection moved in this direction before this record that no record carried
    /// (its budget was spent, or the ring had no room): a hole to skip before these bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_before: u64,
    /// Quiet periods of this connection that had ended when the record was written (see
    /// `sensor_common::QuietRequest`).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub quiet_epoch: u32,
    /// The quiet period before this record ended exactly at the end of a chunked body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clean_end: bool,
    pub peer: Endpoint,
    /// The captured prefix (at most the capture size).
    #[serde(with = "base64_bytes")]
    pub bytes: Vec<u8>,
    /// Credentials in `bytes` were masked (see `redact`).
    #[serde(default)]
    pub redacted: bool,
}

/// Bytes as base64 in recordings (a JSON array of numbers would triple their size).
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RawEvent {
    Fork {
        header: Header,
        child_pid: u32,
    },
    Exec {
        header: Header,
        old_pid: u32,
        filename: String,
    },
    Exit {
        header: Header,
    },
    Argv {
        header: Header,
        args: Vec<String>,
        truncated: bool,
    },
    Connect {
        header: Header,
        socket: SocketOpen,
    },
    Accept {
        header: Header,
        socket: SocketOpen,
    },
    Data {
        header: Header,
        data: SocketData,
    },
    Close {
        header: Header,
        conn_id: u64,
        fd: i32,
        role: Role,
    },
}

impl RawEvent {
    pub fn header(&self) -> &Header {
        match self {
            RawEvent::Fork { header, .. }
            | RawEvent::Exec { header, .. }
            | RawEvent::Exit { header }
            | RawEvent::Argv { header, .. }
            | RawEvent::Connect { header, .. }
            | RawEvent::Accept { header, .. }
            | RawEvent::Data { header, .. }
            | RawEvent::Close { header, .. } => header,
        }
    }
}

/// Decodes one ring buffer record.
pub fn decode(record: &[u8]) -> Result<RawEvent, DecodeError> {
    if record.len() < size_of::<EventHeader>() {
        return Err(DecodeError::TooShort { len: record.len() });
    }
    let kind_value = u32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
    let kind = EventKind::from_u32(kind_value).ok_or(DecodeError::UnknownKind(kind_value))?;
    let expected = kind.record_size();
    let sized_data = kind == EventKind::SocketData
        && DATA_CAPACITIES
            .iter()
            .any(|capacity| record.len() == data_record_size(*capacity));
    if record.len() != expected && !sized_data {
        return Err(DecodeError::SizeMismatch {
            kind: kind.name(),
            expected,
            actual: record.len(),
        });
    }
    let event = match kind {
        EventKind::ProcessFork => {
            let raw: ForkEvent = read_record(record);
            RawEvent::Fork {
                header: header(&raw.header),
                child_pid: raw.child_pid,
            }
        }
        EventKind::ProcessExec => {
            let raw: ExecEvent = read_record(record);
            let len = bounded(kind, "filename_len", raw.filename_len as usize, EXEC_PATH_LEN)?;
            RawEvent::Exec {
                header: header(&raw.header),
                old_pid: raw.old_pid,
                filename: lossy(&raw.filename[..len]),
            }
        }
        EventKind::ProcessExit => {
            let raw: ExitEvent = read_record(record);
            RawEvent::Exit {
                header: header(&raw.header),
            }
        }
        EventKind::ProcessArgv => {
            let raw: ArgvEvent = read_record(record);
            let argc = bounded(kind, "argc", raw.argc as usize, ARGV_MAX_ARGS)?;
            let mut args = Vec::with_capacity(argc);
            for (arg, len) in raw.args.iter().zip(raw.lens).take(argc) {
                let len = bounded(kind, "lens", usize::from(len), ARGV_ARG_LEN)?;
                args.push(lossy(&arg[..len]));
            }
            RawEvent::Argv {
                header: header(&raw.header),
                args,
                truncated: raw.truncated & (ARGV_TRUNCATED_ARG | ARGV_TRUNCATED_COUNT) != 0,
            }
        }
        EventKind::SocketConnect | EventKind::SocketAccept => {
            let raw: SocketEvent = read_record(record);
            let socket = SocketOpen {
                conn_id: raw.conn_id,
                fd: raw.fd,
                listen_fd: (kind == EventKind::SocketAccept).then_some(raw.listen_fd),
                result: raw.result,
                role: role(kind, raw.role)?,
                peer: endpoint(&raw.peer),
            };
            let header = header(&raw.header);
            if kind == EventKind::SocketAccept {
                RawEvent::Accept { header, socket }
            } else {
                RawEvent::Connect { header, socket }
            }
        }
        EventKind::SocketData => {
            let raw: DataEvent<0> = read_record(record);
            let room = record.len() - size_of::<DataEvent<0>>();
            let captured = bounded(kind, "captured_len", raw.captured_len as usize, room)?;
            if captured > raw.total_len as usize {
                return Err(DecodeError::InvalidField {
                    kind: kind.name(),
                    field: "captured_len",
                    value: captured as u64,
                });
            }
            let direction = match Direction::from_u8(raw.direction) {
                Some(Direction::Send) => Dir::Send,
                Some(Direction::Recv) => Dir::Recv,
                None => {
                    return Err(DecodeError::InvalidField {
                        kind: kind.name(),
                        field: "direction",
                        value: raw.direction.into(),
                    })
                }
            };
            RawEvent::Data {
                header: header(&raw.header),
                data: SocketData {
                    conn_id: raw.conn_id,
                    fd: raw.fd,
                    role: role(kind, raw.role)?,
                    direction,
                    segment: raw.segment,
                    total_len: raw.total_len,
                    skipped_before: raw.skipped_before,
                    quiet_epoch: raw.quiet_epoch,
                    clean_end: raw.flags & sensor_common::DATA_FLAG_CLEAN_END != 0,
                    peer: endpoint(&raw.peer),
                    bytes: record[size_of::<DataEvent<0>>()..][..captured].to_vec(),
                    redacted: false,
                },
            }
        }
        EventKind::SocketClose => {
            let raw: CloseEvent = read_record(record);
            RawEvent::Close {
                header: header(&raw.header),
                conn_id: raw.conn_id,
                fd: raw.fd,
                role: role(kind, raw.role)?,
            }
        }
    };
    Ok(event)
}

/// Copies a record into its `#[repr(C)]` struct.
fn read_record<T: Copy>(record: &[u8]) -> T {
    assert!(record.len() >= size_of::<T>(), "caller checked the record size");
    // SAFETY: the length was checked above; T is a plain-old-data struct of integers and byte
    // arrays, valid for any bit pattern, and read_unaligned has no alignment requirement.
    unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) }
}

fn bounded(kind: EventKind, field: &'static str, value: usize, max: usize) -> Result<usize, DecodeError> {
    if value > max {
        return Err(DecodeError::InvalidField {
            kind: kind.name(),
            field,
            value: value as u64,
        });
    }
    Ok(value)
}

fn role(kind: EventKind, value: u8) -> Result<Role, DecodeError> {
    match SocketRole::from_u8(value) {
        Some(SocketRole::Client) => Ok(Role::Client),
        Some(SocketRole::DaemonAccepted) => Ok(Role::DaemonAccepted),
        Some(SocketRole::DaemonOutbound) => Ok(Role::DaemonOutbound),
        Some(SocketRole::BuildStep) => Ok(Role::BuildStep),
        None => Err(DecodeError::InvalidField {
            kind: kind.name(),
            field: "role",
            value: value.into(),
        }),
    }
}

fn header(raw: &EventHeader) -> Header {
    Header {
        boot_ns: raw.boot_ns,
        pid: raw.pid,
        tgid: raw.tgid,
        uid: raw.uid,
        gid: raw.gid,
        cgroup_id: raw.cgroup_id,
        comm: lossy(until_nul(&raw.comm)),
    }
}

pub fn endpoint(raw: &SockAddr) -> Endpoint {
    match raw.family {
        AF_UNIX => Endpoint::Unix(lossy(until_nul(&raw.path))),
        AF_INET => {
            let [a, b, c, d, ..] = raw.addr;
            Endpoint::Tcp(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), raw.port)
        }
        AF_INET6 => {
            let v6 = Ipv6Addr::from(raw.addr);
            let ip = v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6));
            Endpoint::Tcp(ip, raw.port)
        }
        _ => Endpoint::Unknown,
    }
}

/// The kernel representation of `endpoint` (the inverse of [`endpoint`]).
pub fn sockaddr(endpoint: &Endpoint) -> SockAddr {
    let mut raw = SockAddr::EMPTY;
    match endpoint {
        Endpoint::Unix(path) => {
            raw.family = AF_UNIX;
            let bytes = path.as_bytes();
            let len = bytes.len().min(raw.path.len() - 1);
            raw.path[..len].copy_from_slice(&bytes[..len]);
        }
        Endpoint::Tcp(IpAddr::V4(ip), port) => {
            raw.family = AF_INET;
            raw.addr[..4].copy_from_slice(&ip.octets());
            raw.port = *port;
        }
        Endpoint::Tcp(IpAddr::V6(ip), port) => {
            raw.family = AF_INET6;
            raw.addr = ip.octets();
            raw.port = *port;
        }
        Endpoint::Unknown => {}
    }
    raw
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use sensor_common::CAPTURE_MAX;

    fn raw_header(kind: EventKind) -> EventHeader {
        let mut comm = [0u8; 16];
        comm[..7].copy_from_slice(b"dockerd");
        EventHeader {
            kind: kind as u32,
            _reserved: 0,
            boot_ns: 42,
            pid: 101,
            tgid: 100,
            uid: 0,
            gid: 0,
            cgroup_id: 1,
            comm,
        }
    }

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: test helper viewing a POD struct as bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn data_event(payload: &[u8], total: u32) -> DataEvent {
        let mut peer = SockAddr::EMPTY;
        peer.family = AF_INET;
        peer.addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        peer.port = 41234;
        let mut data = [0u8; CAPTURE_MAX];
        data[..payload.len()].copy_from_slice(payload);
        DataEvent {
            header: raw_header(EventKind::SocketData),
            conn_id: 7,
            fd: 9,
            total_len: total,
            captured_len: payload.len() as u32,
            role: SocketRole::DaemonAccepted as u8,
            direction: Direction::Recv as u8,
            segment: 0,
            flags: 0,
            skipped_before: 0,
            quiet_epoch: 0,
            _pad: 0,
            peer,
            data,
        }
    }

    #[test]
    fn data_record_round_trips() {
        let request = b"POST /v1.41/build?t=evil HTTP/1.1\r\n";
        let event = decode(&bytes_of(&data_event(request, 5000))).unwrap();
        let RawEvent::Data { header, data } = event else {
            panic!("not data: {event:?}")
        };
        assert_eq!(header.comm, "dockerd");
        assert_eq!((header.tgid, header.pid), (100, 101));
        assert_eq!(data.bytes, request);
        assert_eq!(data.total_len, 5000);
        assert_eq!(data.role, Role::DaemonAccepted);
        assert_eq!(data.direction, Dir::Recv);
        assert_eq!(data.peer.to_string(), "10.0.0.2:41234");
    }

    #[test]
    fn argv_record_round_trips_with_truncation() {
        let mut raw = ArgvEvent {
            header: raw_header(EventKind::ProcessArgv),
            argc: 3,
            truncated: ARGV_TRUNCATED_COUNT,
            lens: [0; ARGV_MAX_ARGS],
            args: [[0; ARGV_ARG_LEN]; ARGV_MAX_ARGS],
        };
        for (i, arg) in ["/bin/sh", "-c", "echo hi"].iter().enumerate() {
            raw.args[i][..arg.len()].copy_from_slice(arg.as_bytes());
            raw.lens[i] = arg.len() as u16;
        }
        let RawEvent::Argv { args, truncated, .. } = decode(&bytes_of(&raw)).unwrap() else {
            panic!("not argv")
        };
        assert_eq!(args, ["/bin/sh", "-c", "echo hi"]);
        assert!(truncated);
    }

    #[test]
    fn short_record_is_an_error() {
        assert_eq!(decode(&[1, 0, 0]), Err(DecodeError::TooShort { len: 3 }));
        assert_eq!(decode(&[]), Err(DecodeError::TooShort { len: 0 }));
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let mut bytes = bytes_of(&raw_header(EventKind::ProcessExit));
        bytes[0] = 99;
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn truncated_record_is_an_error() {
        let bytes = bytes_of(&data_event(b"GET / HTTP/1.1\r\n", 16));
        let err = decode(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::SizeMismatch {
                    kind: "socket.data",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn lengths_out_of_bounds_are_errors() {
        let mut raw = data_event(b"abc", 3);
        raw.captured_len = CAPTURE_MAX as u32 + 1;
        raw.total_len = u32::MAX;
        assert!(matches!(
            decode(&bytes_of(&raw)),
            Err(DecodeError::InvalidField {
                field: "captured_len",
                ..
            })
        ));
        let mut raw = data_event(b"abc", 2);
        raw.captured_len = 3;
        assert!(matches!(
            decode(&bytes_of(&raw)),
            Err(DecodeError::InvalidField {
                field: "captured_len",
                ..
            })
        ));
        let mut raw = data_event(b"abc", 3);
        raw.role = 77;
        assert!(matches!(
            decode(&bytes_of(&raw)),
            Err(DecodeError::InvalidField { field: "role", .. })
        ));
    }

    /// A record of the smallest class: the bytes follow the head, whatever the class.
    #[test]
    fn sized_data_records_decode() {
        let full = bytes_of(&data_event(b"GET /_ping HTTP/1.1\r\n\r\n", 25));
        let small = &full[..data_record_size(DATA_CAPACITIES[0])];
        let RawEvent::Data { data, .. } = decode(small).unwrap() else {
            panic!("not data")
        };
        assert_eq!(data.bytes, b"GET /_ping HTTP/1.1\r\n\r\n");
        // A captured length past the record's room is an error, not a read out of bounds.
        let mut lying = data_event(&[b'x'; 100], 100);
        lying.captured_len = 100;
        let bytes = bytes_of(&lying);
        assert!(matches!(
            decode(&bytes[..data_record_size(DATA_CAPACITIES[0])]),
            Err(DecodeError::InvalidField {
                field: "captured_len",
                ..
            })
        ));
        assert!(matches!(
            decode(&bytes[..data_record_size(DATA_CAPACITIES[0]) + 8]),
            Err(DecodeError::SizeMismatch { .. })
        ));
    }

    /// Records of every kind and size filled with several byte patterns: each decodes to an
    /// event of its kind or to a typed error naming that kind; a record one byte short is a
    /// size mismatch, an unknown kind is named. (The `decode` fuzz target tries any bytes.)
    #[test]
    fn every_kind_decodes_or_errors_on_any_fill() {
        let kind_of = |event: &RawEvent| match event {
            RawEvent::Fork { .. } => EventKind::ProcessFork,
            RawEvent::Exec { .. } => EventKind::ProcessExec,
            RawEvent::Exit { .. } => EventKind::ProcessExit,
            RawEvent::Argv { .. } => EventKind::ProcessArgv,
            RawEvent::Connect { .. } => EventKind::SocketConnect,
            RawEvent::Accept { .. } => EventKind::SocketAccept,
            RawEvent::Data { .. } => EventKind::SocketData,
            RawEvent::Close { .. } => EventKind::SocketClose,
        };
        let mut seed = 0x2545_f491_u32;
        let mut noise = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as u8
        };
        let mut decoded = 0;
        let mut refused = 0;
        for kind in EventKind::ALL {
            let mut sizes = vec![kind.record_size()];
            if kind == EventKind::SocketData {
                sizes.extend(DATA_CAPACITIES.iter().map(|c| data_record_size(*c)));
            }
            for size in sizes {
                for fill in [Some(0x00u8), Some(0x01), Some(0x7f), Some(0xff), Some(0xa5), None] {
                    let mut bytes: Vec<u8> = (0..size).map(|_| fill.unwrap_or_else(&mut noise)).collect();
                    bytes[..4].copy_from_slice(&(kind as u32).to_ne_bytes());
                    match decode(&bytes) {
                        Ok(event) => {
                            assert_eq!(kind_of(&event), kind);
                            decoded += 1;
                        }
                        Err(DecodeError::InvalidField { kind: named, .. }) => {
                            assert_eq!(named, kind.name());
                            refused += 1;
                        }
                        Err(other) => panic!("{} of {size} bytes: {other}", kind.name()),
                    }
                    assert!(
                        matches!(
                            decode(&bytes[..size - 1]),
                            Err(DecodeError::SizeMismatch { .. } | DecodeError::TooShort { .. })
                        ),
                        "{} one byte short",
                        kind.name()
                    );
                }
            }
        }
        assert!(decoded > 0 && refused > 0, "decoded {decoded}, refused {refused}");
        let mut unknown = vec![0u8; EventKind::ProcessExit.record_size()];
        unknown[..4].copy_from_slice(&0xdead_u32.to_ne_bytes());
        assert_eq!(decode(&unknown).unwrap_err(), DecodeError::UnknownKind(0xdead));
    }

    #[test]
    fn sockaddr_is_the_inverse_of_endpoint() {
        for text in [
            "unix:/run/docker.sock",
            "10.1.2.3:2375",
            "[fe80::1]:2376",
            "unix:",
        ] {
            let endpoint = match text.strip_prefix("unix:") {
                Some(path) => Endpoint::Unix(path.into()),
                None => {
                    let address: std::net::SocketAddr = text.parse().unwrap();
                    Endpoint::Tcp(address.ip(), address.port())
                }
            };
            assert_eq!(super::endpoint(&sockaddr(&endpoint)), endpoint, "{text}");
        }
    }

    #[test]
    fn unix_and_ipv6_endpoints() {
        let mut raw = SockAddr::EMPTY;
        raw.family = AF_UNIX;
        raw.path[..20].copy_from_slice(b"/var/run/docker.sock");
        assert_eq!(endpoint(&raw).to_string(), "unix:/var/run/docker.sock");
        let mut raw = SockAddr::EMPTY;
        raw.family = AF_INET6;
        raw.addr[15] = 1;
        raw.port = 2375;
        assert_eq!(endpoint(&raw).to_string(), "[::1]:2375");
    }
}
