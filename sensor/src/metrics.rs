//! `[metrics]`: the counters of `sensor.health` as Prometheus metrics on `/metrics`, served by a
//! thread of its own from the latest snapshot the event loop left (once a second), so a scrape
//! never waits for the loop and the loop never waits for a scraper. A snapshot older than
//! `STALE_AFTER` means the loop stopped: `/metrics` then answers 503, so a liveness probe on it
//! restarts a stalled sensor as systemd's watchdog does.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};
use serde::{Deserialize, Serialize};

use crate::{
    model::detection::{Rule, Severity},
    output::schema::Stats,
};

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to serve `/metrics` on (for example "127.0.0.1:9464"); off when unset. The
    /// installed unit allows IP sockets only when this is set.
    pub listen: Option<SocketAddr>,
}

/// Longest a scraper may take to send its request or read the answer: one connection is
/// served at a time, so a stalled client must not hold the next scrape.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of a request head read at most.
const MAX_REQUEST: usize = 8192;
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The loop publishes once a second; this long without a snapshot, it is stalled.
const STALE_AFTER: Duration = Duration::from_secs(30);

struct Snapshot {
    stats: Option<Stats>,
    /// When `stats` was published (or the server created, before the first one).
    at: Instant,
}

/// What the event loop shares with the server: the latest counters, and the build facts.
#[derive(Clone)]
pub struct Shared {
    latest: Arc<Mutex<Snapshot>>,
    kernel: String,
}

impl Shared {
    pub fn new(kernel: &str) -> Self {
        Self {
            latest: Arc::new(Mutex::new(Snapshot {
                stats: None,
                at: Instant::now(),
            })),
            kernel: kernel.to_string(),
        }
    }

    pub fn publish(&self, stats: Stats) {
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = Snapshot {
            stats: Some(stats),
            at: Instant::now(),
        };
    }

    /// The text, or how long the loop has been silent when it is stalled.
    fn render(&self) -> Result<String, Duration> {
        let (stats, age) = {
            let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
            (latest.stats.clone(), latest.at.elapsed())
        };
        if age > STALE_AFTER {
            return Err(age);
        }
        Ok(render(stats.as_ref(), &self.kernel))
    }
}

/// Binds `address` now (a taken port fails the start with a clear error) and serves from a
/// thread.
pub fn serve(address: SocketAddr, shared: Shared) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(address).with_context(|| format!("metrics.listen: cannot listen on {address}"))?;
    std::thread::Builder::new()
        .name("buildwatch-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(err) = answer(stream, &shared) {
                            tracing::debug!("a metrics request failed: {err}");
                        }
                    }
                    Err(err) => tracing::debug!("accepting a metrics connection failed: {err}"),
                }
            }
        })
        .context("starting the metrics thread")?;
    Ok(())
}

fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => match shared.render() {
            Ok(text) => ("200 OK", CONTENT_TYPE, text),
            Err(age) => (
                "503 Service Unavailable",
                "text/plain",
                format!("the event loop has published nothing for {} s\n", age.as_secs()),
            ),
        },
        (b"GET", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n".to_string(),
        ),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A counter family with one label, from a map of counts.
fn counters<'a>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    counts: impl IntoIterator<Item = (&'a str, u64)>,
) {
    let family = Family::<Labels, Counter>::default();
    for (value, count) in counts {
        family.get_or_create(&labels(&[(label, value)])).inc_by(count);
    }
    registry.register(name, help, family);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let counter = Counter::<u64>::default();
    counter.inc_by(value);
    registry.register(name, help, counter);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge = Gauge::<i64>::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

/// The OpenMetrics text of a snapshot (only build info before the first one).
pub fn render(stats: Option<&Stats>, kernel: &str) -> String {
    let mut registry = Registry::with_prefix("buildwatch");
    registry.register(
        "build",
        "The sensor's version and the kernel it runs on",
        Info::new(labels(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("kernel", kernel),
        ])),
    );
    if let Some(stats) = stats {
        add_stats(&mut registry, stats);
    }
    let mut text = String::new();
    if encode(&mut text, &registry).is_err() {
        text = "# EOF\n".into();
    }
    text
}

