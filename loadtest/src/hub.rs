//! The publishing side of the fan-out workload, on a thread of its own. In ringgate mode it is the
//! game server: it accepts ringgate's links, answers HELLO with HELLO_ACK 2, JOINs every session to
//! the room its OPEN names (then tells it "joined" with a DATA, which link order delivers after the
//! JOIN took effect) and publishes with one PUBLISH (or BROADCAST) per link. In peer mode it is one
//! publisher WebSocket to the comparison server, sending `[room u32 BE][payload]`.
//!
//! Either way it publishes at a fixed rate per stream, the streams evenly offset within the
//! interval, each message stamped with its intended send time, so that a publisher or server that
//! falls behind shows as latency. Must never panic on what ringgate or a peer sends: a malformed
//! frame, a refusal or a lost link is a failure ([`Hub::failure`]) that ends the run with its
//! reason.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringgate::protocol::{self as proto, Frame};

use crate::fanout::{self, Policy, Shared, ALL};
use crate::frame::{self, OpCode};
use crate::net::{self, Epoll, IoResult, EV_ERR, EV_HUP, EV_IN, EV_OUT, EV_RDHUP};
use crate::target::Target;

/// The protocol version the fan-out frames need.
const FANOUT_VERSION: u16 = 2;
/// Largest frame accepted from ringgate (its OPEN frames carry headers; clients send nothing).
const MAX_FRAME: usize = (16 << 20) + (64 << 10);
/// Publish events handled in one turn of the loop before reading sockets again.
const BUDGET: usize = 100_000;

/// A link closed this soon after HELLO_ACK, before any OPEN, was refused.
const REFUSAL_WINDOW: Duration = Duration::from_secs(2);

const TOKEN_WAKE: u64 = u64::MAX;
const TOKEN_TIMER: u64 = u64::MAX - 1;
const TOKEN_LISTENER: u64 = u64::MAX - 2;

/// Who fans out.
pub enum Kind {
    /// ringgate: the harness is its game server, on this listener.
    Ringgate(TcpListener),
    /// A comparison server: the harness publishes over a WebSocket to this target.
    Peer(Target),
}

pub struct HubPlan {
    pub rooms: u32,
    pub broadcast: bool,
    /// Messages per second per stream (room, or the one broadcast stream).
    pub rate: f64,
    pub size: usize,
    pub policy: Policy,
    pub shared: Arc<Shared>,
    pub connect_timeout: Duration,
}

/// What the hub did, for the report: counters only it can see.
#[derive(Default)]
pub struct HubState {
    failure: Mutex<Option<String>>,
    changed: Condvar,
    /// ringgate mode: links expected (the sum of `workers` over the instances seen), and up.
    pub links_expected: AtomicU64,
    pub links_up: AtomicU64,
    /// ringgate mode: sessions opened, JOINs (each followed by its "joined" DATA) sent, OPENs
    /// refused for naming no room, DATA received from sessions (ignored).
    pub opens: AtomicU64,
    pub joins: AtomicU64,
    pub refused: AtomicU64,
    pub client_data: AtomicU64,
    /// Peer mode: the publisher's WebSocket is open.
    pub publisher_open: AtomicBool,
    /// Messages published (one per stream per tick) and the frames that carried them (ringgate: a
    /// PUBLISH or BROADCAST per link with members; peer: one WebSocket message each).
    pub published: AtomicU64,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    /// Most bytes waiting in one connection's send buffer (ringgate or the peer not reading).
    pub backlog_peak: AtomicU64,
    /// Publish events that were due more than a whole interval before the hub got to them.
    pub late: AtomicU64,
    instances: Mutex<Vec<String>>,
}

impl HubState {
    fn fail(&self, why: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        drop(f);
        self.changed.notify_all();
    }

