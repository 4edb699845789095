//! Helpers of the upstream integration tests (`tests/upstream.rs`, `tests/example_server.rs`).
//!
//! - [`Proc`]: a child process with its stdout lines on a channel and its stderr collected; killed
//!   on drop.
//! - [`EchoUpstream`] (`ringgate echo-upstream`) and [`Gateway`] (`ringgate run`): the real binary,
//!   on free ports, learnt from the lines they print.
//! - [`Stats`]: the admin endpoint's `/stats` body with accessors for cores, counters and links.
//! - [`Client`]: a tungstenite client (an independent WebSocket implementation).
//! - A raw client: upgrade request, masked-frame writer and server-frame reader written here, so
//!   that backpressure tests control every byte and every socket option.
//!
//! Nothing here waits with a fixed sleep: processes are awaited through their stdout lines, sockets
//! through blocking reads with timeouts, and state that has no other signal (a link coming up) by
//! polling `/stats` with a deadline.

#![allow(dead_code)]

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::Message;

/// Read/write timeout of every client socket: a broken server fails a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to print its start-up line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long links may take to come up (or go down) as seen in `/stats`.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval of `/stats` for state that has no other signal.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A configuration with quick reconnects, so that tests do not wait for the default backoff.
pub const FAST_RECONNECT: &str = "reconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n";

/// The ringgate binary under test.
pub fn ringgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringgate")
}

/// Raises this process's soft limit of open files (children inherit it): the tests open a thousand
/// sockets and so does the proxy. Fails the test if the hard limit does not allow `want`.
pub fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit with a valid, fully initialised struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        if r.rlim_cur < want as libc::rlim_t {
            r.rlim_cur = (want as libc::rlim_t).min(r.rlim_max);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &r),
                0,
                "setrlimit: {}",
                io::Error::last_os_error()
            );
        }
        assert!(
            r.rlim_cur >= want as libc::rlim_t,
            "open-file limit {} (hard {}) is below the {want} this test needs",
            r.rlim_cur,
            r.rlim_max
        );
    }
}

// ---------------------------------------------------------------------------------------------
// processes

/// A child process: stdout lines arrive on a channel, stderr is collected whole. Killed on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    pid: u32,
    lines: mpsc::Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = child.stderr.take().unwrap();
            let buf = stderr.clone();
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    buf.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        {
            let pipe = child.stdout.take().unwrap();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Proc {
            name: name.to_string(),
            child: Some(child),
            pid,
            lines: rx,
            stdout_seen: Vec::new(),
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the next stdout line starting with `prefix` and returns the rest of it.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout_seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(e) => panic!(
                    "{}: no stdout line starting with {prefix:?} within {timeout:?} ({e:?})\nstdout so far: {:?}\nstderr:\n{}",
                    self.name,
                    self.stdout_seen,
                    self.stderr_text()
                ),
            }
        }
    }

    /// Sends a signal to the (not yet reaped) process.
    pub fn signal(&self, sig: libc::c_int) {
        assert!(self.child.is_some(), "{} was already reaped", self.name);
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped (so not reused).
        let r = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(
            r,
            0,
            "kill({}, {sig}): {}",
            self.pid,
            io::Error::last_os_error()
        );
    }

    /// SIGKILL, then reaps the process. Returns the instant just before the signal was sent.
    pub fn kill9(&mut self) -> Instant {
        let at = Instant::now();
        self.signal(libc::SIGKILL);
        let status = self.wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "{} survived SIGKILL?", self.name);
        at
    }

    /// Waits for the process to exit; fails the test (and kills it) if it does not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("already reaped");
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let r = child.wait();
            let _ = tx.send(());
            (child, r)
        });
        if rx.recv_timeout(timeout).is_err() {
            // Not reaped yet, so the pid is still our child's.
            // SAFETY: as in `signal`.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
            let _ = waiter.join();
            panic!(
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr_text()
            );
        }
        let (_, r) = waiter.join().unwrap();
        r.expect("waitpid failed")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn parse_addr(what: &str, text: &str) -> SocketAddr {
    let a: SocketAddr = text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{what}: bad address {text:?}: {e}"));
    assert_ne!(a.port(), 0, "{what}: announced port 0");
    a
}

