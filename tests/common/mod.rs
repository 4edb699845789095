//! Shared helpers of ringgate's integration tests.
//!
//! [`Server`] spawns the real `ringgate demo` binary on free ports and learns its addresses from the
//! lines it prints on stdout. The raw helpers below are a small client written independently of the
//! server's code (HTTP head parser, frame builder, frame parser), so that the tests check the wire
//! and not the server's own types. `tungstenite` is used where a complete, independent client is
//! wanted.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Read/write timeout of every client socket: a broken server fails a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to print its start-up lines.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to exit once signalled (tests that want less pass their own).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The text a stderr line must contain when the epoll driver is in use.
pub const EPOLL_LOG_LINE: &str = "using the epoll driver";

type StderrBuf = Arc<(Mutex<String>, Condvar)>;

/// A running `ringgate demo` child process. Killed on drop.
pub struct Server {
    child: Option<Child>,
    pid: u32,
    addr: SocketAddr,
    admin: SocketAddr,
    path: String,
    workers: usize,
    stderr: StderrBuf,
}

impl Server {
    /// `ringgate demo --listen 127.0.0.1:0 --admin 127.0.0.1:0 ARGS...`
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// Like [`Server::start`], with extra environment variables for the child.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_opts(args, env, None)
    }

    /// Like [`Server::start`], with the child's open-files limit set to `nofile`.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> Server {
        Server::start_opts(args, &[], Some(nofile))
    }

    fn start_opts(args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringgate"));
        cmd.arg("demo")
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // If the test process dies without running Drop (killed, SIGPIPE), take the server with it.
        // (The signal fires when the spawning thread ends; every test owns its Server on the thread
        // that started it, and has killed it by then.)
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(n) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("cannot spawn the ringgate binary");
        let pid = child.id();

        // stderr: collected whole, so that tests can look for log lines and failures can show it.
        let stderr: StderrBuf = Arc::new((Mutex::new(String::new()), Condvar::new()));
        {
            let mut pipe = child.stderr.take().unwrap();
            let buf = stderr.clone();
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let (text, cv) = &*buf;
                            text.lock()
                                .unwrap()
                                .push_str(&String::from_utf8_lossy(&chunk[..n]));
                            cv.notify_all();
                        }
                    }
                }
            });
        }

        // stdout: every line goes to the channel; the thread keeps draining until the child exits.
        let (tx, rx) = mpsc::channel::<String>();
        {
            let pipe = child.stdout.take().unwrap();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    match line {
                        Ok(l) => {
                            let _ = tx.send(l);
                        }
                        Err(_) => break,
                    }
                }
            });
        }

        let mut server = Server {
            child: Some(child),
            pid,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            path: String::new(),
            workers: 0,
            stderr,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        let mut listening: Option<(SocketAddr, String, usize)> = None;
        let mut admin: Option<SocketAddr> = None;
        let mut seen = Vec::new();
        while listening.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "ringgate did not print its start-up lines within {START_TIMEOUT:?}\nstdout so far: {seen:?}\nstderr:\n{}",
                    server.stderr_text()
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "ringgate closed stdout (exited?) before printing its start-up lines\nstdout: {seen:?}\nstderr:\n{}",
                    server.stderr_text()
                ),
            };
            if let Some(rest) = line.strip_prefix("ringgate listening on ") {
                listening = Some(parse_listening(rest));
            } else if let Some(rest) = line.strip_prefix("ringgate admin on ") {
                admin = Some(parse_admin(rest));
            }
            seen.push(line);
        }
        let (addr, path, workers) = listening.unwrap();
        server.addr = addr;
        server.path = path;
        server.workers = workers;
        server.admin = admin.unwrap();
        server
    }

    /// The WebSocket address (host:port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin endpoint address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The WebSocket path the server announced (e.g. `/ws`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The worker count the server announced.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.path)
    }

    /// `ws://127.0.0.1:PORT/ws?user=USER`
    pub fn user_url(&self, user: &str) -> String {
        format!("{}?user={user}", self.url())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.0.lock().unwrap().clone()
    }

    /// Waits (without polling) until stderr contains `needle`; false if it did not within `timeout`.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (text, cv) = &*self.stderr;
        let mut guard = text.lock().unwrap();
        loop {
            if guard.contains(needle) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// GET a path of the admin endpoint and parse its JSON body (asserts status 200).
    pub fn admin_get(&self, path: &str) -> Value {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        let resp = http_request(self.admin, raw.as_bytes());
        assert_eq!(resp.status, 200, "admin GET {path}: {}", resp.status_line);
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
            panic!(
                "admin GET {path}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&resp.body)
            )
        })
    }

    /// `GET /stats`: one object per core.
    pub fn stats(&self) -> Value {
        let v = self.admin_get("/stats");
        check_core_array(&v, self.workers);
        v
    }

    /// `GET /sessions`: like `/stats`, with `users` filled in.
    pub fn sessions(&self) -> Value {
        let v = self.admin_get("/sessions");
        check_core_array(&v, self.workers);
        v
    }

    /// Polls `/stats` until `cond` holds, failing the test after `timeout`. Returns the last stats.
    pub fn wait_stats(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stats();
            if cond(&v) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}; last /stats: {v}");
            }
            // Poll interval of the admin endpoint (the counters changing is the awaited event).
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: libc::c_int) {
        assert!(self.child.is_some(), "the server was already reaped");
        let r = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(
            r,
            0,
            "kill({}, {sig}) failed: {}",
            self.pid,
            io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit; fails the test (and kills it) if it has not within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the server was already reaped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(timeout) {
            Ok(r) => r.expect("waitpid failed"),
            Err(_) => {
                // Not reaped yet, so the pid is still ours.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
                let _ = rx.recv_timeout(Duration::from_secs(10));
                panic!(
                    "ringgate did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr_text()
                );
            }
        }
    }

    /// Sends `sig` and waits for the exit status.
    pub fn stop(&mut self, sig: libc::c_int) -> ExitStatus {
        self.signal(sig);
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// A tungstenite client on the server's path (no user).
    pub fn ws(&self) -> Ws {
        ws_connect(self.addr, &self.url())
    }

    /// A tungstenite client with `?user=USER`.
    pub fn ws_user(&self, user: &str) -> Ws {
        ws_connect(self.addr, &self.user_url(user))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn parse_listening(rest: &str) -> (SocketAddr, String, usize) {
    // "ws://127.0.0.1:PORT/ws (N workers)"
    let (url, tail) = rest
        .split_once(" (")
        .unwrap_or_else(|| panic!("unexpected listening line: {rest:?}"));
    let workers: usize = tail
        .strip_suffix(" workers)")
        .or_else(|| tail.strip_suffix(" worker)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected worker count in listening line: {rest:?}"));
    let hostpath = url
        .strip_prefix("ws://")
        .unwrap_or_else(|| panic!("listening url is not ws://: {url:?}"));
    let (host, path) = match hostpath.find('/') {
        Some(i) => (&hostpath[..i], hostpath[i..].to_string()),
        None => (hostpath, "/".to_string()),
    };
    let addr: SocketAddr = host
        .parse()
        .unwrap_or_else(|e| panic!("bad address {host:?} in listening line: {e}"));
    assert_ne!(addr.port(), 0, "the server announced port 0");
    (addr, path, workers)
}

fn parse_admin(rest: &str) -> SocketAddr {
    // "http://127.0.0.1:PORT/stats"
    let hostpath = rest
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("unexpected admin line: {rest:?}"));
    let host = hostpath.split('/').next().unwrap();
    let addr: SocketAddr = host
        .parse()
        .unwrap_or_else(|e| panic!("bad admin address {host:?}: {e}"));
    assert_ne!(addr.port(), 0, "the server announced admin port 0");
    addr
}

fn check_core_array(v: &Value, workers: usize) {
    let cores = v
        .as_array()
        .unwrap_or_else(|| panic!("admin body is not a JSON array: {v}"));
    assert_eq!(cores.len(), workers, "one object per core expected: {v}");
    for (i, c) in cores.iter().enumerate() {
        assert!(c["core"].is_u64(), "core {i} lacks \"core\": {c}");
        assert!(c["driver"].is_string(), "core {i} lacks \"driver\": {c}");
        assert!(c["sessions"].is_u64(), "core {i} lacks \"sessions\": {c}");
        assert!(
            c["counters"].is_object(),
            "core {i} lacks \"counters\": {c}"
        );
    }
}

/// Sum of `sessions` over all cores.
pub fn sessions_sum(stats: &Value) -> u64 {
    stats
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["sessions"].as_u64().unwrap())
        .sum()
}

/// Sum of one counter over all cores (the counter must exist).
pub fn counter_sum(stats: &Value, name: &str) -> u64 {
    stats
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["counters"][name]
                .as_u64()
                .unwrap_or_else(|| panic!("counter {name:?} missing in {c}"))
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// tungstenite

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens a TCP connection with timeouts and runs tungstenite's client handshake for `url`.
pub fn ws_connect(addr: SocketAddr, url: &str) -> Ws {
    ws_connect_request(addr, url).0
}

/// Like [`ws_connect`], for any request tungstenite accepts; returns the handshake response too.
pub fn ws_connect_request<R: tungstenite::client::IntoClientRequest>(
    addr: SocketAddr,
    request: R,
) -> (Ws, tungstenite::handshake::client::Response) {
    let stream = tcp_connect(addr);
    match tungstenite::client(request, stream) {
        Ok(r) => r,
        Err(e) => panic!("websocket handshake with {addr} failed: {e}"),
    }
}

/// Reads the next data message, skipping pings and pongs (tungstenite answers pings itself).
pub fn ws_read_data(ws: &mut Ws) -> tungstenite::Message {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Ping(_)) | Ok(tungstenite::Message::Pong(_)) => continue,
            Ok(m) => return m,
            Err(e) => panic!("websocket read failed: {e}"),
        }
    }
}

