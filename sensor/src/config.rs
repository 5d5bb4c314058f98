//! The agent's TOML configuration. Unknown keys are errors (with their line), so a typo never
//! silently turns a setting off.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use sensor_common::{CAPTURE_MAX, UNIX_PATH_LEN};
use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/buildwatch/config.toml";
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 16 * 1024 * 1024;
const PAGE_SIZE: u32 = 4096;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub watch: Watch,
    pub capture: Capture,
    pub output: Output,
    pub kernel: Kernel,
    pub detect: Detect,
    pub allow: Allow,
    pub log: Log,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// Diagnostics level on stderr (error, warn, info, debug, trace, or a tracing filter such as
    /// "info,buildwatch::detect=debug"). `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// buildwatch's own schema (docs/events.md).
    #[default]
    Json,
    /// Elastic Common Schema field names, the buildwatch line under `buildwatch`.
    Ecs,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Detect {
    /// How far back a registry pull of the target repository excuses a build ("24h", "7d").
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// Where the image ledger is kept across restarts.
    pub state_dir: PathBuf,
    /// Bound on ledger records; the oldest go first.
    pub ledger_max_records: usize,
    /// Docker's data root, where a client container's configuration (its image) is read for
    /// `allow.container_images`, and a finished build's image ids (runs by id).
    pub docker_data_root: PathBuf,
}

impl Default for Detect {
    fn default() -> Self {
        Self {
            lookback: Duration::from_secs(24 * 3600),
            state_dir: PathBuf::from("/var/lib/buildwatch"),
            ledger_max_records: 100_000,
            docker_data_root: PathBuf::from("/var/lib/docker"),
        }
    }
}

/// Known-good activity. A match suppresses the detection; it is still counted (in
/// `sensor.stop`) and logged at debug level.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Allow {
    /// Client executable paths (glob patterns: "/usr/local/bin/ci-*").
    pub client_exes: Vec<String>,
    /// Client user ids.
    pub uids: Vec<u32>,
    /// Client container ids (prefixes of the 64-hex id).
    pub container_ids: Vec<String>,
    /// Images of client containers (glob on the name Docker recorded at create:
    /// "gitlab/gitlab-runner*"), read from `detect.docker_data_root`.
    pub container_images: Vec<String>,
    /// Remote peers (CIDR: "10.0.0.0/8"); also silences api_exposed for them.
    pub peer_cidrs: Vec<String>,
    /// Target repositories or references (glob on the normalised name:
    /// "docker.io/library/app*", "registry.example.com/ci/*").
    pub repositories: Vec<String>,
    /// Registry allowlist: when not empty, only pulls from these registry hosts count as
    /// provenance ("docker.io", "127.0.0.1:5000").
    pub registries: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Watch {
    /// Unix socket paths of container APIs; a connect() to one makes the socket tracked.
    pub unix_sockets: Vec<PathBuf>,
    /// TCP ports of container APIs: a daemon listening on one serves the API, and a client
    /// connect to the address a trusted daemon listens on is tracked.
    pub tcp_ports: Vec<u16>,
    /// Ports of remote APIs whose clients on this host are followed to any address (empty by
    /// default: a connect to an arbitrary address is anyone's to make).
    pub remote_tcp_ports: Vec<u16>,
    /// Daemon names (comm or executable basename). A process taking one of these names is a
    /// daemon only when its executable is one of `daemon_binaries` and it listens on a watched
    /// socket or port; otherwise it is reported as `daemon_impersonation`.
    pub daemons: Vec<String>,
    /// Executables of trusted daemons and builders (compared by device and inode, so copies and
    /// bind mounts do not pass).
    pub daemon_binaries: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capture {
    /// Bytes copied per read/write syscall (at most 4096).
    pub bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Output {
    /// Append JSON lines to this file (0600, directory 0700). `--output` overrides it.
    pub path: Option<PathBuf>,
    /// Write to stdout too. Default: stdout only when no file is set.
    pub stdout: Option<bool>,
    /// Rotate the file when it would grow past this many bytes (0: never; logrotate with
    /// SIGHUP works either way).
    pub max_size: u64,
    /// Rotated files kept (`events.jsonl.1` newest .. `.N`).
    pub max_backups: u32,
    /// Lines waiting for the sinks at most; beyond it lines are dropped and reported.
    pub queue_lines: usize,
    /// Interval of `sensor.health` lines ("60s"; "0s" turns them off).
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    pub format: Format,
    /// Line kinds to write; empty: all. `sensor.*` lines are always written. For example
    /// ["detection", "build", "docker.operation"] leaves out the raw process and socket events
    /// (detections still cite their ids; a `--record` recording holds them).
    pub kinds: Vec<String>,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            path: None,
            stdout: None,
            max_size: 0,
            max_backups: 5,
            queue_lines: crate::output::queue::DEFAULT_CAPACITY,
            health_interval: Duration::from_secs(60),
            format: Format::Json,
            kinds: Vec::new(),
        }
    }
}

