//! One core's persistent link to one game server: connect, HELLO, carry the frames of many
//! sessions both ways, keep it alive, and when it dies close its sessions and reconnect.
//!
//! Owns the link's socket, its outbound queue (bounded by `link_backlog`: past it the sessions
//! feeding the link stop being read), its read buffer, and the map from session id to session.
//! Never blocks the core and never touches another core's link or sessions.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::TcpStream;
use rustc_hash::FxHashMap;

use crate::runtime::event::Countdown;
use crate::runtime::outq::SMALL;
use crate::runtime::{
    detach_if_parked, flag, sys, Core, Flush, Gate, Notify, OutQueue, ReadOutcome, Session,
};
use crate::upstream::protocol::{self as proto, Frame, FrameType};
use crate::upstream::LinkSettings;
use crate::ws::{is_valid_close_code, OpCode};

/// The copied run a link keeps between flushes: a turn's burst from a few hundred busy sessions
/// without regrowing it from nothing each time, and no more than this parked per link.
const RUN_KEPT: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    Down,
    Up,
}

/// Why a link ended; decides the close code its sessions get.
#[derive(Debug, thiserror::Error)]
enum LinkEnd {
    #[error("connection lost: {0}")]
    Io(std::io::Error),
    #[error("closed by the game server")]
    Eof,
    #[error("protocol error: {0}")]
    Protocol(#[from] proto::DecodeError),
    #[error("unexpected {0:?} frame")]
    Unexpected(FrameType),
    #[error("game server reported error {code}: {message}")]
    Remote { code: u16, message: String },
    #[error("core shutting down")]
    Shutdown,
}

/// Why a connect attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("version mismatch: we speak {ours}, the game server answered {theirs}")]
    Version { ours: u16, theirs: u16 },
    #[error(
        "the game server does not speak protocol version {}: {message}",
        proto::VERSION
    )]
    Unsupported { message: String },
    #[error("game server refused the link ({code}): {message}")]
    Refused { code: u16, message: String },
    #[error("expected HELLO_ACK, got {0}")]
    Handshake(String),
}

pub struct Link {
    pub index: u16,
    pub addr: SocketAddr,
    /// `HOST:PORT` as configured: what rendezvous hashing uses, so routing does not depend on DNS.
    pub name: String,
    settings: Rc<LinkSettings>,
    state: Cell<LinkState>,
    stream: RefCell<Option<Rc<TcpStream>>>,
    out: RefCell<OutQueue>,
    wake_writer: Notify,
    /// Shut while the queue is over `link_backlog`; client drivers wait at it.
    pub gate: Rc<Gate>,
    /// The socket is full and the writer waits: what is queued now may wait a while.
    blocked: Cell<bool>,
    /// Keyed by our own session ids, so a multiply-and-fold hash is enough: SipHash's defence
    /// against chosen keys would be paid on every DATA frame for nothing.
    sessions: RefCell<FxHashMap<u64, Rc<Session>>>,
    last_rx: Cell<Instant>,
    goaway: RefCell<Option<(u16, String)>>,
    pub links_up: Cell<u64>,
    pub connect_failures: Cell<u64>,
}

