//! The controller and its units. A unit is either a worker thread of this process or, with
//! `--procs P`, a child process (this same binary, re-executed with `--child-index`) that runs its
//! own worker threads and relays their events, merged, as JSON lines on its stdout. Both kinds take
//! the same [`Cmd`]s and answer with the same [`Event`]s, so one controller drives either.
//!
//! A run: every unit connects its share (setup) and says `Ready`; `Go` starts the measured window;
//! `Harvest(k)` once a second collects counters and histograms; `Drain` stops new traffic and waits
//! for what is in flight; `Close` closes every connection with a close handshake, and each unit
//! answers with its last counters and exits.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::RawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::net;
use crate::stats::Snapshot;
use crate::worker::{Assignment, Plan, Worker};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Go,
    Harvest(u64),
    Drain,
    Close,
}

impl Cmd {
    pub fn to_line(self) -> String {
        match self {
            Cmd::Go => "go".into(),
            Cmd::Harvest(k) => format!("harvest {k}"),
            Cmd::Drain => "drain".into(),
            Cmd::Close => "close".into(),
        }
    }

    pub fn parse(line: &str) -> Option<Cmd> {
        let mut words = line.split_whitespace();
        let cmd = match words.next()? {
            "go" => Cmd::Go,
            "harvest" => Cmd::Harvest(words.next()?.parse().ok()?),
            "drain" => Cmd::Drain,
            "close" => Cmd::Close,
            _ => return None,
        };
        Some(cmd)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Every connection of the unit's share was attempted (setup is over for it).
    Ready {
        open: u64,
    },
    Harvest {
        tick: u64,
        snap: Box<Snapshot>,
    },
    /// Nothing of the unit is in flight any more.
    Drained,
    /// The unit closed everything; its last counters. It exits after this.
    Closed {
        snap: Box<Snapshot>,
    },
}

/// What a controller (or a child's relay loop) receives.
pub enum Input {
    Event(usize, Event),
    /// A command from the parent process (child processes only).
    Cmd(Cmd),
    /// A child process ended (its stdout closed).
    Gone(usize),
}

enum Unit {
    Thread {
        tx: Sender<Cmd>,
        wake: RawFd,
        join: Option<JoinHandle<()>>,
    },
    Child {
        stdin: Option<ChildStdin>,
        child: Child,
    },
}

pub struct Fleet {
    units: Vec<Unit>,
    pub rx: Receiver<Input>,
    pub tx: Sender<Input>,
}

impl Fleet {
    /// Starts one worker thread per assignment; they begin their setup at once.
    pub fn threads(plan: Arc<Plan>, assignments: Vec<Assignment>) -> std::io::Result<Fleet> {
        let (tx, rx) = channel();
        let mut units = Vec::new();
        for asg in assignments {
            let (ctx, crx) = channel();
            let wake = net::eventfd()?;
            let worker = Worker::new(plan.clone(), asg, wake, crx, tx.clone())?;
            let join = std::thread::Builder::new()
                .name(format!("load-{}", units.len()))
                .spawn(move || worker.run())?;
            units.push(Unit::Thread {
                tx: ctx,
                wake,
                join: Some(join),
            });
        }
        Ok(Fleet { units, rx, tx })
    }

    /// Starts `procs` children: this executable with `args` plus `--child-index p`.
    pub fn children(args: &[OsString], procs: usize) -> std::io::Result<Fleet> {
        let exe = std::env::current_exe()?;
        let (tx, rx) = channel();
        let mut units = Vec::new();
        for p in 0..procs {
            let mut child = Command::new(&exe)
                .args(args)
                .arg("--child-index")
                .arg(p.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let stdout = child.stdout.take().expect("piped stdout");
            let ptx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Event>(&line) {
                        Ok(ev) => {
                            if ptx.send(Input::Event(p, ev)).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("ringgate-load: bad line from process {p}: {e}"),
                    }
                }
                let _ = ptx.send(Input::Gone(p));
            });
            units.push(Unit::Child {
                stdin: child.stdin.take(),
                child,
            });
        }
        Ok(Fleet { units, rx, tx })
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn send(&mut self, cmd: Cmd) {
        for unit in &mut self.units {
            match unit {
                Unit::Thread { tx, wake, .. } => {
                    if tx.send(cmd).is_ok() {
                        net::eventfd_wake(*wake);
                    }
                }
                Unit::Child { stdin, .. } => {
                    if let Some(w) = stdin {
                        let line = cmd.to_line() + "\n";
                        if w.write_all(line.as_bytes())
                            .and_then(|_| w.flush())
                            .is_err()
                        {
                            *stdin = None;
                        }
                    }
                }
            }
        }
    }