impl Output {
    pub fn writes_stdout(&self) -> bool {
        self.stdout.unwrap_or(self.path.is_none())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kernel {
    /// Forward aya-log diagnostics from the kernel programs to stderr.
    pub log: bool,
    /// Size of the ring buffer of process events and the daemons' side in bytes: a power of
    /// two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Size of the ring buffer of client-side data (anyone's to shape, so apart from the
    /// daemons' view): a power of two, at least one page.
    pub client_ring_buffer_bytes: u32,
}

impl Default for Kernel {
    fn default() -> Self {
        Self {
            log: false,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            client_ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES / 2,
        }
    }
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            unix_sockets: [
                "/var/run/docker.sock",
                "/run/docker.sock",
                "/run/podman/podman.sock",
                "/run/buildkit/buildkitd.sock",
                "/run/containerd/containerd.sock",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            tcp_ports: vec![2375, 2376],
            remote_tcp_ports: Vec::new(),
            daemons: ["dockerd", "podman", "buildkitd", "containerd"]
                .map(String::from)
                .to_vec(),
            daemon_binaries: [
                "/usr/bin/dockerd",
                "/usr/sbin/dockerd",
                "/usr/local/bin/dockerd",
                "/usr/bin/containerd",
                "/usr/local/bin/containerd",
                "/usr/bin/buildkitd",
                "/usr/local/bin/buildkitd",
                "/usr/bin/podman",
                "/usr/local/bin/podman",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        }
    }
}

impl Default for Capture {
    fn default() -> Self {
        Self {
            bytes: CAPTURE_MAX as u32,
        }
    }
}

impl Config {
    /// Loads `path`, or the default path when it exists, or the built-in defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<(Self, Option<PathBuf>)> {
        let path = match path {
            Some(path) => path.to_path_buf(),
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok((Self::default(), None)),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let config = Self::parse(&text).with_context(|| format!("invalid config {}", path.display()))?;
        Ok((config, Some(path)))
    }

    /// SHA-256 of the effective settings (file and defaults), to tell configurations apart.
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        let text = toml::to_string(self).unwrap_or_default();
        sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let config: Config = toml::from_str(text).map_err(|err| anyhow::anyhow!(one_line(&err, text)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.capture.bytes == 0 || self.capture.bytes as usize > CAPTURE_MAX {
            bail!(
                "capture.bytes must be between 1 and {CAPTURE_MAX}, not {}",
                self.capture.bytes
            );
        }
        for path in &self.watch.unix_sockets {
            let len = path.as_os_str().len();
            if len == 0 || len >= UNIX_PATH_LEN || !path.is_absolute() {
                bail!(
                    "watch.unix_sockets: {} is not an absolute path shorter than {UNIX_PATH_LEN} bytes",
                    path.display()
                );
            }
        }
        for (key, ring) in [
            ("ring_buffer_bytes", self.kernel.ring_buffer_bytes),
            ("client_ring_buffer_bytes", self.kernel.client_ring_buffer_bytes),
        ] {
            if ring < PAGE_SIZE || !ring.is_power_of_two() {
                bail!("kernel.{key} must be a power of two of at least {PAGE_SIZE}, not {ring}");
            }
        }
        if self.output.max_size > 0 && self.output.path.is_none() {
            bail!("output.max_size rotates the output file: set output.path too");
        }
        if self.output.max_backups == 0 {
            bail!("output.max_backups must be at least 1");
        }
        if let Some(unknown) = self
            .output
            .kinds
            .iter()
            .find(|kind| !crate::output::schema::KINDS.contains(&kind.as_str()))
        {
            bail!(
                "output.kinds: {unknown:?} is not a line kind (one of {})",
                crate::output::schema::KINDS.join(", ")
            );
        }
        if self.output.queue_lines == 0 {
            bail!("output.queue_lines must be at least 1");
        }
        if !self.output.writes_stdout() && self.output.path.is_none() {
            bail!("output.stdout = false needs output.path: events would go nowhere");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bail!("log.level {:?} is not a level or tracing filter", self.log.level);
        }
        if self.detect.ledger_max_records == 0 {
            bail!("detect.ledger_max_records must be at least 1");
        }
        if !self.detect.state_dir.is_absolute() {
            bail!(
                "detect.state_dir must be an absolute path, not {}",
                self.detect.state_dir.display()
            );
        }
        crate::detect::allow::Allowlist::compile(&self.allow)?;
        if self
            .watch
            .daemons
            .iter()
            .any(|name| name.is_empty() || name.contains('/'))
        {
            bail!("watch.daemons holds process names, not paths or empty strings");
        }
        if let Some(relative) = self.watch.daemon_binaries.iter().find(|p| !p.is_absolute()) {
            bail!(
                "watch.daemon_binaries: {} is not an absolute path",
                relative.display()
            );
        }
        Ok(())
    }
}

/// toml's messages span several lines with a source excerpt; keep the line number and message.
fn one_line(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim();
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err = Config::parse("[watch]\ntcp_ports = [2375]\nunix_socket = []\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("unix_socket"), "{text}");
    }

    #[test]
    fn capture_size_is_bounded() {
        assert!(Config::parse("[capture]\nbytes = 8192\n").is_err());
        assert_eq!(
            Config::parse("[capture]\nbytes = 512\n").unwrap().capture.bytes,
            512
        );
    }

    #[test]
    fn ring_buffer_size_is_a_power_of_two() {
        assert!(Config::parse("[kernel]\nring_buffer_bytes = 100000\n").is_err());
        assert!(Config::parse("[kernel]\nring_buffer_bytes = 1024\n").is_err());
        assert_eq!(
            Config::parse("[kernel]\nring_buffer_bytes = 65536\n")
                .unwrap()
                .kernel
                .ring_buffer_bytes,
            65536
        );
    }

    #[test]
    fn detection_settings() {
        let config = Config::parse(
            "[detect]\nlookback = \"7d\"\nstate_dir = \"/tmp/bw\"\n[allow]\npeer_cidrs = [\"10.0.0.0/8\"]\nrepositories = [\"docker.io/library/app*\"]\n",
        )
        .unwrap();
        assert_eq!(config.detect.lookback, Duration::from_secs(7 * 86400));
        let err = Config::parse("[allow]\npeer_cidrs = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(format!("{err:#}").contains("10.0.0.0/33"), "{err:#}");
        let err = Config::parse("[detect]\nlookback = \"soon\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    #[test]
    fn output_settings() {
        let config = Config::parse(
            "[output]\npath = \"/var/log/bw/e.jsonl\"\nmax_size = 1000\nhealth_interval = \"5s\"\n",
        )
        .unwrap();
        assert!(!config.output.writes_stdout());
        assert_eq!(config.output.health_interval, Duration::from_secs(5));
        assert!(Config::default().output.writes_stdout());
        assert!(
            Config::parse("[output]\nmax_size = 1000\n").is_err(),
            "rotation without a file"
        );
        assert!(
            Config::parse("[output]\nstdout = false\n").is_err(),
            "no sink at all"
        );
        assert_eq!(
            Config::parse("[output]\nformat = \"ecs\"\n")
                .unwrap()
                .output
                .format,
            Format::Ecs
        );
        assert!(Config::parse("[output]\nformat = \"cef\"\n").is_err());
        let err = Config::parse("[output]\nkinds = [\"detection\", \"detections\"]\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("\"detections\" is not a line kind"),
            "{err:#}"
        );
        let kinds = crate::output::schema::selected_kinds(&["detection".into()]);
        assert!(
            kinds.contains(&"detection") && kinds.contains(&"sensor.loss") && !kinds.contains(&"socket.data")
        );
        assert!(Config::parse("[log]\nlevel = \"info,buildwatch=debug\"\n").is_ok());
        assert!(Config::parse("[log]\nlevel = \"buildwatch=loudest\"\n").is_err());
        assert_eq!(Config::default().digest().len(), 64);
        assert_ne!(Config::default().digest(), config.digest());
    }

    /// docs/config.example.toml documents every key, and uncommented it is a valid config.
    #[test]
    fn example_config_is_complete_and_valid() {
        let example = include_str!("../../docs/config.example.toml");
        let mut active = String::new();
        let mut in_array = false;
        for line in example.lines() {
            let setting = line.strip_prefix("# ").filter(|rest| {
                in_array
                    || rest
                        .split_once(" = ")
                        .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            });
            match setting {
                Some(rest) => {
                    in_array = (in_array || rest.ends_with('[')) && rest != "]";
                    active.push_str(rest);
                }
                None if line.starts_with('[') => active.push_str(line),
                None => continue,
            }
            active.push('\n');
        }
        let parsed = Config::parse(&active).unwrap_or_else(|err| panic!("{err:#}\n{active}"));
        assert_eq!(
            parsed.watch,
            Config::default().watch,
            "the example shows the defaults"
        );
        let defaults: toml::Table = toml::from_str(&toml::to_string(&Config::default()).unwrap()).unwrap();
        for (section, keys) in &defaults {
            assert!(example.contains(&format!("[{section}]")), "[{section}] missing");
            for key in keys.as_table().unwrap().keys() {
                assert!(
                    example.contains(&format!("# {key} = ")),
                    "{section}.{key} is not documented"
                );
            }
        }
        for key in ["path", "stdout", "client_exes", "uids"] {
            assert!(
                example.contains(&format!("# {key} = ")),
                "{key} is not documented"
            );
        }
    }

    #[test]
    fn relative_socket_path_is_rejected() {
        assert!(Config::parse("[watch]\nunix_sockets = [\"docker.sock\"]\n").is_err());
    }
}
