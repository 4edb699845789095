//! The phases of a run, as the top controller sees them: setup, measured window (one harvest a
//! second, a progress line on stderr, a point of the time series), drain, close.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::control::{interrupted, Cmd, Controller};
use crate::net;
use crate::stats::Snapshot;
use crate::worker::Mode;

/// What a workload with a side of its own (fan-out's publisher) needs from the phases. The
/// defaults do nothing.
pub trait Hooks {
    /// A reason the run cannot go on (checked during setup and once a second in the window).
    fn failure(&self) -> Option<String> {
        None
    }
    /// The window starts.
    fn go(&mut self) {}
    /// The window ends: called before the workers are told to drain.
    fn stop(&mut self) {}
}

/// No side of its own: echo, idle, handshake, churn.
pub struct NoHooks;

impl Hooks for NoHooks {}

pub struct Settings {
    pub mode: Mode,
    /// Length of the measured window in seconds (idle: the hold).
    pub window_secs: u64,
    pub setup_timeout: Duration,
    pub drain_timeout: Duration,
    pub close_timeout: Duration,
    /// Connections (or workers) expected, for the progress line.
    pub expected: u64,
    pub pids: Vec<u32>,
    pub progress: bool,
    /// VmRSS of the target processes before the fleet started, KiB.
    pub rss_before: Option<u64>,
}

/// One second of the measured window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Point {
    /// Seconds since the window started (end of this interval).
    pub t: f64,
    pub round_trips: u64,
    /// Fan-out: messages delivered to members.
    pub delivered: u64,
    pub msgs_sent: u64,
    pub connects: u64,
    pub closes: u64,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub errors: u64,
    pub open: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub handshake_p99_us: u64,
    /// CPU used in this second, in cores (1.0 = one core busy all the time).
    pub harness_cores: f64,
    pub target_cores: Option<f64>,
    /// CPU used by the whole machine in this second, in cores.
    pub machine_cores: f64,
    /// Length of the interval in seconds.
    pub secs: f64,
}

impl Point {
    fn new(t: f64, secs: f64, s: &Snapshot, cpu: Cores) -> Point {
        let rtt = s.rtt.summary();
        Point {
            t,
            round_trips: s.counters.round_trips,
            delivered: s.counters.delivered,
            msgs_sent: s.counters.msgs_sent,
            connects: s.counters.connects,
            closes: s.counters.closes,
            bytes_sent: s.counters.bytes_sent,
            bytes_recv: s.counters.bytes_recv,
            errors: s.counters.errors.total(),
            open: s.open,
            p50_us: rtt.p50,
            p99_us: rtt.p99,
            max_us: rtt.max,
            handshake_p99_us: s.handshake.summary().p99,
            harness_cores: cpu.harness,
            target_cores: cpu.target,
            machine_cores: cpu.machine,
            secs,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rss {
    pub before_kib: u64,
    pub after_connect_kib: u64,
    pub end_kib: u64,
}

pub struct Outcome {
    pub setup_secs: f64,
    /// Counters of the setup phase (the connects of echo and idle).
    pub setup: Snapshot,
    pub window_secs: f64,
    /// Counters of the measured window; gauges at its end.
    pub window: Snapshot,
    /// Counters after the window: the drain and the close.
    pub tail: Snapshot,
    pub series: Vec<Point>,
    /// CPU use over the window: harness, target processes, the whole machine (every process and
    /// the kernel, so also the upstream and anything else running).
    pub window_cores: Cores,
    pub rss: Option<Rss>,
    pub open_at_start: u64,
    pub interrupted: bool,
    /// Why the run was cut short by its own side ([`Hooks::failure`]), if it was.
    pub failure: Option<String>,
}

fn target_cpu_ns(pids: &[u32]) -> Option<net::ProcCpu> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| net::proc_cpu_ns(p)).sum()
}

pub fn target_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| net::proc_rss_kib(p)).sum()
}

/// CPU times at one moment: the harness (this process plus its children as of their last
/// harvest), the target processes, the whole machine.
#[derive(Clone, Copy)]
struct CpuMark {
    at: Instant,
    harness: u64,
    target: Option<net::ProcCpu>,
    machine: u64,
}

