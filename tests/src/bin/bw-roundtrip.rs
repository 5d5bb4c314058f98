//! A workload for `cargo xtask bench`: COUNT round trips of 64 bytes between two ends of a
//! stream socket, one end echoing on a thread of its own.
//!
//! Usage: bw-roundtrip unix COUNT          a socketpair (untracked)
//!        bw-roundtrip tcp COUNT           loopback TCP (untracked)
//!        bw-roundtrip path SOCKET COUNT   a listener at SOCKET (a path the sensor watches:
//!                                         the client's connection is tracked)
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    process::ExitCode,
};

const MESSAGE: usize = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [mode, count] if mode == "unix" || mode == "tcp" => count.parse().map(|c| (mode.as_str(), None, c)),
        [mode, path, count] if mode == "path" => {
            count.parse().map(|c| ("path", Some(PathBuf::from(path)), c))
        }
        _ => {
            eprintln!("usage: bw-roundtrip unix|tcp COUNT | bw-roundtrip path SOCKET COUNT");
            return ExitCode::from(2);
        }
    };
    let Ok((mode, path, count)) = parsed else {
        eprintln!("bw-roundtrip: COUNT must be a whole number");
        return ExitCode::from(2);
    };
    let result = match mode {
        "unix" => UnixStream::pair().and_then(|(a, b)| ping_pong(a, b, count)),
        "tcp" => tcp(count),
        _ => listen_at(&path.unwrap_or_default(), count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bw-roundtrip: {err}");
            ExitCode::FAILURE
        }
    }
}

fn tcp(count: u64) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    ping_pong(client, server, count)
}

fn listen_at(path: &std::path::Path, count: u64) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let client = UnixStream::connect(path)?;
    let (server, _) = listener.accept()?;
    let result = ping_pong(client, server, count);
    let _ = std::fs::remove_file(path);
    result
}

/// `client` writes 64 bytes and reads them back from `server`'s echo, `count` times.
fn ping_pong<S>(mut client: S, mut server: S, count: u64) -> std::io::Result<()>
where
    S: Read + Write + Send + 'static,
{
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; MESSAGE];
        for _ in 0..count {
            server.read_exact(&mut buf)?;
            server.write_all(&buf)?;
        }
        Ok(())
    });
    let mut buf = [7u8; MESSAGE];
    for _ in 0..count {
        client.write_all(&buf)?;
        client.read_exact(&mut buf)?;
    }
    echo.join()
        .map_err(|_| std::io::Error::other("the echo thread panicked"))?
}
