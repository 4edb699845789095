//! The echo game server: speaks docs/protocol.md and sends every DATA frame back to its session
//! (text stays text). `ringgate echo-upstream` runs it as a process; `ringgate demo` runs it
//! in-process behind the proxy; tests and load tests use both.
//!
//! Owns its own worker threads and links; shares nothing with the proxy's cores even in-process.
//! The echo is zero-copy: a reply is the received body, sent with a new 14-byte header beside it.
//!
//! Commands, sent as a session's DATA payload: the text `whoami` (the answer is a JSON object of
//! exactly what the session's OPEN carried: `session`, `user`, `address`, `target`, `headers`,
//! `claims`), `kick` (the server closes the session with 4000 "kicked"), `stall` (the server stops
//! reading that link for good). `echo-upstream --read-rate` (and `--recv-buffer`) make it a game
//! server slower than its clients (`Slow`). On a link of protocol version 2, a chat: `join <room>
//! [close|drop|latest]` (answered `joined <room>`), `leave <room>` (answered `left <room>`), `say <room> <text>`
//! (published to the room, sender included, as `<user>@<room>: <text>`) and `all <text>` (broadcast
//! to every session as `<user>@all: <text>`). A room's members may be on any link of any worker, so
//! room messages and broadcasts go out on every version-2 link (ringgate delivers each to the
//! members it holds). A session whose user id starts with `refuse` is refused with 4003. On
//! SIGINT/SIGTERM (process mode) every link gets GOAWAY 1012 "restarting" before the server exits.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::net::{TcpListener, TcpStream};

use crate::protocol::{self as proto, Frame, FrameType, Open, Policy};
use crate::runtime::event::{Event, Notify};
use crate::runtime::{sys, Flush, OutQueue, ReadOutcome};

/// A running echo server.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Vec<flume::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Sends GOAWAY 1012 on every link, closes them, and waits for the threads.
    pub fn shutdown(self) {
        for s in &self.stop {
            let _ = s.send(());
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts `workers` threads, each with its own SO_REUSEPORT listener on `listen` (port 0 picks one).
/// Frames longer than `max_frame` are refused with LINK_ERROR 4: match it to the proxy's
/// `max_message_size + 64 KiB` (docs/protocol.md), or large messages kill the link.
pub fn start(listen: SocketAddr, workers: usize, max_frame: usize) -> std::io::Result<EchoServer> {
    start_slow(listen, workers, max_frame, Slow::default())
}

/// How slowly the server reads its links: a game server slower than what the proxy sends it, so
/// that the proxy's link congests (tests and benchmarks).
#[derive(Clone, Copy, Debug, Default)]
pub struct Slow {
    /// Bytes a second read of each link; 0 for as fast as they come.
    pub read_rate: usize,
    /// `SO_RCVBUF` of each link's socket; 0 for the kernel's default (which grows by itself).
    pub recv_buffer: usize,
}

/// [`start`], reading as slowly as `slow` says.
pub fn start_slow(
    listen: SocketAddr,
    workers: usize,
    max_frame: usize,
    slow: Slow,
) -> std::io::Result<EchoServer> {
    let read_rate = slow.read_rate;
    let mut addr = listen;
    let mut stop = Vec::new();
    let mut threads = Vec::new();
    let (inboxes, receivers): (Vec<_>, Vec<_>) =
        (0..workers.max(1)).map(|_| flume::unbounded()).unzip();
    let hub = Arc::new(Hub { inboxes });
    for (i, inbox) in receivers.into_iter().enumerate() {
        let l = crate::runtime::bind_reuseport(addr, 1024)?;
        if slow.recv_buffer > 0 {
            // Accepted links inherit it.
            socket2::SockRef::from(&l).set_recv_buffer_size(slow.recv_buffer)?;
        }
        addr = l.local_addr()?;
        let (tx, rx) = flume::bounded::<()>(1);
        stop.push(tx);
        let hub = hub.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("echo-upstream-{i}"))
                .spawn(move || run_worker(l, rx, max_frame, read_rate, hub, inbox))?,
        );
    }
    Ok(EchoServer {
        addr,
        stop,
        threads,
    })
}

/// Every worker's inbox of frames to send on all of its version-2 links.
struct Hub {
    inboxes: Vec<flume::Sender<Bytes>>,
}

impl Hub {
    fn to_every_link(&self, frame: Bytes) {
        for inbox in &self.inboxes {
            let _ = inbox.send(frame.clone());
        }
    }
}

/// A link's queue of frames to send, filled by the link itself and by the worker's hub inbox.
#[derive(Default)]
struct Outbox {
    q: RefCell<OutQueue>,
    wake: Notify,
}