/// A `ringgate echo-upstream` process.
pub struct EchoUpstream {
    pub proc: Proc,
    addr: SocketAddr,
}

impl EchoUpstream {
    /// On a free loopback port.
    pub fn start() -> EchoUpstream {
        EchoUpstream::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// On a given address (to restart a game server where it was).
    pub fn start_on(listen: SocketAddr) -> EchoUpstream {
        let mut cmd = Command::new(ringgate_bin());
        cmd.args(["echo-upstream", "--listen", &listen.to_string()])
            .args(["--workers", "1"]);
        let mut proc = Proc::spawn("echo-upstream", cmd);
        let rest = proc.wait_line("echo-upstream listening on ", START_TIMEOUT);
        let addr = parse_addr("echo-upstream", &rest);
        if listen.port() != 0 {
            assert_eq!(addr, listen, "echo-upstream did not listen where asked");
        }
        EchoUpstream { proc, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`: how the upstream is configured, and how `/stats` names its links.
    pub fn name(&self) -> String {
        self.addr.to_string()
    }

    /// SIGKILL (no GOAWAY, no FIN ordering promises): returns the instant before the signal.
    pub fn kill(&mut self) -> Instant {
        self.proc.kill9()
    }
}

/// Monotonic counter for temporary file names.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A `ringgate run` process with its WebSocket and admin addresses.
pub struct Gateway {
    pub proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    path: String,
    workers: usize,
    upstreams: Vec<String>,
    config_file: PathBuf,
}

impl Gateway {
    /// `ringgate run` on free ports with two workers, the given upstreams, quick reconnects, and
    /// extra flags.
    pub fn start(upstreams: &[String], args: &[&str]) -> Gateway {
        Gateway::start_with_config(upstreams, args, FAST_RECONNECT)
    }

    /// Like [`Gateway::start`] with a whole configuration file (`--config`); flags still apply.
    pub fn start_with_config(upstreams: &[String], args: &[&str], toml: &str) -> Gateway {
        raise_fd_limit(4096);
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let config_file =
            std::env::temp_dir().join(format!("ringgate-upstream-{}-{n}.toml", std::process::id()));
        std::fs::write(&config_file, toml).expect("writing the temporary config file");
        let mut cmd = Command::new(ringgate_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_file)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--workers", "2"]);
        for u in upstreams {
            cmd.args(["--upstream", u]);
        }
        cmd.args(args);
        let mut proc = Proc::spawn("ringgate run", cmd);
        let listening = proc.wait_line("ringgate listening on ", START_TIMEOUT);
        let admin_line = proc.wait_line("ringgate admin on ", START_TIMEOUT);
        // "ws://127.0.0.1:PORT/ws (2 workers)"
        let (url, tail) = listening
            .split_once(" (")
            .unwrap_or_else(|| panic!("unexpected listening line {listening:?}"));
        let workers: usize = tail
            .strip_suffix(" workers)")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected worker count in {listening:?}"));
        let hostpath = url
            .strip_prefix("ws://")
            .unwrap_or_else(|| panic!("listening url is not ws://: {url:?}"));
        let slash = hostpath.find('/').expect("no path in the listening url");
        let addr = parse_addr("ringgate", &hostpath[..slash]);
        let path = hostpath[slash..].to_string();
        let admin_host = admin_line
            .strip_prefix("http://")
            .and_then(|r| r.strip_suffix("/stats"))
            .unwrap_or_else(|| panic!("unexpected admin line {admin_line:?}"));
        let admin = parse_addr("ringgate admin", admin_host);
        assert_eq!(workers, 2, "asked for two workers: {listening:?}");
        Gateway {
            proc,
            addr,
            admin,
            path,
            workers,
            upstreams: upstreams.to_vec(),
            config_file,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// `/ws?user=USER`
    pub fn target(&self, user: &str) -> String {
        format!("{}?user={user}", self.path)
    }

    /// `ws://127.0.0.1:PORT/ws?user=USER`
    pub fn url(&self, user: &str) -> String {
        format!("ws://{}{}", self.addr, self.target(user))
    }

    pub fn stderr_text(&self) -> String {
        self.proc.stderr_text()
    }

    /// GET an admin path; asserts 200 and a JSON body.
    pub fn admin_get(&self, path: &str) -> Value {
        let mut s = TcpStream::connect(self.admin)
            .unwrap_or_else(|e| panic!("connect to admin {}: {e}", self.admin));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        )
        .expect("writing the admin request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .unwrap_or_else(|e| panic!("reading the admin response to {path}: {e}"));
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!(
                    "admin {path}: no end of head in {:?}",
                    String::from_utf8_lossy(&raw)
                )
            });
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let body = &raw[split + 4..];
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "admin {path}: unexpected status: {head:?}"
        );
        if let Some(len) = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        }) {
            assert_eq!(len, body.len(), "admin {path}: body shorter than announced");
        }
        serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "admin {path}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(body)
            )
        })
    }

    /// `GET /stats`, checked for shape: one object per core, one link per configured upstream.
    pub fn stats(&self) -> Stats {
        let s = Stats(self.admin_get("/stats"));
        self.check_shape(&s);
        s
    }

    /// `GET /sessions`: like `/stats` with `users` filled in.
    pub fn sessions(&self) -> Stats {
        let s = Stats(self.admin_get("/sessions"));
        self.check_shape(&s);
        s
    }

    fn check_shape(&self, s: &Stats) {
        let cores =
            s.0.as_array()
                .unwrap_or_else(|| panic!("not an array: {s}"));
        assert_eq!(cores.len(), self.workers, "one object per core: {s}");
        for (i, c) in cores.iter().enumerate() {
            assert_eq!(c["core"].as_u64(), Some(i as u64), "core index: {s}");
            assert!(c["sessions"].is_u64(), "core {i} lacks sessions: {s}");
            assert!(c["counters"].is_object(), "core {i} lacks counters: {s}");
            let links = c["upstreams"]
                .as_array()
                .unwrap_or_else(|| panic!("core {i} lacks upstreams: {s}"));
            let names: Vec<&str> = links.iter().filter_map(|l| l["address"].as_str()).collect();
            assert_eq!(
                names, self.upstreams,
                "core {i}: links differ from config: {s}"
            );
            for l in links {
                for k in ["sessions", "queued_bytes", "times_up", "connect_failures"] {
                    assert!(l[k].is_u64(), "link field {k} missing: {l}");
                }
                for k in ["up", "paused"] {
                    assert!(l[k].is_boolean(), "link field {k} missing: {l}");
                }
            }
        }
    }

    /// Polls `/stats` until `cond` holds; fails the test after `timeout`. Returns the stats seen.
    pub fn wait_stats(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Stats) -> bool,
    ) -> Stats {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if cond(&s) {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\nlast /stats: {s}\nringgate stderr:\n{}",
                    self.stderr_text()
                );
            }
            // The state awaited here (a link changing state, a session released) has no signal
            // other than the admin endpoint.
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until every core reports a link to each of `names` that is up.
    pub fn wait_links_up(&self, names: &[String]) -> Stats {
        self.wait_stats(&format!("links up to {names:?}"), LINK_TIMEOUT, |s| {
            names.iter().all(|n| s.link_up_everywhere(n))
        })
    }

    /// Waits until every session is gone: on every core and on every link.
    pub fn wait_idle(&self, timeout: Duration) -> Stats {
        self.wait_stats("every session released", timeout, Stats::is_idle)
    }

    /// A tungstenite client for `user`.
    pub fn client(&self, user: &str) -> Client {
        Client::connect(self.addr, &self.url(user), user)
    }

    /// Connects `user` and finds, from the `/stats` before and after, which core and link its
    /// session landed on. Nothing else may connect or close on this gateway meanwhile.
    pub fn locate(&self, user: &str) -> (Client, Placement) {
        let before = self.stats();
        let c = self.client(user);
        let after = self.stats();
        let mut grown = Vec::new();
        for core in 0..self.workers {
            for name in &self.upstreams {
                let b = before.link_u64(core, name, "sessions");
                let a = after.link_u64(core, name, "sessions");
                if a != b {
                    grown.push((core, name.clone(), b, a));
                }
            }
        }
        assert!(
            grown.len() == 1 && grown[0].3 == grown[0].2 + 1,
            "user {user}: expected exactly one link to gain one session, got {grown:?}\nbefore: {before}\nafter: {after}"
        );
        let (core, link, _, _) = grown.pop().unwrap();
        assert_eq!(
            after.sessions(core),
            before.sessions(core) + 1,
            "user {user}: core {core} session count did not grow with its link: {after}"
        );
        (c, Placement { core, link })
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config_file);
    }
}