    /// Waits for the threads to exit and the children to end (killing a child that does not end
    /// within `grace`).
    pub fn finish(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for unit in &mut self.units {
            match unit {
                Unit::Thread { join, wake, .. } => {
                    if let Some(j) = join.take() {
                        let _ = j.join();
                    }
                    net::close(*wake);
                }
                Unit::Child { stdin, child } => {
                    *stdin = None;
                    loop {
                        match child.try_wait() {
                            Ok(Some(_)) | Err(_) => break,
                            Ok(None) if Instant::now() >= deadline => {
                                eprintln!(
                                    "ringgate-load: child {} did not exit, killing it",
                                    child.id()
                                );
                                let _ = child.kill();
                                let _ = child.wait();
                                break;
                            }
                            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                        }
                    }
                }
            }
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The first SIGINT ends the measured window early (the run still drains, closes and reports);
/// a second one kills the process as usual.
pub fn install_sigint() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

pub fn ignore_sigint() {
    // SAFETY: setting a signal disposition to SIG_IGN is always safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

pub fn interrupted() -> bool {
    if INTERRUPTED.load(Ordering::SeqCst) {
        // Restore the default, so a second Ctrl-C ends the process.
        // SAFETY: setting a signal disposition to SIG_DFL is always safe.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
        true
    } else {
        false
    }
}

/// Tracks what each unit has reported.
pub struct Controller {
    pub fleet: Fleet,
    ready: Vec<bool>,
    drained: Vec<bool>,
    closed: Vec<bool>,
    gone: Vec<bool>,
    pending: BTreeMap<u64, (Vec<bool>, Snapshot)>,
    /// The last counters of the units that closed.
    pub closed_snap: Snapshot,
    pub ready_open: u64,
}

impl Controller {
    pub fn new(fleet: Fleet) -> Controller {
        let n = fleet.len();
        Controller {
            fleet,
            ready: vec![false; n],
            drained: vec![false; n],
            closed: vec![false; n],
            gone: vec![false; n],
            pending: BTreeMap::new(),
            closed_snap: Snapshot::default(),
            ready_open: 0,
        }
    }

    fn handle(&mut self, input: Input) {
        let n = self.ready.len();
        match input {
            Input::Event(u, ev) if u < n => match ev {
                Event::Ready { open } => {
                    if !self.ready[u] {
                        self.ready[u] = true;
                        self.ready_open += open;
                    }
                }
                Event::Harvest { tick, snap } => {
                    let entry = self
                        .pending
                        .entry(tick)
                        .or_insert_with(|| (vec![false; n], Snapshot::default()));
                    entry.0[u] = true;
                    entry.1.merge(&snap);
                }
                Event::Drained => self.drained[u] = true,
                Event::Closed { snap } => {
                    if !self.closed[u] {
                        self.closed[u] = true;
                        self.closed_snap.merge(&snap);
                    }
                }
            },
            Input::Gone(u) if u < n => {
                if !self.closed[u] {
                    eprintln!("ringgate-load: process {u} ended before closing");
                }
                self.gone[u] = true;
            }
            _ => {}
        }
    }

    fn done(&self, flags: &[bool]) -> bool {
        flags.iter().zip(&self.gone).all(|(f, g)| *f || *g)
    }

    pub fn all_ready(&self) -> bool {
        self.done(&self.ready)
    }

    pub fn all_drained(&self) -> bool {
        self.done(&self.drained)
    }

    pub fn all_closed(&self) -> bool {
        self.done(&self.closed)
    }

    /// Processes inputs until `cond` holds or `deadline` passes (or, if `interruptible`, Ctrl-C).
    pub fn wait_until(
        &mut self,
        deadline: Instant,
        interruptible: bool,
        cond: impl Fn(&Controller) -> bool,
    ) -> bool {
        loop {
            if cond(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || (interruptible && interrupted()) {
                return false;
            }
            let slice = (deadline - now).min(Duration::from_millis(100));
            match self.fleet.rx.recv_timeout(slice) {
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return cond(self),
            }
        }
    }

    /// Asks every unit for its counters since the last harvest and merges the answers (waiting at
    /// most 2 s; a late answer is folded into a later harvest).
    pub fn harvest(&mut self, tick: u64) -> Snapshot {
        self.fleet.send(Cmd::Harvest(tick));
        let deadline = Instant::now() + Duration::from_secs(2);
        self.wait_until(deadline, false, |c| {
            c.pending.get(&tick).is_some_and(|(got, _)| c.done(got)) || c.gone.iter().all(|g| *g)
        });
        let mut out = Snapshot::default();
        let keys: Vec<u64> = self.pending.range(..=tick).map(|(k, _)| *k).collect();
        for k in keys {
            if let Some((_, s)) = self.pending.remove(&k) {
                out.merge(&s);
            }
        }
        out
    }
}

/// The loop of a child process: relays the parent's commands (stdin lines) to its worker threads
/// and their events, merged over the threads, to the parent (JSON lines on stdout). EOF on stdin
/// (the parent went away) closes everything.
pub fn child_main(mut fleet: Fleet) {
    ignore_sigint();
    let n = fleet.len();
    let tx = fleet.tx.clone();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if let Some(cmd) = Cmd::parse(&line) {
                if tx.send(Input::Cmd(cmd)).is_err() {
                    return;
                }
            }
        }
        let _ = tx.send(Input::Cmd(Cmd::Close));
    });
    let mut out = std::io::stdout().lock();
    let mut emit = |ev: &Event| {
        let line = serde_json::to_string(ev).expect("events serialize");
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let (mut ready, mut ready_open, mut drained, mut closed) = (0, 0, 0, 0);
    let mut pending: BTreeMap<u64, (usize, Snapshot)> = BTreeMap::new();
    let mut last = Snapshot::default();
    while let Ok(input) = fleet.rx.recv() {
        match input {
            Input::Cmd(cmd) => fleet.send(cmd),
            Input::Event(_, Event::Ready { open }) => {
                ready += 1;
                ready_open += open;
                if ready == n {
                    emit(&Event::Ready { open: ready_open });
                }
            }
            Input::Event(_, Event::Harvest { tick, snap }) => {
                let entry = pending.entry(tick).or_default();
                entry.0 += 1;
                entry.1.merge(&snap);
                if entry.0 == n {
                    if let Some((_, mut s)) = pending.remove(&tick) {
                        s.cpu_ns = net::self_cpu_ns();
                        emit(&Event::Harvest {
                            tick,
                            snap: Box::new(s),
                        });
                    }
                }
            }
            Input::Event(_, Event::Drained) => {
                drained += 1;
                if drained == n {
                    emit(&Event::Drained);
                }
            }
            Input::Event(_, Event::Closed { snap }) => {
                closed += 1;
                last.merge(&snap);
                if closed == n {
                    last.cpu_ns = net::self_cpu_ns();
                    emit(&Event::Closed {
                        snap: Box::new(last),
                    });
                    break;
                }
            }
            Input::Gone(_) => {}
        }
    }
    fleet.finish(Duration::from_secs(5));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_as_lines() {
        for cmd in [Cmd::Go, Cmd::Harvest(17), Cmd::Drain, Cmd::Close] {
            assert_eq!(Cmd::parse(&cmd.to_line()), Some(cmd));
        }
        assert_eq!(Cmd::parse("harvest"), None);
        assert_eq!(Cmd::parse("bogus"), None);
    }

    #[test]
    fn events_round_trip_as_json() {
        let mut snap = Snapshot::default();
        snap.counters.round_trips = 3;
        snap.rtt.record(250);
        for ev in [
            Event::Ready { open: 5 },
            Event::Harvest {
                tick: 2,
                snap: Box::new(snap.clone()),
            },
            Event::Drained,
            Event::Closed {
                snap: Box::new(snap),
            },
        ] {
            let line = serde_json::to_string(&ev).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), ev);
        }
    }
}
