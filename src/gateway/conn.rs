//! One upgraded client connection as the gateway holds it: its socket, its session state machine,
//! its outbound queue and the I/O flags of its driver.
//!
//! Owns the bytes waiting to go to the client and the vectored write that sends them. Never holds
//! a read buffer beyond an incomplete frame's bytes (a read borrows the core's buffer while data is
//! in flight), never holds a write queue while nothing waits (it borrows one of the core's spares),
//! and never decides anything about the protocol: that is the session's ([`crate::session`]).
//!
//! Size: `size_of::<Conn>()` is checked by a test below; with its `Rc` and the monoio task of the
//! connection driver it is the whole user-space cost of an idle connection (docs/architecture.md).

use std::cell::{Cell, RefCell};
use std::io;

use bytes::{Bytes, BytesMut};
use monoio::net::TcpStream;

use crate::link::senders::Recent;
use crate::runtime::outq::{spare, Flush, OutQueue};
use crate::runtime::{sys, Key};
use crate::session::{Rates, Session};
use crate::ws::{encode_header, OpCode};

/// The driver's I/O bits. The protocol's state is the session's.
pub mod flag {
    /// Queued in the core's dirty list, a flush is coming.
    pub const DIRTY: u16 = 1;
    /// A writer task waits for the socket to become writable.
    pub const WRITER: u16 = 2;
    /// The socket failed or was aborted; drop whatever is queued.
    pub const BROKEN: u16 = 16;
    /// The core's poller saw data (or the end) arrive that no read has drained yet.
    pub const READABLE: u16 = 128;
    /// The poller saw the peer finish or fail: no edge will follow, so the driver reads on until
    /// the socket reports the end, even after a read that did not fill its buffer.
    pub const PEER_DONE: u16 = 256;
    /// The last read filled its buffer: the driver yields a turn before reading again.
    pub const FULL: u16 = 512;
    /// The driver waits for the poller's mark alone, so the poller may read in its stead.
    pub const PARKED: u16 = 1024;
}

/// What the receive side keeps between reads: the session, and only while a frame is incomplete,
/// its bytes. Read by the driver, or by the poller in its stead.
pub struct State {
    pub session: Session,
    /// Boxed, so that an idle connection holds a pointer here rather than a buffer handle four
    /// times its size.
    pub pending: Option<Box<BytesMut>>,
}