impl Outbox {
    /// From outside the link's task: queued, and the task woken to send it.
    fn push(&self, frame: Bytes) {
        self.q.borrow_mut().push(&[], frame);
        self.wake.notify();
    }

    /// From the link's own task, which flushes after every batch of frames it reads.
    fn queue(&self, head: &[u8], payload: Bytes) {
        self.q.borrow_mut().push(head, payload);
    }
}

/// A worker's version-2 links, which its hub inbox feeds.
type Chat = Rc<RefCell<Vec<Rc<Outbox>>>>;

fn run_worker(
    listener: std::net::TcpListener,
    stop: flume::Receiver<()>,
    max_frame: usize,
    read_rate: usize,
    hub: Arc<Hub>,
    inbox: flume::Receiver<Bytes>,
) {
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let Ok(mut rt) = rt else {
        tracing::error!("echo-upstream: cannot build runtime");
        return;
    };
    rt.block_on(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        let shutdown = Rc::new(Event::default());
        let links = Rc::new(Links::default());
        let chat = Chat::default();
        let s = shutdown.clone();
        monoio::spawn(async move {
            let _ = stop.recv_async().await;
            s.set();
        });
        let c = chat.clone();
        monoio::spawn(async move {
            while let Ok(frame) = inbox.recv_async().await {
                for link in c.borrow().iter() {
                    link.push(frame.clone());
                }
            }
        });
        loop {
            let accepted = monoio::select! {
                _ = shutdown.wait() => break,
                r = listener.accept() => r,
            };
            if let Ok((stream, _)) = accepted {
                let guard = LinkGuard::new(links.clone());
                let shutdown = shutdown.clone();
                let (hub, chat) = (hub.clone(), chat.clone());
                monoio::spawn(async move {
                    serve_link(stream, &shutdown, max_frame, read_rate, hub, chat).await;
                    drop(guard);
                });
            }
        }
        // Let the links send their GOAWAY before the runtime goes away.
        links.stopping.set(true);
        if links.live.get() > 0 {
            links.gone.wait().await;
        }
    });
}

/// Counts the live links so shutdown can wait for their GOAWAY to go out.
#[derive(Default)]
struct Links {
    live: std::cell::Cell<usize>,
    stopping: std::cell::Cell<bool>,
    gone: Event,
}

struct LinkGuard(Rc<Links>);

impl LinkGuard {
    fn new(links: Rc<Links>) -> LinkGuard {
        links.live.set(links.live.get() + 1);
        LinkGuard(links)
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let l = &self.0;
        l.live.set(l.live.get() - 1);
        if l.live.get() == 0 && l.stopping.get() {
            l.gone.set();
        }
    }
}

/// The answer to `whoami`: exactly what the session's OPEN carried, as JSON. Header values that are
/// not UTF-8 are shown lossily; the `:claims` pseudo-header, when present, is the verified token's
/// forwarded claims (a JSON object) and appears as `claims`, not among the headers.
fn whoami(session: u64, open: &Open) -> String {
    let mut headers = serde_json::Map::new();
    let mut claims = serde_json::Value::Object(serde_json::Map::new());
    for (name, value) in &open.headers {
        if name == ":claims" {
            if let Ok(v) = serde_json::from_slice(value) {
                claims = v;
            }
            continue;
        }
        headers.insert(
            name.clone(),
            String::from_utf8_lossy(value).into_owned().into(),
        );
    }
    serde_json::json!({
        "session": session,
        "user": open.user,
        "address": open.client_addr,
        "target": open.target,
        "headers": headers,
        "claims": claims,
    })
    .to_string()
}

/// What the link loop should do after a batch of frames.
enum Next {
    Continue,
    Stall,
    Close,
}

async fn serve_link(
    stream: TcpStream,
    shutdown: &Event,
    max_frame: usize,
    read_rate: usize,
    hub: Arc<Hub>,
    chat: Chat,
) {
    let fd = sys::fd(&stream);
    if sys::prepare_client_socket(fd).is_err() {
        return;
    }
    let mut link = EchoLink {
        max_frame,
        hub,
        hello: false,
        v2: false,
        sessions: HashMap::new(),
        out: Rc::default(),
    };
    let out = link.out.clone();
    let pace = Pace::new(read_rate, Instant::now());
    let served = serve_frames(&stream, shutdown, &mut link, &chat, pace).await;
    chat.borrow_mut().retain(|l| !Rc::ptr_eq(l, &out));
    if served == Served::ShutDown {
        out.push(proto::goaway(1012, "restarting"));
        let _ = flush_all(&stream, &out).await;
    }
}

