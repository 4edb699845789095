//! The client session as a state machine, in the manner of quinn-proto's `Connection`: bytes read
//! from the client, clock ticks, sends from the game server and the end of a write go in; decisions
//! come out (forward this message, answer with a pong, queue a close frame, reset the connection,
//! tell the game server this close code).
//!
//! Owns the rules of one WebSocket session after its upgrade: the message flow, the close handshake
//! in both directions, heartbeat and idle decisions, the backlog rule, and the end-of-session code
//! the game server is told. Imports only the WebSocket codec. Must never touch a socket, a timer,
//! a queue or the clock: time is a number of seconds the driver passes in, and every effect is a
//! value the driver applies (`gateway::receive`, `gateway::write`, `gateway::heartbeat`).
//!
//! Size matters: one lives in every connection, so its state is a few plain fields and the decoder
//! (see `session_stays_small` in the gateway and docs/architecture.md).

use bytes::{Bytes, BytesMut};

use crate::ws::{close_payload, Decoded, Decoder, Message};

#[cfg(test)]
mod tests;

/// The session's timers, in whole seconds of the core's clock.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub ping_interval: u32,
    pub idle_timeout: u32,
    pub close_timeout: u32,
}

/// How the receive side is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    /// A protocol error was answered with a close frame; the rest of the input is meaningless.
    Failed,
    /// The close handshake is complete, or the peer is gone: nothing more is read.
    Done,
}

/// State bits.
const CLOSE_SENT: u8 = 1;
const WRITE_SHUT: u8 = 2;
const UPSTREAM_DONE: u8 = 4;
const ENDED: u8 = 8;

/// What one decoded input asks of the driver.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// A data message of at most the `small` size passed to [`Session::receive`], left in place:
    /// forward `buf[..len]` to the game server, then advance the buffer by `len`.
    SmallData { text: bool, len: usize },
    /// A data message to forward to the game server as it is.
    Data { text: bool, payload: Bytes },
    /// Answer a ping: queue a pong with this payload.
    Pong(Bytes),
    /// The client broke the protocol: close with this code and reason. Nothing more is read.
    Violation { code: u16, reason: String },
    /// The client closed. `echo` is the close frame to queue in answer, if ours was not sent yet;
    /// either way the session ends once it is queued.
    Closed { echo: Option<Bytes> },
    /// A data message over the session's rate limits (`message_rate`, `byte_rate`), consumed. With
    /// `close`, the session reads nothing more and the driver closes it with 1008 "rate limit
    /// exceeded"; otherwise the message was dropped.
    OverRate { close: bool },
}

/// The reason of the close frame of a session over its rate limits.
pub const RATE_LIMITED: &str = "rate limit exceeded";

/// A token bucket's settings: `rate` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub rate: u32,
    pub burst: u32,
}

/// A session's rate limits (each off when `None`) and what happens to a message over them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    /// Messages a second.
    pub messages: Option<Bucket>,
    /// Payload bytes a second.
    pub bytes: Option<Bucket>,
    pub close: bool,
}

/// A session's metering against its [`Rates`]; exists only on sessions that have limits, so an
/// unlimited session pays a pointer. Refilled in whole seconds of the core's clock: for refusing
/// abuse, not for shaping.
struct Meter {
    rates: Rates,
    messages: u64,
    bytes: u64,
    at: u32,
    /// After a dropped message: the clock until which the client is not read at all, so that TCP
    /// holds the rest of a flood in its kernel buffers instead of the core reading it only to
    /// drop it.
    paused_until: u32,
}

impl Meter {
    fn new(rates: Rates, now: u32) -> Meter {
        Meter {
            rates,
            messages: rates.messages.map_or(0, |b| u64::from(b.burst)),
            bytes: rates.bytes.map_or(0, |b| u64::from(b.burst)),
            at: now,
            paused_until: 0,
        }
    }

