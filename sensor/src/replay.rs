//! `buildwatch replay`: the same engine, offline, on a recording. Times come from the recorded
//! events and ticks, host questions are answered from the recording, and the ledger starts as
//! the live run's did, so a replay reaches the live run's conclusions: same lines, same ids.
use std::{path::PathBuf, rc::Rc};

use crate::{
    config::Config,
    connections::ConnectionTable,
    daemons::Daemons,
    detect::{allow::Allowlist, ledger::Ledger, Detector, Settings},
    engine::Engine,
    host::{recorded::ReplayHost, SharedHost},
    model::line::LineKind,
    output::{Emitter, Sink},
    process_table::ProcessTable,
    recording::{Input, Reader},
};

pub struct ReplayOptions {
    pub recording: PathBuf,
    /// Detection settings to replay with instead of the recorded ones (to try allowlists).
    pub config: Option<Config>,
    /// Print every line the live run wrote (its `output.kinds`), not only detections.
    pub all: bool,
}

pub fn replay(options: ReplayOptions) -> anyhow::Result<()> {
    let sink = Sink::writer(std::io::stdout());
    let mut sink = if options.all {
        // What the live run wrote.
        sink.kinds(&Reader::open(&options.recording)?.header.config.output.kinds)
    } else {
        sink.only(vec![LineKind::Detection])
    };
    let mismatches = replay_into(&options.recording, options.config, &mut sink)?;
    if mismatches > 0 {
        tracing::warn!(
            mismatches,
            "the recording's answers did not match this engine's questions (recorded by another version?)"
        );
    }
    Ok(())
}

