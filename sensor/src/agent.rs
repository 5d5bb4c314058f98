//! `buildwatch run`: preflight, load and attach, seed the tables, then read the ring buffer until
//! SIGINT/SIGTERM.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    config::Config,
    connections::ConnectionTable,
    daemons::Daemons,
    decode::decode,
    detect::{allow::Allowlist, ledger::Ledger, Detector, Settings},
    engine::Engine,
    existing,
    kernel::{preflight, KernelSensor, LossCounters, TrackedSockets},
    output::{
        schema::{SensorInfo, StartBody, StopBody},
        Emitter, Sink,
    },
    process_table::ProcessTable,
    procfs,
};

const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How often pending correlation (request halves, bodies) is checked against the clock; keeps
/// detections well within a second of their request.
const CORRELATION_TICK: Duration = Duration::from_millis(100);

pub struct RunOptions {
    pub config: Option<PathBuf>,
    pub output: Option<PathBuf>,
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let (config, config_path) = Config::load(options.config.as_deref())?;
    let tracefs = preflight::check()?;
    let output = options.output.or_else(|| config.output.path.clone());
    let mut sink = match &output {
        Some(path) => Sink::file(path)?,
        None => Sink::stdout(),
    };

    let ledger = Ledger::open(&config.detect.state_dir, config.detect.ledger_max_records)?;
    let allow = Allowlist::compile(&config.allow)?;
    let mut kernel = KernelSensor::load(&config, &tracefs)?;
    let ring = kernel.take_events()?;
    let losses = kernel.take_loss_counters()?;
    let daemon_map = kernel.take_daemon_map()?;
    let mut tracked = kernel.take_tracked_sockets()?;
    if config.kernel.log {
        spawn_kernel_logger(&mut kernel);
    }

    let proc_root = procfs::proc_root();
    let mut processes = ProcessTable::new(proc_root.clone());
    processes.seed();
    let emitter = Emitter::new(procfs::hostname());
    let detector = Detector::new(
        Settings {
            allow,
            lookback_ns: u64::try_from(config.detect.lookback.as_nanos()).unwrap_or(u64::MAX),
            boot_to_wall_ns: emitter.boot_to_wall_ns(),
        },
        ledger,
    );
    let mut engine = Engine::new(
        processes,
        ConnectionTable::new(proc_root),
        Daemons::new(&config.watch.daemons, Some(daemon_map)),
        emitter,
        detector,
    );
    engine.discover_daemons();

    let start = StartBody {
        sensor: SensorInfo {
            version: env!("CARGO_PKG_VERSION"),
            run_id: engine.emitter.run_id().to_string(),
            pid: std::process::id(),
            kernel: procfs::kernel_release(),
            programs_attached: kernel.attached.clone(),
            programs_skipped: kernel.skipped.clone(),
            config: config_path.map(|p| p.display().to_string()),
            capture_bytes: config.capture.bytes,
            watched_unix_sockets: config
                .watch
                .unix_sockets
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            watched_tcp_ports: config.watch.tcp_ports.clone(),
            daemons: config.watch.daemons.clone(),
            daemon_pids: engine.daemons.tgids(),
        },
    };
    let line = engine.emitter.line("sensor.start", None, start);
    sink.write(&line)?;
    adopt_existing_connections(&mut engine, &mut tracked, &mut sink)?;
    sink.flush()?;
    tracing::info!(programs = kernel.attached.len(), daemons = ?engine.daemons.tgids(), "buildwatch is running");

    read_events(ring, &losses, &mut engine, &mut sink).await?;
    engine.finish(procfs::boot_time_ns(), &mut sink)?;

    let stop = StopBody {
        stats: engine.stats(),
    };
    let line = engine.emitter.line("sensor.stop", None, stop);
    sink.write(&line)?;
    sink.flush()?;
    // Dropping `kernel` detaches every program.
    drop(kernel);
    Ok(())
}

async fn read_events(
    ring: RingBuf<MapData>,
    losses: &LossCounters,
    engine: &mut Engine,
    sink: &mut Sink,
) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its fd, which stays open for as long as the AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("cannot poll the ring buffer: {err}"))?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut loss_check = tokio::time::interval(LOSS_CHECK_INTERVAL);
    let mut correlation_tick = tokio::time::interval(CORRELATION_TICK);
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                drain(guard.get_inner_mut(), engine, sink)?;
                guard.clear_ready();
                sink.flush()?;
            }
            _ = correlation_tick.tick() => {
                engine.tick(procfs::boot_time_ns(), sink)?;
                sink.flush()?;
            }
            _ = loss_check.tick() => {
                engine.report_loss(kernel_drops(losses), sink)?;
                sink.flush()?;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    // Whatever the kernel wrote before the signal is still reported.
    drain(ring.get_mut(), engine, sink)?;
    engine.report_loss(kernel_drops(losses), sink)?;
    Ok(())
}

/// Tracks the connections watched daemons already had (after sensor.start, so those lines
/// follow it). conn_ids continue from the current boot time, like the kernel's.
fn adopt_existing_connections(
    engine: &mut Engine,
    tracked: &mut TrackedSockets,
    sink: &mut Sink,
) -> anyhow::Result<()> {
    let proc_root = procfs::proc_root();
    let mut conn_id = procfs::boot_time_ns();
    for tgid in engine.daemons.tgids() {
        for connection in existing::daemon_connections(&proc_root, tgid) {
            conn_id += 1;
            if tracked.adopt(tgid, connection.fd, conn_id, connection.role, &connection.peer) {
                engine.existing_connection(sink, tgid, conn_id, &connection)?;
            }
        }
    }
    Ok(())
}

fn drain(ring: &mut RingBuf<MapData>, engine: &mut Engine, sink: &mut Sink) -> anyhow::Result<()> {
    while let Some(record) = ring.next() {
        match decode(&record) {
            Ok(event) => {
                drop(record);
                engine.handle(event, sink)?;
            }
            Err(err) => {
                engine.decode_error();
                tracing::warn!("dropped a malformed kernel record: {err}");
            }
        }
    }
    Ok(())
}

fn kernel_drops(losses: &LossCounters) -> BTreeMap<&'static str, u64> {
    losses
        .read()
        .into_iter()
        .map(|(kind, count)| (kind.name(), count))
        .collect()
}

fn spawn_kernel_logger(kernel: &mut KernelSensor) {
    let Some(logger) = kernel.kernel_logger() else {
        tracing::warn!("kernel logging requested but the eBPF object has no log map");
        return;
    };
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring buffer fd for its whole life.
        let Ok(mut logger) = (unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }) else {
            tracing::warn!("cannot poll the kernel log buffer");
            return;
        };
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
