//! The gateway under test: [`Launch`] says how to start `ringgate demo` or `ringgate run`,
//! [`Launching`] is the process until it has announced its addresses, [`Gateway`] the running one
//! with its admin endpoint, its clients and where their sessions landed.

use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    expect_end, http_exchange, parse_addr, raise_fd_limit, ringgate_bin, Client, Proc, Stats,
    TempFile, LINK_TIMEOUT, POLL_INTERVAL, START_TIMEOUT,
};

/// A configuration with quick reconnects, so that tests do not wait for the default backoff.
pub const FAST_RECONNECT: &str = "reconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n";

/// The text a stderr line contains when the epoll driver is in use.
const EPOLL_LOG_LINE: &str = "using the epoll driver";

/// How to start the gateway: `ringgate demo` (its upstream the in-process echo game server) or
/// `ringgate run` with upstreams, on free ports (`--listen 127.0.0.1:0 --admin 127.0.0.1:0`), plus
/// a config file, flags, environment variables and an open-files limit.
pub struct Launch {
    cmd: Command,
    /// `None` for `demo`: `/stats` names its in-process upstream, which the test does not know.
    upstreams: Option<Vec<String>>,
    config: Option<TempFile>,
}

impl Launch {
    /// `ringgate demo`.
    pub fn demo() -> Launch {
        Launch::new("demo", None)
    }

    /// `ringgate run --upstream U ...`.
    pub fn run(upstreams: &[String]) -> Launch {
        let mut l = Launch::new("run", Some(upstreams.to_vec()));
        for u in upstreams {
            l.cmd.args(["--upstream", u]);
        }
        l
    }

    fn new(subcommand: &str, upstreams: Option<Vec<String>>) -> Launch {
        let mut cmd = Command::new(ringgate_bin());
        cmd.arg(subcommand)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
        Launch {
            cmd,
            upstreams,
            config: None,
        }
    }

    /// More flags.
    pub fn args(mut self, args: &[&str]) -> Launch {
        self.cmd.args(args);
        self
    }

    /// A configuration file with this text (`--config`); flags still override it.
    pub fn config(mut self, toml: &str) -> Launch {
        let file = TempFile::new("ringgate.toml", toml);
        self.cmd.arg("--config").arg(file.path());
        self.config = Some(file);
        self
    }

    /// An environment variable for the child.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.cmd.env(key, value);
        self
    }

    /// The child's open-files limit (soft and hard).
    pub fn nofile(mut self, n: u64) -> Launch {
        // SAFETY: setrlimit(2) only, between fork and exec.
        unsafe {
            self.cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }

    /// Spawns the process without waiting for its start-up lines (`ringgate run` prints them only
    /// after its links' first attempt, which a test playing the game server must answer first).
    pub fn spawn(self) -> Launching {
        Launching {
            proc: Proc::spawn("ringgate", self.cmd),
            upstreams: self.upstreams,
            config: self.config,
        }
    }

    /// Spawns the process and waits until it has announced its addresses.
    pub fn start(self) -> Gateway {
        self.spawn().ready()
    }
}

/// A gateway process that has not announced its addresses yet.
pub struct Launching {
    pub proc: Proc,
    upstreams: Option<Vec<String>>,
    config: Option<TempFile>,
}

impl Launching {
    /// Waits for the listening and admin lines on stdout.
    pub fn ready(mut self) -> Gateway {
        // "ws://127.0.0.1:PORT/ws (N workers)"
        let listening = self.proc.wait_line("ringgate listening on ", START_TIMEOUT);
        // "http://127.0.0.1:PORT/stats"
        let admin_line = self.proc.wait_line("ringgate admin on ", START_TIMEOUT);
        let (url, tail) = listening
            .split_once(" (")
            .unwrap_or_else(|| panic!("unexpected listening line {listening:?}"));
        let workers: usize = tail
            .strip_suffix(" workers)")
            .or_else(|| tail.strip_suffix(" worker)"))
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
        Gateway {
            proc: self.proc,
            addr,
            admin,
            path,
            workers,
            upstreams: self.upstreams,
            _config: self.config,
        }
    }
}

