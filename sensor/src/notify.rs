//! systemd's readiness protocol (sd_notify): one datagram to `$NOTIFY_SOCKET`. Outside systemd
//! the variable is unset and nothing is sent.
use std::os::unix::net::UnixDatagram;

use anyhow::Context as _;

/// Sends `state` (e.g. "READY=1\nSTATUS=...") when systemd asked for notifications.
pub fn notify(state: &str) -> anyhow::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let socket = UnixDatagram::unbound().context("creating the notification socket")?;
    let bytes = path.as_encoded_bytes();
    match bytes.strip_prefix(b"@") {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
                .context("invalid abstract NOTIFY_SOCKET")?;
            socket.send_to_addr(state.as_bytes(), &address)
        }
        None => socket.send_to(state.as_bytes(), &path),
    }
    .with_context(|| format!("cannot notify systemd at {}", path.to_string_lossy()))?;
    Ok(())
}