pub struct Conn {
    pub stream: TcpStream,
    pub id: u64,
    pub key: Key,
    pub user: Option<Box<str>>,
    flags: Cell<u16>,
    /// Which upstream link carries the session (an index into the core's upstreams).
    pub route: Cell<u16>,
    /// Bytes the client sent to its link lately: a congested link holds back its heaviest
    /// senders only.
    pub sent: Cell<Recent>,
    /// The driver's waker while it waits for the socket to become readable (the poller wakes it)
    /// or for a congested link to drain (so that a close can wake it).
    pub waker: Cell<Option<std::task::Waker>>,
    /// Allocated while bytes wait to be written, and only then: an idle connection holds no queue.
    out: RefCell<Option<Box<OutQueue>>>,
    /// Borrowed for one synchronous step at a time, never across an await.
    pub state: RefCell<State>,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        id: u64,
        key: Key,
        user: Option<Box<str>>,
        now: u32,
        rates: Rates,
    ) -> Self {
        Conn {
            stream,
            id,
            key,
            user,
            flags: Cell::new(0),
            route: Cell::new(u16::MAX),
            sent: Cell::default(),
            waker: Cell::new(None),
            out: RefCell::new(None),
            state: RefCell::new(State {
                session: Session::with_rates(now, rates),
                pending: None,
            }),
        }
    }

    pub fn has(&self, f: u16) -> bool {
        self.flags.get() & f != 0
    }

    pub fn set(&self, f: u16) {
        self.flags.set(self.flags.get() | f);
    }

    pub fn clear(&self, f: u16) {
        self.flags.set(self.flags.get() & !f);
    }

    /// Wakes the driver if it waits (for readability or a congested link).
    pub fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.out.borrow().as_ref().map_or(0, |q| q.queued())
    }

    /// Queues one WebSocket frame; the caller decides when to flush.
    pub fn push_frame(&self, opcode: OpCode, payload: Bytes) {
        let mut head = [0u8; crate::ws::MAX_HEADER_LEN];
        let len = encode_header(&mut head, true, opcode, payload.len() as u64);
        self.queue().push(&head[..len], payload);
    }

    /// Queues one WebSocket frame of a game-sized payload (at most [`SMALL`](crate::runtime::outq::SMALL)
    /// bytes), copied in.
    pub fn push_frame_copy(&self, opcode: OpCode, payload: &[u8]) {
        let mut head = [0u8; crate::ws::MAX_HEADER_LEN];
        let len = encode_header(&mut head, true, opcode, payload.len() as u64);
        self.queue().push_copy(&head[..len], payload);
    }

    /// Queues bytes verbatim: the handshake response, or a whole frame shared with other queues.
    pub fn push_raw(&self, bytes: Bytes) {
        self.queue().push(&[], bytes);
    }

    /// Queues a whole frame of the `latest` series `tag`, dropping the series' older frame that
    /// has not started to leave (see [`OutQueue::push_latest`]); whether one was dropped.
    pub fn push_latest(&self, frame: Bytes, tag: u32) -> bool {
        self.queue().push_latest(frame, tag)
    }

    fn queue(&self) -> std::cell::RefMut<'_, OutQueue> {
        std::cell::RefMut::map(self.out.borrow_mut(), |q| {
            &mut **q.get_or_insert_with(spare::take)
        })
    }

    /// Drops what has not started to leave (see [`OutQueue::discard_unsent`]).
    pub fn discard_unsent(&self) {
        let mut out = self.out.borrow_mut();
        if let Some(q) = out.as_mut() {
            q.discard_unsent();
            if q.queued() == 0 {
                give_back(&mut out);
            }
        }
    }

    pub fn discard_all(&self) {
        give_back(&mut self.out.borrow_mut());
    }

    /// The queue as it stands, for a send submitted with other sockets' ([`SendBatch`]); None when
    /// nothing waits.
    ///
    /// [`SendBatch`]: crate::runtime::send_batch::SendBatch
    pub fn queue_now(&self) -> Option<std::cell::Ref<'_, OutQueue>> {
        std::cell::Ref::filter_map(self.out.borrow(), |q| q.as_deref()).ok()
    }

    /// Records that the first `written` queued bytes left in such a send; whether that was all
    /// (then the queue is back with the core's spares).
    pub fn wrote(&self, written: usize) -> bool {
        let mut out = self.out.borrow_mut();
        let Some(q) = out.as_mut() else {
            return true;
        };
        let done = q.advance(written);
        if done {
            give_back(&mut out);
        }
        done
    }

    /// Writes as much of the queue as the socket takes; the queue goes back to the core's spares
    /// once it is empty.
    pub fn flush(&self) -> io::Result<Flush> {
        let mut out = self.out.borrow_mut();
        let Some(q) = out.as_mut() else {
            return Ok(Flush::Done);
        };
        let done = q.flush(sys::fd(&self.stream))?;
        if done == Flush::Done {
            give_back(&mut out);
        }
        Ok(done)
    }
}

/// Returns a connection's write queue, if it holds one, to the core's spares.
fn give_back(out: &mut Option<Box<OutQueue>>) {
    if let Some(q) = out.take() {
        spare::give(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_stays_small() {
        // The idle-connection budget (docs/architecture.md) counts on this: with the `Rc`'s two
        // counts (16 bytes) it must stay within mimalloc's 256-byte size class (the next is 320).
        assert!(
            std::mem::size_of::<Conn>() <= 240,
            "{}",
            std::mem::size_of::<Conn>()
        );
    }
}
