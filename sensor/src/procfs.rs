//! Reading /proc: process identity at start and for processes the kernel told us about, the
//! container a process runs in, and the address a daemon's listening socket is bound to.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::{
    daemon::{DaemonIdentity, DaemonPolicy},
    socket::Endpoint,
};

/// What /proc says about one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcSnapshot {
    pub tgid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub cwd: Option<String>,
    pub container_id: Option<String>,
}

pub fn all_tgids(root: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

pub fn snapshot(root: &Path, tgid: u32) -> Option<ProcSnapshot> {
    let dir = root.join(tgid.to_string());
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
    };
    let first_number = |value: Option<&str>| -> u32 {
        value
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let argv = fs::read(dir.join("cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default();
    Some(ProcSnapshot {
        tgid,
        ppid: first_number(field("PPid:")),
        comm: field("Name:").unwrap_or_default().to_string(),
        exe: read_link(&dir.join("exe")),
        argv,
        uid: first_number(field("Uid:")),
        gid: first_number(field("Gid:")),
        cwd: read_link(&dir.join("cwd")),
        container_id: fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| container_id_from_cgroup(&c)),
    })
}

/// The supplementary groups of a process (`Groups:` of its status), `None` when it is gone.
pub fn groups(root: &Path, tgid: u32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(root.join(tgid.to_string()).join("status")).ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("Groups:"))?;
    Some(line.split_whitespace().filter_map(|g| g.parse().ok()).collect())
}

/// What an exec changes that the kernel event does not carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecDetails {
    pub exe: Option<String>,
    pub cwd: Option<String>,
    pub container_id: Option<String>,
}

pub fn exec_details(root: &Path, tgid: u32) -> ExecDetails {
    let dir = root.join(tgid.to_string());
    ExecDetails {
        exe: read_link(&dir.join("exe")),
        cwd: read_link(&dir.join("cwd")),
        container_id: fs::read_to_string(dir.join("cgroup"))
            .ok()
            .and_then(|c| container_id_from_cgroup(&c)),
    }
}

pub fn read_link(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()
        .map(|target| target.to_string_lossy().into_owned())
}

/// Container id from a /proc/PID/cgroup text: the 64-hex-digit id that docker, containerd,
/// podman (libpod) and CRI-O put in cgroup paths, e.g. `/docker/<id>`,
/// `/system.slice/docker-<id>.scope`, `/machine.slice/libpod-<id>.scope`.
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        path.split('/').rev().find_map(|component| {
            let component = component.strip_suffix(".scope").unwrap_or(component);
            let candidate = component.rsplit(['-', ':']).next()?;
            (candidate.len() == 64 && candidate.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| candidate.to_string())
        })
    })
}

/// Whether the executable of `tgid` is one of the policy's daemon binaries (the same file, by
/// device and inode), and which watched endpoints it listens on.
pub fn daemon_identity(root: &Path, tgid: u32, policy: &DaemonPolicy) -> DaemonIdentity {
    use std::os::unix::fs::MetadataExt as _;
    let exe = fs::metadata(root.join(tgid.to_string()).join("exe")).ok();
    let known_binary = exe.is_some_and(|exe| {
        policy.binaries.iter().any(|binary| {
            crate::saferead::metadata_in_root(&policy.host_root, binary)
                .is_ok_and(|b| b.dev() == exe.dev() && b.ino() == exe.ino())
        })
    });
    if !known_binary {
        return DaemonIdentity {
            answered: true,
            ..Default::default()
        };
    }
    let declared = declared_by(root, tgid);
    let serves_port = |port: u16| policy.tcp_ports.contains(&port) || declared.tcp_ports.contains(&port);
    let owned: std::collections::HashSet<u64> = socket_fds(root, tgid)
        .into_iter()
        .map(|(_, inode)| inode)
        .collect();
    let tables = net_listeners(root, tgid, &owned);
    let mut serves: Vec<String> = tables
        .unix
        .iter()
        .filter(|s| s.listening && owned.contains(&s.inode))
        .filter_map(|s| s.path.as_deref())
        .filter(|path| {
            policy.unix_sockets.iter().any(|w| w.as_os_str() == *path) || declared.serves_path(path)
        })
        .map(|path| format!("unix:{path}"))
        .collect();
    serves.extend(
        tables
            .tcp
            .iter()
            .filter(|s| s.state == TcpState::Listen && owned.contains(&s.inode))
            .filter_map(|s| match s.local {
                Endpoint::Tcp(_, port) if serves_port(port) => Some(format!("tcp:{port}")),
                _ => None,
            }),
    );
    serves.sort();
    serves.dedup();
    let mut tcp_listeners: Vec<(IpAddr, u16)> = Vec::new();
    for socket in tables
        .tcp
        .iter()
        .filter(|s| s.state == TcpState::Listen && owned.contains(&s.inode))
    {
        let Endpoint::Tcp(ip, port) = socket.local else {
            continue;
        };
        if !serves_port(port) {
            continue;
        }
        if ip.is_unspecified() {
            tcp_listeners.extend(local_addresses(root, tgid).into_iter().map(|local| (local, port)));
        } else {
            tcp_listeners.push((ip, port));
        }
    }
    tcp_listeners.sort();
    tcp_listeners.dedup();
    DaemonIdentity {
        answered: true,
        known_binary,
        serves,
        tcp_listeners,
        data_root: declared.data_root,
    }
}