/// Where a session lives: its core and the upstream its link goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub core: usize,
    pub link: String,
}

// ---------------------------------------------------------------------------------------------
// /stats

/// The admin endpoint's JSON: one object per core.
#[derive(Clone)]
pub struct Stats(pub Value);

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Stats {
    pub fn cores(&self) -> &[Value] {
        self.0.as_array().unwrap()
    }

    pub fn sessions(&self, core: usize) -> u64 {
        self.cores()[core]["sessions"].as_u64().unwrap()
    }

    pub fn sessions_total(&self) -> u64 {
        (0..self.cores().len()).map(|c| self.sessions(c)).sum()
    }

    pub fn core_counter(&self, core: usize, name: &str) -> u64 {
        self.cores()[core]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("counter {name:?} missing: {self}"))
    }

    /// A counter summed over the cores.
    pub fn counter(&self, name: &str) -> u64 {
        (0..self.cores().len())
            .map(|c| self.core_counter(c, name))
            .sum()
    }

    /// The link of `core` to the upstream named `name`.
    pub fn link(&self, core: usize, name: &str) -> &Value {
        self.cores()[core]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["address"] == name)
            .unwrap_or_else(|| panic!("core {core} has no link to {name}: {self}"))
    }

    pub fn link_u64(&self, core: usize, name: &str, field: &str) -> u64 {
        self.link(core, name)[field].as_u64().unwrap()
    }

    pub fn link_bool(&self, core: usize, name: &str, field: &str) -> bool {
        self.link(core, name)[field].as_bool().unwrap()
    }

    /// Sessions on the links to `name`, summed over the cores.
    pub fn link_sessions(&self, name: &str) -> u64 {
        (0..self.cores().len())
            .map(|c| self.link_u64(c, name, "sessions"))
            .sum()
    }

    pub fn link_up_everywhere(&self, name: &str) -> bool {
        (0..self.cores().len()).all(|c| self.link_bool(c, name, "up"))
    }

    pub fn link_down_everywhere(&self, name: &str) -> bool {
        (0..self.cores().len()).all(|c| !self.link_bool(c, name, "up"))
    }

    /// Sessions on every link of one core, summed.
    pub fn core_link_sessions(&self, core: usize) -> u64 {
        self.cores()[core]["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["sessions"].as_u64().unwrap())
            .sum()
    }

    /// No session on any core and none on any link.
    pub fn is_idle(&self) -> bool {
        (0..self.cores().len()).all(|c| self.sessions(c) == 0 && self.core_link_sessions(c) == 0)
    }
}

