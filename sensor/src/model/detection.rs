//! Detections as lines carry them: the rules and their ATT&CK techniques, severities, what a
//! rule decided (`Verdict`), the detection itself, and what detection counted.
use std::collections::BTreeMap;

use serde::Serialize;

use super::ids::stable_id;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 3] = [Severity::Medium, Severity::High, Severity::Critical];

    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn raised(self) -> Self {
        match self {
            Severity::Medium => Severity::High,
            Severity::High | Severity::Critical => Severity::Critical,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Attack {
    pub technique: &'static str,
    pub technique_name: &'static str,
    pub tactic: &'static str,
    pub tactic_name: &'static str,
}

pub const BUILD_IMAGE_ON_HOST: Attack = Attack {
    technique: "T1612",
    technique_name: "Build Image on Host",
    tactic: "TA0005",
    tactic_name: "Defense Evasion",
};

pub const DEPLOY_CONTAINER: Attack = Attack {
    technique: "T1610",
    technique_name: "Deploy Container",
    tactic: "TA0002",
    tactic_name: "Execution",
};

pub const MASQUERADING_NAME: Attack = Attack {
    technique: "T1036.005",
    technique_name: "Masquerading: Match Legitimate Name or Location",
    tactic: "TA0005",
    tactic_name: "Defense Evasion",
};

pub const EXTERNAL_REMOTE_SERVICES: Attack = Attack {
    technique: "T1133",
    technique_name: "External Remote Services",
    tactic: "TA0001",
    tactic_name: "Initial Access",
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    BuildWithoutPull,
    RunOfUnpulledImage,
    ImageSideLoaded,
    BuildEgress,
    ApiExposed,
    DaemonImpersonation,
}

impl Rule {
    pub const ALL: [Rule; 6] = [
        Rule::BuildWithoutPull,
        Rule::RunOfUnpulledImage,
        Rule::ImageSideLoaded,
        Rule::BuildEgress,
        Rule::ApiExposed,
        Rule::DaemonImpersonation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::BuildWithoutPull => "build_without_pull",
            Rule::RunOfUnpulledImage => "run_of_unpulled_image",
            Rule::ImageSideLoaded => "image_side_loaded",
            Rule::BuildEgress => "build_egress",
            Rule::ApiExposed => "api_exposed",
            Rule::DaemonImpersonation => "daemon_impersonation",
        }
    }

    pub fn attack(self) -> Attack {
        match self {
            Rule::RunOfUnpulledImage => DEPLOY_CONTAINER,
            Rule::ApiExposed => EXTERNAL_REMOTE_SERVICES,
            Rule::DaemonImpersonation => MASQUERADING_NAME,
            _ => BUILD_IMAGE_ON_HOST,
        }
    }
}

/// What a rule decided, before the allowlist has its say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub rule: Rule,
    pub severity: Severity,
    pub summary: String,
    /// Facts that set the severity, for the analyst.
    pub reasons: Vec<String>,
}

/// A detection line's `detection` object.
#[derive(Debug, Clone, Serialize)]
pub struct DetectionView {
    /// Unique per finding and stable: hashed from the rule and what makes the finding distinct
    /// (see [`DetectionView::new`]), so the same finding replayed keeps its id.
    pub id: String,
    pub rule: &'static str,
    pub severity: Severity,
    pub summary: String,
    pub attack: Attack,
    pub reasons: Vec<String>,
    /// Ids of the event lines (socket.data, process.exec, socket.connect) that show it.
    pub evidence: Vec<String>,
}

impl DetectionView {
    /// `identity` is what sets this finding apart from every other of its rule: a build's or an
    /// operation's id, an endpoint and its peer, a process and when it was seen. Two distinct
    /// findings never share it; a replay gives the same.
    pub fn new(verdict: Verdict, identity: &[&str], evidence: Vec<String>) -> Self {
        let mut parts = vec![verdict.rule.name()];
        parts.extend_from_slice(identity);
        Self {
            id: stable_id("det", &parts),
            rule: verdict.rule.name(),
            severity: verdict.severity,
            summary: verdict.summary,
            attack: verdict.rule.attack(),
            reasons: verdict.reasons,
            evidence,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct DetectStats {
    pub operations: BTreeMap<&'static str, u64>,
    pub detections: BTreeMap<&'static str, u64>,
    /// The same, by (rule, severity), for the metrics.
    #[serde(skip)]
    pub detections_by_severity: BTreeMap<(&'static str, &'static str), u64>,
    /// Detections an allowlist entry suppressed.
    pub suppressed: BTreeMap<&'static str, u64>,
    /// Streams that stopped parsing as HTTP somewhere and had to resync.
    pub http_desyncs: u64,
    pub builds_open: usize,
    pub ledger_records: usize,
}
