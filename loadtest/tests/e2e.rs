//! End to end: the shipped `ringgate-load` binary, run as a subprocess against a ringgate started in
//! this process, for every subcommand. Its `--json` report must agree with itself and with the
//! server's own counters (`GET /stats`), and its checking must catch an echo server that corrupts
//! payloads.
//!
//! The tests run one at a time: they share two CPUs, and `--pid` measures this whole process.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use ringgate::config::{Config, UpstreamConfig};
use ringgate::echo_server::{self, EchoServer};
use ringgate::gateway::LinkSettings;
use ringgate::gateway::{self, Server};
use serde_json::Value;

/// Longer than any run here can take by the harness's own bounds (window, drain, close).
const RUN_LIMIT: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test must not fail the ones after it.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---------------------------------------------------------------------------------------------
// The target: ringgate (two cores) in front of the echo game server, in this process.

struct Stack {
    server: Option<Server>,
    echo: Option<EchoServer>,
    url: String,
    admin: SocketAddr,
}

impl Stack {
    fn start() -> Stack {
        let mut cfg = Config {
            listen: loopback(0),
            workers: 2,
            admin_listen: Some(loopback(0)),
            ..Config::default()
        };
        let max_frame = LinkSettings::from_config(&cfg).max_frame;
        let echo = echo_server::start(loopback(0), 1, max_frame).expect("echo game server starts");
        cfg.upstreams = vec![UpstreamConfig {
            address: echo.addr.to_string(),
        }];
        let server = gateway::start(&cfg).expect("ringgate starts");
        // Connections arriving before the links are up would get 503 and count as errors.
        assert!(
            server.wait_ready(Duration::from_secs(10)),
            "ringgate's upstream links did not come up"
        );
        let url = format!("ws://{}{}", server.local_addr, cfg.path);
        let admin = server.admin_addr.expect("admin endpoint configured");
        Stack {
            server: Some(server),
            echo: Some(echo),
            url,
            admin,
        }
    }

    fn stats(&self) -> Stats {
        let mut s = TcpStream::connect_timeout(&self.admin, Duration::from_secs(5))
            .expect("connect to the admin endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set read timeout");
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: ringgate\r\nConnection: close\r\n\r\n")
            .expect("send GET /stats");
        let mut response = String::new();
        s.read_to_string(&mut response)
            .expect("read the /stats response");
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP head in {response:?}"));
        assert!(head.starts_with("HTTP/1.1 200"), "GET /stats: {response}");
        Stats(
            serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("/stats is not JSON ({e}): {body}")),
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let panicked = self.server.take().map_or(0, |s| {
            s.shutdown();
            s.join()
        });
        if let Some(e) = self.echo.take() {
            e.shutdown();
        }
        if panicked > 0 && !std::thread::panicking() {
            panic!("{panicked} ringgate worker(s) panicked");
        }
    }
}

/// `GET /stats`: one object per core.
struct Stats(Value);

impl Stats {
    fn per_core(&self, counter: &str) -> Vec<u64> {
        self.0
            .as_array()
            .unwrap_or_else(|| panic!("/stats is not an array: {self}"))
            .iter()
            .map(|core| {
                core["counters"][counter]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no counter {counter:?} in /stats: {self}"))
            })
            .collect()
    }

    fn sum(&self, counter: &str) -> u64 {
        self.per_core(counter).iter().sum()
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// The harness as a subprocess.

/// Files of one test, removed at its end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("ringgate-load-e2e-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch directory");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One finished run of `ringgate-load`: how it exited, what it printed, its `--json` report.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    report: Value,
}

impl Run {
    /// A number of the report, by JSON pointer (`/window/round_trips`).
    fn u64(&self, pointer: &str) -> u64 {
        self.report
            .pointer(pointer)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{pointer} is not an unsigned integer:\n{self}"))
    }

