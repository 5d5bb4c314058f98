//! Connections a watched daemon already had when the sensor started. The kernel only learns of
//! sockets from connect/accept calls it sees; without this, a sensor restart would be blind to a
//! kept-alive API session (a remote client's, say) until it reconnects.
use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use crate::{
    model::socket::{Endpoint, Role},
    procfs::{self, NetTables, TcpState},
};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExistingConnection {
    pub fd: i32,
    pub role: Role,
    pub peer: Endpoint,
    pub local: Endpoint,
}

pub fn daemon_connections(root: &Path, tgid: u32) -> Vec<ExistingConnection> {
    classify(&procfs::socket_fds(root, tgid), &procfs::net_tables(root, tgid))
}

/// Sockets the process owns (`fds`: fd and inode) that are established connections: accepted on
/// one of its listeners (unix sockets show the listener's path; TCP ones a listening local port),
/// or else outbound TCP.
pub fn classify(fds: &[(i32, u64)], tables: &NetTables) -> Vec<ExistingConnection> {
    let owned: HashMap<u64, i32> = fds.iter().map(|&(fd, inode)| (inode, fd)).collect();
    let listening_ports: HashSet<u16> = tables
        .tcp
        .iter()
        .filter(|s| s.state == TcpState::Listen && owned.contains_key(&s.inode))
        .filter_map(|s| match s.local {
            Endpoint::Tcp(_, port) => Some(port),
            _ => None,
        })
        .collect();
    let mut found: Vec<ExistingConnection> = Vec::new();
    for socket in &tables.unix {
        if let (true, false, Some(path), Some(&fd)) = (
            socket.connected,
            socket.listening,
            &socket.path,
            owned.get(&socket.inode),
        ) {
            found.push(ExistingConnection {
                fd,
                role: Role::DaemonAccepted,
                peer: Endpoint::Unix(String::new()),
                local: Endpoint::Unix(path.clone()),
            });
        }
    }
    for socket in tables.tcp.iter().filter(|s| s.state == TcpState::Established) {
        let Some(&fd) = owned.get(&socket.inode) else {
            continue;
        };
        let accepted = matches!(socket.local, Endpoint::Tcp(_, port) if listening_ports.contains(&port));
        found.push(ExistingConnection {
            fd,
            role: if accepted {
                Role::DaemonAccepted
            } else {
                Role::DaemonOutbound
            },
            peer: socket.remote.clone(),
            local: socket.local.clone(),
        });
    }
    found.sort_by_key(|c| c.fd);
    found
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::procfs::{TcpSocket, UnixSocket};

    fn tcp(inode: u64, state: TcpState, local: u16, remote: (u8, u16)) -> TcpSocket {
        let ip = |last| IpAddr::V4(Ipv4Addr::new(10, 0, 0, last));
        TcpSocket {
            inode,
            state,
            local: Endpoint::Tcp(ip(1), local),
            remote: Endpoint::Tcp(ip(remote.0), remote.1),
        }
    }

    #[test]
    fn accepted_and_outbound_connections_of_the_process() {
        let tables = NetTables {
            unix: vec![
                UnixSocket {
                    inode: 1,
                    listening: true,
                    connected: false,
                    path: Some("/run/docker.sock".into()),
                },
                UnixSocket {
                    inode: 2,
                    listening: false,
                    connected: true,
                    path: Some("/run/docker.sock".into()),
                },
                UnixSocket {
                    inode: 3,
                    listening: false,
                    connected: true,
                    path: None,
                },
                UnixSocket {
                    inode: 9,
                    listening: false,
                    connected: true,
                    path: Some("/other.sock".into()),
                },
            ],
            tcp: vec![
                tcp(10, TcpState::Listen, 2375, (0, 0)),
                tcp(11, TcpState::Established, 2375, (2, 40000)),
                tcp(12, TcpState::Established, 51000, (3, 5000)),
                tcp(13, TcpState::Other, 2375, (4, 40001)),
                tcp(19, TcpState::Established, 2375, (5, 40002)),
            ],
        };
        // Inodes 9 and 19 belong to another process.
        let fds = [(5, 1), (6, 2), (7, 3), (8, 10), (20, 11), (21, 12), (22, 13)];
        let found = classify(&fds, &tables);
        let summary: Vec<(i32, Role, String, String)> = found
            .iter()
            .map(|c| (c.fd, c.role, c.peer.to_string(), c.local.to_string()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    6,
                    Role::DaemonAccepted,
                    "unix:".into(),
                    "unix:/run/docker.sock".into()
                ),
                (
                    20,
                    Role::DaemonAccepted,
                    "10.0.0.2:40000".into(),
                    "10.0.0.1:2375".into()
                ),
                (
                    21,
                    Role::DaemonOutbound,
                    "10.0.0.3:5000".into(),
                    "10.0.0.1:51000".into()
                ),
            ]
        );
    }
}
