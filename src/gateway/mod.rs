//! The gateway: the I/O drivers that apply the client-session and link state machines to sockets,
//! one worker thread per core, each pinned to a CPU with its own SO_REUSEPORT listener, sessions,
//! timer wheel and upstream links.
//!
//! Owns thread start-up and shutdown and the messages cores send each other. Nothing mutable is
//! shared between cores (the connection budget's counter excepted, see `admission`): a core learns
//! of the world only through its [`CoreMsg`] channel. The files, by concept:
//! - `core`: one core's world (settings, counters, sessions, clock, buffers);
//! - `conn`: one connection (socket, session machine, queue, I/O flags);
//! - `accept` and `admission`: from an accepted socket to an upgraded session;
//! - `receive`: the read side and the connection's driver task;
//! - `write`: the write side, closes and resets, the flusher;
//! - `heartbeat`: the clock and the timer wheel's decisions;
//! - `link` and `upstreams`: the links to the game servers and the routing over them;
//! - `admin`: the admin endpoint;
//! - `page`: the chat page a plain `GET /` gets when `chat_page` is on.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Serialize;

use crate::config::Config;
use crate::gateway::core::bump;
use crate::runtime::contain::catch;
use crate::runtime::poller::Poller;
use crate::runtime::{self, Runtime};

pub mod accept;
mod admin;
pub mod admission;
pub mod conn;
pub mod core;
mod fanout;
mod heartbeat;
mod inflight;
pub mod link;
pub mod page;
pub mod per_ip;
mod receive;
pub mod upstreams;
mod write;

pub use self::core::{Core, Settings};
pub use self::upstreams::{LinkSettings, LinkSnapshot, Upstreams};

/// What one core can be told by another (or by the main thread).
pub enum CoreMsg {
    /// A connection whose user this core owns, accepted elsewhere.
    Handoff(Box<accept::Handoff>),
    /// Report counters (and, if asked, the sessions) for the admin endpoint.
    Snapshot {
        sessions: bool,
        reply: flume::Sender<CoreSnapshot>,
    },
    /// Verify tokens with these keys from now on (re-read on SIGHUP); open sessions are untouched.
    /// `applied` hears back once they are in use.
    Keys {
        keys: crate::auth::Verifier,
        applied: flume::Sender<()>,
    },
    /// Stop accepting, close every session with 1001, exit when they are gone.
    Shutdown,
}

/// One core's state as the admin endpoint reports it.
#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct CoreSnapshot {
    pub core: usize,
    pub driver: String,
    pub sessions: usize,
    /// Bytes of messages still arriving (`max_inflight_bytes` bounds them).
    pub inflight_bytes: usize,
    pub counters: std::collections::BTreeMap<String, u64>,
    pub upstreams: Vec<LinkSnapshot>,
    /// (session id, user) of every open session, when asked for.
    pub users: Option<Vec<(u64, Option<String>)>>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Upstream(String),
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Auth(#[from] crate::auth::KeyError),
}

/// A running server: its worker threads and the way to stop them.
pub struct Server {
    pub local_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    controls: Vec<flume::Sender<CoreMsg>>,
    threads: Vec<JoinHandle<()>>,
    ready: std::sync::mpsc::Receiver<usize>,
}

