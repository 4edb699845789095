//! One core's world: its settings, counters, sessions, clock, timer wheel, dirty list, read buffer,
//! poller and upstream links, as the drivers of that core share them.
//!
//! Everything here is touched by exactly one thread, so it uses `Cell`/`RefCell`, never locks or
//! atomics (the process-wide connection budget in `admission` excepted). It must never be reached
//! from another core: other cores send a [`CoreMsg`](super::CoreMsg) instead. What the drivers do
//! with it lives beside it: `receive`, `write`, `heartbeat`, `accept`, `link`.

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::auth::{AuthConfig, Verifier};
use crate::config::{Config, OneSessionPerUser, RateLimit, RateLimitAction};
use crate::gateway::admission::{Budget, ClientAddress, Origins};
use crate::gateway::conn::Conn;
use crate::gateway::inflight::Inflight;
use crate::gateway::page::Page;
use crate::gateway::per_ip::{AddressCounts, RequestRate};
use crate::gateway::upstreams::Upstreams;
use crate::gateway::CoreMsg;
use crate::runtime::event::{Event, Notify};
use crate::runtime::poller::Poller;
use crate::runtime::registry::{Key, Registry};
use crate::runtime::send_batch::SendBatch;
use crate::runtime::throttle::Throttled;
use crate::runtime::wheel::Wheel;
use crate::session::{Bucket, Rates, Timing};
use crate::shard::user_hash;
use crate::ws::HandshakeConfig;
use rustc_hash::FxHashMap;

/// Settings every core reads on the data path, resolved once from [`Config`].
#[derive(Clone)]
pub struct Settings {
    pub workers: usize,
    pub handshake: HandshakeConfig,
    pub max_message_size: usize,
    pub max_client_backlog: usize,
    pub handshake_timeout: Duration,
    pub timing: Timing,
    pub shutdown_timeout: Duration,
    /// How the real client address is learnt (PROXY protocol, trusted proxies, real_ip_header).
    pub client: ClientAddress,
    pub one_session_per_user: OneSessionPerUser,
    pub origins: Origins,
    /// Every session's rate limits.
    pub rates: Rates,
    /// Who a client is (`[auth]`); the keys are the core's own, swapped on SIGHUP.
    pub auth: AuthConfig,
    pub handshake_rate_per_ip: Option<RateLimit>,
    /// Bytes of incomplete messages this core holds at most.
    pub inflight_budget: usize,
    pub min_receive_rate: u32,
    /// Seconds a message may take before `min_receive_rate` applies.
    pub receive_grace: u32,
    /// The answer to a plain `GET /`, when `chat_page` is on.
    pub chat_page: Option<Page>,
    /// Flushes go through a [`SendBatch`] (`batched_sends`, and the core runs on io_uring).
    pub batched_sends: bool,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let secs = |d: Duration| d.as_secs().clamp(1, u64::from(u32::MAX / 2)) as u32;
        Settings {
            workers: cfg.worker_count(),
            handshake: HandshakeConfig {
                path: cfg.path.clone(),
                subprotocols: cfg.subprotocols.clone(),
                max_head_bytes: cfg.max_handshake_size,
            },
            max_message_size: cfg.max_message_size,
            max_client_backlog: cfg.max_client_backlog,
            handshake_timeout: cfg.handshake_timeout,
            timing: Timing {
                ping_interval: secs(cfg.ping_interval),
                idle_timeout: secs(cfg.idle_timeout),
                close_timeout: secs(cfg.close_timeout),
            },
            shutdown_timeout: cfg.shutdown_timeout,
            client: ClientAddress::from_config(cfg),
            one_session_per_user: cfg.one_session_per_user,
            origins: Origins::from_config(cfg),
            rates: Rates {
                messages: cfg.message_rate.map(|r| Bucket {
                    rate: r.rate,
                    burst: r.burst,
                }),
                bytes: cfg.byte_rate.map(|r| Bucket {
                    rate: r.rate,
                    burst: r.burst,
                }),
                close: cfg.rate_limit_action == RateLimitAction::Close,
            },
            auth: cfg.auth.clone(),
            handshake_rate_per_ip: cfg.handshake_rate_per_ip,
            inflight_budget: cfg.inflight_budget(),
            min_receive_rate: cfg.min_receive_rate,
            receive_grace: secs(cfg.receive_grace),
            chat_page: cfg.chat_page.then(|| Page::new(&cfg.path)),
            batched_sends: cfg.batched_sends,
        }
    }
}

/// Declares the counters once: the struct of cells and the list the admin endpoint reports.
macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Counters of one core, reported by the admin endpoint. Plain cells: only this core writes
        /// them.
        #[derive(Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: Cell<u64>,)*
        }

        impl Counters {
            /// Every counter with its name, for the admin endpoint.
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.get()),)*]
            }
        }
    };
}

