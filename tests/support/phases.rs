//! [`Phases`]: client threads that run a many-client test in lock-step phases (say connect,
//! exchange, close), so that the test's main thread can check the gateway between two phases.

use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// How long one phase may take before the test gives up.
pub const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a thread reports: its index when it finished a phase, `Err` with its index once it panicked.
type Report = Result<usize, usize>;

/// A client thread's side: report the end of a phase, wait for the next.
pub struct Step {
    index: usize,
    ready: mpsc::Sender<Report>,
    go: mpsc::Receiver<()>,
}

impl Step {
    /// Reports that this thread finished its phase.
    pub fn done(&self) {
        self.ready.send(Ok(self.index)).unwrap();
    }

    /// Reports that this thread finished its phase, then waits until the main thread starts the
    /// next.
    pub fn next(&self) {
        self.done();
        self.go
            .recv_timeout(PHASE_TIMEOUT)
            .expect("the test's main thread gave up");
    }
}

/// The main thread's side.
pub struct Phases {
    ready: mpsc::Receiver<Report>,
    go: Vec<mpsc::Sender<()>>,
    handles: Vec<thread::JoinHandle<()>>,
}

impl Phases {
    /// Starts `threads` threads, each running `body(index, step)`; the body calls
    /// [`Step::next`] between its phases and [`Step::done`] after the last. A thread that panics
    /// is reported to the main thread at once.
    pub fn spawn(threads: usize, body: impl Fn(usize, &Step) + Send + Sync + 'static) -> Phases {
        let body = Arc::new(body);
        let (ready_tx, ready) = mpsc::channel();
        let mut go = Vec::new();
        let mut handles = Vec::new();
        for index in 0..threads {
            let (go_tx, go_rx) = mpsc::channel();
            go.push(go_tx);
            let step = Step {
                index,
                ready: ready_tx.clone(),
                go: go_rx,
            };
            let body = body.clone();
            handles.push(thread::spawn(move || {
                let failed = step.ready.clone();
                if panic::catch_unwind(AssertUnwindSafe(|| (*body)(index, &step))).is_err() {
                    let _ = failed.send(Err(index));
                }
            }));
        }
        Phases { ready, go, handles }
    }

    /// Waits until every thread has finished `phase`; fails the test as soon as one panicked, or
    /// after [`PHASE_TIMEOUT`].
    pub fn wait(&self, phase: &str) {
        let threads = self.handles.len();
        for n in 0..threads {
            match self.ready.recv_timeout(PHASE_TIMEOUT) {
                Ok(Ok(_)) => {}
                Ok(Err(t)) => {
                    panic!("phase {phase}: client thread {t} failed; see its panic above")
                }
                Err(e) => {
                    panic!("phase {phase}: only {n} of {threads} client threads reported ({e:?})")
                }
            }
        }
    }

    /// Lets every thread start its next phase.
    pub fn go(&self) {
        for g in &self.go {
            g.send(()).unwrap();
        }
    }

    /// Waits for the last phase and for the threads to end.
    pub fn finish(self, phase: &str) {
        self.wait(phase);
        for h in self.handles {
            h.join().expect("a client thread panicked");
        }
    }
}
