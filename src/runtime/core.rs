//! One core's world: its sessions, its clock and timer wheel, its flush list and its counters.
//!
//! Everything here is touched by exactly one thread, so it uses `Cell`/`RefCell`, never locks or
//! atomics. It must never be reached from another core: other cores send a [`CoreMsg`] instead.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::Config;
use crate::runtime::event::{Event, Notify};
use crate::runtime::poller::Poller;
use crate::runtime::session::{flag, Flush, Session, SessionKey};
use crate::runtime::sys;
use crate::runtime::CoreMsg;
use crate::upstream::Upstreams;
use crate::ws::{close_payload, HandshakeConfig, OpCode};

/// Settings every core reads on the data path, resolved once from [`Config`].
#[derive(Clone)]
pub struct Settings {
    pub workers: usize,
    pub handshake: HandshakeConfig,
    pub max_message_size: usize,
    pub max_client_backlog: usize,
    /// Client connections this core holds at most (handshaking + upgraded).
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub ping_interval: u32,
    pub idle_timeout: u32,
    pub close_timeout: u32,
    pub shutdown_timeout: Duration,
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
            max_connections: cfg.connections_per_worker(),
            handshake_timeout: cfg.handshake_timeout,
            ping_interval: secs(cfg.ping_interval),
            idle_timeout: secs(cfg.idle_timeout),
            close_timeout: secs(cfg.close_timeout),
            shutdown_timeout: cfg.shutdown_timeout,
        }
    }
}

/// Counters of one core, reported by the admin endpoint. Plain cells: only this core writes them.
#[derive(Default)]
pub struct Counters {
    pub accepted: Cell<u64>,
    pub accept_errors: Cell<u64>,
    pub upgraded: Cell<u64>,
    pub handshake_rejected: Cell<u64>,
    pub handshake_timeouts: Cell<u64>,
    pub handed_off: Cell<u64>,
    pub received_from_other_core: Cell<u64>,
    pub messages_in: Cell<u64>,
    pub messages_out: Cell<u64>,
    pub protocol_errors: Cell<u64>,
    pub idle_timeouts: Cell<u64>,
    pub backlog_closes: Cell<u64>,
    pub close_timeouts: Cell<u64>,
    /// Connection tasks (handshakes and drivers) that panicked; each ended its connection only.
    pub panics: Cell<u64>,
    /// Connections answered 503 at once: at the connection cap, or out of descriptors (accepted with
    /// the reserve descriptor).
    pub shed: Cell<u64>,
    /// Times a client's driver waited for a congested upstream link.
    pub paused: Cell<u64>,
}

/// A message going into a queue whose socket is blocked may wait there long: copy it out of the
/// buffer it was read into, so that it holds only its own bytes, not the (shared, larger) buffer.
/// Messages to sockets that are writing go as they are: the fast path stays zero-copy.
pub fn detach_if_parked(parked: bool, payload: Bytes) -> Bytes {
    if parked && !payload.is_empty() {
        Bytes::copy_from_slice(&payload)
    } else {
        payload
    }
}

pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

struct Slot {
    generation: u32,
    session: Option<Rc<Session>>,
}

/// Hashed timer wheel of one-second ticks. Each live session has an entry for its next heartbeat
/// (and, while closing, one for its close deadline); entries of sessions that ended are skipped when
/// their slot comes round (their key no longer matches).
struct Wheel {
    slots: Vec<Vec<(SessionKey, u32)>>,
}

const WHEEL_SLOTS: usize = 128;

impl Wheel {
    fn new() -> Self {
        Wheel {
            slots: (0..WHEEL_SLOTS).map(|_| Vec::new()).collect(),
        }
    }

    fn insert(&mut self, key: SessionKey, due: u32) {
        self.slots[due as usize % WHEEL_SLOTS].push((key, due));
    }
}

pub struct Core {
    pub index: usize,
    pub settings: Rc<Settings>,
    /// Senders to every core's control channel, this one included.
    pub peers: Vec<flume::Sender<CoreMsg>>,
    pub upstream: Upstreams,
    pub counters: Counters,
    pub shutdown: Event,
    /// Set once every session is closed during shutdown: the upstream links may go now.
    pub stopped: Event,
    epoch: Instant,
    now: Cell<u32>,
    next_session: Cell<u64>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    live: Cell<usize>,
    pub drained: Event,
    /// Connections accepted here and still in their handshake.
    pub handshaking: Cell<usize>,
    wheel: RefCell<Wheel>,
    dirty: RefCell<Vec<Rc<Session>>>,
    flush_wake: Notify,
    /// The read buffer all of this core's connections share: borrowed for one read-and-decode pass,
    /// never across an await.
    read_buf: RefCell<bytes::BytesMut>,
    /// Tells the connection drivers when their sockets are readable.
    pub poller: Rc<Poller>,
}

