//! Kernel-side accounting through the real binary: when the ring buffer is full, the kernel
//! counts what it could not write and the agent reports it in `sensor.loss`.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use buildwatch_integration_tests::{
    sensor::{
        event::{kind, pid},
        Sensor,
    },
    sensor_binary, TempConfig,
};

fn prerequisites() -> Option<PathBuf> {
    sensor_binary(true)
}

#[test]
fn ring_buffer_overflow_is_counted_and_reported() {
    let Some(binary) = prerequisites() else { return };
    // Two pages: room for one argv record (4.2 KiB) at a time.
    let config = TempConfig::new(
        "overflow",
        "[kernel]\nring_buffer_bytes = 8192\n[process]\nall = true\n",
    );
    let sensor = Sensor::start(&binary, &config.path);
    let mark = sensor.mark();
    // A burst of short processes: each one is a fork, an argv, an exec and an exit record.
    let mut children: Vec<_> = (0..400)
        .map(|_| Command::new("true").spawn().expect("spawning true"))
        .collect();
    for child in &mut children {
        child.wait().expect("waiting for true");
    }
    let loss = sensor.wait_for(mark, Duration::from_secs(15), "a sensor.loss line", |e| {
        kind(e) == "sensor.loss"
    });
    let drops = loss["loss"]["kernel_drops"]
        .as_object()
        .expect("kernel_drops")
        .clone();
    assert!(
        !drops.is_empty() && drops.values().all(|v| v.as_u64().unwrap_or_default() > 0),
        "{loss}"
    );
    assert!(
        drops
            .keys()
            .all(|k| k.starts_with("process.") || k.starts_with("socket.")),
        "drops are keyed by event kind: {loss}"
    );
    assert!(sensor.is_running(), "the sensor survives a full ring buffer");
    let status = sensor
        .terminate(Duration::from_secs(10))
        .expect("buildwatch exits on SIGTERM");
    assert!(status.success());
    let stop = sensor.wait_for(0, Duration::from_secs(1), "sensor.stop", |e| {
        kind(e) == "sensor.stop"
    });
    let total: u64 = drops.values().filter_map(|v| v.as_u64()).sum();
    let stopped: u64 = stop["stats"]["kernel_drops"]
        .as_object()
        .expect("kernel_drops per kind")
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert!(stopped >= total, "{stop}");
}

