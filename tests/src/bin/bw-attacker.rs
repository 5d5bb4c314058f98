//! What an unprivileged attacker runs in the attack scenarios. One binary, several acts, chosen
//! by the name it is run under (a copy named `podman` or `dockerd`) or by its first argument.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let name = args[0].rsplit('/').next().unwrap_or_default().to_string();
    match name.as_str() {
        // A fake builder: stays alive a moment so its files can be looked at, then leaves.
        "podman" => std::thread::sleep(Duration::from_secs(3)),
        // A fake daemon: listens like one, and "fetches" a manifest from a registry it runs
        // itself.
        "dockerd" => fake_registry_fetch(args.get(1).map_or("advfake", String::as_str)),
        _ => match args.get(1).map(String::as_str) {
            Some("forge-pull") => forge_pull(&args[2], &args[3]),
            Some("connect-flood") => connect_flood(&args[2], parse(&args[3]), parse(&args[4])),
            Some("connect-batch") => connect_batch(&args[2], parse(&args[3])),
            Some("byte-flood") => byte_flood(&args[2], parse(&args[3]), parse(&args[4])),
            _ => {
                eprintln!("usage: bw-attacker forge-pull PORT IMAGE | connect-flood ADDR TOTAL PROCESSES | byte-flood ADDR CONNECTIONS SECONDS | (as podman) | (as dockerd) NAME");
                std::process::exit(2);
            }
        },
    }
}

fn parse(text: &str) -> usize {
    text.parse().expect("a number")
}

/// `processes` processes, each connecting `ADDR` (ip:port) as often as its fd limit allows and
/// leaving without closing: the kernel closes them at exit, with no close() to see.
fn connect_flood(address: &str, total: usize, processes: usize) {
    let per_process = total.div_ceil(processes);
    let me = std::env::current_exe().expect("own path");
    let children: Vec<_> = (0..processes)
        .map(|_| {
            std::process::Command::new(&me)
                .args(["connect-batch", address, &per_process.to_string()])
                .spawn()
                .expect("spawning a batch")
        })
        .collect();
    for mut child in children {
        let _ = child.wait();
    }
}

fn connect_batch(address: &str, count: usize) {
    let mut open = Vec::new();
    for _ in 0..count {
        match TcpStream::connect(address) {
            Ok(stream) => open.push(stream),
            Err(_) => break,
        }
    }
    std::mem::forget(open);
    std::process::exit(0);
}

/// `connections` connections to ADDR, each writing a request head one byte per write for
/// `seconds`.
fn byte_flood(address: &str, connections: usize, seconds: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds as u64);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let address = address.to_string();
            std::thread::spawn(move || {
                while std::time::Instant::now() < deadline {
                    let Ok(mut stream) = TcpStream::connect(&address) else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let head = b"GET /_ping HTTP/1.1\r\nX-Flood: ";
                    let mut sent = 0usize;
                    while std::time::Instant::now() < deadline {
                        let byte = if sent < head.len() { head[sent] } else { b'a' };
                        if stream.write_all(&[byte]).is_err() {
                            break;
                        }
                        sent += 1;
                        // Go's server refuses a head past 1 MiB: start another before that.
                        if sent > 512 * 1024 {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

/// Listens on 127.0.0.1:PORT, connects to itself and writes a pull request there: what a
/// client-side-only sensor would take for a pull.
fn forge_pull(port: &str, image: &str) {
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).expect("binding the fake API port");
    let accepted = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accepting");
        read_head(&mut socket);
        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    });
    let (name, tag) = image.split_once(':').unwrap_or((image, "latest"));
    let mut client = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connecting to the fake API");
    // One write: the listener answers and closes after reading a head.
    let request =
        format!("POST /v1.41/images/create?fromImage={name}&tag={tag} HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n");
    client
        .write_all(request.as_bytes())
        .expect("writing the forged pull");
    let mut answer = [0u8; 256];
    let _ = client.read(&mut answer);
    let _ = accepted.join();
}

/// As a process named dockerd: a "registry" of its own, and a manifest request to it.
fn fake_registry_fetch(repository: &str) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake registry");
    let port = listener.local_addr().expect("local address").port();
    let served = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accepting");
        read_head(&mut socket);
        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the fake registry");
    let request = format!("GET /v2/{repository}/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n");
    client
        .write_all(request.as_bytes())
        .expect("writing the fake fetch");
    let mut answer = [0u8; 256];
    let _ = client.read(&mut answer);
    let _ = served.join();
    std::thread::sleep(Duration::from_secs(2));
}

/// Reads until the end of a request head (or the peer stops).
fn read_head(socket: &mut TcpStream) {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
}
