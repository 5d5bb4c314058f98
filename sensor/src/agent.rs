//! `buildwatch run`: preflight, load and attach, seed the tables, then read the ring buffer until
//! SIGINT/SIGTERM. Lines go through a bounded queue to a writer thread, so a slow sink never
//! holds up the kernel reader.
use std::{
    path::PathBuf,
    rc::Rc,
    sync::{atomic::AtomicBool, Arc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, Signal, SignalKind},
};

use crate::{
    clock,
    config::Config,
    connections::ConnectionTable,
    daemons::Daemons,
    decode::{decode, RawEvent},
    detect::{allow::Allowlist, ledger::Ledger, Detector, Settings},
    docker::store,
    engine::Engine,
    existing,
    host::{live::LiveHost, recorded::RecordingHost, SharedHost},
    kernel::{preflight, BuildGate, KernelSensor, LossCounters, QuietMap, TrackedSockets},
    metrics,
    model::{daemon::DaemonPolicy, line::LineKind},
    notify::notify,
    output::{
        queue::LineQueue,
        schema::{HealthBody, LossView, SensorInfo, StartBody, Stats, StopBody, WarningBody},
        syslog::SyslogTarget,
        writer::{self, FileSettings, Targets},
        Emitter, Sink,
    },
    process_table::ProcessTable,
    procfs,
    recording::{self, Input, Recorder},
};

const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Every this many loss checks, the kernel's tracked-socket counts are corrected from the table.
const RECOUNT_EVERY: u64 = 30;
/// How often pending correlation (request halves, bodies) is checked against the clock; keeps
/// detections well within a second of their request.
const CORRELATION_TICK: Duration = Duration::from_millis(100);

pub struct RunOptions {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    /// `--output`: overrides `output.path`.
    pub output: Option<PathBuf>,
    /// `--record`: also write every input of the engine here.
    pub record: Option<PathBuf>,
}

/// The engine's inputs, applied and, when recording, written down with the host's answers.
struct Inputs {
    engine: Engine,
    recording: Option<(Recorder, Rc<RecordingHost>)>,
    build_gate: BuildGate,
    quiet: QuietMap,
    /// Bytes read from the rings, record headers included.
    ring_bytes: u64,
}

