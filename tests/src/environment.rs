//! The world the tests drive: two network namespaces joined by a veth pair, a registry and a
//! dockerd in the "daemon" namespace, a busybox base image pushed to that registry, and a
//! "remote" namespace for clients that reach the daemon over TCP. Dropping the environment tears
//! down everything it created, also after a failed or panicking test.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::command::{quietly, run, run_command, run_with_input};

/// The Debian docker.io client: it still speaks the legacy BuildKit protocol (`DOCKER_BUILDKIT=1`
/// without buildx), which the scenarios exercise.
pub const DOCKER: &str = "/usr/bin/docker";
pub const REGISTRY: &str = "127.0.0.1:5000";
pub const BASE_IMAGE: &str = "127.0.0.1:5000/bwbase:1";
const DOCKERD_START_TIMEOUT: Duration = Duration::from_secs(90);

/// What must be installed, and why, for the environment to start.
pub fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    if !crate::is_root() {
        missing.push("root (the tests load eBPF programs and start dockerd)".to_string());
    }
    for (binary, package) in [
        ("dockerd", "docker.io"),
        ("containerd", "containerd"),
        ("runc", "runc"),
        ("docker-registry", "docker-registry"),
        ("busybox", "busybox-static"),
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("tar", "tar"),
    ] {
        if find_binary(binary).is_none() {
            missing.push(format!("{binary} (Debian package {package})"));
        }
    }
    if !Path::new(DOCKER).is_file() {
        missing.push(format!("{DOCKER} (Debian package docker.io)"));
    }
    missing
}

