//! The receive side of one upgraded connection: reads into the core's shared buffer, hands the bytes
//! to the session state machine and applies what it decides; and the driver task that waits whenever
//! reading must wait.
//!
//! Owns the connection's buffers between reads (only while a frame is incomplete, that frame's
//! bytes), kept with the session so that the core's poller can read for a parked driver without
//! waking its task. Never keeps a read buffer while the connection is idle, never holds the core's
//! buffer or a borrow of the session across an await, and never writes to the socket itself:
//! replies go through the connection's queue and the core's flusher.

use std::rc::Rc;

use bytes::{Buf, BytesMut};

use crate::gateway::conn::{flag, Conn, State};
use crate::gateway::core::{bump, Core, READ_BUF};
use crate::runtime::event::Gate;
use crate::runtime::outq::SMALL;
use crate::runtime::sys::{self, ReadOutcome};
use crate::session::{Received, Session, RATE_LIMITED};
use crate::ws::{OpCode, MAX_HEADER_LEN};

/// Runs the session until its close completes or the peer goes away, then releases it.
/// `pending` holds bytes that arrived with the handshake (pipelined frames).
pub async fn drive(core: Rc<Core>, c: Rc<Conn>, pending: BytesMut) {
    // The handshake's buffer is not the core's: an incomplete frame keeps it, and otherwise it is
    // dropped here, not parked on an idle connection for the life of this task.
    let mut buf = pending;
    // Starts marked readable, so that bytes that arrived before the watch are read without waiting
    // for an edge.
    c.set(flag::READABLE);
    if let Err(e) = core.poller.watch(sys::fd(&c.stream), c.key.token()) {
        tracing::warn!(session = c.id, error = %e, "cannot watch the socket, resetting it");
        core.abort(&c);
    } else if !buf.is_empty() {
        let mut st = c.state.borrow_mut();
        process(&core, &c, &mut st.session, &mut buf);
        st.pending = park(keep_partial(&core, &st.session, buf, false));
        settle(&core, &c, &mut st, 0);
    } else {
        drop(buf);
    }
    loop {
        let (reading, open) = {
            let st = c.state.borrow();
            (st.session.is_reading(), st.session.is_open())
        };
        if c.has(flag::BROKEN) || !reading {
            break;
        }
        // A congested link stops us reading this client: TCP carries the backpressure to it.
        if open {
            if let Some(gate) = core.upstream.backpressure(&c, core.now()) {
                bump(&core.counters.paused);
                wait_gate(&c, &gate).await;
            }
        }
        // Holding its share of a core that nears its in-flight budget: not read until the core
        // is back under half of it, or until the session is closed meanwhile (its client's close
        // must still be read).
        if open
            && core.inflight.holds_back(|| held(&c.state.borrow()))
            && !c.state.borrow().session.close_sent()
        {
            bump(&core.counters.inflight_pauses);
            wait_gate(&c, core.inflight.gate()).await;
        }
        // Over its rate limits with `drop`: not read until its buckets refill (see
        // `Session::read_paused_until`), so a flood costs the core nothing meanwhile.
        let paused = c.state.borrow().session.read_paused_until(core.now());
        if let Some(until) = paused {
            bump(&core.counters.rate_limit_pauses);
            let wait = u64::from(until - core.now());
            monoio::time::sleep(std::time::Duration::from_secs(wait)).await;
            continue;
        }
        if c.has(flag::FULL) {
            // The last read filled the buffer and the socket may hold more: wait for it through
            // the runtime's own poll rather than read again at once, so that a client keeping its
            // socket full gets one read per turn of the event loop, like everyone else, and
            // cannot starve its neighbours.
            c.clear(flag::FULL);
            if c.stream.readable(false).await.is_err() {
                break;
            }
        } else if !c.has(flag::READABLE | flag::PEER_DONE) {
            // The poller reads for us from here on, and wakes us only for what it leaves.
            parked(&c).await;
            continue;
        }
        if c.has(flag::BROKEN) {
            break;
        }
        pass(&core, &c);
        core.shed_if_over();
    }
    // A driver woken by a panic contained in the poller finds its session already released.
    let Some(end) = release_receive(&core, &c) else {
        return;
    };
    core.unregister(&c);
    core.upstream.closed(&c, end.code, end.tell_upstream);
    tracing::debug!(session = c.id, code = end.code, "session ended");
}