/// What a dockerd declares about its endpoints and data root (nothing for other daemons).
fn declared_by(root: &Path, tgid: u32) -> crate::daemon_config::Declared {
    let dir = root.join(tgid.to_string());
    let is_dockerd = read_link(&dir.join("exe")).is_some_and(|exe| exe.rsplit('/').next() == Some("dockerd"));
    if !is_dockerd {
        return crate::daemon_config::Declared::default();
    }
    let Some(process) = snapshot(root, tgid) else {
        return crate::daemon_config::Declared::default();
    };
    let environ: Vec<(String, String)> = fs::read(dir.join("environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, value) = entry.split_once('=')?;
            matches!(key, "XDG_RUNTIME_DIR" | "XDG_CONFIG_HOME" | "HOME")
                .then(|| (key.to_string(), value.to_string()))
        })
        .collect();
    crate::daemon_config::declared(
        root,
        &crate::daemon_config::DaemonProcess {
            tgid,
            uid: process.uid,
            gid: process.gid,
            argv: &process.argv,
            environ: &environ,
        },
    )
}

/// The local addresses of a process's network namespace: `LOCAL` host routes of
/// /proc/PID/net/fib_trie (IPv4) and /proc/PID/net/if_inet6.
pub fn local_addresses(root: &Path, tgid: u32) -> Vec<IpAddr> {
    let net = root.join(tgid.to_string()).join("net");
    let mut found = parse_fib_trie_locals(&fs::read_to_string(net.join("fib_trie")).unwrap_or_default());
    found.extend(parse_if_inet6(
        &fs::read_to_string(net.join("if_inet6")).unwrap_or_default(),
    ));
    found.sort();
    found.dedup();
    found
}

/// `|-- 10.0.0.1` followed by `/32 host LOCAL`: a local IPv4 address (of loopback, 127.0.0.1
/// only).
pub fn parse_fib_trie_locals(text: &str) -> Vec<IpAddr> {
    let mut found = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in text.lines() {
        let trimmed = line.trim_start_matches([' ', '|', '-', '+']).trim();
        if let Ok(ip) = trimmed.parse::<Ipv4Addr>() {
            last = Some(ip);
        } else if trimmed.starts_with("/32 host LOCAL") {
            if let Some(ip) = last.filter(|ip| !ip.is_loopback() || *ip == Ipv4Addr::LOCALHOST) {
                if !found.contains(&IpAddr::V4(ip)) {
                    found.push(IpAddr::V4(ip));
                }
            }
        }
    }
    found
}

/// /proc/net/if_inet6: the address (32 hex digits) is the first field of each line.
pub fn parse_if_inet6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next()?;
            let bytes: Option<Vec<u8>> = (0..16)
                .map(|i| u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok())
                .collect();
            Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes?).ok()?)))
        })
        .collect()
}

/// One line of /proc/net/unix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    pub inode: u64,
    pub listening: bool,
    pub connected: bool,
    /// Bound path; accepted connections show their listener's path.
    pub path: Option<String>,
}

/// One line of /proc/net/tcp or tcp6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    pub inode: u64,
    pub state: TcpState,
    pub local: Endpoint,
    pub remote: Endpoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    Established,
    Listen,
    Other,
}

/// The sockets a process's network namespace has, from its /proc/PID/net tables.
#[derive(Debug, Default)]
pub struct NetTables {
    pub unix: Vec<UnixSocket>,
    pub tcp: Vec<TcpSocket>,
}

pub fn net_tables(root: &Path, tgid: u32) -> NetTables {
    let net = root.join(tgid.to_string()).join("net");
    let read = |name: &str| fs::read_to_string(net.join(name)).unwrap_or_default();
    let mut tcp = parse_tcp_table(&read("tcp"));
    tcp.extend(parse_tcp_table(&read("tcp6")));
    NetTables {
        unix: parse_unix_table(&read("unix")),
        tcp,
    }
}