counters! {
    accepted,
    accept_errors,
    upgraded,
    handshake_rejected,
    handshake_timeouts,
    handed_off,
    received_from_other_core,
    messages_in,
    messages_out,
    /// PUBLISH, BROADCAST and MULTICAST frames from game servers.
    fanouts,
    /// Fan-out messages dropped for members of a `drop` group past `max_client_backlog`.
    fanout_dropped,
    /// Queued messages of a `latest` group replaced by a newer one before they left.
    fanout_replaced,
    protocol_errors,
    idle_timeouts,
    backlog_closes,
    close_timeouts,
    /// Times a client's driver waited for a congested upstream link.
    paused,
    /// Tasks or steps of a task (handshakes, drivers, flushes, heartbeats, links) that panicked;
    /// each ended its own connection or link only.
    panics,
    /// Connections answered 503 at once: at the connection cap, or out of descriptors (accepted with
    /// the reserve descriptor).
    shed,
    /// Connections closed for their PROXY header: missing where required, malformed, or sent by a
    /// peer not in trusted_proxies.
    proxy_refused,
    /// Sessions closed with 4409 because their user connected again (`one_session_per_user`).
    replaced,
    /// Connections answered 409 because their user already had a session.
    duplicates_rejected,
    /// Requests answered 403 for their Origin (not allowed, or missing where required).
    origin_rejected,
    /// Requests answered 401: no token, or one that did not verify (`[auth] mode = "jwt"`).
    auth_rejected,
    /// Upgrades answered 429: their address already held `max_connections_per_ip` sessions.
    ip_rejected,
    /// Upgrade requests answered 429: over `handshake_rate_per_ip` on this core.
    rate_rejected_handshakes,
    /// Sessions cut with 1008 as the slowest holders of incomplete messages while the core was
    /// over `max_inflight_bytes` (or under pressure for a whole second).
    inflight_closes,
    /// Reads put off because the core was near `max_inflight_bytes` and the session held at
    /// least its share of it.
    inflight_pauses,
    /// Sessions cut with 1008 because a message arrived slower than `min_receive_rate`.
    slow_message_closes,
    /// Client messages dropped over `message_rate`/`byte_rate` (`rate_limit_action = "drop"`).
    rate_limit_drops,
    /// Sessions closed with 1008 over `message_rate`/`byte_rate`.
    rate_limit_closes,
    /// Times a session over its rate limits with `drop` was left unread until its buckets refilled.
    rate_limit_pauses,
    /// Plain `GET /` or `HEAD /` answered with the chat page (`chat_page`); not sessions, and not
    /// counted as refused handshakes.
    pages_served,
}

pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

pub struct Core {
    pub index: usize,
    pub settings: Rc<Settings>,
    /// Senders to every core's control channel, this one included.
    pub peers: Vec<flume::Sender<CoreMsg>>,
    pub upstream: Upstreams,
    pub counters: Counters,
    /// The process's connection budget (`max_connections`).
    pub budget: Budget,
    pub shutdown: Event,
    /// Set once every session is closed during shutdown: the upstream links may go now.
    pub stopped: Event,
    pub drained: Event,
    epoch: Instant,
    now: Cell<u32>,
    next_session: Cell<u64>,
    sessions: RefCell<Registry<Rc<Conn>>>,
    /// The live session of each user, by the user's hash (the user itself is checked on lookup), when
    /// `one_session_per_user` is not `allow`. Every session of a user lives on this core, so this
    /// index is the whole truth about that user.
    users: RefCell<FxHashMap<u64, Key>>,
    pub(super) wheel: RefCell<Wheel>,
    pub(super) dirty: RefCell<Vec<Rc<Conn>>>,
    pub(super) flush_wake: Notify,
    /// The flusher's ring for many sends in one kernel entry, when `batched_sends` is on.
    pub(super) sends: RefCell<Option<SendBatch>>,
    /// The read buffer all of this core's connections share: borrowed for one read-and-decode pass,
    /// never across an await.
    read_buf: RefCell<bytes::BytesMut>,
    /// Tells the connection drivers when their sockets are readable.
    pub poller: Poller,
    /// The keys tokens are verified with; replaced whole when they are re-read.
    pub verifier: RefCell<Verifier>,
    /// Sessions per client address, in the whole process.
    pub per_ip: AddressCounts,
    /// This core's upgrade-request buckets per address.
    pub request_rate: RefCell<RequestRate>,
    /// Each session's client address, by registry slot, while `per_ip` counts them.
    session_ips: RefCell<FxHashMap<u32, IpAddr>>,
    /// One throttled log line per refusal reason.
    refusal_log: RefCell<FxHashMap<&'static str, Throttled>>,
    /// Bytes of incomplete messages the core's sessions hold (their partial frames and fragments).
    pub inflight: Inflight,
}

