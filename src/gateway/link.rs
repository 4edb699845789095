//! The driver of one core's persistent link to one game server: connect, HELLO, carry the frames
//! of many sessions both ways, keep it alive, and when it dies close its sessions and reconnect.
//!
//! Owns the link's socket, its outbound queue (its heaviest senders stop being read past a share of
//! it, everyone past twice `link_backlog`: `link::senders`), its read buffer, and the tasks that move them (supervisor,
//! reader, writer, keepalive). Every rule (the handshake, what a frame means, when the link is
//! dead, which code its sessions get, when to retry) is the link state machine's
//! ([`crate::link`]); this module applies its decisions. Never blocks the core and never touches
//! another core's link or sessions.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::TcpStream;

use crate::gateway::conn::Conn;
use crate::gateway::core::{bump, Core};
use crate::gateway::upstreams::LinkSettings;
use crate::gateway::write::detach_if_parked;
use crate::link::backoff::Backoff;
use crate::link::handshake::{self, HandshakeError};
use crate::link::senders::{self, Recent};
use crate::link::{self as machine, Action, Keepalive, LinkEnd};
use crate::protocol::{self as proto, OpenInfo};
use crate::runtime::contain::{catch, Caught};
use crate::runtime::event::{Countdown, Gate, Notify};
use crate::runtime::outq::SMALL;
use crate::runtime::sys::{self, ReadOutcome};
use crate::runtime::{Flush, OutQueue};
use crate::ws::OpCode;

/// The copied run a link keeps between flushes: a turn's burst from a few hundred busy sessions
/// without regrowing it from nothing each time, and no more than this parked per link.
const RUN_KEPT: usize = 256 * 1024;

/// Unsent bytes the kernel may hold for a link (`TCP_NOTSENT_LOWAT`); the rest wait in the link's
/// own queue, where the senders' rule applies. Only unsent bytes count: what the network has in
/// flight is not limited, so a healthy link's throughput is not.
const NOTSENT_LOWAT: u32 = 16 * 1024;

/// Why a connect attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("connect timed out")]
    Timeout,
    #[error("expected HELLO_ACK, got {0}")]
    Closed(&'static str),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("the connect attempt panicked")]
    Panicked,
}

