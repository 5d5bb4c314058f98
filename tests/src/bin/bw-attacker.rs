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
            _ => {
                eprintln!("usage: bw-attacker forge-pull PORT IMAGE | (as podman) | (as dockerd) NAME");
                std::process::exit(2);
            }
        },
    }
}

/// Listens on 127.0.0.1:PORT, connects to itself and writes a pull request there: what a
/// client-side-only sensor would take for a pull.
fn forge_pull(port: &str, image: &str) {
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).expect("binding the fake API port");
    let accepted = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().expect("accepting");
        let mut buffer = [0u8; 4096];
        let _ = socket.read(&mut buffer);
        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    });
    let (name, tag) = image.split_once(':').unwrap_or((image, "latest"));
    let mut client = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connecting to the fake API");
    write!(
        client,
        "POST /v1.41/images/create?fromImage={name}&tag={tag} HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n"
    )
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
        let mut buffer = [0u8; 4096];
        let _ = socket.read(&mut buffer);
        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the fake registry");
    write!(
        client,
        "GET /v2/{repository}/manifests/1 HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n\r\n"
    )
    .expect("writing the fake fetch");
    let mut answer = [0u8; 256];
    let _ = client.read(&mut answer);
    let _ = served.join();
    std::thread::sleep(Duration::from_secs(2));
}