/// Closes with 1000 and reads until tungstenite reports the connection closed.
pub fn ws_close(mut ws: Ws) {
    ws.close(None).expect("sending close failed");
    loop {
        match ws.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => return,
            Err(e) => panic!("closing: {e}"),
        }
    }
}

/// Sends one message and checks its echo.
pub fn ws_echo(ws: &mut Ws, msg: tungstenite::Message) {
    ws.send(msg.clone()).expect("send failed");
    let got = ws_read_data(ws);
    assert!(
        got == msg,
        "echo differs: sent {}, got {}",
        describe(&msg),
        describe(&got)
    );
}

pub fn describe(m: &tungstenite::Message) -> String {
    use tungstenite::Message::*;
    match m {
        Text(t) => format!(
            "text of {} bytes ({:?}...)",
            t.len(),
            t.chars().take(16).collect::<String>()
        ),
        Binary(b) => format!("binary of {} bytes", b.len()),
        Ping(p) => format!("ping of {} bytes", p.len()),
        Pong(p) => format!("pong of {} bytes", p.len()),
        Close(c) => format!("close {c:?}"),
        Frame(_) => "raw frame".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// payloads

/// Exactly `n` bytes of valid UTF-8 mixing 1- to 4-byte characters.
pub fn text_of_len(n: usize) -> String {
    let pattern = ['a', 'é', '€', '😀', 'z', ' '];
    let mut s = String::with_capacity(n);
    for c in pattern.iter().cycle() {
        if s.len() + c.len_utf8() > n {
            break;
        }
        s.push(*c);
    }
    while s.len() < n {
        s.push('x');
    }
    s
}

/// `n` bytes of a non-repeating-looking binary pattern (includes bytes invalid in UTF-8).
pub fn binary_of_len(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// raw sockets

/// Connects with read/write timeouts set.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

static RNG: AtomicU64 = AtomicU64::new(0);

/// A random-ish u64 (xorshift over a time-and-pid seed); good enough for keys and masks.
pub fn random_u64() -> u64 {
    let mut x = RNG.load(Ordering::Relaxed);
    if x == 0 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        x = (t ^ (u64::from(std::process::id()) << 32)) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    RNG.store(x, Ordering::Relaxed);
    x
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes.
pub fn random_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&random_u64().to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `Sec-WebSocket-Accept` value for a key, computed by tungstenite (independent of the server).
pub fn accept_key(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// A valid upgrade request for `path` with a given key and extra header lines.
pub fn upgrade_request(
    addr: SocketAddr,
    path: &str,
    key: &str,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of that header, split into comma-separated tokens, trimmed and lower-cased.
    pub fn header_tokens(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_tokens(name)
            .iter()
            .any(|t| t == &token.to_ascii_lowercase())
    }
}

/// Reads a response head byte by byte (so that no byte after it is consumed) and parses it.
pub fn read_http_head(stream: &mut TcpStream) -> HttpResponse {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => panic!(
                "connection closed in the middle of the response head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!(
                "reading the response head failed ({e}); got so far: {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
        assert!(head.len() <= 64 * 1024, "response head too long");
    }
    parse_http_head(&head)
}

fn parse_http_head(head: &[u8]) -> HttpResponse {
    let text = std::str::from_utf8(head).expect("response head is not UTF-8");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    assert_eq!(version, "HTTP/1.1", "bad status line {status_line:?}");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("bad header line {line:?}"));
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    HttpResponse {
        status_line,
        status,
        headers,
        body: Vec::new(),
    }
}

/// Sends raw bytes to `addr` and reads one response (body by Content-Length, else to EOF).
/// Returns the stream too, to check what happens after the response.
pub fn http_exchange(addr: SocketAddr, raw: &[u8]) -> (HttpResponse, TcpStream) {
    let mut stream = tcp_connect(addr);
    // A server that answers early (431) may close before all is written: keep what we can read.
    let write_result = stream.write_all(raw);
    let mut resp = {
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_http_head(&mut stream)));
        match r {
            Ok(r) => r,
            Err(p) => {
                eprintln!("(writing the request gave {write_result:?})");
                std::panic::resume_unwind(p)
            }
        }
    };
    match resp.header("Content-Length") {
        Some(len) => {
            let len: usize = len.parse().expect("bad Content-Length");
            let mut body = vec![0u8; len];
            stream
                .read_exact(&mut body)
                .unwrap_or_else(|e| panic!("reading a {len}-byte body: {e}"));
            resp.body = body;
        }
        None => {
            let mut body = Vec::new();
            stream
                .read_to_end(&mut body)
                .expect("reading the body to EOF");
            resp.body = body;
        }
    }
    (resp, stream)
}

/// [`http_exchange`] without the stream.
pub fn http_request(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    http_exchange(addr, raw).0
}

/// Connects, sends a valid upgrade for `/ws` (plus extra headers) and reads through the 101.
pub fn raw_upgrade(addr: SocketAddr, extra_headers: &[(&str, &str)]) -> TcpStream {
    raw_upgrade_path(addr, "/ws", extra_headers).0
}

/// Like [`raw_upgrade`] for any path; asserts the 101 and its accept key, returns the response.
pub fn raw_upgrade_path(
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> (TcpStream, HttpResponse) {
    let key = random_key();
    let mut stream = tcp_connect(addr);
    stream
        .write_all(&upgrade_request(addr, path, &key, extra_headers))
        .expect("writing the upgrade request");
    let resp = read_http_head(&mut stream);
    assert_eq!(resp.status, 101, "upgrade refused: {resp:?}");
    assert_eq!(
        resp.header("Sec-WebSocket-Accept"),
        Some(accept_key(&key).as_str()),
        "wrong accept key: {resp:?}"
    );
    (stream, resp)
}

/// Bytes of one client frame. `rsv` is the 3 RSV bits (0..=7). Masked with a random key if asked.
pub fn frame_bytes(fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = masked.then(|| (random_u64() as u32).to_be_bytes());
    let mut out = frame_header(fin, rsv, opcode, payload.len() as u64, mask);
    match mask {
        Some(m) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4])),
        None => out.extend_from_slice(payload),
    }
    out
}

