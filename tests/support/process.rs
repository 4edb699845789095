//! Processes: a child with its stdout lines and stderr ([`Proc`]), the echo game server
//! ([`EchoUpstream`]), temporary files, the open-files limit, and one-shot runs of the binary.

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{EXIT_TIMEOUT, START_TIMEOUT};

/// The ringgate binary under test.
pub fn ringgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringgate")
}

/// Runs `ringgate ARGS` to its exit: (success, stdout, stderr).
pub fn ringgate_output(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ringgate_bin())
        .args(args)
        .output()
        .expect("cannot run the ringgate binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Monotonic counter for temporary file names.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A file in the temporary directory, removed on drop.
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `text` to a fresh file whose name ends with `name`.
    pub fn new(name: &str, text: &str) -> TempFile {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("ringgate-test-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        TempFile(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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

/// Parses an announced `HOST:PORT`; a port of 0 fails the test.
pub fn parse_addr(what: &str, text: &str) -> SocketAddr {
    let a: SocketAddr = text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{what}: bad address {text:?}: {e}"));
    assert_ne!(a.port(), 0, "{what}: announced port 0");
    a
}

// ---------------------------------------------------------------------------------------------
// processes

/// What a child wrote to stderr so far, and whether the pipe has ended; the condvar is notified
/// on every change.
type StderrBuf = Arc<(Mutex<(String, bool)>, Condvar)>;

/// A child process: stdout lines arrive on a channel, stderr is collected whole. Killed on drop.
pub struct Proc {
    name: String,
    child: Option<Child>,
    pid: u32,
    lines: mpsc::Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: StderrBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // If the test process dies without running Drop (killed, SIGPIPE), take the child with it.
        // (The signal fires when the spawning thread ends; every test owns its processes on the
        // thread that started them, and has killed them by then.)
        // SAFETY: prctl(2) only, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {name}: {e}"));
        let pid = child.id();
        let stderr: StderrBuf = Arc::new((Mutex::new((String::new(), false)), Condvar::new()));
        {
            let mut pipe = child.stderr.take().unwrap();
            let buf = stderr.clone();
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    let n = pipe.read(&mut chunk).unwrap_or(0);
                    let (state, cv) = &*buf;
                    let mut state = state.lock().unwrap();
                    if n == 0 {
                        state.1 = true;
                    } else {
                        state.0.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    }
                    cv.notify_all();
                    if n == 0 {
                        break;
                    }
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
        self.stderr.0.lock().unwrap().0.clone()
    }

    /// Waits (without polling) until a complete stderr line contains `needle` and returns that
    /// line; fails the test if none does within `timeout`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (state, cv) = &*self.stderr;
        let mut guard = state.lock().unwrap();
        loop {
            let (text, ended) = &*guard;
            if let Some(at) = text.find(needle) {
                let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
                match text[at..].find('\n') {
                    Some(end) => return text[start..at + end].to_string(),
                    None if *ended => return text[start..].to_string(),
                    None => {}
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || (*ended && !text.contains(needle)) {
                panic!(
                    "{}: no stderr line containing {needle:?} within {timeout:?}; stderr:\n{text}",
                    self.name
                );
            }
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
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

    /// Sends `sig` and waits for the exit status.
    pub fn stop(&mut self, sig: libc::c_int) -> ExitStatus {
        self.signal(sig);
        self.wait_exit(EXIT_TIMEOUT)
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
            r
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
        waiter.join().unwrap().expect("waitpid failed")
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

// ---------------------------------------------------------------------------------------------
// the echo game server

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
        EchoUpstream::start_with(listen, &[])
    }

    /// A game server slower than its clients: it reads each link at most `read_rate` bytes a
    /// second, through a receive buffer of `recv_buffer` bytes.
    pub fn start_slow(read_rate: usize, recv_buffer: usize) -> EchoUpstream {
        let (rate, buffer) = (read_rate.to_string(), recv_buffer.to_string());
        EchoUpstream::start_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &["--read-rate", &rate, "--recv-buffer", &buffer],
        )
    }

    fn start_with(listen: SocketAddr, args: &[&str]) -> EchoUpstream {
        let mut cmd = Command::new(ringgate_bin());
        cmd.args(["echo-upstream", "--listen", &listen.to_string()])
            .args(["--workers", "1"])
            .args(args);
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
