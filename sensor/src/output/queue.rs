//! The bounded queue between the engine (which must keep up with the kernel) and the sinks
//! (which may block on a slow disk or a full pipe). When it is full, lines are dropped and
//! counted per kind, never waited for; the counts go out in `sensor.loss` and `sensor.health`.
use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Condvar, Mutex, PoisonError},
    time::Duration,
};

use serde::Serialize;

use super::syslog::stats::SyslogStats;
use crate::model::detection::Severity;

pub const DEFAULT_CAPACITY: usize = 65_536;

/// One serialized line (with its newline) and its kind.
pub struct QueuedLine {
    pub kind: &'static str,
    /// A detection's severity (syslog sends it as the message's severity).
    pub severity: Option<Severity>,
    pub bytes: Vec<u8>,
}

#[derive(Default)]
struct State {
    lines: VecDeque<QueuedLine>,
    closed: bool,
    high_water: usize,
    drops: BTreeMap<&'static str, u64>,
    write_errors: BTreeMap<&'static str, u64>,
    syslog: Option<SyslogStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub capacity: usize,
    pub len: usize,
    /// Most lines waiting at once since start.
    pub high_water: usize,
    /// Lines dropped because the queue was full, per kind, since start.
    pub drops: BTreeMap<&'static str, u64>,
    /// Lines a sink failed to write (full disk, closed pipe), per kind, since start.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub write_errors: BTreeMap<&'static str, u64>,
    /// Syslog delivery, when `output.syslog` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syslog: Option<SyslogStats>,
}

/// Both ends share it; the engine pushes, the writer thread pops.
#[derive(Clone)]
pub struct LineQueue {
    shared: Arc<(Mutex<State>, Condvar)>,
    capacity: usize,
}

impl LineQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            shared: Arc::new((Mutex::new(State::default()), Condvar::new())),
            capacity: capacity.max(1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a line; false (and counted) when the queue is full. Conclusions (detections,
    /// builds, operations) and the sensor's own lines have a reserve of a quarter of the
    /// capacity beyond it, so a flood of raw events can never push a detection out.
    pub fn push(&self, line: QueuedLine) -> bool {
        let mut state = self.state();
        let important = matches!(line.kind, "detection" | "build" | "docker.operation")
            || line.kind.starts_with("sensor.");
        let limit = if important {
            self.capacity + self.capacity / 4
        } else {
            self.capacity
        };
        if state.lines.len() >= limit {
            *state.drops.entry(line.kind).or_default() += 1;
            return false;
        }
        state.lines.push_back(line);
        state.high_water = state.high_water.max(state.lines.len());
        drop(state);
        self.shared.1.notify_one();
        true
    }

    /// Counts a line a sink could not write.
    pub fn write_error(&self, kind: &'static str) {
        *self.state().write_errors.entry(kind).or_default() += 1;
    }

    /// The writer's latest syslog figures, for the health lines and the metrics.
    pub fn syslog_progress(&self, stats: SyslogStats) {
        self.state().syslog = Some(stats);
    }

    /// Takes every waiting line, waiting up to `timeout` for one. `None` once closed and empty.
    pub fn pop_all(&self, timeout: Duration) -> Option<Vec<QueuedLine>> {
        let mut state = self.state();
        if state.lines.is_empty() && !state.closed {
            state = self
                .shared
                .1
                .wait_timeout(state, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if state.lines.is_empty() && state.closed {
            return None;
        }
        Some(state.lines.drain(..).collect())
    }

    /// No more lines will come; the writer drains what is left and stops.
    pub fn close(&self) {
        self.state().closed = true;
        self.shared.1.notify_all();
    }

    pub fn stats(&self) -> QueueStats {
        let state = self.state();
        QueueStats {
            capacity: self.capacity,
            len: state.lines.len(),
            high_water: state.high_water,
            drops: state.drops.clone(),
            write_errors: state.write_errors.clone(),
            syslog: state.syslog.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &'static str) -> QueuedLine {
        QueuedLine {
            kind,
            severity: None,
            bytes: b"{}\n".to_vec(),
        }
    }

    #[test]
    fn conclusions_have_a_reserve_a_flood_cannot_take() {
        let queue = LineQueue::new(8);
        let line = |kind: &'static str| QueuedLine {
            kind,
            severity: None,
            bytes: b"{}\n".to_vec(),
        };
        for _ in 0..20 {
            queue.push(line("socket.data"));
        }
        assert!(queue.push(line("detection")), "a detection still fits");
        assert!(queue.push(line("sensor.loss")));
        assert_eq!(queue.stats().drops.get("socket.data"), Some(&12));
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let queue = LineQueue::new(2);
        assert!(queue.push(line("a")));
        assert!(queue.push(line("a")));
        assert!(!queue.push(line("b")));
        let stats = queue.stats();
        assert_eq!(stats.high_water, 2);
        assert_eq!(stats.drops.get("b"), Some(&1));
        assert_eq!(queue.pop_all(Duration::ZERO).unwrap().len(), 2);
        queue.close();
        assert!(queue.pop_all(Duration::ZERO).is_none());
    }

    #[test]
    fn writer_thread_gets_everything_before_close() {
        let queue = LineQueue::new(1000);
        let reader = queue.clone();
        let handle = std::thread::spawn(move || {
            let mut count = 0;
            while let Some(lines) = reader.pop_all(Duration::from_millis(10)) {
                count += lines.len();
            }
            count
        });
        for _ in 0..500 {
            queue.push(line("x"));
        }
        queue.close();
        assert_eq!(handle.join().unwrap(), 500);
    }
}