impl Link {
    pub fn new(index: u16, name: String, addr: SocketAddr, settings: Rc<LinkSettings>) -> Link {
        Link {
            index,
            addr,
            name,
            settings,
            state: Cell::new(LinkState::Down),
            stream: RefCell::new(None),
            out: RefCell::new(OutQueue::keeping(RUN_KEPT)),
            wake_writer: Notify::default(),
            gate: Rc::new(Gate::default()),
            blocked: Cell::new(false),
            sessions: RefCell::new(FxHashMap::default()),
            last_rx: Cell::new(Instant::now()),
            goaway: RefCell::new(None),
            links_up: Cell::new(0),
            connect_failures: Cell::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.state.get() == LinkState::Up
    }

    pub fn session_count(&self) -> usize {
        self.sessions.borrow().len()
    }

    pub fn queued(&self) -> usize {
        self.out.borrow().queued()
    }

    /// Queues a whole small frame (OPEN, CLOSE, PING...).
    fn push(&self, frame: Bytes) {
        self.out.borrow_mut().push(&[], frame);
        self.after_push();
    }

    fn after_push(&self) {
        if self.out.borrow().queued() > self.settings.backlog {
            self.gate.shut();
        }
        self.wake_writer.notify();
    }

    /// A new session on this link: OPEN goes out now, DATA may follow it at once.
    pub fn open(&self, s: &Rc<Session>, open: &proto::OpenInfo<'_>) {
        match proto::open(s.id, open) {
            Ok(frame) => {
                self.sessions.borrow_mut().insert(s.id, s.clone());
                s.route.set(self.index);
                self.push(frame);
            }
            Err(e) => {
                // Only oversized fields get here (a user id over 64 KiB): refuse like the server would.
                tracing::debug!(session = s.id, error = %e, "cannot encode OPEN");
                s.set(flag::UPSTREAM_DONE);
            }
        }
    }

    /// A client message, forwarded without copying: the 14-byte header is queued beside it.
    pub fn data(&self, s: &Session, text: bool, payload: Bytes) {
        if let Some(head) = self.data_header(s, text, payload.len()) {
            let payload = detach_if_parked(self.blocked.get(), payload);
            self.out.borrow_mut().push(&head, payload);
            self.after_push();
        }
    }

    /// A game-sized client message, copied in with its header.
    pub fn data_copy(&self, s: &Session, text: bool, payload: &[u8]) {
        if let Some(head) = self.data_header(s, text, payload.len()) {
            self.out.borrow_mut().push_copy(&head, payload);
            self.after_push();
        }
    }

    fn data_header(&self, s: &Session, text: bool, len: usize) -> Option<[u8; proto::HEADER_LEN]> {
        if s.has(flag::UPSTREAM_DONE) || !self.is_up() {
            return None;
        }
        let mut head = [0u8; proto::HEADER_LEN];
        let flags = if text { proto::FLAG_TEXT } else { 0 };
        proto::encode_header(&mut head, FrameType::Data, flags, s.id, len);
        Some(head)
    }

    /// The client side of a session ended: tell the game server ("player offline").
    pub fn closed(&self, s: &Session, code: u16) {
        if self.sessions.borrow_mut().remove(&s.id).is_some()
            && !s.has(flag::UPSTREAM_DONE)
            && self.is_up()
        {
            self.push(proto::close(s.id, code, ""));
        }
    }

    /// Runs the link for the life of the core: connect, serve, and reconnect with exponential
    /// backoff and jitter after every failure.
    pub async fn supervise(self: Rc<Self>, core: Rc<Core>, first: Rc<Countdown>) {
        let mut first = Some(first);
        monoio::spawn(self.clone().writer());
        let mut failures = 0u32;
        let mut rng = Jitter::new(core.index as u64 ^ (u64::from(self.index) << 32));
        while !core.shutdown.is_set() {
            let attempt = monoio::select! {
                _ = core.shutdown.wait() => break,
                r = self.connect(&core) => r,
            };
            match attempt {
                Ok(stream) => {
                    // serve() marks the link up before it first yields, so the waiters this
                    // wakes see it up.
                    if let Some(f) = first.take() {
                        f.tick();
                    }
                    let began = Instant::now();
                    let end = self.serve(&core, stream).await;
                    self.teardown(&core, &end);
                    // A link that stayed up a while starts its backoff afresh.
                    if began.elapsed() > self.settings.reconnect_max {
                        failures = 0;
                    }
                }
                Err(e) => {
                    if let Some(f) = first.take() {
                        f.tick();
                    }
                    self.connect_failures.set(self.connect_failures.get() + 1);
                    // The first failure of a series is worth a warning; the retries are not.
                    if failures == 0
                        || matches!(
                            e,
                            ConnectError::Version { .. } | ConnectError::Unsupported { .. }
                        )
                    {
                        tracing::warn!(core = core.index, upstream = %self.name, error = %e, "upstream link failed");
                    } else {
                        tracing::debug!(core = core.index, upstream = %self.name, error = %e, failures, "upstream link retry failed");
                    }
                }
            }
            failures = failures.saturating_add(1);
            let exp = self
                .settings
                .reconnect_min
                .saturating_mul(1 << failures.min(16));
            let cap = exp.min(self.settings.reconnect_max);
            // Full jitter over [cap/2, cap]: links of many cores and instances do not reconnect in step.
            let delay = cap / 2 + cap.mul_f64(rng.next_unit() / 2.0);
            monoio::select! {
                _ = core.shutdown.wait() => break,
                _ = monoio::time::sleep(delay) => {},
            }
        }
    }

    async fn connect(&self, core: &Core) -> Result<TcpStream, ConnectError> {
        let limit = self.settings.connect_timeout;
        let stream = monoio::time::timeout(limit, TcpStream::connect_addr(self.addr))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        sys::prepare_client_socket(stream.as_raw_fd())?;
        let hello = proto::hello(
            core.index as u16,
            core.settings.workers as u16,
            &self.settings.instance,
        );
        let mut q = OutQueue::default();
        q.push(&[], hello);
        // A fresh socket takes a HELLO whole; anything else is a broken peer.
        if q.flush(stream.as_raw_fd())? != Flush::Done {
            return Err(ConnectError::Handshake("socket full before HELLO".into()));
        }
        let mut buf = BytesMut::with_capacity(256);
        let ack = monoio::time::timeout(limit, async {
            loop {
                stream.readable(false).await?;
                match sys::read_into(stream.as_raw_fd(), &mut buf)? {
                    ReadOutcome::Data(_) => {}
                    ReadOutcome::WouldBlock => continue,
                    ReadOutcome::Eof => {
                        return Err(ConnectError::Handshake("connection closed".into()))
                    }
                }
                if buf.len() == buf.capacity() {
                    buf.reserve(256);
                }
                match proto::decode(&mut buf, self.settings.max_frame) {
                    Ok(Some(f)) => return Ok(f),
                    Ok(None) => continue,
                    Err(e) => return Err(ConnectError::Handshake(e.to_string())),
                }
            }
        })
        .await
        .map_err(|_| ConnectError::Timeout)??;
        match ack {
            Frame::HelloAck { version, .. } if version == proto::VERSION => {}
            Frame::HelloAck { version, .. } => {
                return Err(ConnectError::Version {
                    ours: proto::VERSION,
                    theirs: version,
                })
            }
            Frame::LinkError { code: 1, message } => {
                return Err(ConnectError::Unsupported { message })
            }
            Frame::LinkError { code, message } => {
                return Err(ConnectError::Refused { code, message })
            }
            other => return Err(ConnectError::Handshake(format!("{other:?}"))),
        }
        if !buf.is_empty() {
            return Err(ConnectError::Handshake(
                "frames before HELLO_ACK was processed".into(),
            ));
        }
        Ok(stream)
    }

    /// Serves an established link until it fails.
    async fn serve(self: &Rc<Self>, core: &Rc<Core>, stream: TcpStream) -> LinkEnd {
        let stream = Rc::new(stream);
        *self.stream.borrow_mut() = Some(stream.clone());
        *self.goaway.borrow_mut() = None;
        self.state.set(LinkState::Up);
        self.links_up.set(self.links_up.get() + 1);
        self.last_rx.set(Instant::now());
        tracing::info!(core = core.index, upstream = %self.name, "upstream link up");
        monoio::spawn(self.clone().keepalive(stream.clone()));
        // Not on `shutdown`: the link must outlive the sessions, whose CLOSE 1001 frames it carries.
        monoio::select! {
            _ = core.stopped.wait() => LinkEnd::Shutdown,
            end = self.read_loop(core, &stream) => end,
        }
    }

    async fn read_loop(&self, core: &Rc<Core>, stream: &TcpStream) -> LinkEnd {
        let fd = stream.as_raw_fd();
        let mut buf = BytesMut::new();
        loop {
            if let Err(e) = stream.readable(false).await {
                return LinkEnd::Io(e);
            }
            // The link's buffer is its own (links are few); DATA bodies are handed out as slices
            // of it, so it is replaced rather than reused while they are alive.
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            match sys::read_into(fd, &mut buf) {
                Ok(ReadOutcome::Data(_)) => {}
                Ok(ReadOutcome::WouldBlock) => continue,
                Ok(ReadOutcome::Eof) => return LinkEnd::Eof,
                Err(e) => return LinkEnd::Io(e),
            }
            self.last_rx.set(Instant::now());
            loop {
                match proto::decode_small(&mut buf, self.settings.max_frame, SMALL) {
                    Ok(Some(proto::Decoded::Data { session, text, len })) => {
                        if let (Some(s), Some(body)) =
                            (self.sessions.borrow().get(&session), buf.get(..len))
                        {
                            core.send_copy(s, data_opcode(text), body);
                        }
                        buf.advance(len.min(buf.len()));
                    }
                    Ok(Some(proto::Decoded::Frame(frame))) => {
                        if let Err(end) = self.on_frame(core, frame) {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.push(proto::link_error(e.link_error_code(), &e.to_string()));
                        return LinkEnd::Protocol(e);
                    }
                }
            }
        }
    }

    fn on_frame(&self, core: &Rc<Core>, frame: Frame) -> Result<(), LinkEnd> {
        match frame {
            Frame::Data {
                session,
                text,
                payload,
            } => {
                if let Some(s) = self.sessions.borrow().get(&session) {
                    core.send(s, data_opcode(text), payload);
                }
            }
            Frame::Close {
                session,
                code,
                reason,
            }
            | Frame::Refuse {
                session,
                code,
                reason,
            } => {
                let s = self.sessions.borrow_mut().remove(&session);
                if let Some(s) = s {
                    s.set(flag::UPSTREAM_DONE);
                    core.close(&s, ws_close_code(code), &reason);
                }
            }
            Frame::Ping(token) => self.push(proto::pong(token)),
            Frame::Pong(_) => {}
            Frame::GoAway { code, reason } => {
                tracing::info!(upstream = %self.name, code, %reason, "game server going away");
                *self.goaway.borrow_mut() = Some((ws_close_code(code), reason));
            }
            Frame::LinkError { code, message } => return Err(LinkEnd::Remote { code, message }),
            Frame::Hello { .. } => return Err(self.unexpected(FrameType::Hello)),
            Frame::HelloAck { .. } => return Err(self.unexpected(FrameType::HelloAck)),
            Frame::Open { .. } => return Err(self.unexpected(FrameType::Open)),
        }
        Ok(())
    }

    fn unexpected(&self, ty: FrameType) -> LinkEnd {
        self.push(proto::link_error(2, &format!("unexpected {ty:?} frame")));
        LinkEnd::Unexpected(ty)
    }

    /// Pings the game server and declares the link dead when it has been silent too long.
    async fn keepalive(self: Rc<Self>, stream: Rc<TcpStream>) {
        let mut seq = 0u64;
        loop {
            monoio::time::sleep(self.settings.ping_interval).await;
            // This connection was torn down (and maybe replaced): its keepalive ends with it.
            let current = self
                .stream
                .borrow()
                .as_ref()
                .is_some_and(|s| Rc::ptr_eq(s, &stream));
            if !current {
                return;
            }
            if self.last_rx.get().elapsed() >= self.settings.timeout {
                tracing::warn!(upstream = %self.name, "upstream link silent, dropping it");
                // Wakes the reader, which sees the socket fail and tears the link down.
                sys::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR);
                return;
            }
            seq += 1;
            self.push(proto::ping(seq.to_be_bytes()));
        }
    }

    /// Best-effort synchronous write of whatever is queued (used as the core stops).
    pub fn flush_now(&self) {
        if let Some(stream) = self.stream.borrow().as_ref() {
            let _ = self.out.borrow_mut().flush(stream.as_raw_fd());
        }
    }

    /// Closes every session of a dead link (1011, or the code of the server's GOAWAY), frees its
    /// queue and wakes the drivers parked behind it.
    fn teardown(&self, core: &Rc<Core>, end: &LinkEnd) {
        self.state.set(LinkState::Down);
        if let Some(stream) = self.stream.borrow_mut().take() {
            sys::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR);
        }
        self.out.borrow_mut().clear();
        self.blocked.set(false);
        let (code, reason) = self
            .goaway
            .borrow_mut()
            .take()
            .unwrap_or((1011, "upstream lost".to_string()));
        let sessions = std::mem::take(&mut *self.sessions.borrow_mut());
        match end {
            LinkEnd::Shutdown => {}
            _ => {
                tracing::warn!(core = core.index, upstream = %self.name, reason = %end, sessions = sessions.len(), "upstream link down")
            }
        }
        for s in sessions.into_values() {
            s.set(flag::UPSTREAM_DONE);
            core.close(&s, code, &reason);
        }
        self.gate.open();
    }