pub fn find_binary(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

pub struct Environment {
    /// Unique per run; used in names, tags and RUN markers so nothing is served from cache.
    pub nonce: String,
    pub dir: PathBuf,
    pub daemon_ns: String,
    pub remote_ns: String,
    pub daemon_ip: String,
    pub remote_ip: String,
    pub socket: PathBuf,
    pub dockerd_pid: u32,
    /// The main daemon's engine (`BUILDWATCH_TEST_ENGINE`): Debian's 20.10 unless a Docker
    /// 26.1 store is asked for.
    pub engine: MainEngine,
    veth: String,
    children: Vec<Child>,
}

impl Environment {
    pub fn start() -> Self {
        let pid = std::process::id();
        let subnet = 20 + pid % 200;
        let dir = PathBuf::from(format!("/tmp/buildwatch-test-{pid}"));
        let mut environment = Self {
            nonce: format!("{pid:x}{:x}", now_nanos()),
            socket: dir.join("docker.sock"),
            dir,
            daemon_ns: format!("bwtd{pid}"),
            remote_ns: format!("bwtr{pid}"),
            daemon_ip: format!("10.253.{subnet}.1"),
            remote_ip: format!("10.253.{subnet}.2"),
            dockerd_pid: 0,
            engine: MainEngine::from_env(),
            veth: format!("bwv{pid}"),
            children: Vec::new(),
        };
        // From here on, Drop cleans up whatever was created if a step panics.
        environment.create_network();
        environment.start_registry();
        environment.start_dockerd();
        environment.push_base_image();
        environment
    }

    fn create_network(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        fs::create_dir_all(&self.dir).expect("creating the test directory");
        let (daemon, remote, veth) = (&self.daemon_ns, &self.remote_ns, &self.veth);
        let peer = format!("{veth}p");
        // Names carry our pid; a namespace left by a killed run with the same pid goes first.
        quietly("ip", &["netns", "delete", daemon]);
        quietly("ip", &["netns", "delete", remote]);
        run("ip", &["netns", "add", daemon]);
        run("ip", &["netns", "add", remote]);
        run(
            "ip",
            &["link", "add", veth, "type", "veth", "peer", "name", &peer],
        );
        run("ip", &["link", "set", veth, "netns", daemon]);
        run("ip", &["link", "set", &peer, "netns", remote]);
        run(
            "ip",
            &[
                "-n",
                daemon,
                "addr",
                "add",
                &format!("{}/24", self.daemon_ip),
                "dev",
                veth,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                remote,
                "addr",
                "add",
                &format!("{}/24", self.remote_ip),
                "dev",
                &peer,
            ],
        );
        for (ns, link) in [
            (daemon, veth.as_str()),
            (remote, peer.as_str()),
            (daemon, "lo"),
            (remote, "lo"),
        ] {
            run("ip", &["-n", ns, "link", "set", link, "up"]);
        }
    }

    /// A command run inside the daemon's network namespace. `nsenter --net` changes only the
    /// network namespace; `ip netns exec` would also remount /sys and hide the cgroup
    /// hierarchies dockerd needs.
    fn in_daemon_ns(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/var/run/netns/{}", self.daemon_ns))
            .arg(program);
        command
    }

    fn spawn_logged(&mut self, mut command: Command, log: &str) -> u32 {
        let log = fs::File::create(self.dir.join(log)).expect("creating a log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    fn start_registry(&mut self) {
        let storage = self.dir.join("registry");
        fs::create_dir_all(&storage).expect("creating registry storage");
        let config = self.dir.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {REGISTRY}\n",
                storage.display()
            ),
        )
        .expect("writing the registry config");
        let mut command = self.in_daemon_ns("docker-registry");
        command.arg("serve").arg(&config);
        self.spawn_logged(command, "registry.log");
    }

    fn start_dockerd(&mut self) {
        let bridge = format!("bwm{}", std::process::id());
        // A bridge of its own: BuildKit's RUN steps need a network, and `--bridge=none` would
        // make a 26.1 daemon delete `docker0` for everyone.
        self.create_bridge(&bridge, 3);
        let mut command = match &self.engine {
            MainEngine::Debian => self.in_daemon_ns("dockerd"),
            MainEngine::Docker26 { prefix, store } => {
                let (prefix, store) = (prefix.clone(), *store);
                self.docker26_command(&prefix, store, "main")
            }
        };
        command
            .arg(format!("--bridge={bridge}"))
            .args(["--iptables=false", "--ip6tables=false", "--log-level=warn"])
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("-H")
            .arg(format!("tcp://{}:2375", self.daemon_ip));
        let socket = self.socket.clone();
        let client = self.engine.client();
        self.dockerd_pid = self.spawn_daemon(command, &client.to_string_lossy(), &socket, "dockerd");
    }

    fn create_bridge(&self, bridge: &str, subnet: u8) {
        let ns = &self.daemon_ns;
        run("ip", &["-n", ns, "link", "add", bridge, "type", "bridge"]);
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("172.31.{subnet}.1/24"),
                "dev",
                bridge,
            ],
        );
        run("ip", &["-n", ns, "link", "set", bridge, "up"]);
    }

    /// A Docker 26.1 dockerd from `prefix` in the daemon namespace: its containerd and shims from
    /// the same prefix (runc is bookworm's: trixie's needs glibc 2.38), the image store `store`.
    fn docker26_command(&mut self, prefix: &Path, store: ImageStore, name: &str) -> Command {
        let config = self.dir.join(format!("{name}-daemon.json"));
        let settings = match store {
            ImageStore::Classic => "{}",
            ImageStore::Containerd => r#"{"features": {"containerd-snapshotter": true}}"#,
        };
        fs::write(&config, settings).expect("writing daemon.json");
        let mut command = self.in_daemon_ns(&prefix.join("usr/sbin/dockerd").to_string_lossy());
        let path = format!(
            "{}:{}:{}",
            prefix.join("usr/bin").display(),
            prefix.join("usr/sbin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        command.env("PATH", path).arg("--config-file").arg(&config);
        command
    }

    /// Spawns a dockerd (through nsenter, which execs it), waits until `client` gets an answer
    /// on `socket`, and returns its pid, checked against the pidfile `<name>.pid`.
    fn spawn_daemon(&mut self, command: Command, client: &str, socket: &Path, name: &str) -> u32 {
        let log = format!("{name}.log");
        let nsenter_pid = self.spawn_logged(command, &log);
        let deadline = Instant::now() + crate::scaled(DOCKERD_START_TIMEOUT);
        loop {
            let ready = Command::new(client)
                .args(["-H", &format!("unix://{}", socket.display()), "version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if self
                .children
                .iter_mut()
                .any(|c| c.try_wait().ok().flatten().is_some())
                || Instant::now() > deadline
            {
                panic!(
                    "{name} did not start:\n{}",
                    fs::read_to_string(self.dir.join(&log)).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let pidfile = fs::read_to_string(self.dir.join(format!("{name}.pid"))).unwrap_or_default();
        assert_eq!(
            pidfile.trim(),
            nsenter_pid.to_string(),
            "{name} runs as the spawned process"
        );
        nsenter_pid
    }

    /// Starts Docker 26.1 from `prefix` (see `cargo xtask test`) beside the 20.10 daemon, in the
    /// same network namespace, with its own socket, roots, bridge and TCP port, and the base
    /// image pulled into nothing (each scenario pulls what it needs).
    /// The main (Debian 20.10) daemon driven by the 26.1 CLI and buildx from `prefix`: buildx
    /// builds on 20.10 (its BuildKit over `/grpc`), and the same handle as the other engines.
    pub fn main_engine_with_buildx(&self, prefix: &Path) -> ModernEngine {
        let client_config = self.dir.join("debian-20.10-client");
        let plugins = client_config.join("cli-plugins");
        fs::create_dir_all(&plugins).expect("creating the client's plugin directory");
        let _ = std::os::unix::fs::symlink(
            prefix.join("usr/libexec/docker/cli-plugins/docker-buildx"),
            plugins.join("docker-buildx"),
        );
        ModernEngine {
            label: "debian-20.10",
            store: ImageStore::Classic,
            pid: self.dockerd_pid,
            client: prefix.join("usr/bin/docker"),
            client_config,
            socket: self.socket.clone(),
            data_root: self.dir.join("data"),
            dockerd: self.engine.dockerd(),
            containerd: self.engine.containerd(),
            port: 2375,
            remote_ns: self.remote_ns.clone(),
            daemon_ip: self.daemon_ip.clone(),
        }
    }

    pub fn start_modern_engine(&mut self, prefix: &Path, store: ImageStore) -> ModernEngine {
        let label = match store {
            ImageStore::Classic => "docker26-classic",
            ImageStore::Containerd => "docker26-containerd",
        };
        let (bridge, subnet, port) = match store {
            ImageStore::Classic => (format!("bwc{}", std::process::id()), 1, 2376),
            ImageStore::Containerd => (format!("bwd{}", std::process::id()), 2, 2377),
        };
        // With --bridge=none dockerd deletes docker0; a bridge of its own leaves the rest alone.
        self.create_bridge(&bridge, subnet);
        let root = self.dir.join(label);
        fs::create_dir_all(&root).expect("creating the engine's directory");
        let socket = root.join("docker.sock");
        let data_root = root.join("data");
        let tcp = format!("tcp://{}:{port}", self.daemon_ip);
        // The classic engine says where it serves and stores on its command line, the
        // containerd one in its config file: the sensor must find both by itself.
        let config = root.join("daemon.json");
        let settings = match store {
            ImageStore::Classic => "{}".to_string(),
            ImageStore::Containerd => format!(
                r#"{{"features": {{"containerd-snapshotter": true}}, "data-root": "{}", "hosts": ["unix://{}", "{tcp}"]}}"#,
                data_root.display(),
                socket.display()
            ),
        };
        fs::write(&config, settings).expect("writing daemon.json");
        let client_config = root.join("client");
        let plugins = client_config.join("cli-plugins");
        fs::create_dir_all(&plugins).expect("creating the client's plugin directory");
        std::os::unix::fs::symlink(
            prefix.join("usr/libexec/docker/cli-plugins/docker-buildx"),
            plugins.join("docker-buildx"),
        )
        .expect("linking buildx");
        let mut command = self.in_daemon_ns(&prefix.join("usr/sbin/dockerd").to_string_lossy());
        // Its containerd and shims come from the same prefix; runc is bookworm's (trixie's needs
        // glibc 2.38).
        let path = format!(
            "{}:{}:{}",
            prefix.join("usr/bin").display(),
            prefix.join("usr/sbin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        command
            .env("PATH", path)
            .arg("--config-file")
            .arg(&config)
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join(format!("{label}.pid")))
            .arg(format!("--bridge={bridge}"));
        if store == ImageStore::Classic {
            command
                .arg("--data-root")
                .arg(&data_root)
                .arg("-H")
                .arg(format!("unix://{}", socket.display()))
                .arg("-H")
                .arg(&tcp);
        }
        command.args(["--iptables=false", "--ip6tables=false", "--log-level=warn"]);
        let client = prefix.join("usr/bin/docker");
        let pid = self.spawn_daemon(command, &client.to_string_lossy(), &socket, label);
        ModernEngine {
            label,
            store,
            pid,
            client,
            client_config,
            socket,
            data_root,
            dockerd: prefix.join("usr/sbin/dockerd"),
            containerd: prefix.join("usr/bin/containerd"),
            port,
            remote_ns: self.remote_ns.clone(),
            daemon_ip: self.daemon_ip.clone(),
        }
    }

    fn push_base_image(&mut self) {
        let rootfs = self.dir.join("rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).expect("creating the rootfs");
        fs::copy(find_binary("busybox").expect("busybox"), bin.join("busybox")).expect("copying busybox");
        for applet in ["sh", "echo", "cat", "ls", "true", "sleep", "wget", "id"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("linking a busybox applet");
        }
        let tarball = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .output()
            .expect("running tar");
        assert!(tarball.status.success(), "tar failed");
        run_with_input(self.docker().args(["import", "-", BASE_IMAGE]), &tarball.stdout);
        run_command(self.docker().args(["push", BASE_IMAGE]));
        run_command(self.docker().args(["rmi", BASE_IMAGE]));
    }

    /// The Debian docker client talking to the test daemon over its unix socket.
    pub fn docker(&self) -> Command {
        let mut command = Command::new(self.engine.client());
        self.engine.client_env(&mut command);
        command
            .env("DOCKER_BUILDKIT", "0")
            .args(["-H", &format!("unix://{}", self.socket.display())]);
        command
    }

    /// The docker client in the remote namespace, talking to the daemon over plain TCP.
    pub fn remote_docker(&self) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.remote_ns])
            .arg(self.engine.client())
            .args(["-H", &format!("tcp://{}:2375", self.daemon_ip)])
            .env("DOCKER_BUILDKIT", "0");
        self.engine.client_env(&mut command);
        command
    }

    /// A build context with a Dockerfile.
    pub fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        let dir = self.dir.join("contexts").join(name);
        fs::create_dir_all(&dir).expect("creating a build context");
        fs::write(dir.join("Dockerfile"), dockerfile).expect("writing a Dockerfile");
        dir
    }

    fn stop_children(&mut self) {
        for child in &mut self.children {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for child in &mut self.children {
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.children.clear();
    }

    /// Lazily unmounts whatever dockerd or containerd left mounted below the test directory.
    fn unmount_leftovers(&self) {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = self.dir.to_string_lossy().into_owned();
        let mut targets: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|t| t.starts_with(&prefix))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for target in targets {
            quietly("umount", &["-l", target]);
        }
    }
}

/// Which dockerd the environment's main daemon is.
#[derive(Debug, Clone)]
pub enum MainEngine {
    /// Debian bookworm's docker.io 20.10.
    Debian,
    /// Docker 26.1 from `cargo xtask test`'s prefix, with one of its stores.
    Docker26 { prefix: PathBuf, store: ImageStore },
}

impl MainEngine {
    /// `BUILDWATCH_TEST_ENGINE=docker26-classic|docker26-containerd` (with
    /// `BUILDWATCH_DOCKER_26`), else Debian's.
    pub fn from_env() -> Self {
        let store = match std::env::var("BUILDWATCH_TEST_ENGINE").as_deref() {
            Ok("docker26-classic") => ImageStore::Classic,
            Ok("docker26-containerd") => ImageStore::Containerd,
            Ok("" | "debian") | Err(_) => return Self::Debian,
            Ok(other) => {
                panic!("BUILDWATCH_TEST_ENGINE={other}: not debian, docker26-classic or docker26-containerd")
            }
        };
        let prefix = std::env::var_os("BUILDWATCH_DOCKER_26")
            .map(PathBuf::from)
            .expect("BUILDWATCH_TEST_ENGINE names Docker 26.1: BUILDWATCH_DOCKER_26 must name its prefix");
        Self::Docker26 { prefix, store }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Debian => "debian-20.10",
            Self::Docker26 {
                store: ImageStore::Classic,
                ..
            } => "docker26-classic",
            Self::Docker26 {
                store: ImageStore::Containerd,
                ..
            } => "docker26-containerd",
        }
    }

    /// Its daemon's executable, for the sensor's `watch.daemon_binaries`.
    pub fn dockerd(&self) -> PathBuf {
        match self {
            Self::Debian => PathBuf::from("/usr/sbin/dockerd"),
            Self::Docker26 { prefix, .. } => prefix.join("usr/sbin/dockerd"),
        }
    }

    /// The containerd it starts.
    pub fn containerd(&self) -> PathBuf {
        match self {
            Self::Debian => PathBuf::from("/usr/bin/containerd"),
            Self::Docker26 { prefix, .. } => prefix.join("usr/bin/containerd"),
        }
    }

    pub fn client(&self) -> PathBuf {
        match self {
            Self::Debian => PathBuf::from(DOCKER),
            Self::Docker26 { prefix, .. } => prefix.join("usr/bin/docker"),
        }
    }

    /// The 26.1 CLI finds buildx through `DOCKER_CONFIG` (`DOCKER_BUILDKIT=1` builds are
    /// buildx builds there).
    fn client_env(&self, command: &mut Command) {
        if let Self::Docker26 { prefix, .. } = self {
            let config = prefix.join("client-config");
            let plugins = config.join("cli-plugins");
            if !plugins.join("docker-buildx").exists() {
                let _ = fs::create_dir_all(&plugins);
                let _ = std::os::unix::fs::symlink(
                    prefix.join("usr/libexec/docker/cli-plugins/docker-buildx"),
                    plugins.join("docker-buildx"),
                );
            }
            command.env("DOCKER_CONFIG", config);
        }
    }
}

/// Where a Docker 26.1 engine keeps its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageStore {
    /// dockerd's own image store (`image/overlay2/imagedb`).
    Classic,
    /// containerd's (`"features": {"containerd-snapshotter": true}`), Docker 29's default.
    Containerd,
}

/// A Docker 26.1 daemon of the environment, with its own CLI and buildx.
pub struct ModernEngine {
    pub label: &'static str,
    pub store: ImageStore,
    pub pid: u32,
    client: PathBuf,
    client_config: PathBuf,
    pub socket: PathBuf,
    pub data_root: PathBuf,
    pub dockerd: PathBuf,
    pub containerd: PathBuf,
    pub port: u16,
    remote_ns: String,
    daemon_ip: String,
}

impl ModernEngine {
    /// Its CLI on its unix socket; `docker build` is buildx (BuildKit over `/grpc` and `/session`).
    pub fn docker(&self) -> Command {
        let mut command = Command::new(&self.client);
        command
            .env("DOCKER_CONFIG", &self.client_config)
            .args(["-H", &format!("unix://{}", self.socket.display())]);
        command
    }

    /// Its CLI in the remote namespace, over plain TCP.
    pub fn remote_docker(&self) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.remote_ns])
            .arg(&self.client)
            .args(["-H", &format!("tcp://{}:{}", self.daemon_ip, self.port)])
            .env("DOCKER_CONFIG", &self.client_config);
        command
    }
}

impl Drop for Environment {
    fn drop(&mut self) {
        self.stop_children();
        // containerd-shim processes outlive a daemon that died; end any still under our dir.
        let dir = self.dir.to_string_lossy().into_owned();
        quietly("pkill", &["-TERM", "-f", &dir]);
        self.unmount_leftovers();
        quietly("ip", &["netns", "delete", &self.daemon_ns]);
        quietly("ip", &["netns", "delete", &self.remote_ns]);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn now_nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u32)
        .unwrap_or(0)
}