/// Only the header of a frame (with the masking key if any), declaring `len` payload bytes.
pub fn frame_header(fin: bool, rsv: u8, opcode: u8, len: u64, mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(rsv < 8 && opcode < 16);
    let mut out = Vec::with_capacity(14);
    out.push((u8::from(fin) << 7) | (rsv << 4) | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
    out
}

/// A random masking key.
pub fn random_mask() -> [u8; 4] {
    (random_u64() as u32).to_be_bytes()
}

/// Writes one frame (see [`frame_bytes`]).
pub fn send_frame(
    stream: &mut TcpStream,
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    masked: bool,
) {
    stream
        .write_all(&frame_bytes(fin, rsv, opcode, payload, masked))
        .unwrap_or_else(|e| panic!("writing a frame (opcode {opcode:#x}): {e}"));
}

/// A close payload: code then reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Writes a masked close frame with a code and reason.
pub fn send_close(stream: &mut TcpStream, code: u16, reason: &[u8]) {
    send_frame(
        stream,
        true,
        0,
        OP_CLOSE,
        &close_payload(code, reason),
        true,
    );
}

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The status code of a close frame, if it carries one.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Parses one server frame. Server frames must be unmasked and carry no RSV bits.
pub fn try_read_frame(stream: &mut TcpStream) -> io::Result<Frame> {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h)?;
    let fin = h[0] & 0x80 != 0;
    let rsv = (h[0] >> 4) & 0x7;
    let opcode = h[0] & 0x0F;
    assert_eq!(
        rsv, 0,
        "server frame with RSV bits {rsv:#b} (no extension was negotiated)"
    );
    assert_eq!(
        h[1] & 0x80,
        0,
        "server frame is masked (RFC 6455 5.1 forbids it)"
    );
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b)?;
            let l = u64::from(u16::from_be_bytes(b));
            assert!(l >= 126, "non-minimal 16-bit length {l}");
            l
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b)?;
            let l = u64::from_be_bytes(b);
            assert!(l > 0xFFFF && l >> 63 == 0, "bad 64-bit length {l}");
            l
        }
        l => u64::from(l),
    };
    assert!(len <= 64 << 20, "server frame of {len} bytes: implausible");
    if opcode >= 8 {
        assert!(fin, "fragmented control frame from the server");
        assert!(len <= 125, "control frame of {len} bytes from the server");
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok(Frame {
        fin,
        opcode,
        payload,
    })
}