    /// Takes what a message of `len` bytes costs, if both buckets have it.
    fn admit(&mut self, len: usize, now: u32) -> bool {
        let elapsed = u64::from(now.saturating_sub(self.at));
        self.at = self.at.max(now);
        let refill = |tokens: &mut u64, b: Option<Bucket>| {
            if let Some(b) = b {
                *tokens = tokens
                    .saturating_add(elapsed.saturating_mul(u64::from(b.rate)))
                    .min(u64::from(b.burst));
            }
        };
        refill(&mut self.messages, self.rates.messages);
        refill(&mut self.bytes, self.rates.bytes);
        let len = len as u64;
        let ok = self.rates.messages.is_none_or(|_| self.messages >= 1)
            && self.rates.bytes.is_none_or(|_| self.bytes >= len);
        if ok {
            if self.rates.messages.is_some() {
                self.messages -= 1;
            }
            if self.rates.bytes.is_some() {
                self.bytes -= len;
            }
        }
        ok
    }
}

/// What a due heartbeat asks of the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Nothing now; look again at this time.
    Wait(u32),
    /// Send a ping, and look again at this time.
    Ping(u32),
    /// Silent for `idle_timeout`: close with 1001 "idle timeout" (which arms the close deadline).
    Idle,
    /// Our close was not answered in `close_timeout`: reset the connection.
    CloseTimedOut,
    /// Nothing more to watch: a close deadline has its own entry.
    Retire,
}

/// How a session ended, for the game server.
#[derive(Debug, PartialEq, Eq)]
pub struct End {
    /// Our own code if we closed first (1001, 1008, ...), else the client's (1005 for an empty
    /// close, 1006 if it vanished).
    pub code: u16,
    /// False when the game server already knows (it refused or closed the session, or its link died).
    pub tell_upstream: bool,
}

/// The code the game server learns when the client vanished without a close frame.
pub const VANISHED: u16 = 1006;

pub struct Session {
    decoder: Decoder,
    phase: Phase,
    state: u8,
    /// The close code the client sent (1006 until it says).
    client_code: u16,
    /// The close code we sent, if we closed first.
    sent_code: u16,
    /// Clock (seconds) of the last byte received.
    last_rx: u32,
    /// Clock of the last ping sent.
    last_ping: u32,
    /// Clock by which our close must have been answered.
    close_deadline: u32,
    /// Present only on a session with rate limits.
    meter: Option<Box<Meter>>,
    /// Clock since which the session has held part of a message (`u32::MAX` while it holds none).
    partial_since: u32,
}

impl Session {
    pub fn new(now: u32) -> Session {
        Session {
            decoder: Decoder::new(),
            phase: Phase::Open,
            state: 0,
            client_code: VANISHED,
            sent_code: 0,
            last_rx: now,
            last_ping: now,
            close_deadline: u32::MAX,
            meter: None,
            partial_since: u32::MAX,
        }
    }

    /// A session whose data messages are metered against `rates`.
    pub fn with_rates(now: u32, rates: Rates) -> Session {
        let mut s = Session::new(now);
        if rates.messages.is_some() || rates.bytes.is_some() {
            s.meter = Some(Box::new(Meter::new(rates, now)));
        }
        s
    }

    /// Whether a data message of `len` bytes is within the rate limits; if it is not, what the
    /// driver is told (and, for `close`, the session stops reading).
    fn over_rate(&mut self, len: usize, buf: &mut BytesMut) -> Option<Received> {
        let meter = self.meter.as_mut()?;
        if meter.admit(len, self.last_rx) {
            return None;
        }
        let close = meter.rates.close;
        if close {
            self.phase = Phase::Failed;
            buf.clear();
        } else {
            // The buckets refill in whole seconds: nothing more can pass before the next one.
            meter.paused_until = self.last_rx.saturating_add(1);
        }
        Some(Received::OverRate { close })
    }

    /// Until when the client must not be read (a session over its rate limits with `drop`): the
    /// driver waits instead of reading, and what is already buffered is dropped as it decodes.
    pub fn read_paused_until(&self, now: u32) -> Option<u32> {
        let until = self.meter.as_ref()?.paused_until;
        (until > now).then_some(until)
    }

    fn has(&self, bit: u8) -> bool {
        self.state & bit != 0
    }

    /// When the first heartbeat is due.
    pub fn first_due(&self, t: &Timing) -> u32 {
        self.last_rx + t.ping_interval.min(t.idle_timeout)
    }

    /// Bytes arrived from the client (the idle clock restarts).
    pub fn on_read(&mut self, now: u32) {
        self.last_rx = now;
    }

    /// The client's socket reported its end or failed: nothing more will be read.
    pub fn on_peer_gone(&mut self) {
        self.phase = Phase::Done;
    }

