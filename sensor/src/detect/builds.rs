//! Build sessions: one object per image build, from its request (or builder command line) to its
//! end, collecting what happened meanwhile: base images the daemon fetched, RUN steps exec'd
//! under the container runtime, and network egress.
use std::collections::HashMap;

use serde::Serialize;

use super::transfers::StoreSnapshot;
use crate::{
    docker::dockerfile::Dockerfile,
    model::{
        detection::Severity,
        ids::BuildId,
        image_ref::ImageRef,
        operation::{BuildParams, Builder},
        origin::Origin,
        process::ProcessView,
    },
};

/// Step processes and containers remembered across all open builds.
const MAX_STEP_OWNERS: usize = 4096;
/// Steps and egress entries kept per build.
const MAX_STEPS: usize = 256;
const MAX_EGRESS: usize = 64;
/// A build still open after this long is closed (its end was not seen).
pub const MAX_BUILD_NS: u64 = 6 * 3600 * 1_000_000_000;

/// Executables that belong to the container runtime itself, not to a build step.
const RUNTIME: [&str; 9] = [
    "runc",
    "crun",
    "conmon",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "docker-init",
    "catatonit",
    "buildkit-runc",
    "docker-proxy",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Open,
    Finished,
    /// Still open when the sensor stopped or after the longest build time.
    Unfinished,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseImage {
    pub registry: String,
    pub repository: String,
    pub reference: String,
    /// The manifest digest the daemon fetched, when it fetched one by digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The daemon fetched its manifest from the registry during the build.
    pub fetched: bool,
    /// Named by a FROM line of the Dockerfile in the build context.
    pub in_dockerfile: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The process.exec line.
    pub evidence: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Egress {
    /// `step_command` (a RUN step ran a network tool), `dockerfile` (a RUN line fetches), or
    /// `daemon_connection` (the daemon itself connected somewhere that is not a registry, e.g.
    /// for `ADD https://...`).
    pub kind: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Build {
    pub id: BuildId,
    pub builder: Builder,
    pub state: BuildState,
    #[serde(flatten)]
    pub origin: Origin,
    #[serde(flatten)]
    pub params: BuildParams,
    /// What the Dockerfile in the build context says (classic builds, when the context was
    /// captured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<Dockerfile>,
    /// Why a daemon-less build's Dockerfile was not read (not a regular file, not readable by
    /// the builder's user, on a kernel file system, too large, timed out...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile_unread: Option<String>,
    pub base_images: Vec<BaseImage>,
    /// Tags that named pulled content before this build took them over (name reuse: a run of
    /// that name is now a run of this build's image).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replaced_pulled: Vec<String>,
    pub steps: Vec<Step>,
    #[serde(skip_serializing_if = "is_zero")]
    pub steps_dropped: u32,
    pub egress: Vec<Egress>,
    /// The ids of the images the build wrote (Docker builders; the classic builder's
    /// intermediate images included), read from the daemon's image store at the build's end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    pub start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The build_without_pull detection raised for it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    pub evidence: Vec<String>,
    #[serde(skip)]
    pub start_ns: u64,
    /// The daemon serving the build (API builds).
    #[serde(skip)]
    pub daemon_tgid: Option<u32>,
    /// The image store the build writes to (confirmed builds only).
    #[serde(skip)]
    pub store: Option<String>,
    /// The store's images when the build began (the daemon could be asked).
    #[serde(skip)]
    pub store_before: Option<StoreSnapshot>,
    /// The builder process (daemon-less builds).
    #[serde(skip)]
    pub builder_tgid: Option<u32>,
    #[serde(skip)]
    pub conn_ids: Vec<u64>,
    /// A build_egress detection was written (once per build).
    #[serde(skip)]
    pub egress_detected: bool,
    /// The severity was already raised for egress (seen in the Dockerfile).
    #[serde(skip)]
    pub raised_for_egress: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Build {
    /// The file name its Dockerfile has (`-f` may give a path).
    pub fn dockerfile_name(&self) -> &str {
        self.params.dockerfile.as_deref().map_or("Dockerfile", file_name)
    }

    /// The base images its Dockerfile names, as not fetched yet.
    pub fn add_dockerfile_bases(&mut self) {
        let Some(instructions) = &self.instructions else {
            return;
        };
        for from in instructions.from.clone() {
            if let Some(image) = ImageRef::parse(&from) {
                self.add_base_image(BaseImage {
                    registry: image.registry.clone(),
                    repository: image.repository(),
                    reference: image.to_string(),
                    digest: None,
                    fetched: false,
                    in_dockerfile: true,
                });
            }
        }
    }

    /// Adds a base image or merges what is new about one already listed (a fetch by digest
    /// after the fetch by tag, a fetch of an image the Dockerfile named).
    pub fn add_base_image(&mut self, image: BaseImage) {
        let same = |b: &BaseImage| {
            b.reference == image.reference || image.digest.is_some() && b.repository == image.repository
        };
        match self.base_images.iter_mut().find(|b| same(b)) {
            Some(known) => {
                known.fetched |= image.fetched;
                known.in_dockerfile |= image.in_dockerfile;
                if known.digest.is_none() {
                    known.digest = image.digest;
                }
            }
            None => self.base_images.push(image),
        }
    }

    /// Records a step; false when the build already holds as many as it keeps.
    pub fn add_step(&mut self, step: Step) -> bool {
        if self.steps.len() >= MAX_STEPS {
            self.steps_dropped += 1;
            return false;
        }
        self.steps.push(step);
        true
    }

    /// Records egress; true when it is new.
    pub fn add_egress(&mut self, egress: Egress) -> bool {
        if self.egress.len() >= MAX_EGRESS || self.egress.contains(&egress) {
            return false;
        }
        self.egress.push(egress);
        true
    }

    pub fn egress_details(&self) -> Vec<String> {
        self.egress.iter().map(|e| e.detail.clone()).collect()
    }
}

/// The last component of a path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether `argv` is one of the Dockerfile's RUN commands: shell form (`/bin/sh -c <line>`) or
/// exec form (`["wget", "-q", ...]`).
pub fn runs(dockerfile: &Dockerfile, argv: &[String]) -> bool {
    let shell = match argv {
        [_, flag, command, ..] if flag == "-c" => Some(command.trim()),
        _ => None,
    };
    dockerfile.run.iter().any(|line| {
        let line = line.trim();
        shell == Some(line)
            || serde_json::from_str::<Vec<String>>(line).is_ok_and(|exec| exec.as_slice() == argv)
    })
}

/// Which build each step container and step process belongs to, so that a step's children and
/// its connections stay with its build when several builds are open.
#[derive(Default)]
pub struct StepOwners {
    pub by_container: HashMap<String, BuildId>,
    pub by_pid: HashMap<u32, BuildId>,
}

impl StepOwners {
    pub fn remember(&mut self, process: &ProcessView, build_id: &BuildId) {
        if self.by_pid.len() >= MAX_STEP_OWNERS {
            self.by_pid.clear();
        }
        if self.by_container.len() >= MAX_STEP_OWNERS {
            self.by_container.clear();
        }
        self.by_pid.insert(process.pid, build_id.clone());
        if let Some(container) = &process.container_id {
            self.by_container.insert(container.clone(), build_id.clone());
        }
    }

    pub fn forget(&mut self, build_id: &BuildId) {
        self.by_pid.retain(|_, b| b != build_id);
        self.by_container.retain(|_, b| b != build_id);
    }
}

/// Whether an exec'd process is one of a build's steps: it runs under the container runtime (or
/// under the daemon-less builder) and is not the runtime itself.
pub fn runs_under_runtime(process: &ProcessView) -> bool {
    let own = process.exe.as_deref().unwrap_or(&process.comm);
    if is_runtime(own) || is_runtime(&process.comm) {
        return false;
    }
    process
        .ancestry
        .iter()
        .flatten()
        .any(|a| is_runtime(a.exe.as_deref().unwrap_or(&a.comm)) || is_runtime(&a.comm))
}

fn is_runtime(path_or_comm: &str) -> bool {
    let name = path_or_comm.rsplit('/').next().unwrap_or(path_or_comm);
    // runc's re-exec'd init shows as "runc:[2:INIT]".
    let name = name.split(':').next().unwrap_or(name);
    RUNTIME
        .iter()
        .any(|r| name == *r || name.starts_with("containerd-shim"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::process::Ancestor;

    fn process(comm: &str, exe: &str, ancestors: &[&str]) -> ProcessView {
        ProcessView {
            pid: 9,
            tid: 9,
            ppid: Some(8),
            comm: comm.into(),
            uid: 0,
            gid: 0,
            exe: Some(exe.into()),
            argv: None,
            argv_truncated: false,
            cwd: None,
            container_id: None,
            ancestry: Some(
                ancestors
                    .iter()
                    .enumerate()
                    .map(|(i, c)| Ancestor {
                        pid: i as u32 + 1,
                        comm: c.to_string(),
                        exe: None,
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn steps_are_children_of_the_runtime() {
        assert!(runs_under_runtime(&process(
            "sh",
            "/bin/busybox",
            &["runc", "dockerd"]
        )));
        assert!(runs_under_runtime(&process(
            "wget",
            "/bin/busybox",
            &["sh", "containerd-shim", "containerd"]
        )));
        assert!(!runs_under_runtime(&process(
            "runc:[2:INIT]",
            "/usr/bin/runc",
            &["runc", "dockerd"]
        )));
        assert!(!runs_under_runtime(&process(
            "docker",
            "/usr/bin/docker",
            &["bash", "sshd"]
        )));
    }
}