impl CpuMark {
    fn now(children_cpu_ns: u64, pids: &[u32]) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            harness: net::self_cpu_ns() + children_cpu_ns,
            target: target_cpu_ns(pids),
            machine: net::machine_busy_ns().unwrap_or(0),
        }
    }

    /// CPU used from `self` to `later`, in cores.
    fn cores_until(&self, later: &CpuMark) -> Cores {
        let secs = later.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9 / secs;
        let target = self.target.zip(later.target);
        Cores {
            harness: per(self.harness, later.harness),
            target: target.map(|(a, b)| per(a.total_ns(), b.total_ns())),
            target_kernel: target.map(|(a, b)| per(a.kernel_ns, b.kernel_ns)),
            machine: per(self.machine, later.machine),
        }
    }
}

/// CPU use over an interval, in cores (1.0 = one core busy all the time).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cores {
    pub harness: f64,
    pub target: Option<f64>,
    /// The part of `target` spent in the kernel (system time).
    pub target_kernel: Option<f64>,
    pub machine: f64,
}

pub fn drive(set: &Settings, ctl: &mut Controller, hooks: &mut dyn Hooks) -> Outcome {
    let t0 = Instant::now();
    let mut tick = 0u64;
    let mut interrupted_run = false;

    // Setup: every unit attempts its connections.
    let mut setup = Snapshot::default();
    let setup_deadline = t0 + set.setup_timeout;
    let mut next = t0 + Duration::from_secs(1);
    let mut prev_cpu = CpuMark::now(0, &set.pids);
    while !ctl.all_ready() {
        ctl.wait_until(next.min(setup_deadline), true, Controller::all_ready);
        if interrupted() {
            interrupted_run = true;
            break;
        }
        if hooks.failure().is_some() {
            break;
        }
        let now = Instant::now();
        if now >= next && !ctl.all_ready() {
            tick += 1;
            let s = ctl.harvest(tick);
            setup.accumulate(&s);
            let cpu = CpuMark::now(s.cpu_ns, &set.pids);
            if set.progress {
                let cores = prev_cpu.cores_until(&cpu);
                progress(set, "setup", t0.elapsed().as_secs_f64(), &s, &cores, 1.0);
            }
            prev_cpu = cpu;
            next += Duration::from_secs(1);
        }
        if now >= setup_deadline && !ctl.all_ready() {
            eprintln!(
                "ringgate-load: setup not finished after {:.0} s, starting anyway",
                set.setup_timeout.as_secs_f64()
            );
            break;
        }
    }
    tick += 1;
    let s = ctl.harvest(tick);
    setup.accumulate(&s);
    let setup_secs = t0.elapsed().as_secs_f64();
    let rss_after_connect = target_rss_kib(&set.pids);
    if set.progress && set.mode.connects_in_setup() {
        eprintln!(
            "[setup] {} of {} open in {:.2} s ({} errors)",
            setup.open,
            set.expected,
            setup_secs,
            setup.counters.errors.total()
        );
    }

    // The measured window.
    let failed_in_setup = hooks.failure().is_some();
    if !failed_in_setup {
        hooks.go();
    }
    ctl.fleet.send(Cmd::Go);
    let w0 = Instant::now();
    let cpu0 = CpuMark::now(setup.cpu_ns, &set.pids);
    let mut prev = cpu0;
    let mut window = Snapshot {
        open: setup.open,
        ..Default::default()
    };
    let mut series = Vec::new();
    let mut last_cpu = setup.cpu_ns;
    let mut stopped = false;
    if !interrupted_run && !failed_in_setup {
        for k in 1..=set.window_secs {
            ctl.wait_until(w0 + Duration::from_secs(k), true, |_| false);
            if interrupted() {
                interrupted_run = true;
            }
            let failed = hooks.failure().is_some();
            if k == set.window_secs || interrupted_run || failed {
                // Ends the sending before the last harvest (commands reach each worker in order),
                // so that nothing sent after the window is measured as part of it.
                hooks.stop();
                stopped = true;
                ctl.fleet.send(Cmd::Drain);
            }
            tick += 1;
            let s = ctl.harvest(tick);
            let now = Instant::now();
            last_cpu = s.cpu_ns;
            let cpu = CpuMark::now(s.cpu_ns, &set.pids);
            let cores = prev.cores_until(&cpu);
            let secs = now.duration_since(prev.at).as_secs_f64();
            let p = Point::new(now.duration_since(w0).as_secs_f64(), secs, &s, cores);
            if set.progress {
                progress(set, "run", p.t, &s, &cores, secs);
            }
            series.push(p);
            window.accumulate(&s);
            prev = cpu;
            if interrupted_run || failed {
                break;
            }
        }
    }
    let window_secs = w0.elapsed().as_secs_f64();
    let cpu_end = CpuMark::now(last_cpu, &set.pids);
    let window_cores = cpu0.cores_until(&cpu_end);
    let rss_end = target_rss_kib(&set.pids);

    // Drain (already asked for unless the window never started; workers ignore a second
    // request), then close.
    if !stopped {
        hooks.stop();
    }
    ctl.fleet.send(Cmd::Drain);
    let drained = ctl.wait_until(
        Instant::now() + set.drain_timeout,
        false,
        Controller::all_drained,
    );
    if !drained && set.progress {
        eprintln!(
            "[drain] still waiting for echoes after {:.1} s",
            set.drain_timeout.as_secs_f64()
        );
    }
    tick += 1;
    let mut tail = ctl.harvest(tick);
    ctl.fleet.send(Cmd::Close);
    let closed = ctl.wait_until(
        Instant::now() + set.close_timeout + Duration::from_secs(3),
        false,
        Controller::all_closed,
    );
    if !closed {
        eprintln!("ringgate-load: some units did not report their close in time");
    }
    tail.merge(&ctl.closed_snap);
    ctl.fleet.finish(Duration::from_secs(5));

    let rss = set.rss_before.map(|before| Rss {
        before_kib: before,
        after_connect_kib: rss_after_connect.unwrap_or(0),
        end_kib: rss_end.unwrap_or(0),
    });
    Outcome {
        setup_secs,
        setup,
        window_secs,
        window,
        tail,
        series,
        window_cores,
        rss,
        open_at_start: ctl.ready_open,
        interrupted: interrupted_run,
        failure: hooks.failure(),
    }
}