/// A running gateway (`ringgate demo` or `ringgate run`) with its WebSocket and admin addresses.
pub struct Gateway {
    pub proc: Proc,
    addr: SocketAddr,
    admin: SocketAddr,
    path: String,
    workers: usize,
    upstreams: Option<Vec<String>>,
    _config: Option<TempFile>,
}

impl Gateway {
    /// `ringgate demo ARGS` on free ports.
    pub fn demo(args: &[&str]) -> Gateway {
        Launch::demo().args(args).start()
    }

    /// `ringgate demo ARGS` forced onto the epoll driver (`RINGGATE_FORCE_EPOLL=1`), once its log
    /// says that it uses it.
    pub fn demo_on_epoll(args: &[&str]) -> Gateway {
        let gw = Launch::demo()
            .args(args)
            .env("RINGGATE_FORCE_EPOLL", "1")
            .start();
        gw.proc.wait_stderr(EPOLL_LOG_LINE, Duration::from_secs(10));
        gw
    }

    /// `ringgate run` on free ports with two workers, the given upstreams, quick reconnects, and
    /// extra flags.
    pub fn run(upstreams: &[String], args: &[&str]) -> Gateway {
        Gateway::run_with_config(upstreams, args, FAST_RECONNECT)
    }

    /// Like [`Gateway::run`] with a whole configuration file (`--config`); flags still apply.
    pub fn run_with_config(upstreams: &[String], args: &[&str], toml: &str) -> Gateway {
        raise_fd_limit(4096);
        let gw = Launch::run(upstreams)
            .config(toml)
            .args(&["--workers", "2"])
            .args(args)
            .start();
        assert_eq!(gw.workers, 2, "asked for two workers");
        gw
    }

    /// The WebSocket address (host:port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin endpoint address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The WebSocket path the gateway announced (e.g. `/ws`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The worker count the gateway announced.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, self.path)
    }

    /// `/ws?user=USER`
    pub fn target(&self, user: &str) -> String {
        format!("{}?user={user}", self.path)
    }

    /// `ws://127.0.0.1:PORT/ws?user=USER`
    pub fn user_url(&self, user: &str) -> String {
        format!("ws://{}{}", self.addr, self.target(user))
    }

    /// GET an admin path; asserts 200, a body of exactly its Content-Length, and JSON.
    pub fn admin_get(&self, path: &str) -> serde_json::Value {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        let (resp, mut stream) = http_exchange(self.admin, raw.as_bytes());
        assert_eq!(resp.status, 200, "admin GET {path}: {}", resp.status_line);
        if resp.header("Content-Length").is_some() {
            expect_end(&mut stream);
        }
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
            panic!(
                "admin GET {path}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&resp.body)
            )
        })
    }

    /// `GET /stats`, checked for shape: one object per core, one link per configured upstream.
    pub fn stats(&self) -> Stats {
        let s = Stats(self.admin_get("/stats"));
        s.check_shape(self.workers, self.upstreams.as_deref());
        s
    }

    /// `GET /sessions`: like `/stats` with `users` filled in.
    pub fn sessions(&self) -> Stats {
        let s = Stats(self.admin_get("/sessions"));
        s.check_shape(self.workers, self.upstreams.as_deref());
        s
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
                    self.proc.stderr_text()
                );
            }
            // The state awaited here (a counter moving, a link changing state, a session
            // released) has no signal other than the admin endpoint.
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

    /// A tungstenite client for `user` (`?user=USER`).
    pub fn client(&self, user: &str) -> Client {
        Client::connect(self.addr, &self.user_url(user), user)
    }

    /// A tungstenite client on the gateway's path, without a user.
    pub fn anonymous_client(&self) -> Client {
        Client::connect(self.addr, &self.url(), "(no user)")
    }

    /// Connects `user` and finds, from the `/stats` before and after, which core and link its
    /// session landed on. Nothing else may connect or close on this gateway meanwhile.
    pub fn locate(&self, user: &str) -> (Client, Placement) {
        let upstreams = self
            .upstreams
            .as_deref()
            .expect("locate needs the configured upstreams (ringgate run)");
        let before = self.stats();
        let c = self.client(user);
        let after = self.stats();
        let mut grown = Vec::new();
        for core in 0..self.workers {
            for name in upstreams {
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

/// Where a session lives: its core and the upstream its link goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub core: usize,
    pub link: String,
}