impl Inputs {
    fn apply(&mut self, input: Input, sink: &mut Sink) -> anyhow::Result<()> {
        let input = self.engine.prepare(input);
        match &mut self.recording {
            None => self.engine.apply(input, sink)?,
            Some((recorder, host)) => {
                let copy = input.clone();
                self.engine.apply(input, sink)?;
                recorder.record(copy, host.take_answers())?;
            }
        }
        self.build_gate.set(self.engine.detector.has_open_builds());
        self.quiet.apply(self.engine.detector.take_quiet_requests());
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        match &mut self.recording {
            Some((recorder, _)) => recorder.flush(),
            None => Ok(()),
        }
    }
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        mut config,
        config_path,
        output,
        record,
    } = options;
    if let Some(path) = output {
        config.output.path = Some(path);
    }
    // Installed first: systemd may send SIGTERM as soon as READY=1 arrives, and a signal that
    // comes before the handler would kill the sensor without draining or saving the ledger.
    let signals = Signals::install()?;
    let tracefs = preflight::check()?;
    let queue = LineQueue::new(config.output.queue_lines);
    let file = config.output.path.clone().map(|path| FileSettings {
        path,
        max_size: config.output.max_size,
        max_backups: config.output.max_backups,
    });
    let host_name = procfs::host_name();
    let syslog = config.output.syslog_address()?.map(|address| {
        SyslogTarget::new(
            address,
            config.output.syslog_facility,
            &host_name,
            config.output.syslog_kinds(),
        )
    });
    let targets = Targets::open(config.output.writes_stdout(), file, syslog)?;
    let reopen = Arc::new(AtomicBool::new(false));
    let writer = writer::spawn(queue.clone(), targets, Arc::clone(&reopen))?;
    let mut sink = Sink::queue(queue.clone()).format(config.output.format);
    sink = sink.kinds(&config.output.kinds);

    let (ledger, ledger_warning) = Ledger::open(&config.detect.state_dir, config.detect.ledger_max_records)?;
    let allow = Allowlist::compile(&config.allow)?;
    let mut kernel = KernelSensor::load(
        &config.watch,
        &config.kernel,
        &config.capture,
        &config.process,
        &tracefs,
    )?;
    let rings = kernel.take_rings()?;
    let losses = kernel.take_loss_counters()?;
    let daemon_map = kernel.take_daemon_map(&config.watch.unix_sockets)?;
    let mut tracked = kernel.take_tracked_sockets()?;
    let build_gate = kernel.take_build_gate()?;
    let quiet = kernel.take_quiet_map()?;
    let mut descendants = kernel.take_daemon_descendants()?;
    if config.kernel.log {
        spawn_kernel_logger(&mut kernel);
    }

    if let Some(why) = store::classic_store_missing(&config.detect.docker_data_root) {
        tracing::info!("{why}");
    }
    let api_marker = random_marker()?;
    let live = LiveHost::new(&procfs::proc_root())
        .with_api_marker(&api_marker)
        .with_docker_data_root(&config.detect.docker_data_root)
        .with_daemon_policy(DaemonPolicy {
            binaries: config.watch.daemon_binaries.clone(),
            host_root: config.watch.host_root.clone(),
            unix_sockets: config.watch.unix_sockets.clone(),
            tcp_ports: config.watch.tcp_ports.clone(),
        });
    let emitter = Emitter::new(host_name);
    let (host, recording): (SharedHost, _) = match &record {
        Some(path) => {
            let header = recording::Header {
                format: recording::FORMAT_VERSION,
                sensor_version: env!("CARGO_PKG_VERSION").into(),
                host: emitter.host().to_string(),
                run_id: emitter.run_id().to_string(),
                boot_to_wall_ns: emitter.boot_to_wall_ns(),
                config: config.clone(),
                ledger: ledger.records(),
                api_marker: api_marker.clone(),
            };
            let recorder = Recorder::create(path, &header)?;
            let host = Rc::new(RecordingHost::new(live));
            (host.clone(), Some((recorder, host)))
        }
        None => (Rc::new(live), None),
    };
    let detector = Detector::new(
        Settings {
            allow,
            lookback_ns: u64::try_from(config.detect.lookback.as_nanos()).unwrap_or(u64::MAX),
            boot_to_wall_ns: emitter.boot_to_wall_ns(),
        },
        ledger,
        host.clone(),
    );
    let engine = Engine::new(
        ProcessTable::new(host.clone()),
        ConnectionTable::new(host.clone()),
        Daemons::new(&config.watch.daemons, host, Some(daemon_map)),
        emitter,
        detector,
    )
    .with_api_marker(&api_marker);
    let mut inputs = Inputs {
        engine,
        recording,
        build_gate,
        quiet,
        ring_bytes: 0,
    };
    inputs.apply(Input::Seed(clock::boot_time_ns()), &mut sink)?;
    // Processes daemons started before the sensor (containerd under dockerd, shims) fork build
    // steps too.
    descendants.seed(
        &inputs
            .engine
            .processes
            .descendants_of(&inputs.engine.daemons.tgids()),
    );

    let start = StartBody {
        sensor: SensorInfo {
            version: env!("CARGO_PKG_VERSION"),
            run_id: inputs.engine.emitter.run_id().to_string(),
            pid: std::process::id(),
            kernel: procfs::kernel_release(),
            programs_attached: kernel.attached.clone(),
            programs_skipped: kernel.skipped.clone(),
            config: config_path.map(|p| p.display().to_string()),
            config_sha256: config.digest(),
            capture_bytes: config.capture.bytes,
            watched_unix_sockets: config
                .watch
                .unix_sockets
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            watched_tcp_ports: config.watch.tcp_ports.clone(),
            daemons: config.watch.daemons.clone(),
            daemon_pids: inputs.engine.daemons.tgids(),
            recording: record.as_ref().map(|p| p.display().to_string()),
        },
    };
    let line = inputs.engine.emitter.line(LineKind::SensorStart, None, start);
    sink.write(&line)?;
    if let Some(warning) = &ledger_warning {
        tracing::warn!("{}", warning.message);
        let body = WarningBody {
            warning: &warning.message,
            moved_to: warning.moved_to.as_deref(),
        };
        let line = inputs.engine.emitter.line(LineKind::SensorWarning, None, body);
        sink.write(&line)?;
    }
    adopt_existing_connections(&mut inputs, &mut tracked, &mut sink)?;
    if let Err(err) = notify(&format!(
        "READY=1\nSTATUS=watching {} daemons with {} programs attached",
        inputs.engine.daemons.tgids().len(),
        kernel.attached.len()
    )) {
        tracing::warn!("{err:#}");
    }
    tracing::info!(programs = kernel.attached.len(), daemons = ?inputs.engine.daemons.tgids(), "buildwatch is running");

    let started = Instant::now();
    let metrics = match config.metrics.listen {
        Some(address) => {
            let shared = metrics::Shared::new(&procfs::kernel_release());
            metrics::serve(address, shared.clone())?;
            tracing::info!(%address, "serving /metrics");
            Some(shared)
        }
        None => None,
    };
    let loop_state = Loop {
        losses: &losses,
        queue: &queue,
        reopen: &reopen,
        health_interval: config.output.health_interval,
        started,
        signals,
        metrics,
    };
    let stall_max = read_events(rings, loop_state, &mut inputs, &mut sink, &mut tracked).await?;
    let _ = notify("STOPPING=1");
    inputs.apply(Input::Finish(clock::boot_time_ns()), &mut sink)?;
    inputs.flush()?;
    if let Err(err) = inputs.engine.detector.sync_ledger() {
        tracing::warn!("{err:#}");
    }
    let loss = gather_loss(&inputs.engine, &losses, &queue);
    inputs.engine.report_loss(loss, &mut sink)?;
    let stop = StopBody {
        stats: full_stats(&inputs, &losses, &queue, started, stall_max),
    };
    let line = inputs.engine.emitter.line(LineKind::SensorStop, None, stop);
    sink.write(&line)?;
    queue.close();
    if writer.join().is_err() {
        tracing::error!("the output writer thread panicked");
    }
    // Dropping `kernel` detaches every program.
    drop(kernel);
    Ok(())
}