/// The poller's call when a session's socket has news (`peer_done`: the peer finished or failed).
/// A driver parked for exactly that is read for right here, which spares waking and polling its
/// task for every burst; the driver is woken only when the link is congested, or when the read
/// leaves what only it can do: yield after a read that filled the buffer, read on to the peer's
/// end, or end the session.
pub fn on_readable(core: &Rc<Core>, c: &Rc<Conn>, peer_done: bool) {
    if peer_done {
        c.set(flag::PEER_DONE);
    }
    c.set(flag::READABLE);
    // A parked driver is never one whose session is paused (over its rate limits): the driver
    // waits out a pause before it parks.
    if c.has(flag::PARKED)
        && core.upstream.backpressure(c, core.now()).is_none()
        && !core.inflight.holds_back(|| held(&c.state.borrow()))
    {
        // The driver task's own containment does not cover this frame of the stack.
        if crate::runtime::contain::catch(|| pass(core, c)).is_none() {
            core.release_after_panic(c);
        }
        core.shed_if_over();
        let leftover = flag::FULL | flag::BROKEN | flag::READABLE | flag::PEER_DONE;
        let (reading, paused) = {
            let st = c.state.borrow();
            let paused = st.session.read_paused_until(core.now()).is_some();
            (st.session.is_reading(), paused)
        };
        // A session the read left paused is the driver's to wait for.
        if !c.has(leftover) && reading && !paused {
            return;
        }
    }
    c.clear(flag::PARKED);
    c.wake();
}

/// Parks the driver until the poller has marked it readable, or the peer finished, or the
/// connection broke meanwhile, or the poller gave the driver back what an inline read left it (by
/// clearing `PARKED`).
async fn parked(c: &Conn) {
    c.set(flag::PARKED);
    std::future::poll_fn(|cx| {
        if !c.has(flag::PARKED) || c.has(flag::READABLE | flag::PEER_DONE | flag::BROKEN) {
            std::task::Poll::Ready(())
        } else {
            c.waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        }
    })
    .await;
    c.clear(flag::PARKED);
}

/// One read, into the core's buffer or the incomplete frame's own, and everything it completes.
/// A read that leaves room drained the socket and clears the readable mark; one that filled the
/// buffer may not have, so it marks the connection `FULL` instead.
fn pass(core: &Rc<Core>, c: &Rc<Conn>) {
    let mut guard = c.state.borrow_mut();
    let before = held(&guard);
    let State { session, pending } = &mut *guard;
    if !session.is_reading() || c.has(flag::BROKEN) {
        return;
    }
    let own = pending.take();
    let shared = own.is_none();
    let mut buf = match own {
        None => core.take_read_buf(),
        Some(own) => {
            let mut own = *own;
            let want = session.frame_remaining().unwrap_or(0).clamp(4096, READ_BUF);
            own.reserve(want);
            own
        }
    };
    // A large frame's own buffer has room for all of it, but a read takes at most what the
    // shared buffer would: the in-flight budget sees each connection grow a read at a time.
    let room = (buf.capacity() - buf.len()).min(READ_BUF);
    match sys::read_at_most(sys::fd(&c.stream), &mut buf, room) {
        Ok(ReadOutcome::Data(n)) => {
            if n == room {
                c.set(flag::FULL);
            } else {
                c.clear(flag::READABLE);
            }
            session.on_read(core.now());
            process(core, c, session, &mut buf);
        }
        Ok(ReadOutcome::WouldBlock) => c.clear(flag::READABLE),
        Ok(ReadOutcome::Eof) | Err(_) => session.on_peer_gone(),
    }
    *pending = park(keep_partial(core, session, buf, shared));
    settle(core, c, &mut guard, before);
}

