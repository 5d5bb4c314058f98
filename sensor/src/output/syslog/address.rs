//! `output.syslog`: where messages go, `unix:/dev/log`, `udp://host:514` or `tcp://host:514`.
use std::{fmt, path::PathBuf, str::FromStr};

use anyhow::{bail, Context as _};

pub const DEFAULT_PORT: u16 = 514;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A datagram socket, as /dev/log is.
    Unix(PathBuf),
    /// `host:port`, resolved at each connection attempt (a receiver may move).
    Udp(String),
    Tcp(String),
}

fn host_and_port(rest: &str, text: &str) -> anyhow::Result<String> {
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        bail!("output.syslog = {text:?}: expected host[:port] after the scheme");
    }
    // A bracketed IPv6 address, a name or an IPv4 address, with an optional port.
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => {
            let port: u16 = port
                .parse()
                .with_context(|| format!("output.syslog = {text:?}: {port:?} is not a port"))?;
            (host, port)
        }
        _ => (rest, DEFAULT_PORT),
    };
    if port == 0 {
        bail!("output.syslog = {text:?}: port 0");
    }
    Ok(format!("{host}:{port}"))
}

impl FromStr for Address {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        if let Some(path) = text.strip_prefix("unix:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                bail!("output.syslog = {text:?}: a unix socket needs an absolute path (unix:/dev/log)");
            }
            return Ok(Address::Unix(path));
        }
        if let Some(rest) = text.strip_prefix("udp://") {
            return host_and_port(rest, text).map(Address::Udp);
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            return host_and_port(rest, text).map(Address::Tcp);
        }
        bail!("output.syslog = {text:?}: expected unix:/dev/log, udp://host:514 or tcp://host:514")
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
            Address::Udp(address) => write!(f, "udp://{address}"),
            Address::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_default_port_and_ipv6() {
        let parse = |text: &str| text.parse::<Address>().map_err(|e| e.to_string());
        assert_eq!(parse("unix:/dev/log"), Ok(Address::Unix("/dev/log".into())));
        assert_eq!(parse("udp://10.0.0.1"), Ok(Address::Udp("10.0.0.1:514".into())));
        assert_eq!(
            parse("tcp://logs.example:6514"),
            Ok(Address::Tcp("logs.example:6514".into()))
        );
        assert_eq!(parse("tcp://[::1]:601/"), Ok(Address::Tcp("[::1]:601".into())));
        assert_eq!(parse("tcp://[::1]"), Ok(Address::Tcp("[::1]:514".into())));
        for bad in [
            "unix:dev/log",
            "tcp://",
            "tcp://h:x",
            "tcp://h:0",
            "http://h",
            "tcp://h/p",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.starts_with("output.syslog"), "{bad}: {error}");
        }
    }
}
