//! `[kernel]`, `[capture]` and `[process]`: what the kernel programs are loaded with.
use std::path::PathBuf;

use anyhow::bail;
use sensor_common::{CAPTURE_MAX, EXEC_PATH_KEY_LEN};
use serde::{Deserialize, Serialize};

/// The rings are mapped into the agent whole (twice, for wrap-around), so their size is most of
/// its resident memory; with the capture budget a 64 MiB build moves about 100 KiB through them.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 8 * 1024 * 1024;
const PAGE_SIZE: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capture {
    /// Bytes copied per read/write syscall (at most 4096).
    pub bytes: u32,
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
            client_ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES / 4,
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

impl Capture {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.bytes == 0 || self.bytes as usize > CAPTURE_MAX {
            bail!(
                "capture.bytes must be between 1 and {CAPTURE_MAX}, not {}",
                self.bytes
            );
        }
        Ok(())
    }
}

impl Kernel {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (key, ring) in [
            ("ring_buffer_bytes", self.ring_buffer_bytes),
            ("client_ring_buffer_bytes", self.client_ring_buffer_bytes),
        ] {
            if ring < PAGE_SIZE || !ring.is_power_of_two() {
                bail!("kernel.{key} must be a power of two of at least {PAGE_SIZE}, not {ring}");
            }
        }
        Ok(())
    }
}

/// Which processes' fork, exec (with argv) and exit the kernel reports. By default, those
/// correlation can use: daemons and everything they start, the builders below (and their
/// children), processes with API connections, and anything taking a daemon's name. Any other
/// process is read from /proc when it connects to an API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Process {
    /// Report every process on the host (the full exec stream; costs every exec a record).
    pub all: bool,
    /// Executables of build clients, as execve is given them (absolute paths, matched
    /// exactly; `watch.daemon_binaries` are added).
    pub builders: Vec<PathBuf>,
}

impl Default for Process {
    fn default() -> Self {
        Self {
            all: false,
            builders: [
                "/usr/bin/docker",
                "/usr/local/bin/docker",
                "/usr/libexec/docker/cli-plugins/docker-buildx",
                "/usr/lib/docker/cli-plugins/docker-buildx",
                "/usr/local/lib/docker/cli-plugins/docker-buildx",
                "/usr/bin/buildah",
                "/usr/bin/buildctl",
                "/usr/local/bin/buildctl",
                "/usr/bin/nerdctl",
                "/usr/local/bin/nerdctl",
                "/kaniko/executor",
            ]
            .map(PathBuf::from)
            .to_vec(),
        }
    }
}

impl Process {
    pub fn validate(&self) -> anyhow::Result<()> {
        for path in &self.builders {
            if !path.is_absolute() || path.as_os_str().len() >= EXEC_PATH_KEY_LEN {
                bail!(
                    "process.builders: {} must be an absolute path shorter than {EXEC_PATH_KEY_LEN} bytes",
                    path.display()
                );
            }
        }
        Ok(())
    }
}
