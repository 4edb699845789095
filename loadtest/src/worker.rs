//! One worker thread: its own epoll instance, its share of the connections as explicit state
//! machines over nonblocking sockets (connect, upgrade, echo traffic, close handshake), and its own
//! counters and histograms, harvested by the controller on command.
//!
//! Nothing is shared with other workers. The controller talks to a worker through a channel of
//! [`Cmd`]s plus an eventfd to wake it, and the worker answers with [`Event`]s.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use crate::control::{Cmd, Event, Input};
use crate::fanout::{self, Order, Policy, Shared, Verdict};
use crate::frame::{self, OpCode};
use crate::net::{self, Epoll, IoResult, EV_ERR, EV_HUP, EV_IN, EV_OUT, EV_RDHUP};
use crate::payload::Pattern;
use crate::stats::Snapshot;
use crate::target::Target;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Echo,
    Idle,
    Handshake,
    Churn,
    Fanout,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Idle => "idle",
            Mode::Handshake => "handshake",
            Mode::Churn => "churn",
            Mode::Fanout => "fanout",
        }
    }

    fn sends(self) -> bool {
        matches!(self, Mode::Echo | Mode::Churn)
    }

    /// Whether connections are opened before the measured window (echo, idle, fanout) or in it.
    pub fn connects_in_setup(self) -> bool {
        matches!(self, Mode::Echo | Mode::Idle | Mode::Fanout)
    }
}

/// Everything a worker needs to know about the run, shared by all workers of a process.
#[derive(Debug)]
pub struct Plan {
    pub mode: Mode,
    pub target: Target,
    pub query: Option<String>,
    /// `NAME: VALUE` templates added to every upgrade request (checked at start).
    pub headers: Vec<String>,
    pub proc_index: usize,
    /// Payload size in bytes (echo, churn).
    pub size: usize,
    /// Messages in flight per connection (closed loop); the cap per connection in open loop.
    pub depth: usize,
    pub text: bool,
    /// Open-loop: total messages per second of the whole run (all processes); `None` = closed loop.
    pub rate: Option<f64>,
    /// Total connections (or workers) of the whole run, to split the rate.
    pub total_items: u64,
    pub timeout_ns: u64,
    pub connect_timeout_ns: u64,
    pub close_timeout_ns: u64,
    pub lifetime_ns: u64,
    /// Connections per source address; `None` = do not bind a source address.
    pub per_source: Option<u64>,
    /// Connects (and upgrades) in progress at once, per worker.
    pub max_connecting: usize,
    pub max_message: usize,
    /// Fan-out: the rooms and what the members must see; `None` for the other modes.
    pub fanout: Option<FanoutPlan>,
    /// Fan-out: how long to wait after a wake-up that found few connections ready (0: never).
    pub coalesce_ns: u64,
}

/// What the members of a fan-out run do and must receive.
#[derive(Debug)]
pub struct FanoutPlan {
    pub rooms: u32,
    /// Every client follows the one broadcast stream instead of its room's.
    pub broadcast: bool,
    /// ringgate mode: each client also names its user (`user=u{i}`), which ringgate routes by.
    pub ringgate: bool,
    pub policy: Policy,
    /// How many messages each stream has published, kept by the publishing side.
    pub shared: Arc<Shared>,
}

/// The share of one worker: global item indices (connections, churn slots or handshake workers).
pub struct Assignment {
    pub unit: usize,
    pub items: Vec<u64>,
    /// This worker's id over the whole run and the number of workers, to number connect attempts.
    pub global_id: u64,
    pub global_workers: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// No socket; waiting to be (re)connected.
    Idle,
    Connecting,
    Handshaking,
    Open,
    /// A close frame was sent or received; waiting for the rest of the close handshake or EOF.
    Closing,
    /// Finished for good.
    Done,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Setup,
    Running,
    Draining,
    Closing,
}

struct Conn {
    fd: RawFd,
    gen: u32,
    st: St,
    /// Global index (connection, churn slot or handshake worker): `{i}`, fill pattern, user.
    idx: u64,
    /// When the current connect attempt started.
    started: u64,
    /// Connect/upgrade deadline, close deadline, or (churn, open) end of life.
    deadline: u64,
    accept: String,
    /// Bytes of an incomplete frame (or response head) left over from the last read.
    rleft: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    /// Send timestamps of the messages in flight, oldest first.
    inflight: VecDeque<u64>,
    send_seq: u64,
    recv_seq: u64,
    /// Echo bytes that did not arrive as whole messages (TCP bridges), checked as a stream.
    stream: Vec<u8>,
    frag: Vec<u8>,
    /// The opcode of the fragmented message being reassembled, if any.
    frag_op: Option<OpCode>,
    sending: bool,
    close_sent: bool,
    close_recv: bool,
    dirty: bool,
    /// Fan-out: upgraded, waiting for "joined" (counted in `Worker::joining`).
    joining: bool,
    /// Fan-out: "joined" received; the order of its stream so far.
    joined: bool,
    order: Order,
}