/// Bytes of incomplete messages a connection holds: its partial frame and its fragments.
pub(super) fn held(st: &State) -> usize {
    st.pending.as_ref().map_or(0, |p| p.len()) + st.session.fragments_held()
}

/// After a read: the core's in-flight count follows what the connection now holds (it held
/// `before`). A client whose messages complete within a read holds nothing.
fn settle(core: &Core, c: &Conn, st: &mut State, before: usize) {
    let after = held(st);
    core.inflight.update(c.key, before, after);
    st.session.on_partial(after, core.now());
}

/// Drops what a connection holds of incomplete messages and closes it with 1008 `reason`.
fn cut(core: &Core, c: &Rc<Conn>, st: &mut State, reason: &str) {
    core.inflight.update(c.key, held(st), 0);
    st.pending = None;
    st.session.cut();
    st.session.on_partial(0, core.now());
    core.close_on(c, &mut st.session, 1008, reason);
}

/// Ends the session's receive side once: its buffers leave the core's in-flight count (writers may
/// hold the connection a while longer; the receive buffers need not wait for them). `None` if it
/// had already ended.
fn release_receive(core: &Core, c: &Conn) -> Option<crate::session::End> {
    let mut st = c.state.borrow_mut();
    let held = held(&st);
    let end = st.session.end()?;
    core.inflight.update(c.key, held, 0);
    st.pending = None;
    Some(end)
}

/// What an incomplete frame leaves on the connection: its bytes, or nothing at all.
fn park(buf: BytesMut) -> Option<Box<BytesMut>> {
    (!buf.is_empty()).then(|| Box::new(buf))
}

/// Keeps the bytes of an incomplete frame for the next read and gives the shared buffer back.
/// Only the partial frame is copied out of the shared buffer, sized for the whole frame so that a
/// large message is not copied again as it grows.
fn keep_partial(core: &Core, session: &Session, mut buf: BytesMut, shared: bool) -> BytesMut {
    if !session.is_open() {
        buf.clear();
    }
    if !shared {
        if buf.is_empty() {
            // The frame completed: free its buffer rather than park it on the connection.
            return BytesMut::new();
        }
        return buf;
    }
    let kept = if buf.is_empty() {
        BytesMut::new()
    } else {
        let limit = core.settings.max_message_size + MAX_HEADER_LEN;
        let frame = session.frame_remaining().unwrap_or(0).min(limit);
        let mut own = BytesMut::with_capacity(buf.len() + frame);
        own.extend_from_slice(&buf);
        own
    };
    core.return_read_buf(buf);
    kept
}

/// Applies what the session decides about each complete input in `buf`.
fn process(core: &Rc<Core>, c: &Rc<Conn>, session: &mut Session, buf: &mut BytesMut) {
    while let Some(input) = session.receive(buf, core.settings.max_message_size, SMALL) {
        match input {
            Received::SmallData { text, len } => {
                if let Some(payload) = buf.get(..len) {
                    bump(&core.counters.messages_in);
                    core.upstream.data_copy(c, core.now(), text, payload);
                }
                buf.advance(len.min(buf.len()));
            }
            Received::Data { text, payload } => {
                bump(&core.counters.messages_in);
                core.upstream.data(c, core.now(), text, payload);
            }
            Received::Pong(payload) => {
                core.send_on(c, session, |c| c.push_frame(OpCode::Pong, payload))
            }
            Received::Violation { code, reason } => {
                bump(&core.counters.protocol_errors);
                tracing::debug!(session = c.id, error = %reason, "protocol error");
                core.close_on(c, session, code, &reason);
            }
            Received::OverRate { close: false } => bump(&core.counters.rate_limit_drops),
            Received::OverRate { close: true } => {
                bump(&core.counters.rate_limit_closes);
                tracing::debug!(session = c.id, "rate limit exceeded, closing");
                core.close_on(c, session, 1008, RATE_LIMITED);
            }
            Received::Closed { echo } => {
                if let Some(frame) = echo {
                    c.push_frame(OpCode::Close, frame);
                    core.mark_dirty(c);
                }
            }
        }
    }
}