pub struct Link {
    pub index: u16,
    pub addr: SocketAddr,
    /// `HOST:PORT` as configured: what rendezvous hashing uses, so routing does not depend on DNS.
    pub name: String,
    settings: Rc<LinkSettings>,
    /// The rules, and the sessions the link carries. Borrowed for one step at a time.
    machine: RefCell<machine::Link<Rc<Conn>>>,
    stream: RefCell<Option<Rc<TcpStream>>>,
    out: RefCell<OutQueue>,
    wake_writer: Notify,
    /// Shut while the queue is over `link_backlog`; client drivers wait at it past twice that.
    pub gate: Rc<Gate>,
    /// Shut while the queue is over its heavy senders' share (`senders::heavy_mark`); the heaviest
    /// senders' drivers wait at it.
    pub heavy_gate: Rc<Gate>,
    /// The recent count of the heaviest sender (`link::senders`).
    heaviest: Cell<Recent>,
    /// The socket is full and the writer waits: what is queued now may wait a while.
    blocked: Cell<bool>,
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
            machine: RefCell::new(machine::Link::default()),
            stream: RefCell::new(None),
            out: RefCell::new(OutQueue::keeping(RUN_KEPT)),
            wake_writer: Notify::default(),
            gate: Rc::new(Gate::default()),
            heavy_gate: Rc::new(Gate::default()),
            heaviest: Cell::default(),
            blocked: Cell::new(false),
            links_up: Cell::new(0),
            connect_failures: Cell::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.machine.borrow().is_up()
    }

    pub fn session_count(&self) -> usize {
        self.machine.borrow().session_count()
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
        let queued = self.out.borrow().queued();
        if queued > senders::heavy_mark(self.settings.backlog) {
            self.heavy_gate.shut();
        }
        if machine::congested(queued, self.settings.backlog) {
            self.gate.shut();
        }
        self.wake_writer.notify();
    }

    /// A new session on this link: OPEN goes out now, DATA may follow it at once. False if the
    /// session cannot be described to the game server (oversized fields): refuse it as the server
    /// would.
    pub fn open(&self, c: &Rc<Conn>, info: &OpenInfo<'_>) -> bool {
        let opened = self.machine.borrow_mut().open(c.id, c.clone(), info);
        match opened {
            Ok(frame) => {
                c.route.set(self.index);
                self.push(frame);
                true
            }
            Err(e) => {
                tracing::debug!(session = c.id, error = %e, "cannot encode OPEN");
                false
            }
        }
    }

    /// `c` sent `len` bytes at second `now`: its recent count grows, and so may the link's heaviest.
    pub fn note_sent(&self, c: &Conn, now: u32, len: usize) {
        let mine = c.sent.get().add(now, len);
        c.sent.set(mine);
        if mine.get(now) > self.heaviest.get().get(now) {
            self.heaviest.set(mine);
        }
    }

    /// What the heaviest sender on this link sent lately, as of second `now`.
    pub fn heaviest(&self, now: u32) -> u32 {
        self.heaviest.get().get(now)
    }

    /// A client message, forwarded without copying: the 14-byte header is queued beside it.
    pub fn data(&self, c: &Conn, text: bool, payload: Bytes) {
        let head = self.machine.borrow().data_header(c.id, text, payload.len());
        if let Some(head) = head {
            let payload = detach_if_parked(self.blocked.get(), payload);
            self.out.borrow_mut().push(&head, payload);
            self.after_push();
        }
    }

    /// A game-sized client message, copied in with its header.
    pub fn data_copy(&self, c: &Conn, text: bool, payload: &[u8]) {
        let head = self.machine.borrow().data_header(c.id, text, payload.len());
        if let Some(head) = head {
            self.out.borrow_mut().push_copy(&head, payload);
            self.after_push();
        }
    }

    /// The client side of a session ended: tell the game server ("player offline") if it is owed.
    pub fn closed(&self, c: &Conn, code: u16, tell: bool) {
        let frame = self.machine.borrow_mut().closed(c.id, code, tell);
        if let Some(frame) = frame {
            self.push(frame);
        }
    }

    /// Runs the link for the life of the core: connect, serve, and reconnect with exponential
    /// backoff and jitter after every failure.
    pub async fn supervise(self: Rc<Self>, core: Rc<Core>, first: Rc<Countdown>) {
        let mut first = Some(first);
        monoio::spawn(self.clone().writer());
        let s = &self.settings;
        let mut backoff = Backoff::new(
            s.reconnect_min,
            s.reconnect_max,
            core.index as u64 ^ (u64::from(self.index) << 32),
        );
        while !core.shutdown.is_set() {
            let attempt = monoio::select! {
                _ = core.shutdown.wait() => break,
                r = Caught::new(self.connect(&core)) => r.unwrap_or_else(|| {
                    bump(&core.counters.panics);
                    Err(ConnectError::Panicked)
                }),
            };
            // The first attempt is done either way; a link that came up is marked up before this
            // wakes anyone.
            let mut first_done = || {
                if let Some(f) = first.take() {
                    f.tick();
                }
            };
            match attempt {
                Ok((stream, version)) => {
                    let began = Instant::now();
                    self.on_up(&core, stream, version);
                    first_done();
                    let end = match Caught::new(self.serve(&core)).await {
                        Some(end) => end,
                        None => {
                            bump(&core.counters.panics);
                            LinkEnd::Panicked
                        }
                    };
                    self.teardown(&core, &end);
                    backoff.on_link_ended(began.elapsed());
                }
                Err(e) => {
                    first_done();
                    self.connect_failures.set(self.connect_failures.get() + 1);
                    // The first failure of a series is worth a warning; the retries are not.
                    let version = matches!(&e, ConnectError::Handshake(h) if h.is_version());
                    if backoff.is_first() || version {
                        tracing::warn!(core = core.index, upstream = %self.name, error = %e, "upstream link failed");
                    } else {
                        tracing::debug!(core = core.index, upstream = %self.name, error = %e, "upstream link retry failed");
                    }
                }
            }
            let delay = backoff.next_delay();
            monoio::select! {
                _ = core.shutdown.wait() => break,
                _ = monoio::time::sleep(delay) => {},
            }
        }
    }

    /// Connects and shakes hands; the stream and the protocol version the game server picked.
    async fn connect(&self, core: &Core) -> Result<(TcpStream, u16), ConnectError> {
        let limit = self.settings.connect_timeout;
        let stream = monoio::time::timeout(limit, TcpStream::connect_addr(self.addr))
            .await
            .map_err(|_| ConnectError::Timeout)??;
        let fd = sys::fd(&stream);
        sys::prepare_client_socket(fd)?;
        // Bytes the kernel holds unsent are a FIFO we cannot reorder or hold back per sender: a
        // game server that reads slowly would otherwise let megabytes of one flooding client's
        // frames wait there ahead of everyone's, out of reach of `link::senders`.
        sys::set_notsent_lowat(fd, NOTSENT_LOWAT)?;
        let hello = handshake::hello(
            core.index as u16,
            core.settings.workers as u16,
            &self.settings.instance,
        );
        let mut q = OutQueue::default();
        q.push(&[], hello);
        // A fresh socket takes a HELLO whole; anything else is a broken peer.
        if q.flush(fd)? != Flush::Done {
            return Err(ConnectError::Closed("socket full before HELLO"));
        }
        let mut buf = BytesMut::with_capacity(256);
        let reply = monoio::time::timeout(limit, async {
            loop {
                stream.readable(false).await?;
                match sys::read_into(fd, &mut buf)? {
                    ReadOutcome::Data(_) => {}
                    ReadOutcome::WouldBlock => continue,
                    ReadOutcome::Eof => return Err(ConnectError::Closed("connection closed")),
                }
                if buf.len() == buf.capacity() {
                    buf.reserve(256);
                }
                match proto::decode(&mut buf, self.settings.max_frame) {
                    Ok(Some(f)) => return Ok(f),
                    Ok(None) => continue,
                    Err(e) => {
                        return Err(HandshakeError::Unexpected(e.to_string()).into());
                    }
                }
            }
        })
        .await
        .map_err(|_| ConnectError::Timeout)??;
        let version = handshake::accept_reply(reply, buf.len())?;
        Ok((stream, version))
    }

    fn on_up(self: &Rc<Self>, core: &Core, stream: TcpStream, version: u16) {
        let stream = Rc::new(stream);
        *self.stream.borrow_mut() = Some(stream.clone());
        self.machine.borrow_mut().on_up(version, Instant::now());
        self.links_up.set(self.links_up.get() + 1);
        tracing::info!(core = core.index, upstream = %self.name, version, "upstream link up");
        monoio::spawn(self.clone().keepalive(stream));
    }

    /// Serves an established link until it fails.
    async fn serve(&self, core: &Rc<Core>) -> LinkEnd {
        let Some(stream) = self.stream.borrow().clone() else {
            return LinkEnd::Eof;
        };
        // Not on `shutdown`: the link must outlive the sessions, whose CLOSE 1001 frames it carries.
        monoio::select! {
            _ = core.stopped.wait() => LinkEnd::Shutdown,
            end = self.read_loop(core, &stream) => end,
        }
    }

    async fn read_loop(&self, core: &Rc<Core>, stream: &TcpStream) -> LinkEnd {
        let fd = sys::fd(stream);
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
            self.machine.borrow_mut().on_received(Instant::now());
            loop {
                let action = match proto::decode_small(&mut buf, self.settings.max_frame, SMALL) {
                    Ok(Some(proto::Decoded::Data { session, text, len })) => {
                        if let (Some(c), Some(body)) =
                            (self.machine.borrow().session(session), buf.get(..len))
                        {
                            core.send_copy(c, data_opcode(text), body);
                        }
                        buf.advance(len.min(buf.len()));
                        continue;
                    }
                    Ok(Some(proto::Decoded::Frame(frame))) => {
                        self.machine.borrow_mut().on_frame(frame)
                    }
                    Ok(None) => break,
                    Err(e) => self.machine.borrow_mut().on_decode_error(e),
                };
                if let Some(end) = self.apply(core, action) {
                    return end;
                }
            }
        }
    }

    /// Applies one decision of the link machine; returns the link's end if it is over.
    fn apply(&self, core: &Rc<Core>, action: Action<Rc<Conn>>) -> Option<LinkEnd> {
        match action {
            Action::None => {}
            Action::Deliver { to, text, payload } => core.send(&to, data_opcode(text), payload),
            Action::CloseSession {
                session,
                code,
                reason,
            } => {
                session.state.borrow_mut().session.upstream_gone();
                core.close(&session, code, &reason);
            }
            Action::Fanout(f) => core.fan_out(f),
            Action::Reply(frame) => self.push(frame),
            Action::GoingAway { code, reason } => {
                tracing::info!(upstream = %self.name, code, %reason, "game server going away");
            }
            Action::Fail { reply, end } => {
                if let Some(frame) = reply {
                    self.push(frame);
                }
                return Some(end);
            }
        }
        None
    }

    /// Pings the game server and declares the link dead when it has been silent too long.
    async fn keepalive(self: Rc<Self>, stream: Rc<TcpStream>) {
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
            let tick = catch(|| {
                self.machine
                    .borrow_mut()
                    .keepalive(Instant::now(), self.settings.timeout)
            });
            match tick {
                Some(Keepalive::Ping(frame)) => self.push(frame),
                Some(Keepalive::Silent) | None => {
                    tracing::warn!(upstream = %self.name, "upstream link silent, dropping it");
                    // Wakes the reader, which sees the socket fail and tears the link down.
                    sys::shutdown(sys::fd(&*stream), libc::SHUT_RDWR);
                    return;
                }
            }
        }
    }

    /// Best-effort synchronous write of whatever is queued (used as the core stops).
    pub fn flush_now(&self) {
        if let Some(stream) = self.stream.borrow().as_ref() {
            let _ = self.out.borrow_mut().flush(sys::fd(&**stream));
        }
    }

    /// Closes every session of a dead link with the code the machine gives, frees the queue and
    /// wakes the drivers parked behind it.
    fn teardown(&self, core: &Rc<Core>, end: &LinkEnd) {
        if let Some(stream) = self.stream.borrow_mut().take() {
            sys::shutdown(sys::fd(&*stream), libc::SHUT_RDWR);
        }
        self.out.borrow_mut().clear();
        self.blocked.set(false);
        self.heavy_gate.open();
        let gone = self.machine.borrow_mut().end();
        if !matches!(end, LinkEnd::Shutdown) {
            tracing::warn!(core = core.index, upstream = %self.name, reason = %end, sessions = gone.sessions.len(), "upstream link down");
        }
        for c in gone.sessions {
            c.state.borrow_mut().session.upstream_gone();
            core.close(&c, gone.code, &gone.reason);
        }
        self.gate.open();
    }

    /// Writes the link's queue whenever something is pushed; many sessions' frames that became
    /// ready in the same turn of the event loop go out in one vectored write. A panic in a flush
    /// shuts the link's socket, which the reader sees and tears the link down.
    async fn writer(self: Rc<Self>) {
        loop {
            self.wake_writer.notified().await;
            loop {
                let Some(stream) = self.stream.borrow().clone() else {
                    break;
                };
                let result = catch(|| self.out.borrow_mut().flush(sys::fd(&*stream)));
                match result {
                    Some(Ok(Flush::Done)) => {
                        self.blocked.set(false);
                        self.gate.open();
                        self.heavy_gate.open();
                        break;
                    }
                    Some(Ok(Flush::Blocked)) => {
                        self.blocked.set(true);
                        let queued = self.out.borrow().queued();
                        if machine::relieved(queued, self.settings.backlog) {
                            self.gate.open();
                        }
                        if senders::heavy_relieved(queued, self.settings.backlog) {
                            self.heavy_gate.open();
                        }
                        if stream.writable(false).await.is_err() {
                            break;
                        }
                    }
                    Some(Err(_)) | None => {
                        // The reader sees the same failure and tears the link down.
                        sys::shutdown(sys::fd(&*stream), libc::SHUT_RDWR);
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
