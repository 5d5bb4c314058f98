//! Tracked connections as the agent knows them: who opened them, the peer, and for accepted
//! connections the daemon's listening address (resolved once per listener from /proc).
use std::collections::HashMap;

use crate::{
    decode::SocketOpen,
    host::SharedHost,
    model::{process::ProcessView, socket::Endpoint},
};

const MAX_CONNECTIONS: usize = 65_536;

#[derive(Debug, Clone)]
pub struct Connection {
    pub tgid: u32,
    pub peer: Endpoint,
    pub local: Option<Endpoint>,
    /// The connecting process as it was at connect time (client connections), so requests
    /// written later name it without another lookup.
    pub client: Option<ProcessView>,
}

pub struct ConnectionTable {
    host: SharedHost,
    by_id: HashMap<u64, Connection>,
    /// (tgid, listening fd) -> bound address.
    listeners: HashMap<(u32, i32), Option<Endpoint>>,
}

impl ConnectionTable {
    pub fn new(host: SharedHost) -> Self {
        Self {
            host,
            by_id: HashMap::new(),
            listeners: HashMap::new(),
        }
    }

    pub fn open(&mut self, tgid: u32, socket: &SocketOpen) -> &Connection {
        let local = socket.listen_fd.and_then(|listen_fd| {
            let host = &self.host;
            self.listeners
                .entry((tgid, listen_fd))
                .or_insert_with(|| host.listening_address(tgid, listen_fd))
                .clone()
        });
        if self.by_id.len() >= MAX_CONNECTIONS {
            // Close events were lost; the kernel table is LRU-bounded the same way.
            self.by_id.clear();
        }
        let connection = Connection {
            tgid,
            peer: socket.peer.clone(),
            local,
            client: None,
        };
        self.by_id.insert(socket.conn_id, connection);
        &self.by_id[&socket.conn_id]
    }

    /// A connection found in /proc rather than seen opening.
    pub fn adopt(&mut self, conn_id: u64, tgid: u32, peer: Endpoint, local: Endpoint) {
        self.by_id.insert(
            conn_id,
            Connection {
                tgid,
                peer,
                local: Some(local),
                client: None,
            },
        );
    }

    pub fn set_client(&mut self, conn_id: u64, process: ProcessView) {
        if let Some(connection) = self.by_id.get_mut(&conn_id) {
            connection.client = Some(process);
        }
    }

    pub fn get(&self, conn_id: u64) -> Option<&Connection> {
        self.by_id.get(&conn_id)
    }

    pub fn close(&mut self, conn_id: u64) -> Option<Connection> {
        self.by_id.remove(&conn_id)
    }

    /// A process ended: its listeners' cached addresses are stale (fds get reused).
    pub fn process_exited(&mut self, tgid: u32) {
        self.listeners.retain(|(owner, _), _| *owner != tgid);
        self.by_id.retain(|_, c| c.tgid != tgid);
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