/// What the event loop needs besides the engine.
struct Loop<'a> {
    losses: &'a LossCounters,
    queue: &'a LineQueue,
    reopen: &'a AtomicBool,
    health_interval: Duration,
    started: Instant,
    signals: Signals,
    /// Where the counters go for `/metrics` (`[metrics]`), once a second.
    metrics: Option<metrics::Shared>,
}

struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// Reads events until SIGINT/SIGTERM; returns the longest stall of the loop. The daemon ring
/// (process events, the daemons' side) is polled first whenever both have records, so a client
/// flood never delays the trusted view.
async fn read_events(
    (ring, client_ring): (RingBuf<MapData>, RingBuf<MapData>),
    mut state: Loop<'_>,
    inputs: &mut Inputs,
    sink: &mut Sink,
    tracked: &mut TrackedSockets,
) -> anyhow::Result<Duration> {
    // SAFETY: each ring buffer owns its fd, which stays open for as long as the AsyncFd owns it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("cannot poll the ring buffer: {err}"))?;
    // SAFETY: as above.
    let mut client_ring = unsafe { AsyncFd::register_with_interest(client_ring, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("cannot poll the client ring buffer: {err}"))?;
    let mut loss_check = tokio::time::interval(LOSS_CHECK_INTERVAL);
    let mut correlation_tick = tokio::time::interval(CORRELATION_TICK);
    // An interval of zero turns health lines off.
    let health_period = if state.health_interval.is_zero() {
        Duration::from_secs(365 * 24 * 3600)
    } else {
        state.health_interval
    };
    let mut health = tokio::time::interval_at(tokio::time::Instant::now() + health_period, health_period);
    // systemd's watchdog: pinged from this loop, so a stalled loop is a missed ping and a restart.
    let watchdog_period = watchdog_interval();
    let mut watchdog = tokio::time::interval(watchdog_period.unwrap_or(Duration::from_secs(3600)));
    let mut stall_max = Duration::ZERO;
    let mut recount_ticks: u64 = 0;
    loop {
        tokio::select! {
            biased;
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                drain(guard.get_inner_mut(), inputs, sink, tracked)?;
                guard.clear_ready();
            }
            guard = client_ring.readable_mut() => {
                let mut guard = guard.context("polling the client ring buffer")?;
                drain(guard.get_inner_mut(), inputs, sink, tracked)?;
                guard.clear_ready();
            }
            scheduled = correlation_tick.tick() => {
                // A tick that fires late measures how long the loop was busy elsewhere.
                stall_max = stall_max.max(scheduled.elapsed());
                let now = clock::boot_time_ns();
                if inputs.engine.has_timed_work(now) {
                    inputs.apply(Input::Tick(now), sink)?;
                }
                // Ledger changes reach the disk within this tick (the write is off the loop).
                if let Err(err) = inputs.engine.detector.persist() {
                    tracing::warn!("{err:#}");
                }
                inputs.flush()?;
            }
            _ = loss_check.tick() => {
                let loss = gather_loss(&inputs.engine, state.losses, state.queue);
                inputs.engine.report_loss(loss, sink)?;
                if let Some(metrics) = &state.metrics {
                    metrics.publish(full_stats(inputs, state.losses, state.queue, state.started, stall_max));
                }
                recount_ticks += 1;
                if recount_ticks.is_multiple_of(RECOUNT_EVERY) {
                    tracked.recount();
                }
            }
            _ = health.tick(), if !state.health_interval.is_zero() => {
                let body = HealthBody {
                    health: full_stats(inputs, state.losses, state.queue, state.started, stall_max),
                };
                let line = inputs.engine.emitter.line(LineKind::SensorHealth, None, body);
                sink.write(&line)?;
            }
            _ = watchdog.tick(), if watchdog_period.is_some() => {
                if let Err(err) = notify("WATCHDOG=1") {
                    tracing::warn!("{err:#}");
                }
            }
            _ = state.signals.hangup.recv() => {
                tracing::info!("SIGHUP: reopening the output file");
                state.reopen.store(true, std::sync::atomic::Ordering::Release);
            }
            _ = state.signals.interrupt.recv() => break,
            _ = state.signals.terminate.recv() => break,
        }
    }
    // Whatever the kernel wrote before the signal is still reported.
    drain(ring.get_mut(), inputs, sink, tracked)?;
    drain(client_ring.get_mut(), inputs, sink, tracked)?;
    Ok(stall_max)
}