/// The unix sockets and the listening TCP sockets of a process's network namespace, for the
/// sockets in `owned` (socket inodes). The TCP tables are read only when some owned socket is
/// not a unix one, and only as far as their listening rows, which the kernel prints first:
/// reading a whole table walks the kernel's entire established-connection hash (milliseconds
/// on a large host), and daemons are checked every few seconds.
pub fn net_listeners(root: &Path, tgid: u32, owned: &std::collections::HashSet<u64>) -> NetTables {
    let net = root.join(tgid.to_string()).join("net");
    let unix = parse_unix_table(&fs::read_to_string(net.join("unix")).unwrap_or_default());
    let all_unix = owned.iter().all(|inode| unix.iter().any(|s| s.inode == *inode));
    let mut tcp = Vec::new();
    if !all_unix {
        tcp = listening_rows(&net.join("tcp"));
        tcp.extend(listening_rows(&net.join("tcp6")));
    }
    NetTables { unix, tcp }
}

fn listening_rows(path: &Path) -> Vec<TcpSocket> {
    use std::io::BufRead as _;
    let Ok(file) = fs::File::open(path) else {
        return Vec::new();
    };
    let mut table = String::new();
    // Small reads: the kernel prints only as many rows as each read asks for.
    for line in std::io::BufReader::with_capacity(1024, file).lines() {
        let Ok(line) = line else { break };
        let listening = line.split_whitespace().nth(3) == Some("0A");
        if !table.is_empty() && !listening {
            break;
        }
        table.push_str(&line);
        table.push('\n');
    }
    parse_tcp_table(&table)
}

/// (fd, socket inode) of every socket the process holds.
pub fn socket_fds(root: &Path, tgid: u32) -> Vec<(i32, u64)> {
    let dir = root.join(tgid.to_string()).join("fd");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            Some((fd, socket_inode(&entry.path())?))
        })
        .collect()
}

fn socket_inode(fd_link: &Path) -> Option<u64> {
    let link = read_link(fd_link)?;
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The address a listening socket (fd `fd` of process `tgid`) is bound to: resolves the fd to
/// its socket inode, then finds the inode in the process's view of /proc/net.
pub fn listening_address(root: &Path, tgid: u32, fd: i32) -> Option<Endpoint> {
    let inode = socket_inode(&root.join(tgid.to_string()).join("fd").join(fd.to_string()))?;
    let tables = net_listeners(root, tgid, &std::collections::HashSet::from([inode]));
    if let Some(path) = tables
        .unix
        .iter()
        .find(|s| s.inode == inode)
        .and_then(|s| s.path.clone())
    {
        return Some(Endpoint::Unix(path));
    }
    tables.tcp.into_iter().find(|s| s.inode == inode).map(|s| s.local)
}

/// /proc/net/unix: `Num RefCount Protocol Flags Type St Inode Path`.
pub fn parse_unix_table(table: &str) -> Vec<UnixSocket> {
    const ACCEPTING: u32 = 0x0001_0000;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(UnixSocket {
                inode: fields.get(6)?.parse().ok()?,
                listening: u32::from_str_radix(fields.get(3)?, 16).ok()? & ACCEPTING != 0,
                connected: *fields.get(5)? == "03",
                path: fields.get(7).map(|p| p.to_string()),
            })
        })
        .collect()
}

/// /proc/net/tcp{,6}: `sl local_address rem_address st ... uid timeout inode`.
pub fn parse_tcp_table(table: &str) -> Vec<TcpSocket> {
    let endpoint = |field: &str| -> Option<Endpoint> {
        let (addr, port) = field.split_once(':')?;
        Some(Endpoint::Tcp(
            parse_proc_net_ip(addr)?,
            u16::from_str_radix(port, 16).ok()?,
        ))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some(TcpSocket {
                inode: fields.get(9)?.parse().ok()?,
                state: match *fields.get(3)? {
                    "01" => TcpState::Established,
                    "0A" => TcpState::Listen,
                    _ => TcpState::Other,
                },
                local: endpoint(fields.get(1)?)?,
                remote: endpoint(fields.get(2)?)?,
            })
        })
        .collect()
}

/// Addresses in /proc/net are the in-memory words printed as hex, so each 32-bit group is in
/// host byte order.
fn parse_proc_net_ip(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let bytes: Vec<u8> = words?.into_iter().flat_map(u32::to_ne_bytes).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        16 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
            Some(v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)))
        }
        _ => None,
    }
}