/// The ring for batched sends, if they are on and the kernel gives one (else each socket is sent to
/// on its own, with the reason logged).
fn batch_ring(core: usize, settings: &Settings) -> Option<SendBatch> {
    if !settings.batched_sends {
        return None;
    }
    SendBatch::new()
        .inspect_err(|e| tracing::warn!(core, error = %e, "no io_uring for batched sends, sending one by one"))
        .ok()
}

/// The close code of a session replaced by a newer one of its user.
pub const REPLACED: u16 = 4409;

/// Size of the shared read buffer; a read never asks for more than this at once.
pub const READ_BUF: usize = 64 * 1024;

/// What a core is given by the process: the cores' channels and the few things they share
/// (admission state touched once per connection, never per message) or start from.
pub struct Shared {
    /// Senders to every core's control channel, this one included.
    pub peers: Vec<flume::Sender<CoreMsg>>,
    pub budget: Budget,
    pub per_ip: AddressCounts,
    /// The token keys as loaded at start.
    pub verifier: Verifier,
}

impl Core {
    pub fn new(
        index: usize,
        settings: Rc<Settings>,
        shared: Shared,
        upstream: Upstreams,
        poller: Poller,
    ) -> Core {
        let rate_per_ip = settings.handshake_rate_per_ip;
        let inflight_budget = settings.inflight_budget;
        let sends = batch_ring(index, &settings);
        let Shared {
            peers,
            budget,
            per_ip,
            verifier,
        } = shared;
        Core {
            index,
            settings,
            peers,
            upstream,
            counters: Counters::default(),
            budget,
            shutdown: Event::default(),
            stopped: Event::default(),
            drained: Event::default(),
            epoch: Instant::now(),
            now: Cell::new(0),
            // Starts at 1: session id 0 means "the link itself" in the upstream protocol.
            next_session: Cell::new(1),
            sessions: RefCell::new(Registry::default()),
            users: RefCell::new(FxHashMap::default()),
            wheel: RefCell::new(Wheel::default()),
            dirty: RefCell::new(Vec::new()),
            flush_wake: Notify::default(),
            sends: RefCell::new(sends),
            read_buf: RefCell::new(bytes::BytesMut::new()),
            poller,
            verifier: RefCell::new(verifier),
            per_ip,
            request_rate: RefCell::new(RequestRate::new(rate_per_ip)),
            session_ips: RefCell::new(FxHashMap::default()),
            refusal_log: RefCell::new(FxHashMap::default()),
            inflight: Inflight::new(inflight_budget),
        }
    }

    /// Seconds since the core started, advanced by the heartbeat task once a second.
    pub fn now(&self) -> u32 {
        self.now.get()
    }

    /// Advances the clock to the seconds elapsed since start; returns the previous reading.
    pub(super) fn advance_clock(&self) -> u32 {
        let now = self.epoch.elapsed().as_secs().min(u64::from(u32::MAX / 2)) as u32;
        self.now.replace(now)
    }

    /// The number of open sessions on this core.
    pub fn live_sessions(&self) -> usize {
        self.sessions.borrow().live()
    }

    /// Takes the core's read buffer for one synchronous pass. Successive reads fill the same
    /// allocation until less than a quarter of it is left, so the messages split off it share one
    /// allocation instead of each pinning a buffer of their own while they wait in a queue.
    pub fn take_read_buf(&self) -> bytes::BytesMut {
        let mut buf = std::mem::take(&mut *self.read_buf.borrow_mut());
        if buf.capacity() - buf.len() < READ_BUF / 4 {
            // Reclaims the allocation when every slice handed out earlier is gone; otherwise allocates.
            buf.reserve(READ_BUF);
        }
        buf
    }

    pub fn return_read_buf(&self, mut buf: bytes::BytesMut) {
        buf.clear();
        *self.read_buf.borrow_mut() = buf;
    }

