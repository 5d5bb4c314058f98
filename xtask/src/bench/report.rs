//! The suite's results as the Markdown section of docs/performance.md, with each target
//! checked.
use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use serde_json::Value;

use super::Series;

const BEGIN: &str = "<!-- bench:begin (written by cargo xtask bench) -->";
const END: &str = "<!-- bench:end -->";

/// Median and range of a set of measurements.
fn stats(values: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some((sorted[sorted.len() / 2], sorted[0], sorted[sorted.len() - 1]))
}

/// The value at quantile `q` (nearest rank).
fn quantile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.to_vec();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn median_of(series: &[Series], workload: &str, watcher_prefix: &str) -> Option<f64> {
    series
        .iter()
        .find(|s| s.workload == workload && s.watcher.starts_with(watcher_prefix))
        .and_then(|s| stats(&s.ratios))
        .map(|(median, _, _)| median)
}

fn numbers(rounds: &Value, field: &str) -> Vec<f64> {
    rounds
        .as_array()
        .map(|rounds| rounds.iter().filter_map(|r| r[field].as_f64()).collect())
        .unwrap_or_default()
}

struct Target {
    what: &'static str,
    goal: String,
    measured: Option<f64>,
    unit: &'static str,
    met: bool,
}

pub fn render(commit: &str, rounds: usize, host: &[Series], docker: &Value) -> String {
    let mut out = String::new();
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "### {date}, commit {commit}: `cargo xtask bench --rounds {rounds}`\n"
    );
    let _ = writeln!(
        out,
        "Workload CPU time (user + system) under each watcher over the same round's bare run; median of {rounds} rounds, with the range.\n"
    );
    out.push_str(&host_table(host));
    let _ = writeln!(
        out,
        "\n64 MiB `docker build` (classic builder, 20.10), per sensor: median of {rounds} rounds (range).\n"
    );
    let _ = writeln!(
        out,
        "| sensor | wall ratio | sensor CPU, ms | ring bytes | kernel drops | output lines | output bytes | bytes not copied (quiet) |\n|---|---|---|---|---|---|---|---|"
    );
    let builds = docker["build64"].as_object().cloned().unwrap_or_default();
    for (sensor, rounds) in &builds {
        let cell = |field: &str, precision: usize| match stats(&numbers(rounds, field)) {
            Some((m, l, h)) => format!("{m:.precision$} ({l:.precision$}-{h:.precision$})"),
            None => "n/a".into(),
        };
        let _ = writeln!(
            out,
            "| {sensor} | {} | {} | {} | {} | {} | {} | {} |",
            cell("wall_ratio", 2),
            cell("sensor_cpu_ms", 0),
            cell("ring_bytes", 0),
            cell("kernel_drops", 0),
            cell("output_lines", 0),
            cell("output_bytes", 0),
            cell("quiet_skipped_bytes", 0)
        );
    }
    let latency: Vec<f64> = docker["latency"]["samples_ms"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let p50 = quantile(&latency, 0.5);
    let p99 = quantile(&latency, 0.99);
    let _ = writeln!(
        out,
        "\nDetection latency of {} remote builds over TCP (the daemon's read of the request to the detection line on the sensor's stdout): p50 {}, p99 {}.\n",
        latency.len(),
        p50.map_or("n/a".into(), |v| format!("{v:.1} ms")),
        p99.map_or("n/a".into(), |v| format!("{v:.1} ms")),
    );
    let idle = docker["rss"]["idle_bytes"].as_f64().map(|b| b / 1048576.0);
    let peak = docker["rss"]["peak_bytes"].as_f64().map(|b| b / 1048576.0);
    let _ = writeln!(
        out,
        "Agent RSS: idle {}, peak {} (after the 64 MiB builds and the remote builds; both rings are mapped whole, twice).\n",
        idle.map_or("n/a".into(), |v| format!("{v:.1} MiB")),
        peak.map_or("n/a".into(), |v| format!("{v:.1} MiB")),
    );

    let this = builds.get("this build");
    let this_median = |field: &str| this.and_then(|r| stats(&numbers(r, field))).map(|(m, _, _)| m);
    let below = |value: Option<f64>, limit: f64| value.is_some_and(|v| v <= limit);
    let dd = median_of(host, "dd", "this build");
    let dd_peer = median_of(host, "dd", "bpftrace, same hooks");
    let exec = median_of(host, "exec storm", "this build");
    let auditd = median_of(host, "exec storm", "auditd");
    let unix = median_of(host, "64 B round trips, unix socketpair", "this build");
    let tcp = median_of(host, "64 B round trips, loopback TCP", "this build");
    let targets = [
        Target {
            what: "dd CPU ratio",
            goal: format!(
                "<= 1.15 and below bpftrace ({})",
                dd_peer.map_or("n/a".into(), |v| format!("{v:.2}"))
            ),
            measured: dd,
            unit: "",
            met: below(dd, 1.15) && dd.zip(dd_peer).is_some_and(|(d, p)| d < p),
        },
        Target {
            what: "exec storm CPU ratio",
            goal: format!(
                "<= 1.03 and <= auditd ({})",
                auditd.map_or("n/a".into(), |v| format!("{v:.2}"))
            ),
            measured: exec,
            unit: "",
            met: below(exec, 1.03) && exec.zip(auditd).is_some_and(|(e, a)| e <= a),
        },
        Target {
            what: "64 B round trips, unix socketpair (untracked)",
            goal: "<= 1.05".into(),
            measured: unix,
            unit: "",
            met: below(unix, 1.05),
        },
        Target {
            what: "64 B round trips, loopback TCP (untracked)",
            goal: "<= 1.05".into(),
            measured: tcp,
            unit: "",
            met: below(tcp, 1.05),
        },
        Target {
            what: "64 MiB build wall ratio",
            goal: "<= 1.03".into(),
            measured: this_median("wall_ratio"),
            unit: "",
            met: below(this_median("wall_ratio"), 1.03),
        },
        Target {
            what: "64 MiB build kernel drops",
            goal: "0".into(),
            measured: this_median("kernel_drops"),
            unit: "",
            met: below(this_median("kernel_drops"), 0.0),
        },
        Target {
            what: "64 MiB build ring bytes",
            goal: "<= 1 MiB".into(),
            measured: this_median("ring_bytes"),
            unit: " B",
            met: below(this_median("ring_bytes"), 1048576.0),
        },
        Target {
            what: "64 MiB build sensor CPU",
            goal: "<= 50 ms".into(),
            measured: this_median("sensor_cpu_ms"),
            unit: " ms",
            met: below(this_median("sensor_cpu_ms"), 50.0),
        },
        Target {
            what: "64 MiB build output lines",
            goal: "<= 100".into(),
            measured: this_median("output_lines"),
            unit: "",
            met: below(this_median("output_lines"), 100.0),
        },
        Target {
            what: "detection latency p99",
            goal: "<= 100 ms".into(),
            measured: p99,
            unit: " ms",
            met: below(p99, 100.0),
        },
        Target {
            what: "idle RSS",
            goal: "<= 32 MiB".into(),
            measured: idle,
            unit: " MiB",
            met: below(idle, 32.0),
        },
    ];
    let _ = writeln!(out, "| target | goal | measured | met |\n|---|---|---|---|");
    for target in &targets {
        let _ = writeln!(
            out,
            "| {} | {} | {}{} | {} |",
            target.what,
            target.goal,
            target.measured.map_or("n/a".into(), |v| format!("{v:.2}")),
            if target.measured.is_some() {
                target.unit
            } else {
                ""
            },
            if target.met { "yes" } else { "**no**" }
        );
    }
    out
}

