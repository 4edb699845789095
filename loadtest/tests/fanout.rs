//! `ringgate-load fanout` end to end, as a subprocess: against the comparison peers of
//! bench/peers (Node `ws`, Python `websockets`) in peer mode, and in ringgate mode against a
//! stand-in gateway (tests/fanout/stand_in_gateway.py) and, once ringgate speaks version 2,
//! against ringgate itself. Every run must deliver every message of a member's room to it exactly
//! once, in order.
//!
//! A test whose peer is not installed is skipped with its reason, unless `RINGGATE_REQUIRE_PEERS`
//! is set (CI installs them: .ci/run). The tests run one at a time: they share two CPUs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

/// Longer than any run here can take by the harness's own bounds (window, drain, close).
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// How long a server may take to print its listening line.
const START_LIMIT: Duration = Duration::from_secs(30);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test must not fail the ones after it.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest/ is inside the repository")
        .to_path_buf()
}

/// Skips (returns false) with `reason` where a peer is missing, or fails under
/// `RINGGATE_REQUIRE_PEERS`.
fn available(ok: bool, reason: &str) -> bool {
    if !ok {
        assert!(
            std::env::var_os("RINGGATE_REQUIRE_PEERS").is_none(),
            "RINGGATE_REQUIRE_PEERS is set, but {reason}"
        );
        eprintln!("skipped: {reason}");
    }
    ok
}

fn node_ws() -> bool {
    let installed = repo().join("bench/peers/node-ws/node_modules/ws/package.json");
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    available(
        node && installed.exists(),
        "Node.js or bench/peers/node-ws/node_modules is missing (npm ci --prefix bench/peers/node-ws)",
    )
}

fn python_websockets() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import websockets.asyncio.server"])
        .output()
        .is_ok_and(|o| o.status.success());
    available(
        ok,
        "Python websockets is not installed (pip install 'websockets==17.4')",
    )
}

/// The lines a child prints on stdout, read on a thread so that a wait for one is bounded.
fn lines(out: ChildStdout) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line of `rx` containing `needle`, waited for at most [`START_LIMIT`].
fn line_with(rx: &Receiver<String>, needle: &str, what: &str) -> String {
    loop {
        match rx.recv_timeout(START_LIMIT) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("{what} printed no line with {needle:?}: {e}"),
        }
    }
}

fn url_in(line: &str) -> String {
    line.split_whitespace()
        .find(|w| w.starts_with("ws://"))
        .unwrap_or_else(|| panic!("no ws:// URL in {line:?}"))
        .to_string()
}

/// A server process (peer or stand-in), stopped with SIGTERM when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(program: &str, args: &[&str]) -> Server {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let line = line_with(&lines(out), "ws://", program);
        Server {
            url: url_in(&line),
            child,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let (tx, rx) = channel();
        let pid = self.child.id();
        // Bounded: a server that ignores SIGTERM is killed.
        std::thread::spawn(move || {
            if rx.recv_timeout(Duration::from_secs(10)).is_err() {
                // SAFETY: as above; at worst the process is already gone.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        });
        let _ = self.child.wait();
        let _ = tx.send(());
    }
}

/// One finished run of the harness: its exit, output and `--json` report.
struct Run {
    ok: bool,
    output: String,
    report: Value,
}

impl Run {
    fn u64(&self, pointer: &str) -> u64 {
        self.report
            .pointer(pointer)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("{pointer} is not an unsigned integer:\n{}", self.output))
    }

    fn str(&self, pointer: &str) -> &str {
        self.report
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// Every member received every message of its stream exactly once, in order.
    fn assert_exactly_once(&self, clients: u64, streams: u64) {
        assert!(self.ok, "ringgate-load failed:\n{}", self.output);
        assert_eq!(self.u64("/errors_total"), 0, "errors:\n{}", self.output);
        assert_eq!(
            self.u64("/fanout/joined"),
            clients,
            "joined:\n{}",
            self.output
        );
        let published = self.u64("/fanout/published");
        let (delivered, expected) = (self.u64("/fanout/delivered"), self.u64("/fanout/expected"));
        assert!(
            published >= streams,
            "published {published}:\n{}",
            self.output
        );
        assert_eq!(delivered, expected, "delivered vs owed:\n{}", self.output);
        assert_eq!(self.u64("/fanout/missing"), 0, "{}", self.output);
        // Each member is owed what its stream published: streams stop within one message of each
        // other.
        let per = published / streams;
        assert!(
            (clients * per..=clients * (per + 1)).contains(&expected),
            "{expected} owed to {clients} members of {streams} streams that published {published}:\n{}",
            self.output
        );
        assert!(
            self.u64("/latency_us/count") >= delivered,
            "{}",
            self.output
        );
    }
}

fn finish(child: Child, json: &Path, args: &[&str]) -> Run {
    let pid = child.id();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(RUN_LIMIT) {
        Ok(out) => out.expect("wait for ringgate-load"),
        Err(_) => {
            // SAFETY: kill(2) on the child we started; it has not been reaped (wait is pending).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("ringgate-load fanout {args:?} did not finish in {RUN_LIMIT:?}");
        }
    };
    let output = format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(json)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| panic!("no --json report; exit {:?}\n{output}", out.status));
    let _ = std::fs::remove_file(json);
    Run {
        ok: out.status.success(),
        output,
        report,
    }
}

fn json_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "ringgate-load-fanout-{}-{test}.json",
        std::process::id()
    ))
}