    /// Registers a new session (its place in the budget already kept) and arms its heartbeat.
    pub fn register(&self, stream: monoio::net::TcpStream, user: Option<Box<str>>) -> Rc<Conn> {
        let seq = self.next_session.get();
        self.next_session.set(seq + 1);
        // Unique per gateway instance: the core index in the top 16 bits, a per-core sequence below.
        let id = ((self.index as u64) << 48) | (seq & ((1 << 48) - 1));
        let now = self.now();
        let (key, conn) = self
            .sessions
            .borrow_mut()
            .insert_with(|key| Rc::new(Conn::new(stream, id, key, user, now, self.settings.rates)));
        if let Some(user) = self.indexed_user(&conn) {
            // Two users whose hashes collide: the one indexed first keeps its place, so a user
            // cannot push another out of the rule by choosing a colliding name (the newcomer is
            // the one that goes unindexed).
            let h = user_hash(user.as_bytes());
            let held = self.users.borrow().get(&h).copied();
            let other = held
                .and_then(|k| self.get(k))
                .is_some_and(|o| o.user != conn.user);
            if !other {
                self.users.borrow_mut().insert(h, key);
            }
        }
        let due = conn.state.borrow().session.first_due(&self.settings.timing);
        self.wheel.borrow_mut().insert(key, due);
        conn
    }

    /// Logs that connections are refused for `reason`, at most once per interval per reason, with
    /// how many were held back meanwhile. Each refusal is also counted, and logged at debug level
    /// where it happens.
    pub fn note_refusal(&self, reason: &'static str) {
        self.refusal_log
            .borrow_mut()
            .entry(reason)
            .or_default()
            .warn(|suppressed| {
                tracing::info!(
                    core = self.index,
                    reason,
                    suppressed,
                    "refusing connections"
                )
            });
    }

    /// Counts the session against its client address while it lives (`max_connections_per_ip`).
    pub fn remember_ip(&self, c: &Conn, ip: IpAddr) {
        if self.per_ip.enabled() {
            self.session_ips.borrow_mut().insert(c.key.slot, ip);
        }
    }

    /// The client address a live session is counted under, if addresses are counted.
    pub fn session_ip(&self, c: &Conn) -> Option<IpAddr> {
        self.session_ips.borrow().get(&c.key.slot).copied()
    }

    /// Removes an ended session and gives its place in the budget back.
    pub fn unregister(&self, c: &Conn) {
        if let Some(ip) = self.session_ips.borrow_mut().remove(&c.key.slot) {
            self.per_ip.release(ip);
        }
        if let Some(user) = self.indexed_user(c) {
            let mut users = self.users.borrow_mut();
            let h = user_hash(user.as_bytes());
            if users.get(&h) == Some(&c.key) {
                users.remove(&h);
            }
        }
        if self.sessions.borrow_mut().remove(c.key) {
            self.budget.release();
            if self.live_sessions() == 0 && self.shutdown.is_set() {
                self.drained.set();
            }
        }
    }

    /// The user under which `c` is indexed, if users are indexed at all.
    fn indexed_user<'c>(&self, c: &'c Conn) -> Option<&'c str> {
        if self.settings.one_session_per_user == OneSessionPerUser::Allow {
            return None;
        }
        c.user.as_deref()
    }

    /// The live session of `user` on this core, if there is one.
    pub fn session_of(&self, user: &str) -> Option<Rc<Conn>> {
        let key = *self.users.borrow().get(&user_hash(user.as_bytes()))?;
        self.get(key).filter(|c| c.user.as_deref() == Some(user))
    }

    /// Closes a user's older session for a newer one: the game server gets its CLOSE (4409) now,
    /// before the newer session's OPEN, and nothing of the older session's after it; the client
    /// gets a close frame with 4409.
    pub fn replace(&self, old: &Rc<Conn>) {
        bump(&self.counters.replaced);
        tracing::debug!(session = old.id, "replaced by a newer session of its user");
        self.upstream.closed(old, REPLACED, true);
        old.state.borrow_mut().session.upstream_gone();
        self.close(old, REPLACED, "replaced by a newer session");
    }

    pub fn get(&self, key: Key) -> Option<Rc<Conn>> {
        self.sessions.borrow().get(key)
    }

    pub fn sessions(&self) -> Vec<Rc<Conn>> {
        self.sessions.borrow().all()
    }

    /// Graceful stop of this core's sessions: close each with 1001, wait up to the shutdown timeout,
    /// then reset whatever is left.
    pub async fn close_all(self: &Rc<Self>) {
        for c in self.sessions() {
            self.close(&c, 1001, "server shutting down");
        }
        if self.live_sessions() == 0 {
            return;
        }
        let waited =
            monoio::time::timeout(self.settings.shutdown_timeout, self.drained.wait()).await;
        if waited.is_err() {
            for c in self.sessions() {
                self.abort(&c);
            }
            // The drivers see their sockets fail at once; give them a bounded moment to clean up.
            let _ = monoio::time::timeout(Duration::from_secs(1), self.drained.wait()).await;
        }
    }
}

/// A queue of pending handoffs is bounded by the channel; this is its size per core.
pub const CONTROL_QUEUE: usize = 4096;