/// Reads one frame; fails the test on EOF, reset or timeout.
pub fn read_frame(stream: &mut TcpStream) -> Frame {
    try_read_frame(stream).unwrap_or_else(|e| panic!("reading a frame from the server: {e}"))
}

/// Reads frames until one that is not a server ping.
pub fn read_frame_skipping_pings(stream: &mut TcpStream) -> Frame {
    loop {
        let f = read_frame(stream);
        if f.opcode != OP_PING {
            return f;
        }
    }
}

/// Reads a whole data message (reassembling continuation frames), skipping server pings.
/// Returns (opcode of the first frame, payload). Fails on any other control frame.
pub fn read_message(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let first = read_frame_skipping_pings(stream);
    assert!(
        first.opcode == OP_TEXT || first.opcode == OP_BINARY,
        "expected a data frame, got opcode {:#x} (payload {:?})",
        first.opcode,
        String::from_utf8_lossy(&first.payload)
    );
    let mut payload = first.payload;
    let mut fin = first.fin;
    while !fin {
        let f = read_frame_skipping_pings(stream);
        assert_eq!(
            f.opcode, OP_CONT,
            "expected a continuation frame, got {f:?}"
        );
        payload.extend_from_slice(&f.payload);
        fin = f.fin;
    }
    (first.opcode, payload)
}