/// Size of the shared read buffer; a read never asks for more than this at once.
pub const READ_BUF: usize = 64 * 1024;

impl Core {
    pub fn new(
        index: usize,
        settings: Rc<Settings>,
        peers: Vec<flume::Sender<CoreMsg>>,
        upstream: Upstreams,
        poller: Rc<Poller>,
    ) -> Core {
        Core {
            index,
            settings,
            peers,
            upstream,
            counters: Counters::default(),
            shutdown: Event::default(),
            stopped: Event::default(),
            epoch: Instant::now(),
            now: Cell::new(0),
            // Starts at 1: session id 0 means "the link itself" in the upstream protocol.
            next_session: Cell::new(1),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            live: Cell::new(0),
            drained: Event::default(),
            handshaking: Cell::new(0),
            wheel: RefCell::new(Wheel::new()),
            dirty: RefCell::new(Vec::new()),
            flush_wake: Notify::default(),
            read_buf: RefCell::new(bytes::BytesMut::new()),
            poller,
        }
    }

    /// Seconds since the core started, advanced by the timer task once a second.
    pub fn now(&self) -> u32 {
        self.now.get()
    }

    /// The number of open sessions on this core.
    pub fn live_sessions(&self) -> usize {
        self.live.get()
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

    /// Registers a new session and arms its heartbeat.
    pub fn register(&self, stream: monoio::net::TcpStream, user: Option<Box<str>>) -> Rc<Session> {
        let mut slots = self.slots.borrow_mut();
        let slot = self.free.borrow_mut().pop().unwrap_or_else(|| {
            slots.push(Slot {
                generation: 0,
                session: None,
            });
            (slots.len() - 1) as u32
        });
        let entry = &mut slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        let key = SessionKey {
            slot,
            generation: entry.generation,
        };
        let seq = self.next_session.get();
        self.next_session.set(seq + 1);
        // Unique per gateway instance: the core index in the top 16 bits, a per-core sequence below.
        let id = ((self.index as u64) << 48) | (seq & ((1 << 48) - 1));
        let session = Rc::new(Session::new(stream, id, key, user, self.now()));
        entry.session = Some(session.clone());
        self.live.set(self.live.get() + 1);
        let next = self.now() + self.settings.ping_interval.min(self.settings.idle_timeout);
        self.wheel.borrow_mut().insert(key, next);
        session
    }

    pub fn unregister(&self, s: &Session) {
        let mut slots = self.slots.borrow_mut();
        if let Some(entry) = slots.get_mut(s.key.slot as usize) {
            if entry.generation == s.key.generation && entry.session.take().is_some() {
                self.free.borrow_mut().push(s.key.slot);
                self.live.set(self.live.get() - 1);
                if self.live.get() == 0 && self.shutdown.is_set() {
                    self.drained.set();
                }
            }
        }
    }

    pub fn get(&self, key: SessionKey) -> Option<Rc<Session>> {
        let slots = self.slots.borrow();
        let entry = slots.get(key.slot as usize)?;
        if entry.generation != key.generation {
            return None;
        }
        entry.session.clone()
    }

    pub fn sessions(&self) -> Vec<Rc<Session>> {
        self.slots
            .borrow()
            .iter()
            .filter_map(|s| s.session.clone())
            .collect()
    }

    /// Queues a message for the client. A client whose queue is already past `max_client_backlog`
    /// when another message comes is not reading: it is closed with 1008 rather than allowed to grow
    /// memory. So a message of any allowed size always gets through to a reading client (even with a
    /// ping queued beside it), and a client holds at most the backlog plus one message.
    pub fn send(&self, s: &Rc<Session>, opcode: OpCode, payload: Bytes) {
        self.send_with(s, |s| {
            s.push_frame(opcode, detach_if_parked(s.has(flag::WRITER), payload))
        });
    }

    /// [`Core::send`] for a game-sized payload, copied into the session's queue.
    pub fn send_copy(&self, s: &Rc<Session>, opcode: OpCode, payload: &[u8]) {
        self.send_with(s, |s| s.push_frame_copy(opcode, payload));
    }

    fn send_with(&self, s: &Rc<Session>, push: impl FnOnce(&Session)) {
        if s.has(flag::CLOSE_SENT | flag::BROKEN | flag::ENDED) {
            return;
        }
        let before = s.queued();
        push(s);
        bump(&self.counters.messages_out);
        if before > self.settings.max_client_backlog {
            bump(&self.counters.backlog_closes);
            tracing::debug!(
                session = s.id,
                queued = s.queued(),
                "client not reading, closing"
            );
            s.discard_unsent();
            self.close(s, 1008, "client not reading");
            return;
        }
        self.mark_dirty(s);
    }

    /// Starts a server-initiated close: the close frame is queued, nothing may follow it, and the
    /// client has `close_timeout` to answer before the connection is reset.
    pub fn close(&self, s: &Rc<Session>, code: u16, reason: &str) {
        if s.has(flag::CLOSE_SENT | flag::ENDED) {
            return;
        }
        s.push_frame(OpCode::Close, close_payload(code, reason));
        s.set(flag::CLOSE_SENT);
        s.sent_code.set(code);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        let deadline = self.now() + self.settings.close_timeout;
        s.close_deadline.set(deadline);
        self.wheel.borrow_mut().insert(s.key, deadline);
        self.mark_dirty(s);
    }

    /// Echoes a client's close: the frame goes out, then the connection ends.
    pub fn answer_close(&self, s: &Rc<Session>, payload: Bytes) {
        if !s.has(flag::CLOSE_SENT) {
            s.push_frame(OpCode::Close, payload);
            s.set(flag::CLOSE_SENT);
            self.mark_dirty(s);
        }
    }

    /// Cuts the connection now: queued data is dropped and the peer gets a RST. The driver wakes
    /// up (its socket reads end) and cleans up.
    pub fn abort(&self, s: &Session) {
        s.set(flag::BROKEN);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
        s.discard_all();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s.stream);
        sys::set_linger_zero(fd);
        sys::shutdown(fd, libc::SHUT_RDWR);
    }

