//! The receive side of one upgraded connection: reads into the core's shared buffer, feeds the
//! decoder and acts on what it yields; and the driver task that waits whenever reading must wait.
//!
//! Owns the connection's receive state (the decoder and, only while a frame is incomplete, the bytes
//! of that frame), kept in the session so that the core's poller can read for a parked driver
//! without waking its task. Never keeps a read buffer while the connection is idle, never holds the
//! core's buffer across an await, and never writes to the socket itself: replies go through the
//! session's queue and the core's flusher.

use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};

use crate::runtime::core::{bump, Core, READ_BUF};
use crate::runtime::event::Gate;
use crate::runtime::outq::SMALL;
use crate::runtime::poller;
use crate::runtime::session::{flag, Session};
use crate::runtime::sys::{self, ReadOutcome};
use crate::ws::{close_payload, Decoded, Decoder, Message, OpCode, MAX_HEADER_LEN};

/// How the connection is doing after a pass over the bytes read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// A protocol error was answered with a close frame; the rest of the input is meaningless.
    Failed,
    /// The close handshake is complete, or the peer is gone.
    Done,
}

/// Receive-side state of a connection, in its session.
pub struct Receiver {
    decoder: Decoder,
    phase: Phase,
    /// The close code reported upstream when the session ends (1006 until the client says).
    close_code: u16,
    /// The bytes of an incomplete frame, and only while there is one. Boxed, so that an idle
    /// connection holds a pointer here rather than a buffer handle four times its size.
    pending: Option<Box<BytesMut>>,
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver {
            decoder: Decoder::new(),
            phase: Phase::Open,
            close_code: 1006,
            pending: None,
        }
    }
}

/// Runs the session until its close completes or the peer goes away, then releases it.
/// `pending` holds bytes that arrived with the handshake (pipelined frames).
pub async fn drive(core: Rc<Core>, s: Rc<Session>, pending: BytesMut) {
    // The handshake's buffer is not the core's: an incomplete frame keeps it, and otherwise it is
    // dropped here, not parked on an idle connection for the life of this task.
    let mut buf = pending;
    if let Err(e) = core.poller.watch(&s) {
        tracing::warn!(session = s.id, error = %e, "cannot watch the socket, resetting it");
        core.abort(&s);
    } else if !buf.is_empty() {
        let mut rx = s.rx.borrow_mut();
        process(&core, &s, &mut rx, &mut buf);
        rx.pending = park(keep_partial(&core, &rx, buf, false));
    } else {
        drop(buf);
    }
    loop {
        let phase = s.rx.borrow().phase;
        if s.has(flag::BROKEN) || phase == Phase::Done {
            break;
        }
        // A congested link stops us reading this client: TCP carries the backpressure to it.
        if phase == Phase::Open {
            if let Some(gate) = core.upstream.backpressure(&s) {
                bump(&core.counters.paused);
                wait_gate(&s, &gate).await;
            }
        }
        if s.has(flag::FULL) {
            // The last read filled the buffer and the socket may hold more: wait for it through
            // the runtime's own poll rather than read again at once, so that a client keeping its
            // socket full gets one read per turn of the event loop, like everyone else, and
            // cannot starve its neighbours.
            s.clear(flag::FULL);
            if s.stream.readable(false).await.is_err() {
                break;
            }
        } else if !s.has(flag::READABLE | flag::PEER_DONE) {
            // The poller reads for us from here on, and wakes us only for what it leaves.
            poller::parked(&s).await;
            continue;
        }
        if s.has(flag::BROKEN) {
            break;
        }
        pass(&core, &s);
    }
    // A driver woken by a panic contained in the poller finds its session already released.
    if s.has(flag::ENDED) {
        return;
    }
    s.set(flag::ENDED);
    core.unregister(&s);
    // If we closed first, the game server learns our reason (1001, 1008, ...), not the echo.
    let code = match s.sent_code.get() {
        0 => s.rx.borrow().close_code,
        sent => sent,
    };
    // Writers may hold the session a while longer; the receive buffers need not wait for them.
    let mut rx = s.rx.borrow_mut();
    rx.pending = None;
    rx.decoder = Decoder::new();
    drop(rx);
    core.upstream.closed(&s, code);
    tracing::debug!(session = s.id, code, "session ended");
}