/// Parks the driver until the link drains, or until the session is closed or reset meanwhile (the
/// close wakes it through `waker`, so a kicked client is not left waiting on a stalled link).
async fn wait_gate(c: &Conn, gate: &Gate) {
    std::future::poll_fn(|cx| {
        if !gate.is_shut() || c.has(flag::BROKEN) || c.state.borrow().session.close_sent() {
            c.waker.set(None);
            std::task::Poll::Ready(())
        } else {
            gate.register(cx.waker());
            c.waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        }
    })
    .await
}

impl Core {
    /// A read took the core past its whole in-flight budget: the slowest holders go at once.
    fn shed_if_over(&self) {
        if self.inflight.over_limit() {
            self.shed();
        }
    }

    /// Cuts the holders of incomplete messages that arrive the slowest (the lowest average rate
    /// of the message in progress: a client that sent part of a large message and went quiet
    /// sinks to the bottom within seconds, one streaming a large upload stays on top) until the
    /// core is back under half its budget, which lets the ones held back read again.
    fn shed(&self) {
        let now = self.now();
        let mut holders: Vec<(u64, Rc<Conn>)> = self
            .inflight
            .holders()
            .into_iter()
            .filter_map(|key| {
                let c = self.get(key)?;
                let rate = {
                    let st = c.state.try_borrow().ok()?;
                    st.session.receive_rate(held(&st), now)
                };
                Some((rate, c))
            })
            .collect();
        holders.sort_unstable_by_key(|(rate, _)| *rate);
        for (_, c) in holders {
            if self.inflight.total() < self.inflight.resume_mark() {
                break;
            }
            let Ok(mut st) = c.state.try_borrow_mut() else {
                continue;
            };
            bump(&self.counters.inflight_closes);
            tracing::debug!(
                session = c.id,
                held = held(&st),
                "in-flight budget exceeded, cutting"
            );
            cut(self, &c, &mut st, "too much data in flight");
        }
    }

    /// Once a second: a message arriving slower than `min_receive_rate` (after `receive_grace`)
    /// is cut, and a core that holds connections back sheds its slowest holders, since the ones
    /// held back cannot complete until it does.
    pub(super) fn sweep_inflight(&self, now: u32) {
        let s = &self.settings;
        for key in self.inflight.holders() {
            let Some(c) = self.get(key) else { continue };
            let Ok(mut st) = c.state.try_borrow_mut() else {
                continue;
            };
            if st
                .session
                .too_slow(held(&st), now, s.receive_grace, s.min_receive_rate)
            {
                bump(&self.counters.slow_message_closes);
                tracing::debug!(session = c.id, "message arriving too slowly, cutting");
                cut(self, &c, &mut st, "message too slow");
            }
        }
        if self.inflight.holding_back() {
            self.shed();
        }
    }

    /// What a panicking task or step leaves to clean up for its connection: reset the socket,
    /// release the session, tell the game server (1011).
    pub fn release_after_panic(&self, c: &Rc<Conn>) {
        bump(&self.counters.panics);
        tracing::error!(session = c.id, "connection task panicked; connection reset");
        self.abort(c);
        // A panic can leave the session borrowed only if it was raised inside the borrow, and
        // unwinding has released that borrow by now; a bug there must not panic again.
        if c.state.try_borrow_mut().is_err() {
            return;
        }
        if let Some(end) = release_receive(self, c) {
            self.unregister(c);
            self.upstream.closed(c, 1011, end.tell_upstream);
        }
    }
}