/// A connection a daemon accepted before the sensor started is found in /proc and captured from
/// then on. The test process plays the daemon: the config names its own comm as a daemon, and it
/// keeps its listener open like a real daemon does.
#[test]
fn connections_open_before_start_are_tracked() {
    let Some(binary) = prerequisites() else { return };
    let listener = TcpListener::bind("127.0.0.1:0").expect("listening on loopback");
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).expect("connecting");
    let (mut accepted, peer) = listener.accept().expect("accepting");
    let own_comm = std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_string();

    // This test process is the "daemon": its binary is listed and it serves a watched port.
    let own_exe = std::env::current_exe().expect("the test binary's path");
    let config = TempConfig::new(
        "existing",
        &format!(
            "[output]\nkinds = [\"all\"]\n[watch]\nunix_sockets = []\ntcp_ports = [{}]\ndaemons = [\"{own_comm}\"]\ndaemon_binaries = [\"{}\"]\n",
            listener.local_addr().unwrap().port(),
            own_exe.display()
        ),
    );
    let sensor = Sensor::start(&binary, &config.path);
    let own_pid = u64::from(std::process::id());
    // Other tests in this process hold sockets too: look for this test's connection.
    let accept = sensor.wait_for(0, Duration::from_secs(10), "the existing connection", |e| {
        kind(e) == "socket.accept"
            && e["socket"]["existing"] == true
            && pid(e) == own_pid
            && e["socket"]["peer"] == peer.to_string()
    });
    assert_eq!(accept["socket"]["fd"], accepted.as_raw_fd(), "{accept}");
    assert_eq!(accept["socket"]["peer"], peer.to_string(), "{accept}");
    assert_eq!(
        accept["socket"]["local"],
        listener.local_addr().unwrap().to_string(),
        "{accept}"
    );
    assert_eq!(accept["socket"]["role"], "daemon_accepted");

    let marker = format!("GET /existing-{} HTTP/1.1\r\n\r\n", std::process::id());
    client.write_all(marker.as_bytes()).unwrap();
    let mut received = vec![0u8; marker.len()];
    accepted.read_exact(&mut received).unwrap();
    let stream = sensor.wait_for_stream(
        0,
        Duration::from_secs(10),
        "the daemon's read",
        "daemon_accepted",
        "recv",
        &[&marker],
    );
    assert_eq!(stream.conn_id, accept["socket"]["conn_id"].as_u64().unwrap());
    assert_eq!(pid(&stream.events[0]), own_pid);

    assert!(sensor
        .terminate(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

/// A vectored write of more segments than the kernel captures: the first four are captured, the
/// rest is reported as moved and not captured (segment 4), so no byte goes missing unannounced.
#[test]
fn bytes_beyond_the_captured_iovecs_are_announced() {
    let Some(binary) = prerequisites() else { return };
    let dir = std::env::temp_dir().join(format!("buildwatch-iovec-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("api.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let config = TempConfig::new(
        "iovec",
        &format!(
            "[output]\nkinds = [\"all\"]\n[watch]\nunix_sockets = [\"{}\"]\ntcp_ports = []\ndaemons = []\n",
            socket.display()
        ),
    );
    let sensor = Sensor::start(&binary, &config.path);
    let mark = sensor.mark();
    let mut client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let parts: Vec<Vec<u8>> = (0..6u8).map(|i| vec![b'a' + i; 100 + usize::from(i)]).collect();
    let slices: Vec<std::io::IoSlice<'_>> = parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
    let written = client.write_vectored(&slices).unwrap();
    assert_eq!(
        written,
        parts.iter().map(Vec::len).sum::<usize>(),
        "one writev of all six"
    );
    let mut received = vec![0u8; written];
    server.read_exact(&mut received).unwrap();
    let rest = sensor.wait_for(
        mark,
        Duration::from_secs(30),
        "the record for segments 4 and 5",
        |e| kind(e) == "socket.data" && e["data"]["segment"] == 4,
    );
    assert_eq!(rest["data"]["length"], 104 + 105, "{rest}");
    assert_eq!(rest["data"]["captured"], 0, "{rest}");
    let captured = sensor.all(mark, |e| {
        kind(e) == "socket.data" && e["socket"]["conn_id"] == rest["socket"]["conn_id"]
    });
    let segments: Vec<u64> = captured
        .iter()
        .filter_map(|e| e["data"]["segment"].as_u64())
        .collect();
    assert_eq!(segments, [0, 1, 2, 3, 4], "{captured:?}");
    assert_eq!(captured[3]["data"]["content"], "d".repeat(103));
    drop(sensor);
    let _ = std::fs::remove_dir_all(&dir);
}

/// By default the kernel reports the processes correlation uses: one that takes a daemon's
/// name is reported (whoever runs it), an unrelated one is not.
#[test]
fn only_processes_correlation_uses_are_reported() {
    let Some(binary) = prerequisites() else { return };
    let config = TempConfig::new("relevant", "[watch]\nunix_sockets = []\ntcp_ports = []\n");
    let dir = std::env::temp_dir().join(format!("buildwatch-relevant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let unrelated = dir.join("bw-unrelated");
    let impostor = dir.join("dockerd");
    for copy in [&unrelated, &impostor] {
        std::fs::copy("/bin/true", copy).expect("copying /bin/true");
    }
    let sensor = Sensor::start(&binary, &config.path);
    let mark = sensor.mark();
    for program in [&unrelated, &impostor] {
        assert!(Command::new(program)
            .status()
            .expect("running a copy of true")
            .success());
    }
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    // Both ran in this order: the impostor's exec arriving means the other's would have too.
    sensor.stays_quiet(
        mark,
        "the impostor's exec",
        |e| kind(e) == "process.exec" && e["filename"] == path(&impostor),
        "an unrelated process must not be reported",
        |e| e["filename"] == path(&unrelated),
    );
    let _ = std::fs::remove_dir_all(&dir);
}