/// Replays `recording` into `sink`; returns how many host questions the recording could not
/// answer (0 for a recording of this version).
pub fn replay_into(
    recording: &std::path::Path,
    tuned: Option<Config>,
    sink: &mut Sink,
) -> anyhow::Result<u64> {
    let mut reader = Reader::open(recording)?;
    let header = reader.header.clone();
    let mut config = header.config.clone();
    if let Some(tuned) = tuned {
        config.detect = tuned.detect;
        config.allow = tuned.allow;
    }
    let replay_host = Rc::new(ReplayHost::default());
    let host: SharedHost = replay_host.clone();
    let detector = Detector::new(
        Settings {
            allow: Allowlist::compile(&config.allow)?,
            lookback_ns: u64::try_from(config.detect.lookback.as_nanos()).unwrap_or(u64::MAX),
            boot_to_wall_ns: header.boot_to_wall_ns,
        },
        Ledger::from_records(header.ledger.clone(), config.detect.ledger_max_records),
        host.clone(),
    );
    let mut engine = Engine::new(
        ProcessTable::new(host.clone()),
        ConnectionTable::new(host),
        Daemons::new(&config.watch.daemons, replay_host.clone(), None),
        Emitter::with_clock(header.host.clone(), header.run_id.clone(), header.boot_to_wall_ns),
        detector,
    )
    .with_api_marker(&header.api_marker);
    let mut last_time = 0;
    let mut finished = false;
    while let Some(step) = reader.next_step() {
        let (input, answers) = step?;
        match &input {
            Input::Event(event) => last_time = event.header().boot_ns,
            Input::Tick(now) | Input::Seed(now) => last_time = *now,
            Input::Finish(_) => finished = true,
            _ => {}
        }
        replay_host.load(answers);
        engine.apply(input, sink)?;
    }
    if !finished {
        // The live run did not stop cleanly; report what was pending at its last event.
        engine.apply(Input::Finish(last_time), sink)?;
    }
    sink.flush()?;
    Ok(replay_host.mismatches())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::sink::Captured;

    fn shipped(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/recordings")
            .join(name)
    }

    fn detections(recording: &std::path::Path, tuned: Option<Config>) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let mut sink = Sink::writer(captured.clone()).only(vec![LineKind::Detection]);
        let mismatches = replay_into(recording, tuned, &mut sink).unwrap();
        assert_eq!(mismatches, 0, "every host question has its recorded answer");
        captured.lines()
    }

    fn rules_and_severities(found: &[serde_json::Value]) -> Vec<(&str, &str)> {
        found
            .iter()
            .map(|d| {
                (
                    d["detection"]["rule"].as_str().unwrap(),
                    d["detection"]["severity"].as_str().unwrap(),
                )
            })
            .collect()
    }

    fn captured_builds(recording: &std::path::Path) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let mut sink = Sink::writer(captured.clone()).only(vec![LineKind::Build]);
        replay_into(recording, None, &mut sink).unwrap();
        captured.lines()
    }

    #[test]
    fn shipped_recording_replays_to_its_detections() {
        let found = detections(&shipped("remote-build-and-privileged-run.jsonl"), None);
        let rules = rules_and_severities(&found);
        assert_eq!(
            rules,
            [
                ("api_exposed", "medium"),
                ("build_without_pull", "critical"),
                ("build_egress", "critical"),
                ("run_of_unpulled_image", "critical"),
            ]
        );
        let summary = captured_builds(&shipped("remote-build-and-privileged-run.jsonl"));
        let egress = &summary[0]["build"]["egress"];
        assert!(
            egress
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == "step_connection"),
            "the step's own connection: {egress}"
        );
        // Deterministic: the same ids twice.
        let again = detections(&shipped("remote-build-and-privileged-run.jsonl"), None);
        assert_eq!(found, again);
    }

    #[test]
    fn shipped_local_recording_flags_the_build_not_the_ci_pattern() {
        let path = shipped("local-builds-and-import.jsonl");
        let found = detections(&path, None);
        let rules = rules_and_severities(&found);
        assert_eq!(
            rules,
            [
                ("build_without_pull", "medium"),
                ("build_without_pull", "medium"),
                ("run_of_unpulled_image", "high"),
                ("image_side_loaded", "medium")
            ]
        );
        assert_eq!(found[0]["build"]["builder"], "buildkit");
        let builds = captured_builds(&path);
        assert_eq!(
            builds.len(),
            3,
            "the CI build, the BuildKit build, the untagged build"
        );
        // The untagged build's image, run by its id.
        let untagged = builds
            .iter()
            .find(|b| b["build"]["tags"].as_array().is_some_and(Vec::is_empty))
            .expect("the untagged build");
        let image = untagged["build"]["images"][0]
            .as_str()
            .expect("the image it wrote");
        assert!(
            found[2]["detection"]["summary"].as_str().unwrap().contains(image),
            "{}",
            found[2]
        );
        let ci = builds
            .iter()
            .find(|b| {
                b["build"]["tags"][0]
                    .as_str()
                    .is_some_and(|t| t.contains("/bwbase:1-ci-"))
            })
            .expect("the CI build");
        assert!(
            ci["build"]["detection_id"].is_null(),
            "pulled first, not flagged: {ci}"
        );
    }

    #[test]
    fn replay_with_a_tuned_allowlist() {
        let tuned = Config::parse("[allow]\npeer_cidrs = [\"10.0.0.0/8\"]\n").unwrap();
        let found = detections(&shipped("remote-build-and-privileged-run.jsonl"), Some(tuned));
        let rules: Vec<&str> = found
            .iter()
            .map(|d| d["detection"]["rule"].as_str().unwrap())
            .collect();
        assert!(
            !rules.contains(&"api_exposed") && !rules.contains(&"build_without_pull"),
            "{rules:?}"
        );
    }

    #[test]
    fn not_a_recording_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("bw-not-a-recording-{}", std::process::id()));
        std::fs::write(&path, "{\"kind\":\"sensor.start\"}\n").unwrap();
        let mut sink = Sink::writer(std::io::sink());
        let err = replay_into(&path, None, &mut sink).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a buildwatch recording header"),
            "{err:#}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
