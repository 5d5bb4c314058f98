//! Detections out: allowlists and suppressions, the finding lines, and `api_exposed`.
use super::{rules, Detector, Finding, Subject, MAX_EXPOSED};
use crate::model::{
    detection::{DetectionView, Verdict},
    image_ref::ImageRef,
    operation::{Operation, OperationView},
    origin::{Origin, Transport},
};

impl Detector {
    pub(super) fn check_exposed(&mut self, origin: &Origin, now: u64, evidence: &[String]) {
        if origin.transport != Transport::Tcp {
            return;
        }
        let Some(ip) = origin.peer_ip().filter(|ip| !ip.is_loopback()) else {
            return;
        };
        let endpoint = origin.endpoint.clone().unwrap_or_else(|| "tcp".into());
        if self.exposed.len() >= MAX_EXPOSED {
            self.exposed.clear();
        }
        if !self.exposed.insert((endpoint.clone(), ip)) {
            return;
        }
        let verdict = rules::api_exposed(&endpoint, ip);
        let allowed = self.settings.allow.peer(ip);
        self.report(
            now,
            verdict,
            Subject::Exposure(Box::new(origin.clone())),
            evidence.to_vec(),
            allowed,
        );
    }

    /// Counts and logs a suppressed detection; true when it was suppressed.
    pub(super) fn suppress(&mut self, verdict: &Verdict, reason: Option<String>) -> bool {
        let Some(reason) = reason else {
            return false;
        };
        *self.stats.suppressed.entry(verdict.rule.name()).or_default() += 1;
        tracing::debug!(rule = verdict.rule.name(), %reason, summary = %verdict.summary, "detection suppressed by the allowlist");
        true
    }

    /// Counts a detection that is written, by rule and by rule and severity.
    pub(super) fn count_detection(&mut self, detection: &DetectionView) {
        *self.stats.detections.entry(detection.rule).or_default() += 1;
        *self
            .stats
            .detections_by_severity
            .entry((detection.rule, detection.severity.as_str()))
            .or_default() += 1;
    }

    pub(super) fn report(
        &mut self,
        at: u64,
        verdict: Verdict,
        subject: Subject,
        evidence: Vec<String>,
        suppressed: Option<String>,
    ) {
        if self.suppress(&verdict, suppressed) {
            return;
        }
        let identity = subject.identity();
        let identity: Vec<&str> = identity.iter().map(String::as_str).collect();
        let detection = DetectionView::new(verdict, &identity, evidence);
        self.count_detection(&detection);
        let (build, operation, api) = match subject {
            Subject::Build(build) => (Some(build), None, None),
            Subject::Operation(operation) => (None, Some(operation), None),
            Subject::Exposure(origin) | Subject::Process { origin, .. } => (None, None, Some(origin)),
        };
        self.findings.push((
            at,
            Finding::Detection {
                detection,
                build,
                operation,
                api,
            },
        ));
    }

    /// A detection about an operation, unless its client or target is allowlisted.
    pub(super) fn report_operation(
        &mut self,
        now: u64,
        verdict: Verdict,
        view: OperationView,
        evidence: Vec<String>,
    ) {
        let allowed = self.allowed(&view);
        self.report(
            now,
            verdict,
            Subject::Operation(Box::new(view)),
            evidence,
            allowed,
        );
    }

    /// Rule 3 for a load or import.
    pub(super) fn side_loaded(
        &mut self,
        now: u64,
        view: OperationView,
        how: &str,
        images: &[String],
        evidence: Vec<String>,
    ) {
        let verdict = rules::image_side_loaded(&view.origin, how, images);
        self.report_operation(now, verdict, view, evidence);
    }

    /// Why an operation's client or target is allowlisted, if it is.
    pub(super) fn allowed(&self, operation: &OperationView) -> Option<String> {
        let container_image = |id: &str| self.host.container_image(id);
        self.settings
            .allow
            .origin(&operation.origin, &container_image)
            .or_else(|| {
                image_of(&operation.operation)
                    .and_then(|target| self.settings.allow.all_repositories(&[target]))
            })
    }
}

/// The repository and reference an operation targets, for the repository allowlist.
pub(super) fn image_of(operation: &Operation) -> Option<(String, String)> {
    let image = match operation {
        Operation::ContainerCreate(params) => ImageRef::parse(params.image.as_deref()?)?,
        Operation::Import { image, .. } => image.clone()?,
        _ => return None,
    };
    Some((image.repository(), image.to_string()))
}
