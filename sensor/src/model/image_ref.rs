//! Image references, normalised the way Docker resolves them: `alpine` is
//! `docker.io/library/alpine:latest`; a first component with a dot, a colon or `localhost` is a
//! registry host (`127.0.0.1:5000/base:1`); `@sha256:...` digests are kept.
use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub struct ImageRef {
    pub registry: String,
    /// Path inside the registry (`library/alpine`).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference; `None` for image ids and text that is not a reference.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() || is_image_id(text) || text.len() > 512 {
            return None;
        }
        let (name, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(digest.to_string())),
            None => (text, None),
        };
        let (name, tag) = match name.rfind(':') {
            Some(colon) if !name[colon..].contains('/') => {
                (&name[..colon], Some(name[colon + 1..].to_string()))
            }
            _ => (name, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (normalise_registry(first), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
        };
        if !valid(&path) || !valid(&registry) || tag.as_deref().is_some_and(|t| !valid(t)) {
            return None;
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag,
        };
        Some(Self {
            registry,
            path,
            tag,
            digest,
        })
    }

    /// From a query's name and tag parameters (`fromImage=alpine&tag=3`); a digest may be
    /// given as the tag.
    pub fn from_parts(name: &str, tag: Option<&str>) -> Option<Self> {
        match tag.filter(|t| !t.is_empty()) {
            Some(tag) if tag.starts_with("sha256:") => Self::parse(&format!("{name}@{tag}")),
            Some(tag) => Self::parse(&format!("{name}:{tag}")),
            None => Self::parse(name),
        }
    }

    /// `registry/path`, the unit provenance is kept for.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn normalise_registry(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB.to_string(),
        other => other.to_ascii_lowercase(),
    }
}

/// `sha256:<64 hex>` or a bare hex id (12 to 64 digits) as `docker run` accepts.
pub fn is_image_id(text: &str) -> bool {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    (12..=64).contains(&hex.len())
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// An image id (or the prefix of one) as `sha256:<hex>`, the form the ledger keeps.
pub fn image_id(text: &str) -> Option<String> {
    let text = text.trim();
    is_image_id(text).then(|| format!("sha256:{}", text.strip_prefix("sha256:").unwrap_or(text)))
}

/// A registry's host for provenance (`registry-1.docker.io` is Docker Hub).
pub fn registry_host(host: &str) -> String {
    normalise_registry(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(text: &str) -> String {
        ImageRef::parse(text)
            .map(|r| r.to_string())
            .unwrap_or_else(|| "-".into())
    }

    #[test]
    fn docker_normalisation() {
        assert_eq!(norm("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(norm("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(norm("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(
            norm("index.docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
        assert_eq!(norm("user/app:1"), "docker.io/user/app:1");
        assert_eq!(norm("127.0.0.1:5000/bwbase:1"), "127.0.0.1:5000/bwbase:1");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(
            norm("Registry.Example.com:443/a/b/c"),
            "registry.example.com:443/a/b/c:latest"
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            norm(&format!("alpine@{digest}")),
            format!("docker.io/library/alpine@{digest}")
        );
        assert_eq!(
            ImageRef::parse("127.0.0.1:5000/bwbase:1").unwrap().repository(),
            "127.0.0.1:5000/bwbase"
        );
    }

    #[test]
    fn ids_and_garbage_are_not_references() {
        assert_eq!(norm(&format!("sha256:{}", "0f".repeat(32))), "-");
        assert_eq!(norm("0123456789ab"), "-");
        assert_eq!(norm(""), "-");
        assert_eq!(norm("a b"), "-");
        assert_eq!(norm("evil\"name"), "-");
    }

    #[test]
    fn query_parts() {
        assert_eq!(
            ImageRef::from_parts("127.0.0.1:5000/bwbase", Some("1"))
                .unwrap()
                .to_string(),
            "127.0.0.1:5000/bwbase:1"
        );
        assert_eq!(
            ImageRef::from_parts("alpine", Some("")).unwrap().to_string(),
            "docker.io/library/alpine:latest"
        );
    }
}