    /// Still reading the client (not done with the close handshake, not gone).
    pub fn is_reading(&self) -> bool {
        self.phase != Phase::Done
    }

    /// Reading messages that matter: a congested link pauses only such a session, since one that
    /// failed or is done reads only to reach the end.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Our close frame is queued; nothing may follow it.
    pub fn close_sent(&self) -> bool {
        self.has(CLOSE_SENT)
    }

    /// Bytes of a fragmented message held by the decoder so far.
    pub fn fragments_held(&self) -> usize {
        self.decoder.fragments_held()
    }

    /// After a read: the session now holds `held` bytes of messages not yet complete. Starts or
    /// ends the clock of [`Session::too_slow`]; a message completed in the read restarted it
    /// already, so that a client whose reads keep ending mid-frame (a stream of small messages)
    /// is timed per message, not as one endless one.
    pub fn on_partial(&mut self, held: usize, now: u32) {
        if held == 0 {
            self.partial_since = u32::MAX;
        } else if self.partial_since == u32::MAX {
            self.partial_since = now;
        }
    }

    /// The slow-message rule: a message in progress for longer than `grace` seconds whose bytes
    /// (`held`) arrived slower than `min_rate` bytes a second on average is cut, since a client
    /// trickling a large message would hold memory for as long as it likes.
    pub fn too_slow(&self, held: usize, now: u32, grace: u32, min_rate: u32) -> bool {
        if held == 0 || self.partial_since == u32::MAX || min_rate == 0 {
            return false;
        }
        let age = now.saturating_sub(self.partial_since);
        age > grace && (held as u64) < u64::from(age) * u64::from(min_rate)
    }

    /// The average rate, in bytes a second, at which the `held` bytes of the message in progress
    /// arrived (a message begun within the current second counts as one second old).
    pub fn receive_rate(&self, held: usize, now: u32) -> u64 {
        let age = now.saturating_sub(self.partial_since).max(1);
        held as u64 / u64::from(age)
    }

    /// Bytes still missing from the frame being received, if one is partly read.
    pub fn frame_remaining(&self) -> Option<usize> {
        self.decoder.frame_remaining()
    }

