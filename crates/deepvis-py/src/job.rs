//! Long renders run on a worker thread that never holds the GIL; Python polls it for progress
//! (its progress bar) and asks it to stop (Ctrl-C). Nothing here touches Python, so this part
//! builds and is tested without an interpreter.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// What kind of Python exception a failure becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A bad argument: `ValueError` (and `deepvis.Error`).
    Value,
    /// A missing file: `FileNotFoundError` (and `deepvis.Error`).
    NotFound,
    /// Anything else: `deepvis.Error`.
    Other,
    /// Stopped on request.
    Cancelled,
}

/// A failure with its one-line message (as the CLI prints it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }
}

/// A named float32 array.
#[derive(Clone, Debug, Default)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What a job hands back: arrays by name.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub arrays: Vec<(String, Array)>,
}

impl Output {
    pub fn with(mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.arrays.push((name.to_string(), Array { shape, data }));
        self
    }
}

struct State {
    done: AtomicUsize,
    total: AtomicUsize,
    cancel: AtomicBool,
    result: Mutex<Option<Result<Output, Failure>>>,
    finished: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is caught and reported as a failure; the data stays valid.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The worker's side: reports progress, learns whether to stop.
pub struct Ctl {
    state: Arc<State>,
}

impl Ctl {
    /// Records `done` of `total` steps; false once a stop was asked for.
    pub fn step(&self, done: usize, total: usize) -> bool {
        self.state.total.store(total, Ordering::Relaxed);
        self.state.done.store(done, Ordering::Relaxed);
        !self.state.cancel.load(Ordering::Relaxed)
    }

    pub fn cancelled(&self) -> bool {
        self.state.cancel.load(Ordering::Relaxed)
    }
}

/// A running (or finished) job.
pub struct Job {
    state: Arc<State>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Job {
    /// Starts `work` on its own thread; `total` is the step count known up front.
    pub fn spawn(
        total: usize,
        work: impl FnOnce(&Ctl) -> Result<Output, Failure> + Send + 'static,
    ) -> Result<Job, Failure> {
        let state = Arc::new(State {
            done: AtomicUsize::new(0),
            total: AtomicUsize::new(total),
            cancel: AtomicBool::new(false),
            result: Mutex::new(None),
            finished: Condvar::new(),
        });
        let ctl = Ctl {
            state: state.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("deepvis-job".into())
            .spawn(move || {
                // A bug must surface as an exception in Python, not take the interpreter down.
                let result = catch_unwind(AssertUnwindSafe(|| work(&ctl))).unwrap_or_else(|p| {
                    let what = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown".into());
                    Err(Failure::new(
                        Kind::Other,
                        format!("internal error: {what}; please report it"),
                    ))
                });
                *lock(&ctl.state.result) = Some(result);
                ctl.state.finished.notify_all();
            })
            .map_err(|e| Failure::new(Kind::Other, format!("cannot start a thread: {e}")))?;
        Ok(Job {
            state,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Waits up to `timeout` for the job to finish; true once it has.
    pub fn wait(&self, timeout: Duration) -> bool {
        let guard = lock(&self.state.result);
        let (guard, _) = self
            .state
            .finished
            .wait_timeout_while(guard, timeout, |r| r.is_none())
            .unwrap_or_else(|p| p.into_inner());
        let done = guard.is_some();
        drop(guard);
        if done {
            if let Some(h) = lock(&self.handle).take() {
                let _ = h.join();
            }
        }
        done
    }

    /// (steps done, steps in all).
    pub fn progress(&self) -> (usize, usize) {
        (
            self.state.done.load(Ordering::Relaxed),
            self.state.total.load(Ordering::Relaxed),
        )
    }

    /// Asks the job to stop after its current step.
    pub fn cancel(&self) {
        self.state.cancel.store(true, Ordering::Relaxed);
    }

    /// The result, once finished (taken: a second call gets None).
    pub fn take(&self) -> Option<Result<Output, Failure>> {
        lock(&self.state.result).take()
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // A job dropped unfinished (its Python handle collected) stops instead of running on.
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_reports_progress_and_its_result() {
        let job = Job::spawn(3, |ctl| {
            for i in 1..=3 {
                assert!(ctl.step(i, 3));
            }
            Ok(Output::default().with("x", vec![2], vec![1.0, 2.0]))
        })
        .unwrap();
        while !job.wait(Duration::from_millis(10)) {}
        assert_eq!(job.progress(), (3, 3));
        let out = job.take().unwrap().unwrap();
        assert_eq!(out.arrays[0].1.data, vec![1.0, 2.0]);
        assert!(job.take().is_none());
    }

    #[test]
    fn a_cancelled_job_stops_at_its_next_step() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let job = Job::spawn(1_000_000, move |ctl| {
            let mut i = 0;
            loop {
                i += 1;
                if i == 10 {
                    let _ = tx.send(());
                }
                if !ctl.step(i, 1_000_000) {
                    return Err(Failure::new(Kind::Cancelled, "interrupted"));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
        rx.recv().unwrap();
        assert!(!job.wait(Duration::from_millis(1)));
        job.cancel();
        assert!(job.wait(Duration::from_secs(10)));
        let err = job.take().unwrap().unwrap_err();
        assert_eq!(err.kind, Kind::Cancelled);
        assert!(job.progress().0 < 1_000_000);
    }

    #[test]
    fn a_panic_becomes_a_failure() {
        let job = Job::spawn(1, |_| panic!("boom")).unwrap();
        assert!(job.wait(Duration::from_secs(10)));
        let err = job.take().unwrap().unwrap_err();
        assert_eq!(err.kind, Kind::Other);
        assert!(err.message.contains("boom"), "{}", err.message);
    }
}