impl Conn {
    fn new(idx: u64) -> Conn {
        Conn {
            fd: -1,
            gen: 0,
            st: St::Idle,
            idx,
            started: 0,
            deadline: 0,
            accept: String::new(),
            rleft: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            inflight: VecDeque::new(),
            send_seq: 0,
            recv_seq: 0,
            stream: Vec::new(),
            frag: Vec::new(),
            frag_op: None,
            sending: false,
            close_sent: false,
            close_recv: false,
            dirty: false,
            joining: false,
            joined: false,
            order: Order::default(),
        }
    }
}

const TOKEN_WAKE: u64 = u64::MAX;
const TOKEN_TIMER: u64 = u64::MAX - 1;
const SWEEP_NS: u64 = 20_000_000;
const RETRY_NS: u64 = 10_000_000;
const MAX_HEAD: usize = 16 * 1024;
/// With `coalesce_ns`, a wake-up that found fewer ready connections than this waits before the
/// next one.
const COALESCE_BELOW: usize = 64;

/// How a connection ended, for the counters and for what comes next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Our close handshake completed (or the run is over).
    Clean,
    /// An error, already counted.
    Failed,
}

pub struct Worker {
    plan: Arc<Plan>,
    unit: usize,
    global_id: u64,
    global_workers: u64,
    ep: Epoll,
    wake_fd: RawFd,
    timer_fd: RawFd,
    cmds: Receiver<Cmd>,
    events: Sender<Input>,
    slots: Vec<Conn>,
    phase: Phase,
    snap: Snapshot,
    queue: VecDeque<usize>,
    connecting: usize,
    open: usize,
    active: usize,
    /// Fan-out: connections upgraded but not yet told "joined".
    joining: usize,
    rb: Vec<u8>,
    dirty: Vec<usize>,
    pattern: Pattern,
    rng: u64,
    attempts: u64,
    ready_sent: bool,
    drained_sent: bool,
    pacer: Option<Pacer>,
    rr: usize,
    close_deadline: u64,
    next_sweep: u64,
    finished: bool,
}

struct Pacer {
    next: f64,
    interval: f64,
    armed: u64,
}