// ---------------------------------------------------------------------------------------------
// tungstenite client

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// What a client read next (pings and pongs are skipped; tungstenite answers pings itself).
#[derive(Debug)]
pub enum Event {
    Data(Message),
    /// A close frame: its code and reason (`None` for a close without a code).
    Close(Option<(u16, String)>),
    /// The read failed (reset, EOF without a close frame, timeout, protocol error).
    Failed(String),
}

/// A tungstenite client.
pub struct Client {
    pub user: String,
    pub ws: Ws,
}

/// A TCP connection to `addr` with timeouts and no Nagle.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

impl Client {
    pub fn connect(addr: SocketAddr, url: &str, user: &str) -> Client {
        match tungstenite::client(url, tcp_connect(addr)) {
            Ok((ws, _)) => Client {
                user: user.to_string(),
                ws,
            },
            Err(e) => panic!("websocket handshake of {user} at {url} failed: {e}"),
        }
    }

    /// The next event; see [`Event`].
    pub fn next(&mut self) -> Event {
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(Message::Close(f)) => {
                    return Event::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Ok(m) => return Event::Data(m),
                Err(e) => return Event::Failed(e.to_string()),
            }
        }
    }

    pub fn send(&mut self, m: Message) {
        let user = self.user.clone();
        self.ws
            .send(m)
            .unwrap_or_else(|e| panic!("{user}: send failed: {e}"));
    }

    /// Reads the next data message; fails the test on anything else.
    pub fn read_data(&mut self) -> Message {
        match self.next() {
            Event::Data(m) => m,
            other => panic!("{}: expected a data message, got {other:?}", self.user),
        }
    }

    /// Sends a message and checks that the same message comes back.
    pub fn echo(&mut self, m: Message) {
        self.send(m.clone());
        let got = self.read_data();
        assert!(
            got == m,
            "{}: echo differs: sent {}, got {}",
            self.user,
            describe(&m),
            describe(&got)
        );
    }

    /// A text and a binary echo.
    pub fn check_echo(&mut self, tag: &str) {
        let user = self.user.clone();
        self.echo(Message::Text(format!("{user} {tag} text é€😀")));
        self.echo(Message::Binary(
            format!("{user} {tag} binary")
                .into_bytes()
                .into_iter()
                .chain([0u8, 0xff, 0xfe, 0x80])
                .collect(),
        ));
    }

    /// The next event must be a close frame with `code` and `reason`; then the close handshake is
    /// finished.
    pub fn expect_close(&mut self, code: u16, reason: &str) {
        match self.next() {
            Event::Close(Some((c, r))) if c == code && r == reason => {}
            other => panic!(
                "{}: expected close {code} {reason:?}, got {other:?}",
                self.user
            ),
        }
        self.finish_close();
    }

    /// After a close frame from the server: send our answer and read to the end.
    pub fn finish_close(&mut self) {
        loop {
            match self.ws.read() {
                Ok(_) => continue,
                Err(_) => return,
            }
        }
    }

    /// A client-initiated close with 1000, read through to the end of the connection.
    pub fn close(mut self) {
        let user = self.user.clone();
        self.ws
            .close(None)
            .unwrap_or_else(|e| panic!("{user}: sending close: {e}"));
        loop {
            match self.ws.read() {
                Ok(Message::Close(_)) | Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                // Echoes still in flight when we closed are allowed before the close.
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(e) => panic!("{user}: closing: {e}"),
            }
        }
    }
}