    /// Writes the link's queue whenever something is pushed; many sessions' frames that became
    /// ready in the same turn of the event loop go out in one vectored write.
    async fn writer(self: Rc<Self>) {
        loop {
            self.wake_writer.notified().await;
            loop {
                let Some(stream) = self.stream.borrow().clone() else {
                    break;
                };
                let result = self.out.borrow_mut().flush(stream.as_raw_fd());
                match result {
                    Ok(Flush::Done) => {
                        self.blocked.set(false);
                        self.gate.open();
                        break;
                    }
                    Ok(Flush::Blocked) => {
                        self.blocked.set(true);
                        if self.out.borrow().queued() <= self.settings.backlog / 2 {
                            self.gate.open();
                        }
                        if stream.writable(false).await.is_err() {
                            break;
                        }
                    }
                    Err(_) => {
                        // The reader sees the same failure and tears the link down.
                        sys::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR);
                        break;
                    }
                }
            }
        }
    }
}

fn data_opcode(text: bool) -> OpCode {
    if text {
        OpCode::Text
    } else {
        OpCode::Binary
    }
}

/// A code from the game server, made safe to put in a WebSocket close frame.
fn ws_close_code(code: u16) -> u16 {
    if is_valid_close_code(code) {
        code
    } else {
        1011
    }
}

/// xorshift64*: jitter for backoff needs spread, not secrecy.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((seed ^ t) | 1)
    }

    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}
