//! Pulls are provenance only when the daemon that served the request also went to the registry:
//! the request says what was asked, the daemon's own connection to the registry says it
//! happened. A pull request waits here for that contact (a manifest fetch over plain HTTP, or a
//! TLS connection to the registry host) by the same daemon.
use std::collections::VecDeque;

use crate::model::image_ref::ImageRef;

/// How long a pull waits for its daemon's registry contact.
const WAIT_NS: u64 = 60_000_000_000;
/// A contact this long before the request was seen still counts (the daemon's read and its
/// fetch race the agent's pairing wait).
const EARLY_NS: u64 = 5_000_000_000;
const MAX_CONTACTS: usize = 1024;
const MAX_WAITING: usize = 1024;

/// A pull request served by a trusted daemon, not yet confirmed.
#[derive(Debug, Clone)]
pub struct WaitingPull {
    pub daemon_tgid: u32,
    pub store: String,
    pub image: ImageRef,
    /// The request's wall time (Unix ns), recorded in the ledger.
    pub wall_ns: i128,
    pub first_ns: u64,
}

#[derive(Default)]
pub struct Pulls {
    /// (daemon tgid, registry host, boot time) of recent registry contacts.
    contacts: VecDeque<(u32, String, u64)>,
    waiting: Vec<WaitingPull>,
}

impl Pulls {
    pub fn contacted(&mut self, tgid: u32, host: &str, now: u64) {
        if self.contacts.len() >= MAX_CONTACTS {
            self.contacts.pop_front();
        }
        self.contacts.push_back((tgid, host.to_ascii_lowercase(), now));
    }

    pub fn wait(&mut self, pull: WaitingPull) {
        if self.waiting.len() >= MAX_WAITING {
            self.waiting.remove(0);
        }
        self.waiting.push(pull);
    }

    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The waiting pulls a contact confirmed; pulls past their wait are forgotten.
    pub fn confirmed(&mut self, now: u64) -> Vec<WaitingPull> {
        let contacts = &self.contacts;
        let mut done = Vec::new();
        self.waiting.retain(|pull| {
            let confirmed = contacts.iter().any(|(tgid, host, at)| {
                *tgid == pull.daemon_tgid
                    && *at + EARLY_NS >= pull.first_ns
                    && *at <= pull.first_ns + WAIT_NS
                    && serves(host, &pull.image.registry)
            });
            if confirmed {
                done.push(pull.clone());
                return false;
            }
            now <= pull.first_ns + WAIT_NS
        });
        while self
            .contacts
            .front()
            .is_some_and(|(_, _, at)| now.saturating_sub(*at) > WAIT_NS + EARLY_NS)
        {
            self.contacts.pop_front();
        }
        done
    }
}

/// Whether a contacted host (a `Host` header or a TLS server name) is the image's registry.
fn serves(host: &str, registry: &str) -> bool {
    let bare = |h: &str| h.rsplit_once(':').map_or(h, |(name, _)| name).to_string();
    if registry == "docker.io" {
        return matches!(
            bare(host).as_str(),
            "docker.io" | "registry-1.docker.io" | "index.docker.io" | "registry.docker.io"
        );
    }
    host == registry || !host.contains(':') && bare(registry) == host
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(image: &str, first_ns: u64) -> WaitingPull {
        WaitingPull {
            daemon_tgid: 7,
            store: "docker:/var/lib/docker".into(),
            image: ImageRef::parse(image).unwrap(),
            wall_ns: 0,
            first_ns,
        }
    }

    #[test]
    fn a_pull_needs_its_daemons_registry_contact() {
        let mut pulls = Pulls::default();
        pulls.wait(pull("127.0.0.1:5000/app:1", 10_000_000_000));
        pulls.wait(pull("alpine", 10_000_000_000));
        pulls.contacted(8, "127.0.0.1:5000", 10_100_000_000);
        assert!(
            pulls.confirmed(10_200_000_000).is_empty(),
            "another process's contact"
        );
        pulls.contacted(7, "127.0.0.1:5000", 10_100_000_000);
        let done = pulls.confirmed(10_200_000_000);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].image.to_string(), "127.0.0.1:5000/app:1");
        pulls.contacted(7, "registry-1.docker.io", 11_000_000_000);
        assert_eq!(pulls.confirmed(11_000_000_000).len(), 1);
        pulls.wait(pull("evil:1", 20_000_000_000));
        assert!(pulls.confirmed(20_000_000_000 + WAIT_NS + 1).is_empty());
        assert!(!pulls.is_waiting(), "unconfirmed pulls expire");
    }
}