#[derive(PartialEq)]
enum Served {
    ShutDown,
    Ended,
}

async fn serve_frames(
    stream: &TcpStream,
    shutdown: &Event,
    link: &mut EchoLink,
    chat: &Chat,
    mut pace: Pace,
) -> Served {
    let fd = sys::fd(stream);
    let mut buf = BytesMut::new();
    loop {
        let allowed = pace.allowed(Instant::now());
        if allowed == 0 {
            // Out of read budget: only send, until the next tick refills it.
            monoio::select! {
                _ = shutdown.wait() => return Served::ShutDown,
                _ = link.out.wake.notified() => {
                    if flush_all(stream, &link.out).await.is_err() {
                        return Served::Ended;
                    }
                }
                _ = monoio::time::sleep(Pace::TICK) => {}
            }
            continue;
        }
        let readable = monoio::select! {
            _ = shutdown.wait() => return Served::ShutDown,
            _ = link.out.wake.notified() => {
                if flush_all(stream, &link.out).await.is_err() {
                    return Served::Ended;
                }
                continue;
            }
            r = stream.readable(false) => r,
        };
        if readable.is_err() {
            return Served::Ended;
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match sys::read_at_most(fd, &mut buf, allowed) {
            Ok(ReadOutcome::Data(n)) => pace.spend(n),
            Ok(ReadOutcome::WouldBlock) => continue,
            _ => return Served::Ended,
        }
        let was_v2 = link.v2;
        let next = link.on_bytes(&mut buf);
        if link.v2 && !was_v2 {
            chat.borrow_mut().push(link.out.clone());
        }
        if flush_all(stream, &link.out).await.is_err() {
            return Served::Ended;
        }
        match next {
            Next::Continue => {}
            Next::Close => return Served::Ended,
            Next::Stall => {
                // Never read again: the proxy's link fills up and its backpressure must engage.
                shutdown.wait().await;
                return Served::Ended;
            }
        }
    }
}

/// How much a link may read now when the server reads at a bounded rate: a budget refilled every
/// [`Pace::TICK`] by the rate's share of it, never holding more than one tick's worth, so that a
/// server that was idle does not then read a burst faster than its rate.
struct Pace {
    /// Bytes a second; 0 for no limit.
    rate: usize,
    budget: usize,
    refilled: Instant,
}

impl Pace {
    const TICK: Duration = Duration::from_millis(10);

    fn new(rate: usize, now: Instant) -> Pace {
        Pace {
            rate,
            budget: 0,
            refilled: now,
        }
    }

    /// Bytes that may be read now (`usize::MAX` without a limit).
    fn allowed(&mut self, now: Instant) -> usize {
        if self.rate == 0 {
            return usize::MAX;
        }
        let per_tick = (self.rate / 100).max(1);
        let ticks = now.duration_since(self.refilled).as_millis() / Self::TICK.as_millis();
        if ticks > 0 {
            let refill = per_tick.saturating_mul(usize::try_from(ticks).unwrap_or(usize::MAX));
            self.budget = self.budget.saturating_add(refill).min(per_tick);
            self.refilled += Self::TICK * u32::try_from(ticks).unwrap_or(u32::MAX);
        }
        self.budget
    }

    fn spend(&mut self, n: usize) {
        if self.rate != 0 {
            self.budget = self.budget.saturating_sub(n);
        }
    }
}

/// Writes the whole queue, waiting for writability; while it waits, nothing is read, so a proxy
/// that floods us is slowed by TCP rather than by our memory. The queue is not borrowed across the
/// wait: the hub may add to it meanwhile.
async fn flush_all(stream: &TcpStream, out: &Outbox) -> std::io::Result<()> {
    loop {
        let flushed = out.q.borrow_mut().flush(sys::fd(stream))?;
        match flushed {
            Flush::Done => return Ok(()),
            Flush::Blocked => stream.writable(false).await?,
        }
    }
}

struct EchoLink {
    max_frame: usize,
    hub: Arc<Hub>,
    hello: bool,
    /// The link speaks version 2: the chat commands work.
    v2: bool,
    /// What each open session's OPEN carried, for `whoami`.
    sessions: HashMap<u64, Open>,
    out: Rc<Outbox>,
}

impl EchoLink {
    fn on_bytes(&mut self, buf: &mut BytesMut) -> Next {
        loop {
            let frame = match proto::decode(buf, self.max_frame) {
                Ok(Some(f)) => f,
                Ok(None) => return Next::Continue,
                Err(e) => {
                    self.out
                        .queue(&[], proto::link_error(e.link_error_code(), &e.to_string()));
                    return Next::Close;
                }
            };
            match self.on_frame(frame) {
                Next::Continue => {}
                other => return other,
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Next {
        if !self.hello {
            return match frame {
                // The highest version both speak.
                Frame::Hello {
                    version,
                    max_version,
                    ..
                } if version <= proto::MAX_VERSION => {
                    let picked = max_version.min(proto::MAX_VERSION);
                    self.hello = true;
                    self.v2 = picked >= 2;
                    self.out
                        .queue(&[], proto::hello_ack(picked, "ringgate echo-upstream"));
                    Next::Continue
                }
                Frame::Hello { version, .. } => {
                    self.out.queue(
                        &[],
                        proto::link_error(1, &format!("unsupported version {version}")),
                    );
                    Next::Close
                }
                _ => {
                    self.out.queue(&[], proto::link_error(3, "expected HELLO"));
                    Next::Close
                }
            };
        }
        match frame {
            Frame::Open { session, open } => {
                if open.user.starts_with("refuse") {
                    self.out.queue(&[], proto::refuse(session, 4003, "refused"));
                } else {
                    self.sessions.insert(session, open);
                }
            }
            Frame::Data {
                session,
                text,
                payload,
            } => {
                if !self.sessions.contains_key(&session) {
                    return Next::Continue;
                }
                if text && self.v2 {
                    if let Some(answer) = self.chat(session, &payload) {
                        if !answer.is_empty() {
                            self.out
                                .queue(&[], proto::data_frame(session, true, answer.as_bytes()));
                        }
                        return Next::Continue;
                    }
                }
                let Some(open) = self.sessions.get(&session) else {
                    return Next::Continue;
                };
                match &payload[..] {
                    b"whoami" if text => {
                        let me = whoami(session, open);
                        self.out
                            .queue(&[], proto::data_frame(session, true, me.as_bytes()));
                    }
                    b"kick" => {
                        self.sessions.remove(&session);
                        self.out.queue(&[], proto::close(session, 4000, "kicked"));
                    }
                    b"stall" => return Next::Stall,
                    _ => {
                        let mut head = [0u8; proto::HEADER_LEN];
                        let flags = if text { proto::FLAG_TEXT } else { 0 };
                        proto::encode_header(
                            &mut head,
                            FrameType::Data,
                            flags,
                            session,
                            payload.len(),
                        );
                        self.out.queue(&head, payload);
                    }
                }
            }
            Frame::Close { session, .. } => {
                self.sessions.remove(&session);
            }
            Frame::Ping(token) => self.out.queue(&[], proto::pong(token)),
            Frame::Pong(_) => {}
            Frame::LinkError { .. } => return Next::Close,
            _ => {
                self.out
                    .queue(&[], proto::link_error(2, "unexpected frame"));
                return Next::Close;
            }
        }
        Next::Continue
    }

    /// A chat command from `session`: the answer to send it (empty for none), or `None` if the
    /// text is not a command (then it is echoed like anything else).
    fn chat(&mut self, session: u64, text: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(text).ok()?;
        let (command, rest) = text.split_once(' ')?;
        let user = self
            .sessions
            .get(&session)
            .map_or("", |o| o.user.as_str())
            .to_string();
        let user = if user.is_empty() { "anonymous" } else { &user };
        Some(match command {
            "join" => {
                let (room, policy) = match rest.split_once(' ') {
                    None => (rest, Policy::Close),
                    Some((room, "close")) => (room, Policy::Close),
                    Some((room, "drop")) => (room, Policy::Drop),
                    Some((room, "latest")) => (room, Policy::Latest),
                    Some(_) => return Some("error: join <room> [close|drop|latest]".into()),
                };
                match proto::join(session, policy, room.as_bytes()) {
                    Ok(frame) => {
                        self.out.queue(&[], frame);
                        format!("joined {room}")
                    }
                    Err(e) => format!("error: {e}"),
                }
            }
            "leave" => match proto::leave(session, rest.as_bytes()) {
                Ok(frame) => {
                    self.out.queue(&[], frame);
                    format!("left {rest}")
                }
                Err(e) => format!("error: {e}"),
            },
            "say" => {
                let (room, said) = rest.split_once(' ').unwrap_or((rest, ""));
                let line = format!("{user}@{room}: {said}");
                match proto::publish(room.as_bytes(), 0, true, line.as_bytes()) {
                    Ok(frame) => {
                        self.hub.to_every_link(frame);
                        String::new()
                    }
                    Err(e) => format!("error: {e}"),
                }
            }
            "all" => {
                let line = format!("{user}@all: {rest}");
                self.hub
                    .to_every_link(proto::broadcast(0, true, line.as_bytes()));
                String::new()
            }
            _ => return None,
        })
    }
}