/// Half of systemd's `WATCHDOG_USEC`, when the service has a watchdog for this process.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn gather_loss(engine: &Engine, losses: &LossCounters, queue: &LineQueue) -> LossView {
    let queue = queue.stats();
    LossView {
        kernel_drops: losses.ring_drops(),
        table_full: losses.tables_full(),
        budget_skipped_bytes: losses.budget_skipped(),
        queue_drops: queue.drops,
        output_errors: queue.write_errors,
        ledger_write_errors: engine.detector.ledger_write_errors(),
        reads_abandoned: crate::worker::abandoned() as u64,
        ..LossView::default()
    }
}

fn full_stats(
    inputs: &Inputs,
    losses: &LossCounters,
    queue: &LineQueue,
    started: Instant,
    stall_max: Duration,
) -> Stats {
    let engine = &inputs.engine;
    let mut loss = gather_loss(engine, losses, queue);
    loss.decode_errors = engine.stats().decode_errors;
    Stats {
        ring_bytes: Some(inputs.ring_bytes),
        quiet_skipped_bytes: Some(losses.quiet_skipped()),
        queue: Some(queue.stats()),
        rss_bytes: procfs::rss_bytes(),
        uptime_seconds: Some(started.elapsed().as_secs()),
        loop_stall_max_ms: Some(stall_max.as_millis() as u64),
        loss: Some(loss),
        ..engine.stats()
    }
}

/// Tracks the connections watched daemons already had (after sensor.start, so those lines
/// follow it). conn_ids continue from the current boot time, like the kernel's.
fn adopt_existing_connections(
    inputs: &mut Inputs,
    tracked: &mut TrackedSockets,
    sink: &mut Sink,
) -> anyhow::Result<()> {
    let proc_root = procfs::proc_root();
    let now = clock::boot_time_ns();
    let mut conn_id = now;
    for tgid in inputs.engine.daemons.tgids() {
        for connection in existing::daemon_connections(&proc_root, tgid) {
            conn_id += 1;
            if tracked.adopt(tgid, connection.fd, conn_id, connection.role, &connection.peer) {
                let input = Input::Existing {
                    tgid,
                    conn_id,
                    boot_ns: now,
                    connection,
                };
                inputs.apply(input, sink)?;
            }
        }
    }
    Ok(())
}

fn drain(
    ring: &mut RingBuf<MapData>,
    inputs: &mut Inputs,
    sink: &mut Sink,
    tracked: &mut TrackedSockets,
) -> anyhow::Result<()> {
    while let Some(record) = ring.next() {
        // Each record is preceded by the ring's 8-byte header and padded to 8 bytes.
        inputs.ring_bytes += 8 + (record.len() as u64).next_multiple_of(8);
        match decode(&record) {
            Ok(event) => {
                drop(record);
                let exited = match &event {
                    RawEvent::Exit { header } => Some(header.tgid),
                    _ => None,
                };
                let was_daemon = exited.is_some_and(|tgid| inputs.engine.daemons.get(tgid).is_some());
                inputs.apply(Input::Event(event), sink)?;
                if let (Some(tgid), true) = (exited, was_daemon) {
                    // Its accepted connections closed with it, without a close() to see.
                    tracked.forget(tgid);
                }
            }
            Err(err) => {
                inputs.engine.decode_error();
                tracing::warn!("dropped a malformed kernel record: {err}");
            }
        }
    }
    Ok(())
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

/// 128 random bits, hex: the marker of the sensor's own API requests (no one else may know it).
fn random_marker() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