/// The host workloads' ratios as a Markdown table.
pub fn host_table(host: &[Series]) -> String {
    let mut out = String::from("| workload | watcher | CPU ratio | range |\n|---|---|---|---|\n");
    for series in host {
        if let Some((median, low, high)) = stats(&series.ratios) {
            let _ = writeln!(
                out,
                "| {} | {} | {median:.2} | {low:.2}-{high:.2} |",
                series.workload, series.watcher
            );
        }
    }
    out
}

/// Replaces the generated section of `path` (between its markers), or appends one.
pub fn write_into(path: &Path, section: &str) -> anyhow::Result<()> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let generated = format!("{BEGIN}\n{section}{END}");
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(start), Some(end)) if end > start => {
            format!("{}{generated}{}", &text[..start], &text[end + END.len()..])
        }
        _ => format!("{}\n{generated}\n", text.trim_end()),
    };
    fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), Some(10.0));
        assert_eq!(quantile(&values, 0.99), Some(20.0));
        assert_eq!(stats(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
    }

    #[test]
    fn the_section_replaces_the_previous_one() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("performance.md");
        fs::write(&path, "# Performance\n\nnotes\n").unwrap();
        write_into(&path, "first\n").unwrap();
        write_into(&path, "second\n").unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# Performance\n\nnotes\n"));
        assert!(text.contains("second") && !text.contains("first"));
        let _ = fs::remove_dir_all(&dir);
    }
}
