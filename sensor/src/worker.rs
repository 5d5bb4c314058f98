//! Work the event loop must not wait on for long: /proc and file reads that a process can make
//! hang (a FIFO, a FUSE file system, a stuck mm lock). Jobs run on a worker thread and the caller
//! waits at most a deadline; a worker stuck past it is abandoned and replaced, and once too many
//! are stuck, new jobs are refused at once rather than piling up threads.
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Mutex, OnceLock,
    },
    time::Duration,
};

/// Abandoned workers at most; past this every job is refused until one of them finishes.
const MAX_STUCK: usize = 8;

type Job = Box<dyn FnOnce() + Send>;

static STUCK: AtomicUsize = AtomicUsize::new(0);
static ABANDONED_TOTAL: AtomicUsize = AtomicUsize::new(0);
static SHARED: OnceLock<Mutex<Option<mpsc::Sender<Job>>>> = OnceLock::new();

/// Jobs abandoned at their deadline since start (for `sensor.health`).
pub fn abandoned() -> usize {
    ABANDONED_TOTAL.load(Ordering::Relaxed)
}

/// Runs `job` on the shared worker; `None` when it did not finish within `deadline` (or too
/// many workers are stuck).
pub fn run<T: Send + 'static>(deadline: Duration, job: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if STUCK.load(Ordering::Relaxed) >= MAX_STUCK {
        return None;
    }
    let (reply, answer) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply.send(job());
    });
    let slot = SHARED.get_or_init(|| Mutex::new(None));
    {
        let mut sender = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let sender = sender.get_or_insert_with(spawn_shared);
        if let Err(mpsc::SendError(job)) = sender.send(job) {
            // The worker died (it never should): start another and hand it the job.
            let fresh = spawn_shared();
            fresh.send(job).ok()?;
            *sender = fresh;
        }
    }
    match answer.recv_timeout(deadline) {
        Ok(value) => Some(value),
        Err(_) => {
            // Whatever is queued behind the stuck job goes with it; the next job gets a new
            // worker.
            abandon();
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            None
        }
    }
}

/// Runs `job` on a thread of its own (for jobs that change the thread's credentials).
pub fn run_alone<T: Send + 'static>(
    deadline: Duration,
    job: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if STUCK.load(Ordering::Relaxed) >= MAX_STUCK {
        return None;
    }
    let (reply, answer) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("buildwatch-read".into())
        .spawn(move || {
            let _ = reply.send(job());
        });
    if spawned.is_err() {
        return None;
    }
    match answer.recv_timeout(deadline) {
        Ok(value) => Some(value),
        Err(_) => {
            abandon_until_done(answer);
            None
        }
    }
}

fn abandon() {
    STUCK.fetch_add(1, Ordering::Relaxed);
    ABANDONED_TOTAL.fetch_add(1, Ordering::Relaxed);
}

/// Counts a stuck single-use thread until it ends (the reply channel then disconnects).
fn abandon_until_done<T: Send + 'static>(answer: mpsc::Receiver<T>) {
    abandon();
    let watcher = std::thread::Builder::new()
        .name("buildwatch-stuck".into())
        .spawn(move || {
            let _ = answer.recv();
            STUCK.fetch_sub(1, Ordering::Relaxed);
        });
    if watcher.is_err() {
        // Without a watcher the thread stays counted as stuck: the safe side.
    }
}

fn spawn_shared() -> mpsc::Sender<Job> {
    let (sender, jobs) = mpsc::channel::<Job>();
    let spawned = std::thread::Builder::new()
        .name("buildwatch-worker".into())
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                job();
            }
            // The channel closes only when a caller abandoned this worker at a deadline: it
            // counted as stuck until now.
            STUCK.fetch_sub(1, Ordering::Relaxed);
        });
    if spawned.is_err() {
        tracing::error!("cannot start a worker thread");
    }
    sender
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_time_and_abandons_what_hangs() {
        assert_eq!(run(Duration::from_millis(500), || 41 + 1), Some(42));
        let started = std::time::Instant::now();
        // Short, so a test reading through the shared worker meanwhile still gets its answer.
        assert_eq!(
            run(Duration::from_millis(50), || std::thread::sleep(
                Duration::from_millis(250)
            )),
            None
        );
        assert!(started.elapsed() < Duration::from_millis(900));
        // A fresh worker answers the next job at once.
        assert_eq!(run(Duration::from_millis(500), || "next"), Some("next"));
        assert_eq!(
            run_alone(Duration::from_millis(100), || std::thread::sleep(
                Duration::from_secs(2)
            )),
            None
        );
        assert_eq!(run_alone(Duration::from_millis(500), || 7), Some(7));
        assert!(abandoned() >= 2);
    }
}
