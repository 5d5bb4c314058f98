//! `cargo xtask fuzz [--seconds N]`: every cargo-fuzz target in `sensor/fuzz` for N seconds
//! each, seeded from `sensor/testdata`, with a table of executions per target. A crash fails
//! the run (libFuzzer leaves the input under `sensor/fuzz/artifacts/<target>/`).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _};
use base64::Engine as _;

use crate::{build, prerequisites};

/// Every target, and which seeds it starts from.
const TARGETS: [(&str, Seeds); 13] = [
    ("decode", Seeds::None),
    ("http_stream", Seeds::Streams),
    ("docker_api", Seeds::Streams),
    ("buildkit", Seeds::Streams),
    ("buildkit_grpc", Seeds::Upgraded),
    ("containerd_grpc", Seeds::PriorKnowledge),
    ("dockerfile_tar", Seeds::Streams),
    ("dns", Seeds::Dns),
    ("tls", Seeds::Streams),
    ("ledger", Seeds::Ledger),
    ("config", Seeds::Config),
    ("recording", Seeds::Recordings),
    ("redact", Seeds::Streams),
];

#[derive(Clone, Copy)]
enum Seeds {
    None,
    /// The byte streams recorded from the real daemon (`sensor/testdata/*.jsonl`).
    Streams,
    /// What those streams carried after an h2c upgrade (buildx's `/grpc` and `/session`),
    /// behind the target's one shape byte.
    Upgraded,
    /// The streams that are HTTP/2 from their first byte (containerd's socket), behind the
    /// target's one shape byte.
    PriorKnowledge,
    Dns,
    Ledger,
    Config,
    Recordings,
}

pub fn fuzz(seconds: u64) -> anyhow::Result<()> {
    prerequisites::ensure_build_tools()?;
    ensure_cargo_fuzz()?;
    let root = build::workspace_root();
    let fuzz_dir = root.join("sensor/fuzz");
    let target_dir = root.join("target/fuzz");
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for (target, seeds) in TARGETS {
        let corpus = target_dir.join("corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        seed(&root, &corpus, seeds)?;
        let output = Command::new("cargo")
            .current_dir(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", "-O", target])
            .arg(&corpus)
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                "-rss_limit_mb=2048",
                "-max_len=65536",
                "-print_final_stats=1",
            ])
            .env("BUILDWATCH_SKIP_EBPF", "1")
            .env("CARGO_TARGET_DIR", &target_dir)
            .output()
            .with_context(|| format!("running cargo fuzz for {target}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let execs = final_stat(&stderr, "stat::number_of_executed_units:")
            .or_else(|| final_stat(&stderr, "stat::number_of_executed_runs:"))
            .unwrap_or(0);
        println!("xtask: fuzz {target}: {execs} executions in {seconds} s");
        if !output.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            failed.push(format!(
                "{target} failed (a crash is a bug: make its input a unit test)"
            ));
        } else if execs == 0 {
            failed.push(format!(
                "{target} ran no input (it did not start, or libFuzzer printed no final stats)"
            ));
        }
        results.push((target, execs));
    }
    println!("| target | executions | seconds |");
    println!("|---|---|---|");
    for (target, execs) in results {
        println!("| {target} | {execs} | {seconds} |");
    }
    if !failed.is_empty() {
        bail!("{} fuzz target(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if installed {
        return Ok(());
    }
    println!("xtask: installing cargo-fuzz (needed by the fuzz targets)");
    prerequisites::run("cargo", &["install", "cargo-fuzz", "--locked"])
}

fn final_stat(stderr: &str, key: &str) -> Option<u64> {
    stderr
        .lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// Writes the seeds of one target into its corpus (idempotent: named by source).
fn seed(root: &Path, corpus: &Path, seeds: Seeds) -> anyhow::Result<()> {
    let testdata = root.join("sensor/testdata");
    let write = |name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        fs::write(corpus.join(format!("seed-{name}")), bytes).with_context(|| format!("writing seed {name}"))
    };
    match seeds {
        Seeds::None => {}
        Seeds::Streams => {
            for fixture in fixtures(&testdata)? {
                let name = fixture.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let mut bytes = stream_bytes(&fixture)?;
                bytes.truncate(64 * 1024);
                write(&name, &bytes)?;
            }
        }
        Seeds::Upgraded => {
            for fixture in fixtures(&testdata)? {
                let name = fixture.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let bytes = stream_bytes(&fixture)?;
                let upgraded = bytes.starts_with(b"POST /grpc") || bytes.starts_with(b"POST /session");
                let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n").filter(|_| upgraded) else {
                    continue;
                };
                let mut seed = vec![0];
                seed.extend_from_slice(&bytes[end + 4..]);
                seed.truncate(64 * 1024);
                write(&name, &seed)?;
            }
        }
        Seeds::PriorKnowledge => {
            for fixture in fixtures(&testdata)? {
                let name = fixture.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let bytes = stream_bytes(&fixture)?;
                if !bytes.starts_with(b"PRI * HTTP/2.0") {
                    continue;
                }
                let mut seed = vec![0];
                seed.extend_from_slice(&bytes);
                seed.truncate(64 * 1024);
                write(&name, &seed)?;
            }
        }
        Seeds::Dns => {
            // A query for payload.evil.example (A), as a build step's resolver sends it.
            let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in ["payload", "evil", "example"] {
                query.push(label.len() as u8);
                query.extend_from_slice(label.as_bytes());
            }
            query.extend_from_slice(&[0, 0, 1, 0, 1]);
            write("query", &query)?;
        }
        Seeds::Ledger => write(
            "ledger",
            br#"{"version":2,"records":[{"store":"docker:/var/lib/docker","reference":"docker.io/library/alpine:3","repository":"docker.io/library/alpine","source":"pull","time_ns":1,"via":"docker.io"}]}"#,
        )?,
        Seeds::Config => write("example", &fs::read(root.join("docs/config.example.toml"))?)?,
        Seeds::Recordings => {
            for recording in fs::read_dir(testdata.join("recordings"))?.flatten() {
                let text = fs::read_to_string(recording.path())?;
                let head: String = text.lines().take(200).collect::<Vec<_>>().join("\n");
                write(&recording.file_name().to_string_lossy(), head.as_bytes())?;
            }
        }
    }
    Ok(())
}

fn fixtures(testdata: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = fs::read_dir(testdata)
        .with_context(|| format!("reading {}", testdata.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    found.sort();
    Ok(found)
}

/// The bytes of a recorded stream fixture (one JSON line per syscall).
fn stream_bytes(fixture: &Path) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for line in fs::read_to_string(fixture)?.lines() {
        let record: serde_json::Value = serde_json::from_str(line)?;
        let content = record["content"].as_str().unwrap_or_default();
        if record["encoding"] == "base64" {
            bytes.extend(base64::engine::general_purpose::STANDARD.decode(content)?);
        } else {
            bytes.extend_from_slice(content.as_bytes());
        }
    }
    Ok(bytes)
}
