//! `[detect]`: the lookback, the ledger's place and size, and Docker's default data root.
use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use serde::{Deserialize, Serialize};

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
    /// Docker's data root, read only when a daemon cannot be asked over its API: a client
    /// container's configuration (its image) for `allow.container_images`, and a finished
    /// build's image ids. Each trusted dockerd's own root is used for its store.
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

impl Detect {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.ledger_max_records == 0 {
            bail!("detect.ledger_max_records must be at least 1");
        }
        if !self.state_dir.is_absolute() {
            bail!(
                "detect.state_dir must be an absolute path, not {}",
                self.state_dir.display()
            );
        }
        Ok(())
    }
}