fn progress(set: &Settings, label: &str, t: f64, s: &Snapshot, cpu: &Cores, secs: f64) {
    let c = &s.counters;
    let secs = secs.max(1e-3);
    let mut line = format!("[{label} {t:5.1}s] open {}/{}", s.open, set.expected);
    if s.connecting > 0 {
        line += &format!(" (+{} connecting)", s.connecting);
    }
    if c.connects > 0 || matches!(set.mode, Mode::Handshake | Mode::Churn) {
        line += &format!(
            "  upgrades/s {}",
            thousands((c.connects as f64 / secs) as u64)
        );
    }
    if set.mode.connects_in_setup() && label == "setup" || matches!(set.mode, Mode::Handshake) {
        let h = s.handshake.summary();
        if h.count > 0 {
            line += &format!("  upgrade p99 {}", micros(h.p99));
        }
    }
    if set.mode == Mode::Fanout && label == "run" {
        let r = s.rtt.summary();
        line += &format!(
            "  delivered/s {}  p50 {} p99 {}",
            thousands((c.delivered as f64 / secs) as u64),
            micros(r.p50),
            micros(r.p99),
        );
    }
    if set.mode == Mode::Fanout && label == "setup" {
        line += &format!("  joined {}", c.joined);
    }
    if matches!(set.mode, Mode::Echo | Mode::Churn) && label == "run" {
        let r = s.rtt.summary();
        line += &format!(
            "  rt/s {}  {:.1}/{:.1} MB/s  p50 {} p99 {}",
            thousands((c.round_trips as f64 / secs) as u64),
            c.bytes_sent as f64 / secs / 1e6,
            c.bytes_recv as f64 / secs / 1e6,
            micros(r.p50),
            micros(r.p99),
        );
    }
    line += &format!("  errors {}", c.errors.total());
    if c.errors.total() > 0 {
        line += &format!(" ({})", c.errors.describe());
    }
    line += &format!("  cpu: load {:.2}", cpu.harness);
    if let Some(t) = cpu.target {
        line += &format!(" target {t:.2}");
    }
    line += &format!(" machine {:.2}", cpu.machine);
    eprintln!("{line}");
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A duration in microseconds, in the most readable unit.
pub fn micros(us: u64) -> String {
    if us < 1000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(micros(999), "999us");
        assert_eq!(micros(1500), "1.50ms");
        assert_eq!(micros(2_500_000), "2.50s");
    }
}
