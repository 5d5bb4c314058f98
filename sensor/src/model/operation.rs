//! Operations on a container engine, typed: what a Docker or Podman API request, or a builder's
//! command line, asks for, and the `docker.operation` line that reports one with who asked.
use std::collections::BTreeSet;

use serde::Serialize;

use super::{ids::OperationId, image_ref::ImageRef, origin::Origin};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    Docker,
    Libpod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Builder {
    Classic,
    Buildkit,
    Buildx,
    Podman,
    Buildah,
    Kaniko,
}

impl Builder {
    /// The builder writes its images into dockerd's image store (under its data root).
    pub fn uses_docker_image_store(self) -> bool {
        matches!(self, Builder::Classic | Builder::Buildkit | Builder::Buildx)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildParams {
    /// Target names as given (`t=`, `-t`), normalised.
    pub tags: Vec<ImageRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_context: Option<String>,
    /// The local context directory of a daemon-less build, as given on its command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_dir: Option<String>,
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub build_arg_keys: BTreeSet<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `pull=1`: the client asked the daemon to refresh the base images.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
}

/// A bind mount that gives a container power over the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SensitiveMount {
    pub source: String,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateParams {
    /// As given by the client (a name or an id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub privileged: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sensitive_mounts: Vec<SensitiveMount>,
    pub pid_host: bool,
    pub network_host: bool,
    pub ipc_host: bool,
    /// The JSON body was cut by the capture; fields after the cut are unknown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub body_truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Operation {
    Build {
        builder: Builder,
        #[serde(flatten)]
        params: BuildParams,
    },
    /// `POST /session` (BuildKit's file-sync session for a build) or `POST /grpc` (buildx).
    BuildkitSession {
        grpc: bool,
    },
    Pull {
        image: ImageRef,
    },
    Import {
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<ImageRef>,
        source: String,
    },
    Load,
    Push {
        image: ImageRef,
    },
    Tag {
        source: String,
        target: ImageRef,
    },
    Commit {
        container: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<ImageRef>,
    },
    ContainerCreate(CreateParams),
    ContainerStart {
        container: String,
    },
    Exec {
        container: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        cmd: Vec<String>,
    },
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Build { .. } => "build",
            Operation::BuildkitSession { .. } => "buildkit_session",
            Operation::Pull { .. } => "pull",
            Operation::Import { .. } => "import",
            Operation::Load => "load",
            Operation::Push { .. } => "push",
            Operation::Tag { .. } => "tag",
            Operation::Commit { .. } => "commit",
            Operation::ContainerCreate(_) => "container_create",
            Operation::ContainerStart { .. } => "container_start",
            Operation::Exec { .. } => "exec",
        }
    }

    /// Whether the body is needed to know the operation (the rest are known from the head).
    pub fn needs_body(&self) -> bool {
        matches!(
            self,
            Operation::ContainerCreate(_) | Operation::Exec { .. } | Operation::Build { .. }
        )
    }
}

/// One API request (or command line) that buildwatch follows.
#[derive(Debug, Clone, Serialize)]
pub struct OperationView {
    pub id: OperationId,
    #[serde(flatten)]
    pub operation: Operation,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<Api>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(flatten)]
    pub origin: Origin,
    /// A trusted daemon's side (or a builder's own command line) showed it. An unconfirmed
    /// operation was only seen written by a client and never changes the image ledger.
    pub confirmed: bool,
    /// Ids of the event lines that carried it.
    pub evidence: Vec<String>,
}

impl OperationView {
    /// The image store the operation happened in, when a trusted daemon (or the builder's own
    /// command line) showed it.
    pub fn store(&self) -> Option<&str> {
        if !self.confirmed {
            return None;
        }
        self.origin.store.as_deref()
    }
}