pub fn describe(m: &Message) -> String {
    match m {
        Message::Text(t) => format!(
            "text of {} bytes ({:?}...)",
            t.len(),
            t.chars().take(24).collect::<String>()
        ),
        Message::Binary(b) => format!(
            "binary of {} bytes ({:?}...)",
            b.len(),
            &b[..b.len().min(24)]
        ),
        Message::Ping(p) => format!("ping of {} bytes", p.len()),
        Message::Pong(p) => format!("pong of {} bytes", p.len()),
        Message::Close(c) => format!("close {c:?}"),
        Message::Frame(_) => "raw frame".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// raw client

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

static MASK_SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// A masking key (xorshift over a shared seed: varied, not secret).
pub fn mask_key() -> [u8; 4] {
    let mut x = MASK_SEED.fetch_add(0x6a09_e667_f3bc_c909, Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x as u32).to_be_bytes()
}

/// One complete (FIN) client frame, masked with a fresh key.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = mask_key();
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A close frame payload: code then reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// One frame from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Code and reason of a close frame.
    pub fn close(&self) -> Option<(u16, String)> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2).then(|| {
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                String::from_utf8_lossy(&self.payload[2..]).to_string(),
            )
        })
    }
}

/// Reads one server frame (unmasked, no RSV bits).
pub fn read_frame(s: &mut impl Read) -> io::Result<Frame> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    assert_eq!(h[0] & 0x70, 0, "server frame with RSV bits: {h:?}");
    assert_eq!(h[1] & 0x80, 0, "server frame is masked");
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        l => u64::from(l),
    };
    assert!(len <= 64 << 20, "server frame of {len} bytes");
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload)?;
    Ok(Frame {
        fin: h[0] & 0x80 != 0,
        opcode: h[0] & 0x0F,
        payload,
    })
}