impl Server {
    /// Waits until every core's links have made their first connect attempt, so that clients
    /// arriving after the listening line do not get 503 for links that were about to come up.
    /// Returns false if `limit` passed first (an upstream is slow or down; the proxy serves anyway).
    pub fn wait_ready(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        (0..self.threads.len()).all(|_| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            self.ready.recv_timeout(left).is_ok()
        })
    }

    /// Hands every core new token keys (SIGHUP) and waits until each uses them (at most `limit`),
    /// so that once this returns true every connection is verified with them; false if a core did
    /// not answer in time.
    pub fn reload_keys(&self, keys: crate::auth::Verifier, limit: std::time::Duration) -> bool {
        let (applied, acks) = flume::bounded(self.controls.len());
        for c in &self.controls {
            let _ = c.send(CoreMsg::Keys {
                keys: keys.clone(),
                applied: applied.clone(),
            });
        }
        let deadline = std::time::Instant::now() + limit;
        (0..self.controls.len()).all(|_| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            acks.recv_timeout(left).is_ok()
        })
    }

    /// Asks every core to stop gracefully; [`Server::join`] waits for them.
    pub fn shutdown(&self) {
        for c in &self.controls {
            let _ = c.send(CoreMsg::Shutdown);
        }
    }

    /// Waits for every worker; returns how many ended in a panic.
    pub fn join(self) -> usize {
        drop(self.controls);
        self.threads
            .into_iter()
            .map(|t| t.join())
            .filter(Result::is_err)
            .count()
    }
}