impl Worker {
    pub fn new(
        plan: Arc<Plan>,
        asg: Assignment,
        wake_fd: RawFd,
        cmds: Receiver<Cmd>,
        events: Sender<Input>,
    ) -> std::io::Result<Worker> {
        let ep = Epoll::new()?;
        let timer_fd = net::timerfd()?;
        ep.add_with(wake_fd, TOKEN_WAKE, EV_IN | libc::EPOLLET as u32)?;
        ep.add_with(timer_fd, TOKEN_TIMER, EV_IN | libc::EPOLLET as u32)?;
        let rb_len = (64 * 1024).max(4 * (plan.size + 14));
        let pattern = Pattern::new(plan.size, plan.text);
        Ok(Worker {
            unit: asg.unit,
            global_id: asg.global_id,
            global_workers: asg.global_workers.max(1),
            ep,
            wake_fd,
            timer_fd,
            cmds,
            events,
            slots: asg.items.iter().map(|&i| Conn::new(i)).collect(),
            phase: Phase::Setup,
            snap: Snapshot::default(),
            queue: VecDeque::new(),
            connecting: 0,
            open: 0,
            active: 0,
            joining: 0,
            rb: vec![0; rb_len],
            dirty: Vec::new(),
            pattern,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (asg.global_id + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            attempts: 0,
            ready_sent: false,
            drained_sent: false,
            pacer: None,
            rr: 0,
            close_deadline: 0,
            next_sweep: 0,
            finished: false,
            plan,
        })
    }

    fn send_event(&self, ev: Event) {
        let _ = self.events.send(Input::Event(self.unit, ev));
    }

    pub fn run(mut self) {
        if self.plan.mode.connects_in_setup() {
            self.queue.extend(0..self.slots.len());
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            self.start_connects();
            self.check_progress();
            if self.finished {
                break;
            }
            let now = net::mono_ns();
            let timeout_ms = (self.next_sweep.saturating_sub(now) / 1_000_000).min(50) as i32;
            let n = self.ep.wait(&mut events, timeout_ms);
            for ev in &events[..n] {
                let (token, mask) = (ev.u64, ev.events);
                match token {
                    TOKEN_WAKE => {
                        net::drain_counter(self.wake_fd);
                        while let Ok(cmd) = self.cmds.try_recv() {
                            self.command(cmd);
                        }
                    }
                    TOKEN_TIMER => net::drain_counter(self.timer_fd),
                    _ => {
                        let slot = (token & 0xFFFF_FFFF) as usize;
                        let gen = (token >> 32) as u32;
                        if slot < self.slots.len() && self.slots[slot].gen == gen {
                            self.on_io(slot, mask);
                        }
                    }
                }
            }
            if self.pacer.is_some() {
                self.pace();
            }
            self.flush_dirty();
            let now = net::mono_ns();
            if now >= self.next_sweep {
                self.sweep(now);
                self.next_sweep = now + SWEEP_NS;
            }
            if n > 0 && n < COALESCE_BELOW && self.plan.coalesce_ns > 0 {
                // Fewer wake-ups, each finding more connections ready: a context switch per few
                // messages is most of the harness's CPU when a server sends to thousands of
                // clients one by one. What arrives meanwhile is timed up to this much late; what
                // woke this turn was timed already.
                std::thread::sleep(std::time::Duration::from_nanos(self.plan.coalesce_ns));
            }
        }
        let snap = self.take_snapshot();
        self.send_event(Event::Closed {
            snap: Box::new(snap),
        });
        net::close(self.timer_fd);
    }

    fn take_snapshot(&mut self) -> Snapshot {
        let mut s = std::mem::take(&mut self.snap);
        s.open = self.open as u64;
        s.connecting = self.connecting as u64;
        s
    }

    fn command(&mut self, cmd: Cmd) {
        let now = net::mono_ns();
        match cmd {
            Cmd::Harvest(tick) => {
                let snap = self.take_snapshot();
                self.send_event(Event::Harvest {
                    tick,
                    snap: Box::new(snap),
                });
            }
            Cmd::Go if self.phase == Phase::Setup => {
                self.phase = Phase::Running;
                match self.plan.mode {
                    Mode::Echo => {
                        if let Some(rate) = self.plan.rate {
                            let share = rate * self.slots.len() as f64
                                / self.plan.total_items.max(1) as f64;
                            if share > 0.0 {
                                self.pacer = Some(Pacer {
                                    next: now as f64,
                                    interval: 1e9 / share,
                                    armed: 0,
                                });
                            }
                        }
                        for s in 0..self.slots.len() {
                            if self.slots[s].st == St::Open {
                                self.slots[s].sending = true;
                                self.refill(s, now);
                            }
                        }
                    }
                    Mode::Handshake | Mode::Churn => self.queue.extend(0..self.slots.len()),
                    Mode::Idle | Mode::Fanout => {}
                }
            }
            Cmd::Drain if self.phase < Phase::Draining => {
                self.phase = Phase::Draining;
                self.pacer = None;
                net::timerfd_set(self.timer_fd, 0);
                self.queue.clear();
                for c in &mut self.slots {
                    c.sending = false;
                }
            }
            Cmd::Close if self.phase < Phase::Closing => {
                self.phase = Phase::Closing;
                self.pacer = None;
                self.queue.clear();
                self.close_deadline = now + self.plan.close_timeout_ns;
                for s in 0..self.slots.len() {
                    let c = &mut self.slots[s];
                    c.sending = false;
                    match c.st {
                        St::Open => {
                            // Whatever is still unanswered now never will be.
                            self.snap.counters.errors.timeout += c.inflight.len() as u64;
                            c.inflight.clear();
                            self.settle_fanout(s);
                            self.initiate_close(s, now, 1000);
                        }
                        St::Connecting | St::Handshaking => self.finish(s, End::Clean, now),
                        St::Idle => c.st = St::Done,
                        St::Closing | St::Done => {}
                    }
                }
            }
            _ => {}
        }
    }

    fn check_progress(&mut self) {
        if !self.ready_sent && self.queue.is_empty() && self.connecting == 0 && self.joining == 0 {
            self.ready_sent = true;
            self.send_event(Event::Ready {
                open: self.open as u64,
            });
        }
        if self.phase == Phase::Draining && !self.drained_sent {
            let fp = self.plan.fanout.as_ref();
            let drained = self.slots.iter().all(|c| match c.st {
                St::Idle | St::Done => true,
                St::Open => match fp {
                    // Every member has what its stream published (or was told it skipped it).
                    Some(fp) if c.joined => {
                        let (stream, _) = fanout::stream_of(c.idx, fp.rooms, fp.broadcast);
                        c.order.caught_up(fp.shared.published(stream))
                    }
                    _ => c.inflight.is_empty(),
                },
                St::Connecting | St::Handshaking | St::Closing => false,
            });
            if drained {
                self.drained_sent = true;
                self.send_event(Event::Drained);
            }
        }
        if self.phase == Phase::Closing {
            if self.active == 0 {
                self.finished = true;
            } else if net::mono_ns() > self.close_deadline + 1_000_000_000 {
                for s in 0..self.slots.len() {
                    if self.slots[s].fd >= 0 {
                        self.snap.counters.close_timeouts += 1;
                        self.finish(s, End::Clean, 0);
                    }
                }
                self.finished = true;
            }
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn start_connects(&mut self) {
        while self.connecting < self.plan.max_connecting {
            let Some(s) = self.queue.pop_front() else {
                break;
            };
            if self.slots[s].st == St::Idle {
                self.connect(s);
            }
        }
    }

    fn connect(&mut self, s: usize) {
        let now = net::mono_ns();
        let key = match self.plan.mode {
            Mode::Echo | Mode::Idle | Mode::Fanout => self.slots[s].idx,
            Mode::Handshake | Mode::Churn => self.attempts * self.global_workers + self.global_id,
        };
        self.attempts += 1;
        let source = match (self.plan.per_source, self.plan.target.addr.ip()) {
            (Some(per), IpAddr::V4(_)) => Some(IpAddr::V4(net::source_addr(key, per))),
            _ => None,
        };
        self.snap.counters.connect_attempts += 1;
        let fd = match net::connect_nonblocking(self.plan.target.addr, source) {
            Ok(fd) => fd,
            Err(_) => {
                self.snap.counters.errors.connect += 1;
                self.after_end(s, End::Failed, now);
                return;
            }
        };
        let c = &mut self.slots[s];
        let token = s as u64 | (u64::from(c.gen) << 32);
        if self.ep.add(fd, token).is_err() {
            net::close(fd);
            self.snap.counters.errors.connect += 1;
            self.after_end(s, End::Failed, now);
            return;
        }
        c.fd = fd;
        c.st = St::Connecting;
        c.started = now;
        c.deadline = now + self.plan.connect_timeout_ns;
        c.close_sent = false;
        c.close_recv = false;
        c.send_seq = 0;
        c.recv_seq = 0;
        c.joining = false;
        c.joined = false;
        c.order = Order::default();
        self.connecting += 1;
        self.active += 1;
    }

    fn handshake_request(&mut self, s: usize) {
        let mut key_bytes = [0u8; 16];
        key_bytes[..8].copy_from_slice(&self.next_rand().to_le_bytes());
        key_bytes[8..].copy_from_slice(&self.next_rand().to_le_bytes());
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let idx = self.slots[s].idx;
        let query = match &self.plan.fanout {
            Some(fp) => Some(fanout::query_template(
                idx,
                fp.rooms,
                fp.ringgate,
                self.plan.query.as_deref(),
            )),
            None => self.plan.query.clone(),
        };
        let target = self
            .plan
            .target
            .request_target(query.as_deref(), idx, self.plan.proc_index);
        let extra = crate::target::expand_headers(
            &self.plan.headers,
            self.slots[s].idx,
            self.plan.proc_index,
        );
        let c = &mut self.slots[s];
        c.accept = ringgate::ws::accept_key(key.as_bytes());
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n",
            self.plan.target.host_header
        );
        c.wbuf.extend_from_slice(req.as_bytes());
    }

    fn on_io(&mut self, s: usize, mask: u32) {
        match self.slots[s].st {
            St::Connecting => {
                if mask & (EV_OUT | EV_ERR | EV_HUP) == 0 {
                    return;
                }
                let err = net::take_error(self.slots[s].fd);
                if err != 0 || mask & (EV_ERR | EV_HUP) != 0 {
                    self.snap.counters.errors.connect += 1;
                    self.finish(s, End::Failed, net::mono_ns());
                    return;
                }
                let waited = net::mono_ns().saturating_sub(self.slots[s].started);
                self.snap.tcp_connect.record(waited / 1000);
                self.slots[s].st = St::Handshaking;
                self.handshake_request(s);
                self.flush(s);
            }
            St::Handshaking | St::Open | St::Closing => {
                if mask & EV_OUT != 0 && self.slots[s].wpos < self.slots[s].wbuf.len() {
                    self.flush(s);
                    if self.slots[s].fd < 0 {
                        return;
                    }
                }
                if mask & (EV_IN | EV_RDHUP | EV_HUP | EV_ERR) != 0 {
                    self.read(s, mask & (EV_RDHUP | EV_HUP | EV_ERR) != 0);
                }
            }
            St::Idle | St::Done => {}
        }
    }

    /// Reads until the socket is drained, processing what arrives. A short read means drained,
    /// unless the peer's FIN (or an error) was already reported with this event: then the socket
    /// is read until EOF, since no further edge will announce it.
    fn read(&mut self, s: usize, until_eof: bool) {
        let mut rb = std::mem::take(&mut self.rb);
        let gen = self.slots[s].gen;
        loop {
            let c = &mut self.slots[s];
            let left = c.rleft.len();
            if rb.len() < left + 16 * 1024 {
                rb.resize(left + 64 * 1024, 0);
            }
            rb[..left].copy_from_slice(&c.rleft);
            c.rleft.clear();
            let space = rb.len() - left;
            match net::read(c.fd, &mut rb[left..]) {
                IoResult::Done(n) => {
                    let now = net::mono_ns();
                    let total = left + n;
                    let consumed = self.process(s, &rb[..total], now);
                    let c = &mut self.slots[s];
                    if c.gen != gen || c.fd < 0 {
                        break;
                    }
                    c.rleft.extend_from_slice(&rb[consumed..total]);
                    self.after_read(s, now);
                    if self.slots[s].fd < 0 || (n < space && !until_eof) {
                        break;
                    }
                }
                IoResult::WouldBlock => {
                    c.rleft.extend_from_slice(&rb[..left]);
                    break;
                }
                IoResult::Eof => {
                    self.on_eof(s);
                    break;
                }
                IoResult::Err => {
                    let now = net::mono_ns();
                    if self.slots[s].close_recv {
                        self.snap.counters.closes += 1;
                        self.finish(s, End::Clean, now);
                    } else {
                        self.lost(s, 1006, now);
                    }
                    break;
                }
            }
        }
        if rb.len() > 256 * 1024 + 4 * (self.plan.size + 14) {
            rb.truncate((64 * 1024).max(4 * (self.plan.size + 14)));
            rb.shrink_to_fit();
        }
        self.rb = rb;
    }

    /// The server closed or reset a connection we had not closed.
    fn lost(&mut self, s: usize, code: u16, now: u64) {
        let closing_run = self.phase == Phase::Closing;
        let c = &self.slots[s];
        if !(closing_run || c.close_sent) {
            self.snap.counters.errors.closed += 1;
            *self.snap.counters.close_codes.entry(code).or_default() += 1;
        }
        self.finish(s, End::Failed, now);
    }

    fn on_eof(&mut self, s: usize) {
        let now = net::mono_ns();
        let c = &self.slots[s];
        if c.st == St::Closing && c.close_recv {
            if c.close_sent {
                self.snap.counters.closes += 1;
            }
            self.finish(s, End::Clean, now);
        } else if c.st == St::Handshaking {
            self.snap.counters.errors.handshake += 1;
            self.finish(s, End::Failed, now);
        } else {
            self.lost(s, 1006, now);
        }
    }

    /// Processes bytes read from connection `s` and returns how many were consumed; the rest is an
    /// incomplete frame. If the connection ended, returns anything (the caller checks).
    fn process(&mut self, s: usize, data: &[u8], now: u64) -> usize {
        let mut pos = 0;
        if self.slots[s].st == St::Handshaking {
            let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                if data.len() > MAX_HEAD {
                    self.snap.counters.errors.handshake += 1;
                    self.finish(s, End::Failed, now);
                }
                return 0;
            };
            if !self.on_response(s, &data[..end + 4], now) {
                return 0;
            }
            pos = end + 4;
        }
        while matches!(self.slots[s].st, St::Open | St::Closing) && pos < data.len() {
            match frame::parse_server_frame(&data[pos..], self.plan.max_message) {
                Ok(None) => break,
                Err(_) => {
                    self.snap.counters.errors.protocol += 1;
                    self.finish(s, End::Failed, now);
                    return 0;
                }
                Ok(Some(f)) => {
                    let start = pos + f.header_len;
                    let payload = &data[start..start + f.payload_len];
                    pos += f.total_len();
                    if !self.on_frame(s, f.fin, f.opcode, payload, now) {
                        return 0;
                    }
                }
            }
        }
        if self.slots[s].st == St::Closing && self.slots[s].close_recv {
            // Nothing after the close frame matters.
            return data.len();
        }
        pos
    }

    /// Checks the upgrade response; returns whether the connection is now open.
    fn on_response(&mut self, s: usize, head: &[u8], now: u64) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let ok = match resp.parse(head) {
            Ok(httparse::Status::Complete(_)) => match resp.code {
                Some(101) => {
                    let accept = resp
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                        .map(|h| h.value);
                    if accept == Some(self.slots[s].accept.as_bytes()) {
                        true
                    } else {
                        self.snap.counters.errors.handshake += 1;
                        false
                    }
                }
                Some(code) => {
                    *self
                        .snap
                        .counters
                        .errors
                        .handshake_status
                        .entry(code)
                        .or_default() += 1;
                    false
                }
                None => {
                    self.snap.counters.errors.handshake += 1;
                    false
                }
            },
            _ => {
                self.snap.counters.errors.handshake += 1;
                false
            }
        };
        if !ok {
            self.finish(s, End::Failed, now);
            return false;
        }
        self.snap.counters.connects += 1;
        self.connecting -= 1;
        self.open += 1;
        let phase = self.phase;
        let mode = self.plan.mode;
        let lifetime = if mode == Mode::Churn {
            // Uniform in [0.5, 1.5) x lifetime, so the connections do not end in step.
            let r = (self.next_rand() >> 11) as f64 / (1u64 << 53) as f64;
            (self.plan.lifetime_ns as f64 * (0.5 + r)) as u64
        } else {
            0
        };
        let c = &mut self.slots[s];
        self.snap.handshake.record((now - c.started) / 1000);
        c.st = St::Open;
        c.deadline = now + lifetime;
        c.sending = mode.sends() && phase == Phase::Running;
        match mode {
            Mode::Handshake => self.initiate_close(s, now, 1000),
            Mode::Echo | Mode::Churn => self.refill(s, now),
            Mode::Idle => {}
            Mode::Fanout => {
                // The server says "joined" once the client is in its room; until then the run
                // cannot start.
                c.joining = true;
                c.deadline = now + self.plan.connect_timeout_ns;
                self.joining += 1;
            }
        }
        true
    }