    fn f64(&self, pointer: &str) -> f64 {
        self.report
            .pointer(pointer)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("{pointer} is not a number:\n{self}"))
    }

    /// A count summed over the three phases: setup, window and after the window.
    fn total(&self, counter: &str) -> u64 {
        ["setup", "window", "after_window"]
            .iter()
            .map(|phase| self.u64(&format!("/{phase}/{counter}")))
            .sum()
    }

    fn assert_clean(&self) {
        assert!(self.ok, "ringgate-load failed:\n{self}");
        assert_eq!(self.u64("/errors_total"), 0, "errors:\n{self}");
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string_pretty(&self.report).unwrap_or_default();
        write!(
            f,
            "--- stdout\n{}--- stderr\n{}--- json\n{json}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `ringgate-load SUB --url URL --json FILE --quiet ARGS...` and reads its report.
fn load(sub: &str, url: &str, scratch: &Scratch, args: &[&str]) -> Run {
    let json = scratch.path(&format!("{sub}.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_ringgate-load"))
        .arg(sub)
        .arg("--url")
        .arg(url)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringgate-load");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(RUN_LIMIT) {
        Ok(out) => out.expect("wait for ringgate-load"),
        Err(_) => {
            // SAFETY: kill(2) on the child we started; it has not been reaped (wait is pending).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("ringgate-load {sub} {args:?} did not finish in {RUN_LIMIT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = match std::fs::read_to_string(&json) {
        Ok(text) => serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{text}\n{stdout}{stderr}")),
        Err(e) => panic!(
            "no --json report ({e}); exit {:?}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            out.status
        ),
    };
    Run {
        ok: out.status.success(),
        stdout,
        stderr,
        report,
    }
}

// ---------------------------------------------------------------------------------------------
// The workloads against ringgate.

#[test]
fn echo_closed_loop_agrees_with_the_server_counters() {
    let _one = serial();
    let stack = Stack::start();
    let scratch = Scratch::new("echo");
    let plot = scratch.path("echo.svg");
    let pid = std::process::id().to_string();
    let run = load(
        "echo",
        &stack.url,
        &scratch,
        &[
            "--conns",
            "50",
            "--size",
            "64",
            "--depth",
            "4",
            "--duration",
            "2",
            "--query",
            "user={i}",
            "--plot",
            plot.to_str().expect("UTF-8 temp path"),
            "--pid",
            &pid,
        ],
    );
    run.assert_clean();
    let round_trips = run.u64("/window/round_trips");
    assert!(round_trips > 0, "no round trips:\n{run}");
    assert_eq!(run.u64("/setup/connects"), 50, "connections:\n{run}");
    // Sending stops with the window: after it, only the echoes still in flight come back.
    assert_eq!(
        run.u64("/after_window/msgs_sent"),
        0,
        "sent after the window:\n{run}"
    );
    assert!(
        run.u64("/after_window/round_trips") <= 50 * 4,
        "more echoes after the window than were in flight:\n{run}"
    );
    assert!(run.u64("/latency_us/p99") > 0, "p99 latency:\n{run}");
    let per_op = run.f64("/cpu/target_us_per_op");
    let kernel = run.f64("/cpu/target_kernel_us_per_op");
    assert!(
        per_op > 0.0 && (0.0..=per_op).contains(&kernel),
        "target CPU per round trip {per_op}, kernel part {kernel}:\n{run}"
    );
    let svg = std::fs::read_to_string(&plot).expect("--plot file written");
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "--plot is not SVG: {:?}",
        &svg[..svg.len().min(200)]
    );

    // The harness has exited after every echo came back, so the server has counted them all.
    let stats = stack.stats();
    assert_eq!(
        stats.sum("messages_in"),
        run.total("msgs_sent"),
        "server messages_in vs harness msgs_sent\n{stats}\n{run}"
    );
    assert!(
        stats.sum("messages_out") >= run.total("round_trips"),
        "server messages_out below the harness's round trips\n{stats}\n{run}"
    );
    assert_eq!(stats.sum("upgraded"), 50, "{stats}");
    // `user={i}` spreads the users, so both cores own sessions whichever accepted them.
    assert!(
        stats.per_core("upgraded").iter().all(|&n| n > 0),
        "sessions did not land on both cores: {stats}"
    );
}

#[test]
fn echo_over_two_worker_processes_merges_their_reports() {
    let _one = serial();
    let stack = Stack::start();
    let scratch = Scratch::new("procs");
    let run = load(
        "echo",
        &stack.url,
        &scratch,
        &[
            "--procs",
            "2",
            "--conns",
            "40",
            "--depth",
            "2",
            "--duration",
            "2",
            "--query",
            "user={p}-{i}",
        ],
    );
    run.assert_clean();
    assert_eq!(run.u64("/setup/connects"), 40, "connects:\n{run}");
    assert_eq!(run.u64("/open_at_start"), 40, "open at start:\n{run}");
    assert_eq!(run.u64("/config/procs"), 2, "procs:\n{run}");
    assert!(run.u64("/window/round_trips") > 0, "no round trips:\n{run}");
    let stats = stack.stats();
    assert_eq!(stats.sum("upgraded"), 40, "{stats}\n{run}");
    assert_eq!(
        stats.sum("messages_in"),
        run.total("msgs_sent"),
        "server messages_in vs merged msgs_sent\n{stats}\n{run}"
    );
}

#[test]
fn echo_open_loop_holds_the_asked_rate() {
    let _one = serial();
    let stack = Stack::start();
    let scratch = Scratch::new("rate");
    let run = load(
        "echo",
        &stack.url,
        &scratch,
        &[
            "--rate",
            "2000",
            "--depth",
            "8",
            "--conns",
            "20",
            "--duration",
            "2",
        ],
    );
    run.assert_clean();
    // An idle server answers 2000 messages/s at once: the rate is the harness's pacing.
    let achieved = run.f64("/window/round_trips_per_sec");
    assert!(
        (1000.0..=3000.0).contains(&achieved),
        "asked 2000 round trips/s, got {achieved}:\n{run}"
    );
}

#[test]
fn idle_reports_memory_per_connection() {
    let _one = serial();
    let stack = Stack::start();
    let scratch = Scratch::new("idle");
    let pid = std::process::id().to_string();
    let run = load(
        "idle",
        &stack.url,
        &scratch,
        &["--conns", "1000", "--hold", "1", "--pid", &pid],
    );
    run.assert_clean();
    assert_eq!(run.u64("/setup/connects"), 1000, "connects:\n{run}");
    // Only the sign is checked: earlier tests' servers ran in this process, and the allocator hands
    // their freed memory to this one, so the figure is lower than on a fresh process. A thousand
    // connections (about 1 MB on a fresh one) keep the growth well above what can be reused.
    let per_conn = run.f64("/memory/bytes_per_connection");
    assert!(per_conn > 0.0, "bytes per connection {per_conn}:\n{run}");
}

#[test]
fn handshake_loop_is_seen_by_the_server() {
    let _one = serial();
    let stack = Stack::start();
    let scratch = Scratch::new("handshake");
    let accepted_before = stack.stats().sum("accepted");
    let run = load(
        "handshake",
        &stack.url,
        &scratch,
        &["--workers", "4", "--duration", "1"],
    );
    run.assert_clean();
    assert!(
        run.f64("/window/connects_per_sec") > 0.0,
        "no upgrades:\n{run}"
    );
    let stats = stack.stats();
    let accepted = stats.sum("accepted") - accepted_before;
    assert!(
        accepted >= run.total("connects"),
        "server accepted {accepted}, harness upgraded {}\n{stats}\n{run}",
        run.total("connects")
    );
}

#[test]
fn churn_replaces_connections() {
    let _one = serial();
    let stack = Stack::start();
    let scratch = Scratch::new("churn");
    let run = load(
        "churn",
        &stack.url,
        &scratch,
        &[
            "--conns",
            "20",
            "--duration",
            "2",
            "--lifetime-ms",
            "200",
            "--query",
            "user={i}",
        ],
    );
    run.assert_clean();
    let connects = run.total("connects");
    assert!(
        connects > 20,
        "only {connects} connects for 20 slots:\n{run}"
    );
    assert!(run.u64("/window/closes") > 0, "no clean closes:\n{run}");
    assert!(run.u64("/window/round_trips") > 0, "no round trips:\n{run}");
}

// ---------------------------------------------------------------------------------------------
// The checking itself.

/// Corrupts one payload byte of every `CORRUPT_EVERY`th binary message it echoes on a connection.
const CORRUPT_EVERY: u64 = 5;

/// Connections the broken server serves at once; more are dropped.
const BROKEN_MAX_CONNS: usize = 16;

/// A WebSocket echo server that gets some echoes wrong, a thread per connection. Dropping it
/// shuts every socket down, which ends the blocked threads, and joins them.
struct BrokenEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl BrokenEcho {
    fn start() -> BrokenEcho {
        let listener = TcpListener::bind(loopback(0)).expect("bind the broken echo server");
        let addr = listener.local_addr().expect("its address");
        let stop = Arc::new(AtomicBool::new(false));
        let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (stop2, sockets2) = (stop.clone(), sockets.clone());
        let acceptor = std::thread::spawn(move || {
            let mut served = Vec::new();
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if served.len() >= BROKEN_MAX_CONNS {
                    continue;
                }
                let Ok(handle) = stream.try_clone() else {
                    continue;
                };
                sockets2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(handle);
                served.push(std::thread::spawn(move || echo_badly(stream)));
            }
            for t in served {
                let _ = t.join();
            }
        });
        BrokenEcho {
            addr,
            stop,
            sockets,
            acceptor: Some(acceptor),
        }
    }
}

impl Drop for BrokenEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor from accept(2) so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        for s in self
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

fn echo_badly(stream: TcpStream) {
    use tungstenite::Message;
    let Ok(mut ws) = tungstenite::accept(stream) else {
        return;
    };
    let mut echoed = 0u64;
    loop {
        match ws.read() {
            Ok(Message::Binary(mut payload)) => {
                echoed += 1;
                if echoed.is_multiple_of(CORRUPT_EVERY) {
                    // The last byte is fill, so the harness sees a mismatch, not a lost sequence.
                    if let Some(b) = payload.last_mut() {
                        *b ^= 0x5a;
                    }
                }
                if ws.send(Message::Binary(payload)).is_err() {
                    return;
                }
            }
            // tungstenite answers pings and closes by itself.
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn echo_detects_corrupted_echoes() {
    let _one = serial();
    let broken = BrokenEcho::start();
    let scratch = Scratch::new("broken");
    let url = format!("ws://{}/ws", broken.addr);
    let run = load(
        "echo",
        &url,
        &scratch,
        &["--conns", "5", "--duration", "1", "--close-timeout", "1"],
    );
    assert!(!run.ok, "a run with errors must exit non-zero:\n{run}");
    let mismatch = run.u64("/errors/mismatch");
    let round_trips = run.u64("/window/round_trips");
    assert!(mismatch > 0, "corrupted echoes went unnoticed:\n{run}");
    assert!(round_trips > 0, "no echo came back intact:\n{run}");
    // Every 5th echo is corrupted: about a quarter as many mismatches as good round trips.
    assert!(
        mismatch * 2 <= round_trips && round_trips <= mismatch * 8,
        "{mismatch} mismatches for {round_trips} round trips:\n{run}"
    );
    assert_eq!(
        run.u64("/errors_total"),
        mismatch,
        "errors other than mismatches:\n{run}"
    );
}