    /// Wakes [`Hub::wait_ready`]. The lock is taken first so that a waiter between its check and
    /// its wait cannot miss the change.
    fn poke(&self) {
        drop(self.failure.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_all();
    }

    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn instances(&self) -> Vec<String> {
        self.instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn raise_peak(&self, backlog: usize) {
        self.backlog_peak
            .fetch_max(backlog as u64, Ordering::Relaxed);
    }
}

enum HubCmd {
    Go,
    /// Stop publishing; answered once the published counts are final.
    Stop(Sender<()>),
    Shutdown,
}

/// The hub thread and the way to command it.
pub struct Hub {
    tx: Sender<HubCmd>,
    wake: RawFd,
    join: Option<JoinHandle<()>>,
    pub state: Arc<HubState>,
    ringgate: bool,
}

impl Hub {
    pub fn start(kind: Kind, plan: HubPlan) -> std::io::Result<Hub> {
        let state = Arc::new(HubState::default());
        let (tx, rx) = channel();
        let wake = net::eventfd()?;
        let ringgate = matches!(kind, Kind::Ringgate(_));
        let st = state.clone();
        let join = std::thread::Builder::new()
            .name("load-hub".into())
            .spawn(move || run(kind, plan, st, rx, wake))?;
        Ok(Hub {
            tx,
            wake,
            join: Some(join),
            state,
            ringgate,
        })
    }

    fn send(&self, cmd: HubCmd) {
        if self.tx.send(cmd).is_ok() {
            net::eventfd_wake(self.wake);
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.state.failure()
    }

    /// Waits until the publishing side can serve clients: every link ringgate announced is up
    /// (ringgate mode), or the publisher's WebSocket is open (peer mode). Err with the reason if
    /// it failed or `limit` passed first.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let st = &self.state;
        let mut guard = st.failure.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(f) = guard.as_ref() {
                return Err(f.clone());
            }
            let ready = if self.ringgate {
                let (up, want) = (
                    st.links_up.load(Ordering::SeqCst),
                    st.links_expected.load(Ordering::SeqCst),
                );
                want > 0 && up >= want
            } else {
                st.publisher_open.load(Ordering::SeqCst)
            };
            if ready {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(if self.ringgate {
                    format!(
                        "{} of {} ringgate links up after {:.1} s (is ringgate started with --upstream pointing here?)",
                        st.links_up.load(Ordering::SeqCst),
                        st.links_expected.load(Ordering::SeqCst),
                        limit.as_secs_f64()
                    )
                } else {
                    format!(
                        "the publisher's WebSocket did not open in {:.1} s",
                        limit.as_secs_f64()
                    )
                });
            }
            guard = st
                .changed
                .wait_timeout(guard, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Starts publishing.
    pub fn go(&self) {
        self.send(HubCmd::Go);
    }

    /// Stops publishing and waits (at most 5 s) until the published counts are final.
    pub fn stop(&self) {
        let (ack, done) = channel();
        self.send(HubCmd::Stop(ack));
        let _ = done.recv_timeout(Duration::from_secs(5));
    }

    /// Closes every connection and ends the thread.
    pub fn shutdown(mut self) {
        self.send(HubCmd::Shutdown);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
        net::close(self.wake);
    }
}

/// A connection the hub writes to: a ringgate link or the publisher's WebSocket.
struct Conn {
    fd: RawFd,
    wbuf: Vec<u8>,
    wpos: usize,
    dead: bool,
}

impl Conn {
    fn new(fd: RawFd) -> Conn {
        Conn {
            fd,
            wbuf: Vec::new(),
            wpos: 0,
            dead: false,
        }
    }

    fn queued(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Writes as much as the socket takes; false if the connection failed.
    fn flush(&mut self, st: &HubState) -> bool {
        while self.wpos < self.wbuf.len() {
            match net::send(self.fd, &self.wbuf[self.wpos..]) {
                IoResult::Done(n) => {
                    self.wpos += n;
                    st.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                IoResult::WouldBlock => {
                    st.raise_peak(self.queued());
                    return true;
                }
                IoResult::Eof | IoResult::Err => return false,
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > 4 << 20 {
            self.wbuf.shrink_to(64 << 10);
        }
        true
    }

    fn close(&mut self) {
        if !self.dead {
            self.dead = true;
            net::close(self.fd);
        }
    }
}

/// A ringgate link, as its game server sees it.
struct Link {
    conn: Conn,
    rbuf: BytesMut,
    /// When HELLO_ACK 2 was sent, if it was.
    acked: Option<Instant>,
    core: u16,
    opens: u64,
    /// Session -> room.
    sessions: HashMap<u64, u32>,
    /// Members per room on this link.
    members: Vec<u32>,
}

/// The publisher's WebSocket to a peer.
struct Publisher {
    conn: Conn,
    rbuf: Vec<u8>,
}

struct Pacer {
    t0: u64,
    /// Nanoseconds between two publish events (one stream's interval / the number of streams).
    step: f64,
    /// The next publish event: stream `event % streams`, sequence number `event / streams`.
    event: u64,
    armed: u64,
}

impl Pacer {
    fn due(&self, event: u64) -> u64 {
        self.t0 + (event as f64 * self.step) as u64
    }
}

struct Run {
    plan: HubPlan,
    st: Arc<HubState>,
    ep: Epoll,
    wake: RawFd,
    timer: RawFd,
    listener: Option<TcpListener>,
    links: Vec<Link>,
    publisher: Option<Publisher>,
    names: Vec<Vec<u8>>,
    /// (instance, core) of every link acked so far, to count the links ringgate announced.
    seen: HashSet<(String, u16)>,
    pacer: Option<Pacer>,
    stopped: bool,
    payload: Vec<u8>,
    rb: Vec<u8>,
    rng: u64,
}

fn run(kind: Kind, plan: HubPlan, st: Arc<HubState>, rx: Receiver<HubCmd>, wake: RawFd) {
    let setup = (|| -> std::io::Result<(Epoll, RawFd)> {
        let ep = Epoll::new()?;
        let timer = net::timerfd()?;
        ep.add_with(wake, TOKEN_WAKE, EV_IN | libc::EPOLLET as u32)?;
        ep.add_with(timer, TOKEN_TIMER, EV_IN | libc::EPOLLET as u32)?;
        Ok((ep, timer))
    })();
    let (ep, timer) = match setup {
        Ok(x) => x,
        Err(e) => return st.fail(format!("the publishing thread cannot start: {e}")),
    };
    let rooms = plan.rooms.max(1);
    let mut run = Run {
        names: (0..rooms)
            .map(|g| format!("room-{g}").into_bytes())
            .collect(),
        st,
        ep,
        wake,
        timer,
        listener: None,
        links: Vec::new(),
        publisher: None,
        seen: HashSet::new(),
        pacer: None,
        stopped: false,
        payload: Vec::new(),
        rb: vec![0; 64 << 10],
        rng: 0x2545_F491_4F6C_DD1D ^ net::mono_ns(),
        plan,
    };
    match kind {
        Kind::Ringgate(l) => {
            if let Err(e) = l
                .set_nonblocking(true)
                .and_then(|_| run.ep.add_with(fd_of(&l), TOKEN_LISTENER, EV_IN))
            {
                run.st
                    .fail(format!("the game server cannot listen for links: {e}"));
            }
            run.listener = Some(l);
        }
        Kind::Peer(target) => match connect_publisher(&target, run.plan.connect_timeout) {
            Ok(stream) => {
                let fd = stream.into_raw_fd();
                if let Err(e) = run.ep.add(fd, 0) {
                    net::close(fd);
                    run.st
                        .fail(format!("cannot watch the publisher's socket: {e}"));
                } else {
                    run.publisher = Some(Publisher {
                        conn: Conn::new(fd),
                        rbuf: Vec::new(),
                    });
                    run.st.publisher_open.store(true, Ordering::SeqCst);
                    run.st.poke();
                }
            }
            Err(e) => run
                .st
                .fail(format!("publisher connection to {}: {e}", target.url)),
        },
    }
    run.serve(&rx);
    for l in &mut run.links {
        l.conn.close();
    }
    if let Some(p) = &mut run.publisher {
        p.conn.close();
    }
    net::close(run.timer);
}

fn fd_of(l: &TcpListener) -> RawFd {
    use std::os::fd::AsRawFd;
    l.as_raw_fd()
}

impl Run {
    fn serve(&mut self, rx: &Receiver<HubCmd>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        loop {
            let n = self.ep.wait(&mut events, 100);
            let mut shutdown = false;
            for ev in events.iter().take(n) {
                let (token, mask) = (ev.u64, ev.events);
                match token {
                    TOKEN_WAKE => net::drain_counter(self.wake),
                    TOKEN_TIMER => net::drain_counter(self.timer),
                    TOKEN_LISTENER => self.accept_links(),
                    t => self.on_io(t as usize, mask),
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                match cmd {
                    HubCmd::Go => self.go(),
                    HubCmd::Stop(ack) => {
                        self.pacer = None;
                        self.stopped = true;
                        net::timerfd_set(self.timer, 0);
                        self.flush_all();
                        let _ = ack.send(());
                    }
                    HubCmd::Shutdown => shutdown = true,
                }
            }
            if shutdown {
                // The publisher says goodbye, so that the peer sees a normal closure.
                if let Some(p) = &mut self.publisher {
                    if !p.conn.dead {
                        let mask = next_rand(&mut self.rng).to_le_bytes();
                        let mask = [mask[0], mask[1], mask[2], mask[3]];
                        let code = 1000u16.to_be_bytes();
                        frame::write_client_frame(&mut p.conn.wbuf, OpCode::Close, &code, mask);
                    }
                }
                self.stopped = true;
                self.flush_all();
                return;
            }
            if self.pacer.is_some() {
                self.pace();
            }
            self.flush_all();
        }
    }

    fn go(&mut self) {
        if self.stopped || self.pacer.is_some() {
            return;
        }
        let streams = self.plan.shared.streams() as f64;
        let rate = if self.plan.rate > 0.0 {
            self.plan.rate
        } else {
            1.0
        };
        self.pacer = Some(Pacer {
            t0: net::mono_ns(),
            step: 1e9 / rate / streams,
            event: 0,
            armed: 0,
        });
    }

    /// Publishes every event whose time has come, then arms the timer for the next one.
    fn pace(&mut self) {
        let now = net::mono_ns();
        let streams = self.plan.shared.streams() as u64;
        for _ in 0..BUDGET {
            let Some(p) = &mut self.pacer else { return };
            let due = p.due(p.event);
            if due > now {
                break;
            }
            if now - due > (p.step * streams as f64) as u64 {
                self.st.late.fetch_add(1, Ordering::Relaxed);
            }
            let (stream, seq) = ((p.event % streams) as usize, p.event / streams);
            p.event += 1;
            self.publish(stream, seq, due);
        }
        if let Some(p) = &mut self.pacer {
            let at = p.due(p.event);
            if at != p.armed {
                p.armed = at;
                net::timerfd_set(self.timer, at.max(1));
            }
        }
    }

    fn publish(&mut self, stream: usize, seq: u64, ts: u64) {
        let room = if self.plan.broadcast {
            ALL
        } else {
            stream as u32
        };
        // Raised before the message goes out: no member can then see a number past it.
        self.plan.shared.set_published(stream, seq + 1);
        self.st.published.fetch_add(1, Ordering::Relaxed);
        self.payload.clear();
        fanout::encode(&mut self.payload, room, seq, ts, self.plan.size);
        if let Some(p) = &mut self.publisher {
            let mask = next_rand(&mut self.rng).to_le_bytes();
            let mask = [mask[0], mask[1], mask[2], mask[3]];
            let w = &mut p.conn.wbuf;
            let start = frame::begin_client_frame(w, OpCode::Binary, 4 + self.payload.len(), mask);
            w.extend_from_slice(&room.to_be_bytes());
            w.extend_from_slice(&self.payload);
            frame::mask_from(w, start, mask);
            self.st.frames.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The same frame goes on every link with members: encoded once.
        let frame = if self.plan.broadcast {
            proto::broadcast(0, false, &self.payload)
        } else {
            match self
                .names
                .get(stream)
                .map(|name| proto::publish(name, 0, false, &self.payload))
            {
                Some(Ok(f)) => f,
                _ => {
                    return self
                        .st
                        .fail(format!("cannot encode a PUBLISH to room {stream}"))
                }
            }
        };
        for l in &mut self.links {
            let has = if self.plan.broadcast {
                !l.sessions.is_empty()
            } else {
                l.members.get(stream).is_some_and(|&m| m > 0)
            };
            if l.acked.is_some() && !l.conn.dead && has {
                l.conn.wbuf.extend_from_slice(&frame);
                self.st.frames.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn flush_all(&mut self) {
        for i in 0..self.links.len() {
            let l = &mut self.links[i];
            if !l.conn.dead && l.conn.queued() > 0 && !l.conn.flush(&self.st) {
                self.link_lost(i, "a write failed");
            }
        }
        if let Some(p) = &mut self.publisher {
            if !p.conn.dead && p.conn.queued() > 0 && !p.conn.flush(&self.st) {
                p.conn.close();
                if !self.stopped {
                    self.st
                        .fail("the peer closed the publisher's connection (a write failed)".into());
                }
            }
        }
    }

    fn accept_links(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.into_raw_fd();
                    let token = self.links.len() as u64;
                    if self.ep.add(fd, token).is_err() {
                        net::close(fd);
                        continue;
                    }
                    self.links.push(Link {
                        conn: Conn::new(fd),
                        rbuf: BytesMut::new(),
                        acked: None,
                        core: 0,
                        opens: 0,
                        sessions: HashMap::new(),
                        members: vec![0; self.names.len()],
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Out of descriptors or similar: the link is retried by ringgate.
                Err(_) => return,
            }
        }
    }

    fn on_io(&mut self, i: usize, mask: u32) {
        if self.publisher.is_some() {
            self.on_publisher_io(mask);
            return;
        }
        let Some(l) = self.links.get_mut(i) else {
            return;
        };
        if l.conn.dead {
            return;
        }
        if mask & EV_OUT != 0 && l.conn.queued() > 0 && !l.conn.flush(&self.st) {
            return self.link_lost(i, "a write failed");
        }
        if mask & (EV_IN | EV_RDHUP | EV_HUP | EV_ERR) == 0 {
            return;
        }
        // Until the socket is empty: with edge-triggered events, a FIN that came with the last
        // bytes announces itself no more.
        loop {
            let l = &mut self.links[i];
            let n = match net::read(l.conn.fd, &mut self.rb) {
                IoResult::Done(n) => n,
                IoResult::WouldBlock => return,
                IoResult::Eof => return self.link_lost(i, "ringgate closed it"),
                IoResult::Err => return self.link_lost(i, "a read failed"),
            };
            l.rbuf.extend_from_slice(&self.rb[..n]);
            loop {
                let l = &mut self.links[i];
                match proto::decode(&mut l.rbuf, MAX_FRAME) {
                    Ok(Some(f)) => {
                        if !self.on_frame(i, f) {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let l = &mut self.links[i];
                        l.conn.wbuf.extend_from_slice(&proto::link_error(
                            e.link_error_code(),
                            "bad frame",
                        ));
                        let _ = l.conn.flush(&self.st);
                        l.conn.close();
                        return self
                            .st
                            .fail(format!("ringgate sent a malformed frame on a link: {e}"));
                    }
                }
            }
        }
    }

    /// Handles one frame from ringgate; false if the link is finished.
    fn on_frame(&mut self, i: usize, f: Frame) -> bool {
        let broadcast = self.plan.broadcast;
        let l = &mut self.links[i];
        if l.acked.is_none() {
            let (version, max_version, core, workers, instance) = match f {
                Frame::Hello {
                    version,
                    max_version,
                    core,
                    workers,
                    instance,
                } => (version, max_version, core, workers, instance),
                other => {
                    l.conn.close();
                    self.st.fail(format!(
                        "ringgate opened a link with {:?} instead of HELLO",
                        other.frame_type()
                    ));
                    return false;
                }
            };
            if !(version..=max_version).contains(&FANOUT_VERSION) {
                l.conn.wbuf.extend_from_slice(&proto::link_error(
                    proto::link_code::UNSUPPORTED_VERSION,
                    "ringgate-load fanout needs protocol version 2",
                ));
                let _ = l.conn.flush(&self.st);
                l.conn.close();
                self.st.fail(format!(
                    "ringgate offers protocol version{} {version}{}, but fan-out needs version 2 \
                     (JOIN, PUBLISH, BROADCAST): this ringgate predates it",
                    if version == max_version { "" } else { "s" },
                    if version == max_version {
                        String::new()
                    } else {
                        format!(" to {max_version}")
                    }
                ));
                return false;
            }
            l.conn
                .wbuf
                .extend_from_slice(&proto::hello_ack(FANOUT_VERSION, "ringgate-load"));
            l.acked = Some(Instant::now());
            l.core = core;
            if self.seen.insert((instance.clone(), core)) {
                let mut inst = self.st.instances.lock().unwrap_or_else(|e| e.into_inner());
                if !inst.contains(&instance) {
                    inst.push(instance);
                    self.st
                        .links_expected
                        .fetch_add(u64::from(workers), Ordering::SeqCst);
                }
            }
            self.st.links_up.fetch_add(1, Ordering::SeqCst);
            self.st.poke();
            return true;
        }
        match f {
            Frame::Open { session, open } => {
                l.opens += 1;
                self.st.opens.fetch_add(1, Ordering::Relaxed);
                let Some(room) = fanout::room_of_target(&open.target, self.plan.rooms.max(1))
                else {
                    self.st.refused.fetch_add(1, Ordering::Relaxed);
                    l.conn.wbuf.extend_from_slice(&proto::refuse(
                        session,
                        1008,
                        "no room=<n> in the target",
                    ));
                    return true;
                };
                let name = self.names.get(room as usize).map_or(&[][..], |n| &n[..]);
                match proto::join(session, self.plan.policy.wire(), name) {
                    Ok(join) => l.conn.wbuf.extend_from_slice(&join),
                    Err(e) => {
                        self.st.fail(format!("cannot encode a JOIN: {e}"));
                        return false;
                    }
                }
                l.conn
                    .wbuf
                    .extend_from_slice(&proto::data_frame(session, true, fanout::JOINED));
                if let Some(m) = l.members.get_mut(room as usize) {
                    *m += 1;
                }
                l.sessions.insert(session, room);
                self.st.joins.fetch_add(1, Ordering::Relaxed);
            }
            Frame::Close { session, .. } => {
                if let Some(room) = l.sessions.remove(&session) {
                    if let Some(m) = l.members.get_mut(room as usize) {
                        *m = m.saturating_sub(1);
                    }
                }
            }
            Frame::Data { .. } => {
                self.st.client_data.fetch_add(1, Ordering::Relaxed);
            }
            Frame::Ping(token) => l.conn.wbuf.extend_from_slice(&proto::pong(token)),
            Frame::Pong(_) => {}
            Frame::LinkError { code, message } => {
                let hint = if code == proto::link_code::MALFORMED {
                    format!(
                        " (a ringgate that does not accept the version-2 frames {} answers them so: \
                         is the gateway side of fan-out in this build?)",
                        if broadcast { "JOIN and BROADCAST" } else { "JOIN and PUBLISH" }
                    )
                } else {
                    String::new()
                };
                l.conn.close();
                self.st.fail(format!(
                    "ringgate sent LINK_ERROR {code} ({message:?}) on the link of its core {}{hint}",
                    l.core
                ));
                return false;
            }
            Frame::GoAway { code, reason } => {
                l.conn.close();
                self.st
                    .fail(format!("ringgate sent GOAWAY {code} ({reason:?})"));
                return false;
            }
            other => {
                l.conn.close();
                self.st.fail(format!(
                    "ringgate sent {:?}, which a game server never receives",
                    other.frame_type()
                ));
                return false;
            }
        }
        true
    }

    fn link_lost(&mut self, i: usize, how: &str) {
        let Some(l) = self.links.get_mut(i) else {
            return;
        };
        l.conn.close();
        let Some(acked) = l.acked else {
            // A link that ends before its HELLO is ringgate's retry giving up: not this run's.
            return;
        };
        self.st.links_up.fetch_sub(1, Ordering::SeqCst);
        // ringgate judges HELLO_ACK as soon as it arrives and closes at once if it refuses it.
        let why = if l.opens == 0 && acked.elapsed() < REFUSAL_WINDOW {
            format!(
                "ringgate closed its link (core {}) right after HELLO_ACK 2 without opening a \
                 session: it refused protocol version 2 (a ringgate that speaks only version 1 \
                 logs 'version mismatch'); is the gateway side of fan-out in this build?",
                l.core
            )
        } else {
            format!("lost the link of ringgate's core {}: {how}", l.core)
        };
        self.st.fail(why);
    }

    fn on_publisher_io(&mut self, mask: u32) {
        let Some(p) = &mut self.publisher else {
            return;
        };
        if p.conn.dead {
            return;
        }
        if mask & EV_OUT != 0 && p.conn.queued() > 0 && !p.conn.flush(&self.st) {
            p.conn.close();
            return self
                .st
                .fail("the peer closed the publisher's connection (a write failed)".into());
        }
        if mask & (EV_IN | EV_RDHUP | EV_HUP | EV_ERR) == 0 {
            return;
        }
        loop {
            let n = match net::read(p.conn.fd, &mut self.rb) {
                IoResult::Done(n) => n,
                IoResult::WouldBlock => return,
                IoResult::Eof | IoResult::Err => {
                    p.conn.close();
                    if !self.stopped {
                        self.st
                            .fail("the peer closed the publisher's connection".into());
                    }
                    return;
                }
            };
            p.rbuf.extend_from_slice(&self.rb[..n]);
            let mut pos = 0;
            loop {
                match frame::parse_server_frame(&p.rbuf[pos..], 1 << 20) {
                    Ok(Some(f)) => {
                        let start = pos + f.header_len;
                        let body = p.rbuf.get(start..start + f.payload_len).unwrap_or(&[]);
                        match f.opcode {
                            OpCode::Ping => {
                                let mask = next_rand(&mut self.rng).to_le_bytes();
                                let mask = [mask[0], mask[1], mask[2], mask[3]];
                                let body = body.to_vec();
                                frame::write_client_frame(
                                    &mut p.conn.wbuf,
                                    OpCode::Pong,
                                    &body,
                                    mask,
                                );
                            }
                            OpCode::Close => {
                                let code = body
                                    .first_chunk::<2>()
                                    .map_or(1005, |c| u16::from_be_bytes(*c));
                                p.conn.close();
                                if !self.stopped {
                                    self.st.fail(format!(
                                        "the peer closed the publisher's connection with {code}"
                                    ));
                                }
                                return;
                            }
                            // The peers send the publisher nothing else; whatever it is, it is
                            // not the run's business.
                            _ => {}
                        }
                        pos += f.total_len();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        p.conn.close();
                        return self
                            .st
                            .fail(format!("the peer sent the publisher a bad frame: {e}"));
                    }
                }
            }
            p.rbuf.drain(..pos);
        }
    }
}

fn next_rand(x: &mut u64) -> u64 {
    // xorshift64*: masks need no secrecy here.
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Opens the publisher's WebSocket (`?publish=1`), blocking with `limit` on each step; the socket
/// is returned nonblocking.
fn connect_publisher(target: &Target, limit: Duration) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect_timeout(&target.addr, limit).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    let path = target.request_target(Some("publish=1"), 0, 0);
    let key = "cHVibGlzaGVyLWtleS0wMQ==";
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.host_header
    )
    .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte, so that nothing after the head is read here.
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return Err("upgrade response head too long".into());
        }
        match s.read(&mut byte) {
            Ok(0) => return Err("closed during the upgrade".into()),
            Ok(_) => head.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) if resp.code == Some(101) => {}
        _ => {
            let line = String::from_utf8_lossy(&head);
            return Err(format!(
                "upgrade answered {:?}",
                line.lines().next().unwrap_or("")
            ));
        }
    }
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value);
    if accept != Some(ringgate::ws::accept_key(key.as_bytes()).as_bytes()) {
        return Err("wrong Sec-WebSocket-Accept".into());
    }
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(s)
}