    /// Handles one frame; returns false if the connection ended.
    fn on_frame(&mut self, s: usize, fin: bool, op: OpCode, payload: &[u8], now: u64) -> bool {
        let c = &mut self.slots[s];
        match op {
            OpCode::Text | OpCode::Binary if fin && c.frag_op.is_none() => {
                self.on_message(s, op, payload, now)
            }
            OpCode::Text | OpCode::Binary if c.frag_op.is_none() => {
                c.frag_op = Some(op);
                c.frag.extend_from_slice(payload);
            }
            OpCode::Continuation if c.frag_op.is_some() => {
                c.frag.extend_from_slice(payload);
                if fin {
                    let op = c.frag_op.take().unwrap();
                    let msg = std::mem::take(&mut c.frag);
                    self.on_message(s, op, &msg, now);
                    let c = &mut self.slots[s];
                    if c.frag.is_empty() && msg.capacity() <= 64 * 1024 {
                        c.frag = msg;
                        c.frag.clear();
                    }
                }
            }
            OpCode::Ping => {
                if !c.close_sent {
                    let mask = self.next_rand().to_le_bytes();
                    let c = &mut self.slots[s];
                    frame::write_client_frame(
                        &mut c.wbuf,
                        OpCode::Pong,
                        payload,
                        [mask[0], mask[1], mask[2], mask[3]],
                    );
                    self.mark_dirty(s);
                }
            }
            OpCode::Pong => {}
            OpCode::Close => {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                };
                c.close_recv = true;
                if c.close_sent {
                    // The answer to our close: the server closes the TCP connection next.
                    c.st = St::Closing;
                } else {
                    if self.phase != Phase::Closing {
                        self.snap.counters.errors.closed += 1;
                        *self.snap.counters.close_codes.entry(code).or_default() += 1;
                    }
                    let answer = if code == 1005 { None } else { Some(code) };
                    self.send_close(s, answer, now);
                }
                return true;
            }
            _ => {
                // A continuation without a message, or a new message inside a fragmented one.
                self.snap.counters.errors.protocol += 1;
                self.finish(s, End::Failed, now);
                return false;
            }
        }
        true
    }

    fn on_message(&mut self, s: usize, op: OpCode, payload: &[u8], now: u64) {
        if self.plan.mode == Mode::Fanout {
            self.on_published(s, op, payload, now);
            return;
        }
        let counters = &mut self.snap.counters;
        if !self.plan.mode.sends() {
            counters.errors.mismatch += 1;
            return;
        }
        counters.bytes_recv += payload.len() as u64;
        let want_op = frame::data_opcode(self.plan.text);
        if op != want_op {
            counters.errors.mismatch += 1;
        }
        let size = self.pattern.size();
        let c = &mut self.slots[s];
        if c.stream.is_empty() && payload.len() == size {
            verify(c, &self.pattern, &mut self.snap, payload, now);
            return;
        }
        // The message boundaries were not kept: check the bytes as a stream of payloads.
        self.snap.counters.errors.boundary += 1;
        c.stream.extend_from_slice(payload);
        let mut stream = std::mem::take(&mut c.stream);
        let mut off = 0;
        while stream.len() - off >= size {
            verify(
                c,
                &self.pattern,
                &mut self.snap,
                &stream[off..off + size],
                now,
            );
            off += size;
        }
        stream.drain(..off);
        c.stream = stream;
    }

    /// Fan-out: "joined", then the messages of the member's stream, each checked for content, room
    /// and order.
    fn on_published(&mut self, s: usize, op: OpCode, payload: &[u8], now: u64) {
        let Some(fp) = &self.plan.fanout else {
            return;
        };
        let size = self.plan.size;
        let counters = &mut self.snap.counters;
        counters.bytes_recv += payload.len() as u64;
        let c = &mut self.slots[s];
        if op == OpCode::Text && payload == fanout::JOINED {
            if c.joining {
                c.joining = false;
                c.joined = true;
                self.joining -= 1;
                counters.joined += 1;
            } else {
                counters.errors.mismatch += 1;
            }
            return;
        }
        let (stream, room) = fanout::stream_of(c.idx, fp.rooms, fp.broadcast);
        let msg = match fanout::parse(payload, size) {
            Ok(m) if op == OpCode::Binary && c.joined => m,
            _ => {
                counters.errors.mismatch += 1;
                return;
            }
        };
        // Another room's message, or a sequence number nobody published yet.
        if msg.room != room || msg.seq >= fp.shared.published(stream) {
            counters.errors.mismatch += 1;
            return;
        }
        match c.order.accept(msg.seq) {
            Verdict::Next => {}
            Verdict::Gap { skipped } => {
                if fp.policy == Policy::Close {
                    counters.errors.lost += skipped;
                } else {
                    counters.missing += skipped;
                }
            }
            Verdict::Duplicate => {
                counters.errors.duplicate += 1;
                return;
            }
            Verdict::Backwards => {
                counters.errors.out_of_order += 1;
                return;
            }
        }
        counters.delivered += 1;
        self.snap.rtt.record(now.saturating_sub(msg.ts) / 1000);
    }

    /// Fan-out, at the end of the run: what member `s` is still owed of its stream.
    fn settle_fanout(&mut self, s: usize) {
        let Some(fp) = &self.plan.fanout else {
            return;
        };
        let c = &self.slots[s];
        if !c.joined {
            return;
        }
        let (stream, _) = fanout::stream_of(c.idx, fp.rooms, fp.broadcast);
        let published = fp.shared.published(stream);
        let tail = c.order.finish(published, fp.policy);
        let counters = &mut self.snap.counters;
        counters.expected += published;
        if fp.policy == Policy::Close {
            counters.errors.lost += tail.missing;
        } else {
            counters.missing += tail.missing;
        }
        if tail.stale {
            counters.errors.stale_end += 1;
        }
    }

    /// After a read: top up the window (closed loop), or end a churn connection whose time is up.
    fn after_read(&mut self, s: usize, now: u64) {
        self.refill(s, now);
        let c = &self.slots[s];
        if self.plan.mode == Mode::Churn
            && c.st == St::Open
            && !c.sending
            && c.inflight.is_empty()
            && (now >= c.deadline || self.phase >= Phase::Draining)
        {
            self.initiate_close(s, now, 1000);
        }
        if self.slots[s].fd >= 0 && self.slots[s].wpos < self.slots[s].wbuf.len() {
            self.flush(s);
        }
    }

    /// Closed loop: sends until `depth` messages are in flight.
    fn refill(&mut self, s: usize, now: u64) {
        if self.plan.rate.is_some() && self.plan.mode == Mode::Echo {
            return;
        }
        let c = &self.slots[s];
        if c.st != St::Open || !c.sending {
            return;
        }
        let missing = self.plan.depth.saturating_sub(c.inflight.len());
        for _ in 0..missing {
            self.send_message(s, now);
        }
        if missing > 0 {
            self.mark_dirty(s);
        }
    }

    fn send_message(&mut self, s: usize, ts: u64) {
        let mask = self.next_rand().to_le_bytes();
        let mask = [mask[0], mask[1], mask[2], mask[3]];
        let op = frame::data_opcode(self.plan.text);
        let size = self.pattern.size();
        let c = &mut self.slots[s];
        let start = frame::begin_client_frame(&mut c.wbuf, op, size, mask);
        self.pattern.write(&mut c.wbuf, c.idx, c.send_seq, ts);
        frame::mask_from(&mut c.wbuf, start, mask);
        c.send_seq += 1;
        c.inflight.push_back(ts);
        self.snap.counters.msgs_sent += 1;
        self.snap.counters.bytes_sent += size as u64;
    }

    fn send_close(&mut self, s: usize, code: Option<u16>, now: u64) {
        let mask = self.next_rand().to_le_bytes();
        let c = &mut self.slots[s];
        let payload = code.map(|c| c.to_be_bytes());
        frame::write_client_frame(
            &mut c.wbuf,
            OpCode::Close,
            payload.as_ref().map_or(&[][..], |p| &p[..]),
            [mask[0], mask[1], mask[2], mask[3]],
        );
        c.close_sent = true;
        c.sending = false;
        if c.st == St::Open {
            self.open -= 1;
        }
        c.st = St::Closing;
        c.deadline = now + self.plan.close_timeout_ns;
        self.mark_dirty(s);
    }

    fn initiate_close(&mut self, s: usize, now: u64, code: u16) {
        self.send_close(s, Some(code), now);
        self.flush(s);
    }

    fn mark_dirty(&mut self, s: usize) {
        let c = &mut self.slots[s];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(s);
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &s in &dirty {
            self.slots[s].dirty = false;
            if self.slots[s].fd >= 0 {
                self.flush(s);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Writes as much of the send buffer as the socket takes.
    fn flush(&mut self, s: usize) {
        let c = &mut self.slots[s];
        while c.wpos < c.wbuf.len() {
            match net::send(c.fd, &c.wbuf[c.wpos..]) {
                IoResult::Done(n) => c.wpos += n,
                IoResult::WouldBlock => return,
                IoResult::Eof | IoResult::Err => {
                    let now = net::mono_ns();
                    if c.close_recv {
                        self.finish(s, End::Clean, now);
                    } else if c.st == St::Handshaking || c.st == St::Connecting {
                        self.snap.counters.errors.connect += 1;
                        self.finish(s, End::Failed, now);
                    } else {
                        self.lost(s, 1006, now);
                    }
                    return;
                }
            }
        }
        c.wbuf.clear();
        c.wpos = 0;
        if c.wbuf.capacity() > 256 * 1024 {
            c.wbuf.shrink_to(64 * 1024);
        }
    }

    /// Open loop: sends every message whose time has come, round robin over the open connections,
    /// stamped with its intended send time (so a late send counts against latency).
    fn pace(&mut self) {
        let now = net::mono_ns();
        let n = self.slots.len();
        let cap = self.plan.depth.max(1);
        let mut budget = 100_000;
        while let Some(p) = &self.pacer {
            if p.next > now as f64 || budget == 0 {
                break;
            }
            budget -= 1;
            let ts = p.next as u64;
            let mut chosen = None;
            for _ in 0..n {
                let s = self.rr % n;
                self.rr = self.rr.wrapping_add(1);
                let c = &self.slots[s];
                if c.st == St::Open && c.sending {
                    chosen = Some(s);
                    break;
                }
            }
            match chosen {
                Some(s) if self.slots[s].inflight.len() < cap => {
                    self.send_message(s, ts);
                    self.mark_dirty(s);
                }
                _ => self.snap.counters.skipped += 1,
            }
            if let Some(p) = &mut self.pacer {
                p.next += p.interval;
            }
        }
        if let Some(p) = &mut self.pacer {
            let at = p.next as u64;
            if at != p.armed {
                p.armed = at;
                net::timerfd_set(self.timer_fd, at.max(1));
            }
        }
    }

    /// Deadlines: connects and upgrades that take too long, echoes that do not come back, close
    /// handshakes that do not finish, churn connections whose life is over, retries due.
    fn sweep(&mut self, now: u64) {
        let timeout = self.plan.timeout_ns;
        for s in 0..self.slots.len() {
            let c = &mut self.slots[s];
            match c.st {
                St::Connecting | St::Handshaking if now > c.deadline => {
                    if c.st == St::Connecting {
                        self.snap.counters.errors.connect += 1;
                    } else {
                        self.snap.counters.errors.handshake += 1;
                    }
                    self.finish(s, End::Failed, now);
                }
                St::Open if c.joining && now > c.deadline => {
                    self.snap.counters.errors.join += 1;
                    self.finish(s, End::Failed, now);
                }
                St::Open => {
                    if let Some(&oldest) = c.inflight.front() {
                        if now.saturating_sub(oldest) > timeout {
                            self.snap.counters.errors.timeout += c.inflight.len() as u64;
                            c.inflight.clear();
                            self.finish(s, End::Failed, now);
                            continue;
                        }
                    }
                    if self.plan.mode == Mode::Churn && c.sending && now >= c.deadline {
                        c.sending = false;
                        if c.inflight.is_empty() {
                            self.initiate_close(s, now, 1000);
                        }
                    }
                }
                St::Closing if now > c.deadline => {
                    self.snap.counters.close_timeouts += 1;
                    self.finish(s, End::Clean, now);
                }
                St::Idle
                    if self.phase == Phase::Running && c.deadline != 0 && now >= c.deadline =>
                {
                    c.deadline = 0;
                    self.queue.push_back(s);
                }
                _ => {}
            }
        }
    }

    /// Closes the socket of connection `s` and decides what comes next for its slot.
    fn finish(&mut self, s: usize, end: End, now: u64) {
        let c = &mut self.slots[s];
        match c.st {
            St::Connecting | St::Handshaking => self.connecting -= 1,
            St::Open => self.open -= 1,
            _ => {}
        }
        if c.fd >= 0 {
            if end == End::Failed || c.st != St::Closing {
                net::abort(c.fd);
            } else {
                net::close(c.fd);
            }
            c.fd = -1;
            self.active -= 1;
        }
        if c.joining {
            c.joining = false;
            self.joining -= 1;
        }
        c.gen = c.gen.wrapping_add(1);
        c.rleft = Vec::new();
        c.wbuf.clear();
        c.wpos = 0;
        if c.wbuf.capacity() > 64 * 1024 {
            c.wbuf = Vec::new();
        }
        c.inflight.clear();
        c.stream.clear();
        c.frag.clear();
        c.frag_op = None;
        c.sending = false;
        c.st = St::Idle;
        self.after_end(s, end, now);
    }

    /// Handshake and churn slots start over while the run is on (at once after a clean end, after
    /// a short pause after an error); other connections are done.
    fn after_end(&mut self, s: usize, end: End, now: u64) {
        let again =
            matches!(self.plan.mode, Mode::Handshake | Mode::Churn) && self.phase == Phase::Running;
        let c = &mut self.slots[s];
        if !again {
            c.st = St::Done;
            return;
        }
        c.st = St::Idle;
        if end == End::Clean {
            c.deadline = 0;
            self.queue.push_back(s);
        } else {
            c.deadline = now + RETRY_NS;
        }
    }
}

/// Checks one echoed payload against what connection `c` sent, and records its latency.
fn verify(c: &mut Conn, pattern: &Pattern, snap: &mut Snapshot, p: &[u8], now: u64) {
    let errors = &mut snap.counters.errors;
    let Some((seq, ts)) = pattern.parse_head(p) else {
        errors.mismatch += 1;
        return;
    };
    if seq < c.recv_seq {
        errors.out_of_order += 1;
        return;
    }
    if seq >= c.send_seq {
        errors.mismatch += 1;
        return;
    }
    if seq > c.recv_seq {
        // Messages were skipped: count once, forget the skipped ones.
        errors.out_of_order += 1;
        for _ in c.recv_seq..seq {
            c.inflight.pop_front();
        }
        c.recv_seq = seq;
    }
    let sent = c.inflight.pop_front();
    c.recv_seq += 1;
    if sent != Some(ts) || !pattern.check_fill(p, c.idx) {
        errors.mismatch += 1;
        return;
    }
    snap.counters.round_trips += 1;
    snap.rtt.record(now.saturating_sub(ts) / 1000);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_with_inflight(pattern: &Pattern, n: u64) -> (Conn, Vec<Vec<u8>>) {
        let mut c = Conn::new(9);
        let mut sent = Vec::new();
        for seq in 0..n {
            let mut p = Vec::new();
            pattern.write(&mut p, c.idx, seq, 1000 + seq);
            c.inflight.push_back(1000 + seq);
            c.send_seq += 1;
            sent.push(p);
        }
        (c, sent)
    }

    #[test]
    fn verify_counts_order_and_content() {
        let pattern = Pattern::new(32, false);
        let mut snap = Snapshot::default();
        let (mut c, sent) = conn_with_inflight(&pattern, 5);
        verify(&mut c, &pattern, &mut snap, &sent[0], 2_000_000);
        assert_eq!(snap.counters.round_trips, 1);
        // Skips message 1: out of order once, and 2 is accepted.
        verify(&mut c, &pattern, &mut snap, &sent[2], 2_000_000);
        assert_eq!(snap.counters.errors.out_of_order, 1);
        assert_eq!(snap.counters.round_trips, 2);
        // A repeat of an old one.
        verify(&mut c, &pattern, &mut snap, &sent[0], 2_000_000);
        assert_eq!(snap.counters.errors.out_of_order, 2);
        // Corrupted fill.
        let mut bad = sent[3].clone();
        bad[20] ^= 0xFF;
        verify(&mut c, &pattern, &mut snap, &bad, 2_000_000);
        assert_eq!(snap.counters.errors.mismatch, 1);
        assert_eq!(c.inflight.len(), 1);
        verify(&mut c, &pattern, &mut snap, &sent[4], 2_000_000);
        assert_eq!(snap.counters.round_trips, 3);
        assert!(c.inflight.is_empty());
        assert_eq!(snap.rtt.0.len(), 3);
    }
}
