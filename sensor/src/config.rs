//! The agent's TOML configuration: the sections, each defined and validated by the module that
//! uses it, put together. Unknown keys are errors (with their line), so a typo never silently
//! turns a setting off.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

pub use crate::{
    detect::{allow::Allow, settings::Detect},
    kernel::settings::{Capture, Kernel, Process},
    output::settings::{Format, Output},
    watch::Watch,
};

pub const DEFAULT_PATH: &str = "/etc/buildwatch/config.toml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub watch: Watch,
    pub capture: Capture,
    pub output: Output,
    pub kernel: Kernel,
    pub process: Process,
    pub detect: Detect,
    pub allow: Allow,
    pub metrics: crate::metrics::Settings,
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
        self.watch.validate()?;
        self.capture.validate()?;
        self.kernel.validate()?;
        self.process.validate()?;
        self.output.validate()?;
        self.detect.validate()?;
        self.allow.validate()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            bail!("log.level {:?} is not a level or tracing filter", self.log.level);
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
    use std::time::Duration;

    use super::*;
    use crate::model::line::LineKind;

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
            kinds.contains(&LineKind::Detection)
                && kinds.contains(&LineKind::SensorLoss)
                && !kinds.contains(&LineKind::SocketData)
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