/// Reads the server's next non-ping frame and asserts it is a close with `code`.
pub fn expect_close(stream: &mut TcpStream, code: u16) -> Frame {
    let f = read_frame_skipping_pings(stream);
    assert_eq!(
        f.opcode,
        OP_CLOSE,
        "expected a close frame with {code}, got opcode {:#x} with {} bytes",
        f.opcode,
        f.payload.len()
    );
    assert_eq!(f.close_code(), Some(code), "wrong close code; frame: {f:?}");
    if f.payload.len() > 2 {
        assert!(
            std::str::from_utf8(&f.payload[2..]).is_ok(),
            "close reason is not UTF-8: {f:?}"
        );
    }
    f
}

/// After a failure close: answer it, then the server must end the TCP connection.
pub fn expect_fail(stream: &mut TcpStream, code: u16) {
    expect_close(stream, code);
    // The server may already have closed; the answer is a courtesy.
    let _ = stream.write_all(&frame_bytes(
        true,
        0,
        OP_CLOSE,
        &close_payload(code, b""),
        true,
    ));
    expect_end(stream);
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
}

/// Reads until the server ends the connection; nothing may arrive. Fails on data or timeout.
pub fn expect_end(stream: &mut TcpStream) -> End {
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(0) => End::Eof,
        Ok(n) => panic!(
            "expected the server to end the connection, got {n} more bytes: {:?}",
            &buf[..n]
        ),
        Err(e) if is_reset(&e) => End::Reset,
        Err(e) => panic!(
            "expected the server to end the connection, got {e} ({:?})",
            e.kind()
        ),
    }
}

/// Reads (and discards) everything until EOF or reset. Fails on timeout.
pub fn drain_to_end(stream: &mut TcpStream) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return End::Eof,
            Ok(_) => continue,
            Err(e) if is_reset(&e) => return End::Reset,
            Err(e) => panic!("waiting for the connection to end: {e} ({:?})", e.kind()),
        }
    }
}

pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