    pub fn mark_dirty(&self, s: &Rc<Session>) {
        if !s.has(flag::DIRTY) {
            s.set(flag::DIRTY);
            let mut dirty = self.dirty.borrow_mut();
            if dirty.is_empty() {
                self.flush_wake.notify();
            }
            dirty.push(s.clone());
        }
    }

    /// Flushes one session now; a full socket hands the rest to a writer task.
    pub fn flush(self: &Rc<Self>, s: &Rc<Session>) {
        s.clear(flag::DIRTY);
        if s.has(flag::WRITER | flag::BROKEN) {
            return;
        }
        match s.flush() {
            Ok(Flush::Done) => self.after_flush(s),
            Ok(Flush::Blocked) => {
                s.set(flag::WRITER);
                monoio::spawn(writer(self.clone(), s.clone()));
            }
            Err(e) => {
                tracing::debug!(session = s.id, error = %e, "write failed");
                self.abort(s);
            }
        }
    }

    fn after_flush(&self, s: &Session) {
        // Once our close frame is out, half-close: the client reads it, answers, and sees our FIN.
        if s.has(flag::CLOSE_SENT) && !s.has(flag::WRITE_SHUT) && s.queued() == 0 {
            s.set(flag::WRITE_SHUT);
            sys::shutdown(std::os::fd::AsRawFd::as_raw_fd(&s.stream), libc::SHUT_WR);
        }
    }

    /// The flusher: everything sent during one turn of the event loop goes out in one vectored
    /// write per session, after the producers (connection drivers, upstream links) have yielded.
    pub async fn flusher(self: Rc<Self>) {
        loop {
            self.flush_wake.notified().await;
            let batch = std::mem::take(&mut *self.dirty.borrow_mut());
            for s in &batch {
                self.flush(s);
            }
            // Hand the (now empty) vector back so its capacity is reused.
            let mut dirty = self.dirty.borrow_mut();
            if dirty.is_empty() {
                let mut batch = batch;
                batch.clear();
                *dirty = batch;
            }
        }
    }