fn add_stats(registry: &mut Registry, stats: &Stats) {
    counters(
        registry,
        "events",
        "Lines written, by kind",
        "kind",
        stats.events.iter().map(|(k, v)| (*k, *v)),
    );
    let loss = stats.loss.clone().unwrap_or_default();
    counters(
        registry,
        "kernel_drops",
        "Records the kernel could not write (ring full), by kind",
        "kind",
        loss.kernel_drops.iter().map(|(k, v)| (*k, *v)),
    );
    counters(
        registry,
        "queue_drops",
        "Lines dropped because the output queue was full, by kind",
        "kind",
        loss.queue_drops.iter().map(|(k, v)| (*k, *v)),
    );
    counters(
        registry,
        "output_errors",
        "Lines an output failed to write, by kind",
        "kind",
        loss.output_errors.iter().map(|(k, v)| (*k, *v)),
    );
    counters(
        registry,
        "table_full",
        "Kernel table inserts refused because the table was full, by table",
        "table",
        loss.table_full.iter().map(|(k, v)| (*k, *v)),
    );
    counters(
        registry,
        "budget_skipped_bytes",
        "Bytes not captured because a connection spent its byte budget, by side",
        "side",
        loss.budget_skipped_bytes.iter().map(|(k, v)| (*k, *v)),
    );
    counter(
        registry,
        "decode_errors",
        "Kernel records the agent could not decode",
        stats.decode_errors,
    );
    counter(
        registry,
        "ledger_write_errors",
        "Image ledger writes that failed",
        loss.ledger_write_errors,
    );
    counter(
        registry,
        "reads_abandoned",
        "/proc or file reads abandoned at their deadline",
        loss.reads_abandoned,
    );
    counter(
        registry,
        "ring_bytes",
        "Bytes read from the kernel's rings",
        stats.ring_bytes.unwrap_or_default(),
    );
    counter(
        registry,
        "quiet_skipped_bytes",
        "Bytes on tracked connections the kernel did not copy because the agent did not need them",
        stats.quiet_skipped_bytes.unwrap_or_default(),
    );
    let detect = &stats.detect;
    let family = Family::<Labels, Counter>::default();
    // Every series from the start, at zero: a counter that first appears at 1 shows no
    // `increase()` in Prometheus, so the first detection would not alert.
    for rule in Rule::ALL {
        for severity in Severity::ALL {
            let count = detect
                .detections_by_severity
                .get(&(rule.name(), severity.as_str()))
                .copied()
                .unwrap_or(0);
            family
                .get_or_create(&labels(&[("rule", rule.name()), ("severity", severity.as_str())]))
                .inc_by(count);
        }
    }
    registry.register("detections", "Detections written, by rule and severity", family);
    counters(
        registry,
        "suppressed",
        "Detections an allowlist entry suppressed, by rule",
        "rule",
        detect.suppressed.iter().map(|(k, v)| (*k, *v)),
    );
    counters(
        registry,
        "operations",
        "Docker API operations seen, by type",
        "operation",
        detect.operations.iter().map(|(k, v)| (*k, *v)),
    );
    counter(
        registry,
        "http_desyncs",
        "API streams that had to resynchronise",
        detect.http_desyncs,
    );
    gauge(
        registry,
        "ledger_records",
        "Records in the image ledger",
        detect.ledger_records as i64,
    );
    gauge(
        registry,
        "builds_open",
        "Builds open now",
        detect.builds_open as i64,
    );
    gauge(
        registry,
        "connections_tracked",
        "API connections tracked now",
        stats.connections_tracked as i64,
    );
    gauge(
        registry,
        "processes_tracked",
        "Processes in the agent's table",
        stats.processes_tracked as i64,
    );
    gauge(
        registry,
        "rss_bytes",
        "The agent's resident memory",
        stats.rss_bytes.unwrap_or_default() as i64,
    );
    gauge(
        registry,
        "loop_stall_max_milliseconds",
        "The longest the event loop spent on one wake-up since start",
        stats.loop_stall_max_ms.unwrap_or_default() as i64,
    );
    if let Some(queue) = &stats.queue {
        gauge(
            registry,
            "queue_lines",
            "Lines waiting for the outputs now",
            queue.len as i64,
        );
        if let Some(syslog) = &queue.syslog {
            counter(
                registry,
                "syslog_sent",
                "Messages the syslog receiver has (TCP: acknowledged)",
                syslog.sent,
            );
            counter(
                registry,
                "syslog_resent",
                "Messages sent to syslog again on a new connection",
                syslog.resent,
            );
            gauge(
                registry,
                "syslog_pending",
                "Messages not yet acknowledged or waiting for the syslog receiver",
                syslog.pending as i64,
            );
            gauge(
                registry,
                "syslog_connected",
                "1 while the syslog receiver is connected",
                i64::from(syslog.connected),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_carry_their_labels_and_the_text_ends_properly() {
        let mut stats = Stats::default();
        stats.events.insert("detection", 3);
        stats
            .detect
            .detections_by_severity
            .insert(("build_without_pull", "critical"), 2);
        let text = render(Some(&stats), "6.18");
        assert!(
            text.contains("buildwatch_events_total{kind=\"detection\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("buildwatch_detections_total{rule=\"build_without_pull\",severity=\"critical\"} 2"),
            "{text}"
        );
        assert!(text.contains("buildwatch_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_scrape_is_answered_and_anything_else_refused() {
        let shared = Shared::new("6.18");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        serve(address, shared.clone()).unwrap();
        shared.publish(Stats::default());
        let ask = |request: &str| {
            let mut stream = TcpStream::connect(address).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        };
        let scrape = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
        assert!(scrape.contains("buildwatch_ring_bytes_total 0"), "{scrape}");
        assert!(ask("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(ask("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // A client that sends nothing is dropped after the timeout; the next is served.
        let _silent = TcpStream::connect(address).unwrap();
        assert!(ask("GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        // A loop that stopped publishing fails the liveness probe.
        shared.latest.lock().unwrap().at -= STALE_AFTER + Duration::from_secs(1);
        let stalled = ask("GET /metrics HTTP/1.1\r\n\r\n");
        assert!(stalled.starts_with("HTTP/1.1 503"), "{stalled}");
        shared.publish(Stats::default());
        assert!(ask("GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
    }
}