/// The poller's call when a session's socket has news. A driver parked for exactly that is read
/// for right here, which spares waking and polling its task for every burst; the driver is woken
/// only when the link is congested, or when the read leaves what only it can do: yield after a
/// read that filled the buffer, read on to the peer's end, or end the session.
pub fn on_readable(core: &Rc<Core>, s: &Rc<Session>) {
    if s.has(flag::PARKED) && core.upstream.backpressure(s).is_none() {
        // The driver task's own containment does not cover this frame of the stack.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pass(core, s))).is_err() {
            release_after_panic(core, s);
        }
        let leftover = flag::FULL | flag::BROKEN | flag::READABLE | flag::PEER_DONE;
        if !s.has(leftover) && s.rx.borrow().phase != Phase::Done {
            return;
        }
    }
    s.clear(flag::PARKED);
    if let Some(w) = s.waker.take() {
        w.wake();
    }
}

/// One read, into the core's buffer or the incomplete frame's own, and everything it completes.
/// A read that leaves room drained the socket and clears the readable mark; one that filled the
/// buffer may not have, so it marks the session `FULL` instead.
fn pass(core: &Rc<Core>, s: &Rc<Session>) {
    let mut guard = s.rx.borrow_mut();
    let rx = &mut *guard;
    if rx.phase == Phase::Done || s.has(flag::BROKEN) {
        return;
    }
    let parked = rx.pending.take();
    let shared = parked.is_none();
    let mut buf = match parked {
        None => core.take_read_buf(),
        Some(own) => {
            let mut own = *own;
            let want = rx
                .decoder
                .frame_remaining()
                .unwrap_or(0)
                .clamp(4096, READ_BUF);
            own.reserve(want);
            own
        }
    };
    let room = buf.capacity() - buf.len();
    match sys::read_into(s.stream.as_raw_fd(), &mut buf) {
        Ok(ReadOutcome::Data(n)) => {
            if n == room {
                s.set(flag::FULL);
            } else {
                s.clear(flag::READABLE);
            }
            s.last_rx.set(core.now());
            process(core, s, rx, &mut buf);
        }
        Ok(ReadOutcome::WouldBlock) => s.clear(flag::READABLE),
        Ok(ReadOutcome::Eof) | Err(_) => rx.phase = Phase::Done,
    }
    rx.pending = park(keep_partial(core, rx, buf, shared));
}

/// What an incomplete frame leaves on the connection: its bytes, or nothing at all.
fn park(buf: BytesMut) -> Option<Box<BytesMut>> {
    (!buf.is_empty()).then(|| Box::new(buf))
}

/// Keeps the bytes of an incomplete frame for the next read and gives the shared buffer back.
/// Only the partial frame is copied out of the shared buffer, sized for the whole frame so that a
/// large message is not copied again as it grows.
fn keep_partial(core: &Core, rx: &Receiver, mut buf: BytesMut, shared: bool) -> BytesMut {
    if rx.phase != Phase::Open {
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
        let frame = rx.decoder.frame_remaining().unwrap_or(0).min(limit);
        let mut own = BytesMut::with_capacity(buf.len() + frame);
        own.extend_from_slice(&buf);
        own
    };
    core.return_read_buf(buf);
    kept
}

