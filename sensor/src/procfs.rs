//! Reading /proc: process identity at start and for processes the kernel told us about, the
//! container a process runs in, and the address a daemon's listening socket is bound to.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use crate::decode::Endpoint;

/// What /proc says about one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// What an exec changes that the kernel event does not carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// The address a listening socket (fd `fd` of process `tgid`) is bound to: resolves the fd to
/// its socket inode, then finds the inode in the process's view of /proc/net.
pub fn listening_address(root: &Path, tgid: u32, fd: i32) -> Option<Endpoint> {
    let dir = root.join(tgid.to_string());
    let link = read_link(&dir.join("fd").join(fd.to_string()))?;
    let inode: u64 = link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
    let net = dir.join("net");
    if let Some(path) = fs::read_to_string(net.join("unix"))
        .ok()
        .and_then(|t| unix_path_of_inode(&t, inode))
    {
        return Some(Endpoint::Unix(path));
    }
    for table in ["tcp", "tcp6"] {
        if let Some(endpoint) = fs::read_to_string(net.join(table))
            .ok()
            .and_then(|t| tcp_local_of_inode(&t, inode))
        {
            return Some(endpoint);
        }
    }
    None
}

/// /proc/net/unix: `Num RefCount Protocol Flags Type St Inode Path`.
pub fn unix_path_of_inode(table: &str, inode: u64) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(6)?.parse::<u64>().ok()? == inode).then(|| fields.get(7).map(|p| p.to_string()))?
    })
}

/// /proc/net/tcp{,6}: `sl local_address rem_address st ... uid timeout inode`.
pub fn tcp_local_of_inode(table: &str, inode: u64) -> Option<Endpoint> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        let (addr, port) = fields.get(1)?.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        Some(Endpoint::Tcp(parse_proc_net_ip(addr)?, port))
    })
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

pub fn proc_root() -> PathBuf {
    PathBuf::from("/proc")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn unix_and_tcp_tables() {
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 43127 /run/docker.sock\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 43200\n";
        assert_eq!(
            unix_path_of_inode(unix, 43127).as_deref(),
            Some("/run/docker.sock")
        );
        assert_eq!(unix_path_of_inode(unix, 43200), None);
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100C80A:0947 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51234 1 0 100 0 0 10 0\n";
        let expected = if cfg!(target_endian = "little") {
            [10, 200, 0, 1]
        } else {
            [1, 0, 200, 10]
        };
        assert_eq!(
            tcp_local_of_inode(tcp, 51234),
            Some(Endpoint::Tcp(IpAddr::V4(expected.into()), 2375))
        );
    }
}
