//! One client connection after its upgrade: its socket, its outbound queue, its receive state and its
//! lifecycle flags.
//!
//! Owns the bytes waiting to go to the client and the vectored write that sends them. Never holds
//! a read buffer beyond an incomplete frame's bytes (a read borrows the core's buffer while data is
//! in flight), never holds a write queue while nothing waits (it borrows one of the core's spares),
//! and never blocks: a write that does not fit in the socket stays queued until the socket is
//! writable.
//!
//! Size: `size_of::<Session>()` is checked by a test below; with its `Rc` and the monoio task of
//! the connection driver it is the whole user-space cost of an idle connection (docs/architecture.md).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;

use bytes::Bytes;
use monoio::net::TcpStream;

use crate::runtime::conn::Receiver;
pub use crate::runtime::outq::Flush;
use crate::runtime::outq::{spare, OutQueue};
use crate::ws::{encode_header, OpCode};

/// Where a session lives in its core's registry; stale keys (after the slot was reused) never match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKey {
    pub slot: u32,
    pub generation: u32,
}

/// Lifecycle bits.
pub mod flag {
    /// Queued in the core's dirty list, a flush is coming.
    pub const DIRTY: u16 = 1;
    /// A writer task waits for the socket to become writable.
    pub const WRITER: u16 = 2;
    /// Our close frame is queued; nothing else may follow it.
    pub const CLOSE_SENT: u16 = 4;
    /// The write side was shut down after the close frame left.
    pub const WRITE_SHUT: u16 = 8;
    /// The socket failed or was aborted; drop whatever is queued.
    pub const BROKEN: u16 = 16;
    /// The driver has finished; the session is out of the registry.
    pub const ENDED: u16 = 32;
    /// The upstream already knows the session is over (it refused or kicked it, or its link died):
    /// no CLOSE goes to it.
    pub const UPSTREAM_DONE: u16 = 64;
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

pub struct Session {
    pub stream: TcpStream,
    pub id: u64,
    pub key: SessionKey,
    pub user: Option<Box<str>>,
    flags: Cell<u16>,
    /// Core clock (seconds) of the last byte received.
    pub last_rx: Cell<u32>,
    /// Core clock of the last ping sent.
    pub last_ping: Cell<u32>,
    /// Core clock by which a close must have completed.
    pub close_deadline: Cell<u32>,
    /// The close code we sent, if we closed first: what the upstream is told.
    pub sent_code: Cell<u16>,
    /// Which upstream link carries the session (an index into the core's upstreams).
    pub route: Cell<u16>,
    /// The driver's waker while it waits for the socket to become readable (the poller wakes it)
    /// or for a congested link to drain (so that a close can wake it).
    pub waker: Cell<Option<std::task::Waker>>,
    /// Allocated while bytes wait to be written, and only then: an idle session holds no queue.
    out: RefCell<Option<Box<OutQueue>>>,
    /// The receive side, read by the driver or by the poller in its stead.
    pub rx: RefCell<Receiver>,
}

impl Session {
    pub fn new(
        stream: TcpStream,
        id: u64,
        key: SessionKey,
        user: Option<Box<str>>,
        now: u32,
    ) -> Self {
        Session {
            stream,
            id,
            key,
            user,
            flags: Cell::new(0),
            last_rx: Cell::new(now),
            last_ping: Cell::new(now),
            close_deadline: Cell::new(u32::MAX),
            sent_code: Cell::new(0),
            route: Cell::new(u16::MAX),
            waker: Cell::new(None),
            out: RefCell::new(None),
            rx: RefCell::new(Receiver::default()),
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

    /// Queues bytes verbatim (the handshake response).
    pub fn push_raw(&self, bytes: Bytes) {
        self.queue().push(&[], bytes);
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

    /// Writes as much of the queue as the socket takes; the queue goes back to the core's spares
    /// once it is empty.
    pub fn flush(&self) -> io::Result<Flush> {
        let mut out = self.out.borrow_mut();
        let Some(q) = out.as_mut() else {
            return Ok(Flush::Done);
        };
        let done = q.flush(self.stream.as_raw_fd())?;
        if done == Flush::Done {
            give_back(&mut out);
        }
        Ok(done)
    }
}

/// Returns a session's write queue, if it holds one, to the core's spares.
fn give_back(out: &mut Option<Box<OutQueue>>) {
    if let Some(q) = out.take() {
        spare::give(q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_stays_small() {
        // The idle-connection budget (docs/architecture.md) counts on this: with the `Rc`'s two
        // counts it must stay within mimalloc's 256-byte size class (the next is 320).
        assert!(
            std::mem::size_of::<Session>() <= 232,
            "{}",
            std::mem::size_of::<Session>()
        );
    }
}