    /// The heartbeat: once a second, advance the clock and visit the sessions due now.
    pub async fn ticker(self: Rc<Self>) {
        let mut interval = monoio::time::interval(Duration::from_secs(1));
        loop {
            interval.tick().await;
            let now = self.epoch.elapsed().as_secs().min(u64::from(u32::MAX / 2)) as u32;
            let from = self.now.replace(now);
            for t in from + 1..=now {
                self.visit_slot(t);
            }
        }
    }

    fn visit_slot(&self, t: u32) {
        let entries = std::mem::take(&mut self.wheel.borrow_mut().slots[t as usize % WHEEL_SLOTS]);
        let now = self.now();
        for (key, due) in entries {
            if due > now {
                self.wheel.borrow_mut().insert(key, due);
                continue;
            }
            let Some(s) = self.get(key) else { continue };
            if let Some(next) = self.heartbeat(&s, now) {
                self.wheel.borrow_mut().insert(key, next);
            }
        }
    }

    /// Decides what a due session needs; returns when to look at it next.
    fn heartbeat(&self, s: &Rc<Session>, now: u32) -> Option<u32> {
        let st = &self.settings;
        if s.has(flag::CLOSE_SENT) {
            // close() armed an entry of its own for the deadline; earlier entries just retire.
            if now >= s.close_deadline.get() && !s.has(flag::BROKEN) {
                bump(&self.counters.close_timeouts);
                tracing::debug!(session = s.id, "close handshake timed out, resetting");
                self.abort(s);
            }
            return None;
        }
        // The clock counts whole seconds, so last_rx may be up to a second early: the extra second
        // keeps a client from being closed before its full idle_timeout.
        let idle_at = s.last_rx.get().saturating_add(st.idle_timeout + 1);
        if now >= idle_at {
            bump(&self.counters.idle_timeouts);
            tracing::debug!(session = s.id, "idle timeout");
            self.close(s, 1001, "idle timeout");
            // close() armed the close deadline.
            return None;
        }
        let ping_at = s.last_ping.get().saturating_add(st.ping_interval);
        if now >= ping_at {
            s.last_ping.set(now);
            self.send(s, OpCode::Ping, Bytes::new());
        }
        Some(idle_at.min(s.last_ping.get().saturating_add(st.ping_interval)))
    }

    /// Graceful stop of this core's sessions: close each with 1001, wait up to the shutdown timeout,
    /// then reset whatever is left.
    pub async fn close_all(self: &Rc<Self>) {
        for s in self.sessions() {
            self.close(&s, 1001, "server shutting down");
        }
        if self.live_sessions() == 0 {
            return;
        }
        let waited =
            monoio::time::timeout(self.settings.shutdown_timeout, self.drained.wait()).await;
        if waited.is_err() {
            for s in self.sessions() {
                self.abort(&s);
            }
            // The drivers see their sockets fail at once; give them a bounded moment to clean up.
            let _ = monoio::time::timeout(Duration::from_secs(1), self.drained.wait()).await;
        }
    }
}

/// Waits for a full socket to drain. Bounded by the client: a client that never reads passes
/// `max_client_backlog`, is closed, and is reset at its close deadline, which wakes this task.
async fn writer(core: Rc<Core>, s: Rc<Session>) {
    loop {
        if s.stream.writable(false).await.is_err() || s.has(flag::BROKEN) {
            break;
        }
        match s.flush() {
            Ok(Flush::Done) => {
                s.clear(flag::WRITER);
                core.after_flush(&s);
                return;
            }
            Ok(Flush::Blocked) => continue,
            Err(_) => {
                core.abort(&s);
                break;
            }
        }
    }
    s.clear(flag::WRITER);
}

/// A queue of pending handoffs is bounded by the channel; this is its size per core.
pub const CONTROL_QUEUE: usize = 4096;

#[cfg(test)]
mod tests {
    use super::detach_if_parked;
    use bytes::Bytes;

    #[test]
    fn only_parked_messages_are_copied_out_of_their_buffer() {
        let buffer = Bytes::from(vec![7u8; 65536]);
        let message = buffer.slice(100..164);
        let fast = detach_if_parked(false, message.clone());
        assert_eq!(
            fast.as_ptr(),
            message.as_ptr(),
            "a message to a writing socket was copied"
        );
        let parked = detach_if_parked(true, message.clone());
        assert_eq!(parked, message);
        let inside = buffer.as_ptr_range();
        assert!(
            !inside.contains(&parked.as_ptr()),
            "a parked message still pins its read buffer"
        );
    }
}