/// Names the node when the sensor runs in a pod, whose own hostname is the pod's: the DaemonSet
/// sets it from `spec.nodeName`.
pub const NODE_NAME_VARIABLE: &str = "BUILDWATCH_NODE_NAME";

/// The name every line carries in `host`: BUILDWATCH_NODE_NAME when it is set (printable
/// ASCII, at most 253 bytes, as a DNS name), else the kernel's hostname.
pub fn host_name() -> String {
    match std::env::var(NODE_NAME_VARIABLE) {
        Ok(name) if !name.is_empty() && name.len() <= 253 && name.bytes().all(|b| b.is_ascii_graphic()) => {
            name
        }
        Ok(name) => {
            tracing::warn!("{NODE_NAME_VARIABLE}={name:?} is not a host name; using the kernel's hostname");
            hostname()
        }
        Err(_) => hostname(),
    }
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Resident set size of this process, from /proc/self/statm.
pub fn rss_bytes() -> Option<u64> {
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

pub fn proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_rows_stop_at_the_first_established_one() {
        let dir = std::env::temp_dir().join(format!("procfs-listen-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tcp");
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
        let listen = "   0: 0100007F:092F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0\n";
        let established = "   1: 0100007F:092F 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0 20 4 30 10 -1\n";
        fs::write(&path, format!("{header}{listen}{established}{listen}")).unwrap();
        let rows = listening_rows(&path);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].inode, rows[0].state), (1111, TcpState::Listen));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn container_ids_from_cgroup_layouts() {
        let id = "3f1c9a0d2b7e4f6a8c1d0e2f4a6b8c0d1e3f5a7b9c1d3e5f7a9b1c3d5e7f9a1b";
        for text in [
            format!("12:pids:/docker/{id}\n0::/docker/{id}\n"),
            format!("0::/system.slice/docker-{id}.scope\n"),
            format!("0::/machine.slice/libpod-{id}.scope/container\n"),
            format!("0::/kubepods/besteffort/pod1/crio-{id}.scope\n"),
        ] {
            assert_eq!(container_id_from_cgroup(&text).as_deref(), Some(id), "{text}");
        }
        assert_eq!(container_id_from_cgroup("0::/user.slice/session-1.scope\n"), None);
    }

    #[test]
    fn local_addresses_of_a_namespace() {
        let fib = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.253.4.0\n        /24 link UNICAST\n     |-- 10.253.4.1\n        /32 host LOCAL\nLocal:\n  +-- 127.0.0.0/8 2 0 2\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 127.255.255.255\n        /32 link BROADCAST\n     |-- 10.253.4.1\n        /32 host LOCAL\n";
        assert_eq!(
            parse_fib_trie_locals(fib),
            [
                IpAddr::V4(Ipv4Addr::new(10, 253, 4, 1)),
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            ]
        );
        let inet6 = "00000000000000000000000000000001 01 80 10 80       lo\n";
        assert_eq!(parse_if_inet6(inet6), [IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    }

    #[test]
    fn unix_and_tcp_tables() {
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 43127 /run/docker.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 43200\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 43201 /run/docker.sock\n";
        let sockets = parse_unix_table(unix);
        let listener = UnixSocket {
            inode: 43127,
            listening: true,
            connected: false,
            path: Some("/run/docker.sock".into()),
        };
        assert_eq!(sockets[0], listener);
        assert_eq!(
            sockets[1],
            UnixSocket {
                inode: 43200,
                listening: false,
                connected: true,
                path: None
            }
        );
        assert!(
            sockets[2].connected && !sockets[2].listening,
            "an accepted connection shows the listener's path"
        );
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100C80A:0947 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51234 1 0 100 0 0 10 0\n\
            1: 0100C80A:0947 0200C80A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 51240 1 0 100 0 0 10 0\n";
        let ip = |last: u8| {
            let bytes = if cfg!(target_endian = "little") {
                [10, 200, 0, last]
            } else {
                [last, 0, 200, 10]
            };
            IpAddr::V4(bytes.into())
        };
        let sockets = parse_tcp_table(tcp);
        assert_eq!(sockets.len(), 2);
        assert_eq!((sockets[0].inode, sockets[0].state), (51234, TcpState::Listen));
        assert_eq!(sockets[0].local, Endpoint::Tcp(ip(1), 2375));
        assert_eq!(
            sockets[0].remote,
            Endpoint::Tcp(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        );
        assert_eq!(sockets[1].state, TcpState::Established);
        assert_eq!(sockets[1].remote, Endpoint::Tcp(ip(2), 40000));
    }
}