/// `ringgate-load fanout --peer --url URL ARGS...`.
fn peer_run(test: &str, url: &str, args: &[&str]) -> Run {
    let json = json_path(test);
    let child = Command::new(env!("CARGO_BIN_EXE_ringgate-load"))
        .args(["fanout", "--peer", "--quiet", "--url", url, "--json"])
        .arg(&json)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringgate-load");
    finish(child, &json, args)
}

/// ringgate mode: the harness listens as the game server, `start` brings up the gateway against
/// that address and returns its URL (and whatever must live as long as the run), which the
/// harness then reads on stdin.
fn ringgate_run<G>(test: &str, args: &[&str], start: impl FnOnce(&str) -> (String, G)) -> Run {
    let json = json_path(test);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate-load"))
        .args([
            "fanout",
            "--upstream-listen",
            "127.0.0.1:0",
            "--url",
            "-",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringgate-load");
    let out = child.stdout.take().expect("piped stdout");
    let rx = lines(out);
    let line = line_with(&rx, "game server listening on", "ringgate-load");
    let upstream = line.rsplit(' ').next().unwrap_or_default().to_string();
    let (url, gateway) = start(&upstream);
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{url}").expect("hand the URL to the harness");
    drop(stdin);
    // The rest of stdout (the report) is read by the line thread; the report that counts is the
    // JSON.
    let run = finish(child, &json, args);
    drop(gateway);
    let rest: Vec<String> = rx.try_iter().collect();
    Run {
        output: format!("{}{}", rest.join("\n"), run.output),
        ..run
    }
}

#[test]
fn node_ws_peer_delivers_every_room_message_once_in_order() {
    let _one = serial();
    if !node_ws() {
        return;
    }
    let server = repo().join("bench/peers/node-ws/server.js");
    let peer = Server::start(
        "node",
        &[server.to_str().expect("UTF-8 path"), "--port", "0"],
    );
    let run = peer_run(
        "node",
        &peer.url,
        &[
            "--clients",
            "40",
            "--rooms",
            "4",
            "--rate",
            "50",
            "--duration",
            "2",
        ],
    );
    run.assert_exactly_once(40, 4);
    assert_eq!(run.str("/fanout/mode"), "peer");
}

#[test]
fn python_websockets_peer_broadcast_reaches_everyone_once_in_order() {
    let _one = serial();
    if !python_websockets() {
        return;
    }
    let server = repo().join("bench/peers/python-websockets/server.py");
    let peer = Server::start(
        "python3",
        &[server.to_str().expect("UTF-8 path"), "--port", "0"],
    );
    let run = peer_run(
        "python",
        &peer.url,
        &[
            "--clients",
            "30",
            "--rooms",
            "3",
            "--broadcast",
            "--rate",
            "50",
            "--duration",
            "2",
        ],
    );
    run.assert_exactly_once(30, 1);
}

fn stand_in(upstream: &str, extra: &[&str]) -> Server {
    let script = repo().join("loadtest/tests/fanout/stand_in_gateway.py");
    let mut args = vec![
        script.to_str().expect("UTF-8 path").to_string(),
        "--upstream".into(),
        upstream.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start("python3", &args)
}

#[test]
fn ringgate_mode_joins_and_publishes_per_link() {
    let _one = serial();
    if !python_websockets() {
        return;
    }
    let run = ringgate_run(
        "stand-in",
        &[
            "--clients",
            "40",
            "--rooms",
            "4",
            "--rate",
            "50",
            "--duration",
            "2",
            "--policy",
            "latest",
        ],
        |up| {
            let s = stand_in(up, &["--workers", "2"]);
            (s.url.clone(), s)
        },
    );
    run.assert_exactly_once(40, 4);
    assert_eq!(run.str("/fanout/mode"), "ringgate");
    assert_eq!(run.u64("/fanout/links"), 2, "{}", run.output);
    assert_eq!(run.u64("/fanout/joins"), 40, "{}", run.output);
    // Users u0..u39 land on both links, and every room has members on both: one PUBLISH per link
    // per message.
    assert_eq!(
        run.u64("/fanout/frames"),
        2 * run.u64("/fanout/published"),
        "{}",
        run.output
    );
}

#[test]
fn ringgate_mode_fails_clearly_against_a_version_1_gateway() {
    let _one = serial();
    if !python_websockets() {
        return;
    }
    // A gateway that offers version 1 only gets LINK_ERROR 1 and gives up without a URL; the
    // harness reports why.
    let json = json_path("v1");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate-load"))
        .args([
            "fanout",
            "--upstream-listen",
            "127.0.0.1:0",
            "--url",
            "-",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .args(["--clients", "4", "--duration", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringgate-load");
    let rx = lines(child.stdout.take().expect("piped stdout"));
    let line = line_with(&rx, "game server listening on", "ringgate-load");
    let upstream = line.rsplit(' ').next().unwrap_or_default().to_string();
    let script = repo().join("loadtest/tests/fanout/stand_in_gateway.py");
    let gateway = Command::new("python3")
        .arg(&script)
        .args(["--upstream", &upstream, "--max-version", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run the stand-in");
    assert!(!gateway.status.success(), "the stand-in accepted the link");
    // The stand-in printed no URL: the harness's stdin ends.
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait for ringgate-load");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("offers protocol version 1, but fan-out needs version 2"),
        "{stderr}"
    );
}

/// ringgate itself as the gateway (in this process, two workers).
fn ringgate_gateway(upstream: &str) -> (String, ringgate::gateway::Server) {
    use ringgate::config::{Config, UpstreamConfig};
    let cfg = Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        workers: 2,
        upstreams: vec![UpstreamConfig {
            address: upstream.to_string(),
        }],
        ..Config::default()
    };
    let server = ringgate::gateway::start(&cfg).expect("ringgate starts");
    // As `ringgate run` does before printing its URL: the links' first attempts are over.
    assert!(
        server.wait_ready(Duration::from_secs(10)),
        "ringgate's links did not come up"
    );
    (format!("ws://{}{}", server.local_addr, cfg.path), server)
}

/// Stops the in-process ringgate when the run is over.
struct Gateway(Option<ringgate::gateway::Server>);

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.shutdown();
            s.join();
        }
    }
}

#[test]
fn ringgate_fans_out_rooms_and_broadcasts_exactly_once() {
    let _one = serial();
    for (test, extra, streams) in [
        ("ringgate-rooms", &["--rooms", "10"][..], 10),
        (
            "ringgate-broadcast",
            &["--rooms", "10", "--broadcast"][..],
            1,
        ),
    ] {
        let mut args = vec!["--clients", "200", "--rate", "50", "--duration", "2"];
        args.extend_from_slice(extra);
        let run = ringgate_run(test, &args, |up| {
            let (url, server) = ringgate_gateway(up);
            (url, Gateway(Some(server)))
        });
        run.assert_exactly_once(200, streams);
        assert_eq!(run.u64("/fanout/links"), 2, "{}", run.output);
        assert_eq!(run.u64("/fanout/joins"), 200, "{}", run.output);
    }
}
