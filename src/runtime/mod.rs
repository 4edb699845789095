//! The thread-per-core runtime: one monoio runtime per worker thread, pinned to a CPU, each with
//! its own SO_REUSEPORT listener, sessions, timer wheel and upstreams.
//!
//! Owns thread start-up and shutdown and the messages cores send each other. Nothing mutable is
//! shared between cores: a core learns of the world only through its [`CoreMsg`] channel.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Serialize;

use crate::config::Config;
use crate::upstream::{LinkSettings, LinkSnapshot, Upstreams};

pub mod accept;
mod admin;
mod conn;
mod core;
pub(crate) mod event;
pub(crate) mod outq;
mod poller;
mod session;
pub(crate) mod sys;

pub use self::core::{detach_if_parked, Core, Settings};
pub use self::event::{Gate, Notify};
pub use self::outq::{Flush, OutQueue};
pub use self::session::{flag, Session, SessionKey};
pub use self::sys::{set_linger_zero, ReadOutcome};

/// What one core can be told by another (or by the main thread).
pub enum CoreMsg {
    /// A connection whose user this core owns, accepted elsewhere.
    Handoff(Box<accept::Handoff>),
    /// Report counters (and, if asked, the sessions) for the admin endpoint.
    Snapshot {
        sessions: bool,
        reply: flume::Sender<CoreSnapshot>,
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
    let targets = Arc::new(crate::upstream::resolve(cfg).map_err(StartError::Upstream)?);
    let link_settings = LinkSettings::from_config(cfg);
    let workers = settings.workers;
    let mut addr = cfg.listen;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 0..workers {
        let l = bind_reuseport(addr, cfg.listen_backlog)
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

pub(crate) fn bind_reuseport(
    addr: SocketAddr,
    backlog: u32,
) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s.into())
}

struct Worker {
    index: usize,
    settings: Settings,
    listener: std::net::TcpListener,
    control: flume::Receiver<CoreMsg>,
    peers: Vec<flume::Sender<CoreMsg>>,
    targets: Arc<Vec<(String, SocketAddr)>>,
    link_settings: LinkSettings,
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
        match self.uring_runtime() {
            Ok(mut rt) => rt.block_on(self.main("io_uring")),
            Err(why) => {
                tracing::warn!(core = self.index, reason = %why, "io_uring unavailable, using the epoll driver");
                match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build()
                {
                    Ok(mut rt) => rt.block_on(self.main("epoll")),
                    Err(e) => {
                        tracing::error!(core = self.index, error = %e, "cannot build runtime")
                    }
                }
            }
        }
    }

    fn uring_runtime(
        &self,
    ) -> Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>, String> {
        if std::env::var_os("RINGGATE_FORCE_EPOLL").is_some() {
            return Err("RINGGATE_FORCE_EPOLL is set".into());
        }
        if !monoio::utils::detect_uring() {
            return Err(
                "the kernel refused io_uring (old kernel, io_uring_disabled or seccomp)".into(),
            );
        }
        // One ring per thread, only ever submitted to from that thread (SINGLE_ISSUER). With
        // COOP_TASKRUN completions are processed when the thread next enters the kernel instead of
        // interrupting it: measured +40% round trips and -25% CPU per round trip at 64-byte messages
        // (docs/benchmarks.md). Kernels before 5.19 refuse the flags; the plain ring follows.
        let build = |coop: bool| {
            let mut urb = io_uring::IoUring::builder();
            if coop {
                urb.setup_single_issuer().setup_coop_taskrun();
            }
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(self.uring_entries)
                .uring_builder(urb)
                .enable_timer()
                .build()
        };
        build(true)
            .or_else(|e| {
                tracing::info!(core = self.index, error = %e, "io_uring without SINGLE_ISSUER/COOP_TASKRUN");
                build(false)
            })
            .map_err(|e| e.to_string())
    }

    async fn main(self, driver: &'static str) {
        tracing::info!(core = self.index, driver, "worker started");
        let poller = match poller::Poller::new() {
            Ok(p) => Rc::new(p),
            Err(e) => {
                tracing::error!(core = self.index, error = %e, "cannot create the poller");
                return;
            }
        };
        let upstream = Upstreams::new(&self.targets, self.link_settings);
        let core = Rc::new(Core::new(
            self.index,
            Rc::new(self.settings),
            self.peers,
            upstream,
            poller.clone(),
        ));
        monoio::spawn(poller.run(core.clone()));
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
        while let Ok(msg) = self.control.recv_async().await {
            match msg {
                CoreMsg::Handoff(h) => accept::adopt(&core, h),
                CoreMsg::Snapshot { sessions, reply } => {
                    let _ = reply.send(snapshot(&core, driver, sessions));
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
    let c = &core.counters;
    let counters = [
        ("accepted", &c.accepted),
        ("accept_errors", &c.accept_errors),
        ("upgraded", &c.upgraded),
        ("handshake_rejected", &c.handshake_rejected),
        ("handshake_timeouts", &c.handshake_timeouts),
        ("handed_off", &c.handed_off),
        ("received_from_other_core", &c.received_from_other_core),
        ("messages_in", &c.messages_in),
        ("messages_out", &c.messages_out),
        ("protocol_errors", &c.protocol_errors),
        ("idle_timeouts", &c.idle_timeouts),
        ("backlog_closes", &c.backlog_closes),
        ("close_timeouts", &c.close_timeouts),
        ("paused", &c.paused),
        ("panics", &c.panics),
        ("shed", &c.shed),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.get()))
    .collect();
    CoreSnapshot {
        core: core.index,
        driver: driver.to_string(),
        sessions: core.live_sessions(),
        counters,
        upstreams: core.upstream.snapshot(),
        users: with_sessions.then(|| {
            core.sessions()
                .iter()
                .map(|s| (s.id, s.user.as_deref().map(str::to_string)))
                .collect()
        }),
    }
}