/// Binds the listeners (one per worker, SO_REUSEPORT), starts the workers and returns at once.
/// With port 0 the first bind picks the port and every other worker joins it.
pub fn start(cfg: &Config) -> Result<Server, StartError> {
    let settings = Settings::from_config(cfg);
    let budget = admission::Budget::new(cfg.connection_limit());
    let verifier = crate::auth::Verifier::load(&cfg.auth)?;
    let per_ip = per_ip::AddressCounts::new(cfg.max_connections_per_ip);
    let targets = Arc::new(upstreams::resolve(cfg).map_err(StartError::Upstream)?);
    let link_settings = LinkSettings::from_config(cfg);
    let workers = settings.workers;
    let mut addr = cfg.listen;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let l = runtime::bind_reuseport(addr, cfg.listen_backlog)
            .map_err(|source| StartError::Bind { addr, source })?;
        if let Ok(local) = l.local_addr() {
            addr = local;
        }
        listeners.push(l);
    }
    let admin = match cfg.admin_listen {
        Some(a) => {
            let l = std::net::TcpListener::bind(a)
                .map_err(|source| StartError::Bind { addr: a, source })?;
            // The epoll driver accepts with a plain accept(2): a blocking socket would stall the core.
            l.set_nonblocking(true)
                .map_err(|source| StartError::Bind { addr: a, source })?;
            Some(l)
        }
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
        .map(|_| flume::bounded(core::CONTROL_QUEUE))
        .unzip();
    let mut admin = admin;
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let mut threads = Vec::with_capacity(workers);
    for (index, (listener, rx)) in listeners.into_iter().zip(receivers).enumerate() {
        let worker = Worker {
            index,
            settings: settings.clone(),
            listener,
            control: rx,
            peers: senders.clone(),
            targets: targets.clone(),
            link_settings: link_settings.clone(),
            budget: budget.clone(),
            verifier: verifier.clone(),
            per_ip: per_ip.clone(),
            admin: if index == 0 { admin.take() } else { None },
            uring_entries: cfg.uring_entries,
            ready: ready_tx.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("ringgate-{index}"))
            .spawn(move || worker.run())
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    Ok(Server {
        local_addr: addr,
        admin_addr,
        controls: senders,
        threads,
        ready,
    })
}

struct Worker {
    index: usize,
    settings: Settings,
    listener: std::net::TcpListener,
    control: flume::Receiver<CoreMsg>,
    peers: Vec<flume::Sender<CoreMsg>>,
    targets: Arc<Vec<(String, SocketAddr)>>,
    link_settings: LinkSettings,
    budget: admission::Budget,
    verifier: crate::auth::Verifier,
    per_ip: per_ip::AddressCounts,
    admin: Option<std::net::TcpListener>,
    uring_entries: u32,
    /// Told once every link of this core has made its first connect attempt.
    ready: std::sync::mpsc::Sender<usize>,
}

impl Worker {
    fn run(self) {
        if let Some(ids) = core_affinity::get_core_ids() {
            if let Some(id) = ids.get(self.index % ids.len().max(1)) {
                core_affinity::set_for_current(*id);
            }
        }
        match Runtime::build(self.index, self.uring_entries) {
            Ok(mut rt) => rt.block_on(|driver| self.main(driver)),
            Err(e) => tracing::error!(core = self.index, error = %e, "cannot build runtime"),
        }
    }

    async fn main(self, driver: &'static str) {
        tracing::info!(core = self.index, driver, "worker started");
        let poller = match Poller::new() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(core = self.index, error = %e, "cannot create the poller");
                return;
            }
        };
        let upstream = Upstreams::new(&self.targets, self.link_settings);
        let shared = core::Shared {
            peers: self.peers,
            budget: self.budget,
            per_ip: self.per_ip,
            verifier: self.verifier,
        };
        let mut settings = self.settings;
        // The batch ring is io_uring's; a worker on the epoll driver was refused io_uring (or told
        // to avoid it) and sends one by one.
        settings.batched_sends &= driver == "io_uring";
        let core = Rc::new(Core::new(
            self.index,
            Rc::new(settings),
            shared,
            upstream,
            poller,
        ));
        monoio::spawn(core.clone().poll_readiness());
        let first_attempts = core.upstream.start(&core);
        let ready = self.ready;
        let index = self.index;
        monoio::spawn(async move {
            first_attempts.done.wait().await;
            let _ = ready.send(index);
        });
        monoio::spawn(core.clone().flusher());
        monoio::spawn(core.clone().ticker());
        let listener = match monoio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(core = self.index, error = %e, "cannot adopt listener");
                return;
            }
        };
        let acceptor = monoio::spawn(accept::accept_loop(core.clone(), listener));
        if let Some(admin) = self.admin {
            monoio::spawn(admin::serve(core.clone(), admin));
        }
        // The control loop itself holds no per-connection state: a panic in it is a bug in the core,
        // and ends the worker (`Server::join` reports it). The one step that handles a peer's
        // request, adopting a handed-over connection, is contained to that connection.
        while let Ok(msg) = self.control.recv_async().await {
            match msg {
                CoreMsg::Handoff(h) => {
                    if catch(|| accept::adopt(&core, h)).is_none() {
                        bump(&core.counters.panics);
                        tracing::error!(
                            core = self.index,
                            "adopting a connection panicked; connection dropped"
                        );
                    }
                }
                CoreMsg::Snapshot { sessions, reply } => {
                    let _ = reply.send(snapshot(&core, driver, sessions));
                }
                CoreMsg::Keys { keys, applied } => {
                    *core.verifier.borrow_mut() = keys;
                    let _ = applied.send(());
                }
                CoreMsg::Shutdown => break,
            }
        }
        core.shutdown.set();
        acceptor.await;
        core.close_all().await;
        // The sessions' CLOSE frames are queued on the links; send what the sockets take now.
        core.upstream.flush_now();
        core.stopped.set();
        tracing::info!(core = self.index, "worker stopped");
    }
}

fn snapshot(core: &Core, driver: &str, with_sessions: bool) -> CoreSnapshot {
    CoreSnapshot {
        core: core.index,
        driver: driver.to_string(),
        sessions: core.live_sessions(),
        inflight_bytes: core.inflight.total(),
        counters: core
            .counters
            .named()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        upstreams: core.upstream.snapshot(),
        users: with_sessions.then(|| {
            core.sessions()
                .iter()
                .map(|c| (c.id, c.user.as_deref().map(str::to_string)))
                .collect()
        }),
    }
}

impl Core {
    /// Hands every readiness event of the core's poller to its connection; a stale token (its slot
    /// reused) matches nothing and is dropped.
    async fn poll_readiness(self: Rc<Self>) {
        let core = &self;
        self.poller
            .run(self.index, |token, events| {
                if let Some(c) = core.get(runtime::Key::from_token(token)) {
                    receive::on_readable(core, &c, events & runtime::poller::PEER_DONE != 0);
                }
            })
            .await
    }
}