    /// Decodes the next input from `buf` and decides what it asks for; `None` when the buffer holds
    /// no complete frame (or the session reads nothing more: the buffer is then cleared). Messages
    /// the session must ignore (data after our close, pongs) are consumed on the way.
    pub fn receive(
        &mut self,
        buf: &mut BytesMut,
        max_message: usize,
        small: usize,
    ) -> Option<Received> {
        loop {
            if self.phase != Phase::Open {
                buf.clear();
                return None;
            }
            // After our close frame (or once the game server is gone) nothing but the client's
            // close matters.
            let forwarding = self.state & (CLOSE_SENT | UPSTREAM_DONE) == 0;
            let msg = match self.decoder.decode_small(buf, max_message, small) {
                Ok(Some(Decoded::InPlace { text, len })) => {
                    self.partial_since = u32::MAX;
                    if forwarding {
                        // A dropped message leaves the buffer here; a closing session's is cleared.
                        let over = self.over_rate(len, buf);
                        match over {
                            None => return Some(Received::SmallData { text, len }),
                            Some(Received::OverRate { close: false }) => {
                                bytes::Buf::advance(buf, len.min(buf.len()));
                            }
                            Some(_) => {}
                        }
                        return over;
                    }
                    bytes::Buf::advance(buf, len.min(buf.len()));
                    continue;
                }
                Ok(Some(Decoded::Message(msg))) => msg,
                Ok(None) => return None,
                Err(e) => {
                    self.client_code = e.close_code();
                    self.phase = Phase::Failed;
                    buf.clear();
                    return Some(Received::Violation {
                        code: e.close_code(),
                        reason: e.to_string(),
                    });
                }
            };
            if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                // A message completed: whatever is held after this read belongs to the next one,
                // whose clock starts afresh (see `on_partial`).
                self.partial_since = u32::MAX;
            }
            match msg {
                Message::Text(payload) if forwarding => {
                    return Some(
                        self.over_rate(payload.len(), buf)
                            .unwrap_or(Received::Data {
                                text: true,
                                payload,
                            }),
                    )
                }
                Message::Binary(payload) if forwarding => {
                    return Some(
                        self.over_rate(payload.len(), buf)
                            .unwrap_or(Received::Data {
                                text: false,
                                payload,
                            }),
                    )
                }
                Message::Ping(p) if !self.close_sent() => return Some(Received::Pong(p)),
                Message::Text(_) | Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(frame) => {
                    self.client_code = frame.as_ref().map_or(1005, |f| f.code);
                    self.phase = Phase::Done;
                    buf.clear();
                    let echo = (!self.close_sent()).then(|| {
                        self.state |= CLOSE_SENT;
                        // Echo the client's code (RFC 6455 sec. 5.5.1); an empty close is answered
                        // empty.
                        frame.map_or_else(Bytes::new, |f| close_payload(f.code, ""))
                    });
                    return Some(Received::Closed { echo });
                }
            }
        }
    }

    /// May a frame still be queued to the client (a message from the game server, a ping)?
    pub fn may_send(&self) -> bool {
        self.state & (CLOSE_SENT | ENDED) == 0
    }

    /// The backlog rule: a client whose queue was already past `max` when another message came is
    /// not reading, and is closed with 1008 rather than allowed to grow memory. So a message of any
    /// allowed size still reaches a reading client, and one holds at most `max` plus one message.
    pub fn over_backlog(queued_before: usize, max: usize) -> bool {
        queued_before > max
    }

    /// Starts a server-initiated close with `code`. Returns the close deadline when the driver must
    /// queue our close frame (and arm the deadline), or `None` if a close was already sent or the
    /// session is over.
    pub fn begin_close(&mut self, code: u16, now: u32, t: &Timing) -> Option<u32> {
        if self.state & (CLOSE_SENT | ENDED) != 0 {
            return None;
        }
        self.state |= CLOSE_SENT;
        self.sent_code = code;
        self.close_deadline = now.saturating_add(t.close_timeout);
        Some(self.close_deadline)
    }

    /// Everything queued has been written (`queued` bytes still wait). True when the write side must
    /// be shut now: our close frame is out, so the client reads it, answers, and sees our FIN.
    pub fn on_written(&mut self, queued: usize) -> bool {
        if self.close_sent() && !self.has(WRITE_SHUT) && queued == 0 {
            self.state |= WRITE_SHUT;
            return true;
        }
        false
    }

    /// The game server already knows the session is over (it refused or closed it, or its link
    /// died): nothing more is forwarded and no CLOSE goes to it.
    pub fn upstream_gone(&mut self) {
        self.state |= UPSTREAM_DONE;
    }

    /// The driver cut the session for what it holds (too much in flight, too slow): it reads
    /// nothing more, and the fragments it held are dropped. The driver closes it with 1008.
    pub fn cut(&mut self) {
        self.phase = Phase::Failed;
        self.decoder = Decoder::new();
    }

    /// The session ends. Returns what the game server is to be told, once: `None` if it had already
    /// ended. The receive state is freed, since writers may hold the session a while longer.
    pub fn end(&mut self) -> Option<End> {
        if self.has(ENDED) {
            return None;
        }
        self.state |= ENDED;
        self.phase = Phase::Done;
        self.decoder = Decoder::new();
        Some(End {
            code: match self.sent_code {
                0 => self.client_code,
                sent => sent,
            },
            tell_upstream: !self.has(UPSTREAM_DONE),
        })
    }

    /// A heartbeat entry of this session came due at `now`.
    pub fn on_tick(&mut self, now: u32, t: &Timing) -> Tick {
        if self.close_sent() {
            // begin_close armed an entry of its own for the deadline; earlier entries just retire.
            return if now >= self.close_deadline {
                Tick::CloseTimedOut
            } else {
                Tick::Retire
            };
        }
        // The clock counts whole seconds, so last_rx may be up to a second early: the extra second
        // keeps a client from being closed before its full idle_timeout.
        let idle_at = self.last_rx.saturating_add(t.idle_timeout + 1);
        if now >= idle_at {
            return Tick::Idle;
        }
        let mut ping = false;
        if now >= self.last_ping.saturating_add(t.ping_interval) {
            self.last_ping = now;
            ping = true;
        }
        let next = idle_at.min(self.last_ping.saturating_add(t.ping_interval));
        if ping {
            Tick::Ping(next)
        } else {
            Tick::Wait(next)
        }
    }
}
