//! The `[allow]` section, compiled: which clients, peers and target repositories are known good,
//! and which registries establish provenance.
use std::net::IpAddr;

use anyhow::Context as _;
use ipnet::IpNet;

use crate::model::origin::Origin;
use serde::{Deserialize, Serialize};

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

impl Allow {
    /// Every pattern and network parses.
    pub fn validate(&self) -> anyhow::Result<()> {
        Allowlist::compile(self).map(drop)
    }
}

#[derive(Debug, Default)]
pub struct Allowlist {
    client_exes: Vec<glob::Pattern>,
    uids: Vec<u32>,
    container_ids: Vec<String>,
    container_images: Vec<glob::Pattern>,
    peer_cidrs: Vec<IpNet>,
    repositories: Vec<glob::Pattern>,
    registries: Vec<String>,
}

impl Allowlist {
    pub fn compile(allow: &Allow) -> anyhow::Result<Self> {
        let patterns = |key: &str, list: &[String]| -> anyhow::Result<Vec<glob::Pattern>> {
            list.iter()
                .map(|p| glob::Pattern::new(p).with_context(|| format!("allow.{key}: invalid pattern {p:?}")))
                .collect()
        };
        Ok(Self {
            client_exes: patterns("client_exes", &allow.client_exes)?,
            uids: allow.uids.clone(),
            container_ids: allow
                .container_ids
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .collect(),
            container_images: patterns("container_images", &allow.container_images)?,
            peer_cidrs: allow
                .peer_cidrs
                .iter()
                .map(|c| {
                    c.parse::<IpNet>()
                        .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| anyhow::anyhow!("allow.peer_cidrs: {c:?} is not a CIDR or an address"))
                })
                .collect::<anyhow::Result<_>>()?,
            repositories: patterns("repositories", &allow.repositories)?,
            registries: allow.registries.iter().map(|r| r.to_ascii_lowercase()).collect(),
        })
    }

    /// Why the client or peer of `origin` is allowlisted, if it is. `image_of` names the image of
    /// a container id (asked only when container images are allowlisted).
    pub fn origin(&self, origin: &Origin, image_of: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        if let Some(client) = &origin.client {
            if let Some(exe) = &client.exe {
                if self.client_exes.iter().any(|p| p.matches(exe)) {
                    return Some(format!("client executable {exe}"));
                }
            }
            if self.uids.contains(&client.uid) {
                return Some(format!("client uid {}", client.uid));
            }
            if let Some(id) = &client.container_id {
                if self
                    .container_ids
                    .iter()
                    .any(|prefix| id.starts_with(prefix.as_str()))
                {
                    return Some(format!("client container {id}"));
                }
                if !self.container_images.is_empty() {
                    let image = image_of(id).filter(|i| self.container_images.iter().any(|p| p.matches(i)));
                    if let Some(image) = image {
                        return Some(format!("client container image {image}"));
                    }
                }
            }
        }
        origin.peer_ip().and_then(|ip| self.peer(ip))
    }

    pub fn peer(&self, ip: IpAddr) -> Option<String> {
        self.peer_cidrs
            .iter()
            .find(|net| net.contains(&ip))
            .map(|net| format!("peer {ip} in {net}"))
    }

    /// Whether every target (normalised reference) is an allowlisted repository.
    pub fn all_repositories(&self, targets: &[(String, String)]) -> Option<String> {
        if self.repositories.is_empty() || targets.is_empty() {
            return None;
        }
        targets
            .iter()
            .all(|(repository, reference)| {
                self.repositories
                    .iter()
                    .any(|p| p.matches(repository) || p.matches(reference))
            })
            .then(|| "target repository".to_string())
    }

    /// Whether `host` is on the registry allowlist.
    pub fn lists_registry(&self, host: &str) -> bool {
        self.registries.iter().any(|r| r == host)
    }

    /// Whether pulls from `registry` establish provenance.
    pub fn trusts_registry(&self, registry: &str) -> bool {
        self.registries.is_empty() || self.registries.iter().any(|r| r == registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::origin::Transport;

    #[test]
    fn matches() {
        let allow = Allowlist::compile(&Allow {
            peer_cidrs: vec!["10.0.0.0/8".into(), "192.168.1.5".into()],
            repositories: vec!["docker.io/library/app*".into()],
            registries: vec!["127.0.0.1:5000".into()],
            ..Allow::default()
        })
        .unwrap();
        assert!(allow
            .origin(&Origin::for_test(Transport::Tcp, Some("10.9.9.9:1234")), &|_| {
                None
            })
            .is_some());
        assert!(allow
            .origin(
                &Origin::for_test(Transport::Tcp, Some("192.168.1.6:1234")),
                &|_| None
            )
            .is_none());
        let app = (
            "docker.io/library/app".to_string(),
            "docker.io/library/app:1".to_string(),
        );
        let evil = (
            "docker.io/library/evil".to_string(),
            "docker.io/library/evil:1".to_string(),
        );
        assert!(allow.all_repositories(std::slice::from_ref(&app)).is_some());
        assert!(allow.all_repositories(&[app, evil]).is_none());
        assert!(allow.trusts_registry("127.0.0.1:5000"));
        assert!(!allow.trusts_registry("docker.io"));
        assert!(Allowlist::default().trusts_registry("docker.io"));
    }

    #[test]
    fn client_container_image() {
        let allow = Allowlist::compile(&Allow {
            container_images: vec!["gitlab/gitlab-runner*".into()],
            ..Allow::default()
        })
        .unwrap();
        let mut origin = Origin::for_test(Transport::Unix, None);
        let mut client = crate::model::process::ProcessView {
            pid: 1,
            tid: 1,
            ppid: None,
            comm: "docker".into(),
            uid: 0,
            gid: 0,
            exe: None,
            argv: None,
            argv_truncated: false,
            cwd: None,
            container_id: Some("ab".repeat(32)),
            ancestry: None,
        };
        origin.client = Some(client.clone());
        let runner = |_: &str| Some("gitlab/gitlab-runner:v17".to_string());
        let other = |_: &str| Some("alpine".to_string());
        assert!(allow.origin(&origin, &runner).unwrap().contains("gitlab-runner"));
        assert!(allow.origin(&origin, &other).is_none());
        client.container_id = None;
        origin.client = Some(client);
        assert!(allow.origin(&origin, &runner).is_none(), "not in a container");
    }
}
