//! The ids correlation hands out: stable across runs and replays (a hash of what identifies
//! the thing), typed so an operation's id is never taken for a build's.
use std::fmt;

use serde::Serialize;

/// `prefix-<16 hex>` from the parts (FNV-1a: stable across runs and versions, unlike std's
/// hasher).
pub fn stable_id(prefix: &str, parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{prefix}-{hash:016x}")
}

/// A `docker.operation`'s id (`op-<16 hex>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct OperationId(String);

impl OperationId {
    pub fn new(parts: &[&str]) -> Self {
        Self(stable_id("op", parts))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A build's id: the id of the operation that opened it, as `build-<16 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct BuildId(String);

impl BuildId {
    pub fn of(operation: &OperationId) -> Self {
        let hex = operation.0.strip_prefix("op-").unwrap_or(&operation.0);
        Self(format!("build-{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_is_named_after_its_operation() {
        let operation = OperationId::new(&["42", "POST /build"]);
        assert!(operation.as_str().starts_with("op-"));
        let build = BuildId::of(&operation);
        assert_eq!(
            &build.as_str()["build-".len()..],
            &operation.as_str()["op-".len()..]
        );
        assert_eq!(OperationId::new(&["42", "POST /build"]), operation, "stable");
    }
}