fn process(core: &Rc<Core>, s: &Rc<Session>, rx: &mut Receiver, buf: &mut BytesMut) {
    if rx.phase != Phase::Open {
        buf.clear();
        return;
    }
    loop {
        let msg = match rx
            .decoder
            .decode_small(buf, core.settings.max_message_size, SMALL)
        {
            Ok(Some(Decoded::Message(msg))) => msg,
            Ok(Some(Decoded::InPlace { text, len })) => {
                if !s.has(flag::CLOSE_SENT) {
                    if let Some(payload) = buf.get(..len) {
                        bump(&core.counters.messages_in);
                        core.upstream.data_copy(s, text, payload);
                    }
                }
                buf.advance(len.min(buf.len()));
                continue;
            }
            Ok(None) => return,
            Err(e) => {
                bump(&core.counters.protocol_errors);
                tracing::debug!(session = s.id, error = %e, "protocol error");
                rx.close_code = e.close_code();
                core.close(s, e.close_code(), &e.to_string());
                rx.phase = Phase::Failed;
                buf.clear();
                return;
            }
        };
        // After our close frame nothing but the client's close matters.
        let closing = s.has(flag::CLOSE_SENT);
        match msg {
            Message::Text(p) if !closing => deliver(core, s, true, p),
            Message::Binary(p) if !closing => deliver(core, s, false, p),
            Message::Ping(p) if !closing => core.send(s, OpCode::Pong, p),
            Message::Text(_) | Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
            Message::Close(frame) => {
                rx.close_code = frame.as_ref().map_or(1005, |f| f.code);
                // Echo the client's code (RFC 6455 sec. 5.5.1); an empty close is answered empty.
                let echo = frame.map_or_else(Bytes::new, |f| close_payload(f.code, ""));
                core.answer_close(s, echo);
                rx.phase = Phase::Done;
                buf.clear();
                return;
            }
        }
    }
}

fn deliver(core: &Rc<Core>, s: &Rc<Session>, text: bool, payload: Bytes) {
    bump(&core.counters.messages_in);
    core.upstream.data(s, text, payload);
}

/// Parks the driver until the link drains, or until the session is closed or reset meanwhile (the
/// close wakes it through `waker`, so a kicked client is not left waiting on a stalled link).
async fn wait_gate(s: &Session, gate: &Gate) {
    std::future::poll_fn(|cx| {
        if !gate.is_shut() || s.has(flag::CLOSE_SENT | flag::BROKEN) {
            s.waker.set(None);
            std::task::Poll::Ready(())
        } else {
            gate.register(cx.waker());
            s.waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        }
    })
    .await
}

/// Runs a connection's task so that a panic in it (a bug reached by some peer's bytes) ends that
/// one connection: `on_panic` releases what the task held, and the core and its other connections
/// carry on.
pub struct Contained<F, P: FnOnce()> {
    fut: F,
    on_panic: Option<P>,
}

impl<F, P: FnOnce()> Contained<F, P> {
    pub fn new(fut: F, on_panic: P) -> Self {
        Contained {
            fut,
            on_panic: Some(on_panic),
        }
    }
}

impl<F: std::future::Future<Output = ()>, P: FnOnce()> std::future::Future for Contained<F, P> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `self` or replaced, and
        // `on_panic` is never pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let fut = unsafe { std::pin::Pin::new_unchecked(&mut this.fut) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                if let Some(release) = this.on_panic.take() {
                    release();
                }
                std::task::Poll::Ready(())
            }
        }
    }
}

/// What a panicking connection driver leaves to clean up: reset the socket, release the session,
/// tell the game server.
pub fn release_after_panic(core: &Core, s: &Rc<Session>) {
    bump(&core.counters.panics);
    tracing::error!(
        session = s.id,
        "connection driver panicked; connection reset"
    );
    core.abort(s);
    if !s.has(flag::ENDED) {
        s.set(flag::ENDED);
        core.unregister(s);
        core.upstream.closed(s, 1011);
    }
}

#[cfg(test)]
mod tests {
    use super::Contained;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn a_panicking_task_is_contained_and_its_siblings_run_on() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let (released, sibling_done) = rt.block_on(async {
            let released = Rc::new(Cell::new(false));
            let r = released.clone();
            let bad = monoio::spawn(Contained::new(
                async {
                    monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                    let peer_bytes: &[u8] = &[];
                    // An out-of-bounds index stands in for any bug a peer might reach.
                    let _ = peer_bytes[usize::from(peer_bytes.is_empty())];
                },
                move || r.set(true),
            ));
            let sibling = monoio::spawn(async {
                monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                true
            });
            bad.await;
            (released.get(), sibling.await)
        });
        assert!(released, "on_panic was not called");
        assert!(sibling_done, "the sibling task did not complete");
    }
}