/// A parsed HTTP response head.
#[derive(Debug, Clone)]
pub struct Head {
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a response head byte by byte, so that nothing after it is consumed.
pub fn read_head(s: &mut TcpStream) -> Head {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!(
                "reading the response head: {other:?}; got {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
        assert!(head.len() < 16 * 1024, "response head too long");
    }
    let text = String::from_utf8(head).expect("response head is not UTF-8");
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let status_line = lines.next().unwrap().to_string();
    assert!(
        status_line.starts_with("HTTP/1.1 "),
        "bad status line {status_line:?}"
    );
    let status = status_line[9..]
        .get(..3)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').expect("header line without ':'");
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Head {
        status_line,
        status,
        headers,
    }
}

/// A fresh `Sec-WebSocket-Key`.
pub fn ws_key() -> String {
    use base64::Engine;
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&mask_key());
    k[4..8].copy_from_slice(&mask_key());
    k[8..12].copy_from_slice(&mask_key());
    k[12..].copy_from_slice(&mask_key());
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// Connects with optional socket buffer sizes (set before connecting, so the window is small from
/// the start), timeouts and no Nagle.
pub fn raw_connect(addr: SocketAddr, rcvbuf: Option<usize>, sndbuf: Option<usize>) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    if let Some(n) = sndbuf {
        s.set_send_buffer_size(n).expect("SO_SNDBUF");
    }
    s.connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends an upgrade request for `target` and returns the response head (and the stream, positioned
/// just after the head).
pub fn raw_handshake(
    mut s: TcpStream,
    addr: SocketAddr,
    target: &str,
) -> (Head, TcpStream, String) {
    let key = ws_key();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("writing the upgrade request");
    let head = read_head(&mut s);
    (head, s, key)
}

/// A raw upgraded connection; asserts the 101 and its accept key.
pub fn raw_upgrade(
    addr: SocketAddr,
    target: &str,
    rcvbuf: Option<usize>,
    sndbuf: Option<usize>,
) -> TcpStream {
    let (head, s, key) = raw_handshake(raw_connect(addr, rcvbuf, sndbuf), addr, target);
    assert_eq!(head.status, 101, "upgrade of {target} refused: {head:?}");
    assert_eq!(
        head.header("Sec-WebSocket-Accept"),
        Some(tungstenite::handshake::derive_accept_key(key.as_bytes()).as_str()),
        "wrong accept key: {head:?}"
    );
    s
}

/// Is this error a reset / broken connection?
pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Waits up to `timeout` for the socket to become writable. True if it did.
pub fn poll_writable(s: &TcpStream, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    assert!(r >= 0, "poll: {}", io::Error::last_os_error());
    r == 1 && p.revents & libc::POLLOUT != 0
}

/// A closed loopback port that a game server can be started on later.
///
/// The port stays bound (with `SO_REUSEADDR` and `SO_REUSEPORT`, as the echo server binds its
/// listener) but not listening for as long as the returned socket lives: connecting to it is
/// refused, no outgoing connection (of this or a parallel test, or the proxy's connect attempts) is
/// given it as its source port, and the echo server can still bind and listen on it.
pub fn reserve_closed_port() -> (socket2::Socket, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("SO_REUSEADDR");
    s.set_reuse_port(true).expect("SO_REUSEPORT");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind 127.0.0.1:0");
    let addr = s
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("an IP address");
    (s, addr)
}
