//! One client connection after its upgrade: its socket, its outbound queue and its lifecycle flags.
//!
//! Owns the bytes waiting to go to the client and the vectored write that sends them. Never holds
//! a read buffer (the connection driver borrows the core's while data is in flight) and never
//! blocks: a write that does not fit in the socket stays queued until the socket is writable.
//!
//! Size: `size_of::<Session>()` is checked by a test below; with its `Rc` and the monoio task of
//! the connection driver it is the whole user-space cost of an idle connection (docs/architecture.md).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;

use bytes::Bytes;
use monoio::net::TcpStream;

use crate::runtime::sys;
use crate::ws::{encode_header, OpCode, MAX_HEADER_LEN};

/// Where a session lives in its core's registry; stale keys (after the slot was reused) never match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKey {
    pub slot: u32,
    pub generation: u32,
}

/// Lifecycle bits, kept in one byte.
pub mod flag {
    /// Queued in the core's dirty list, a flush is coming.
    pub const DIRTY: u8 = 1;
    /// A writer task waits for the socket to become writable.
    pub const WRITER: u8 = 2;
    /// Our close frame is queued; nothing else may follow it.
    pub const CLOSE_SENT: u8 = 4;
    /// The write side was shut down after the close frame left.
    pub const WRITE_SHUT: u8 = 8;
    /// The socket failed or was aborted; drop whatever is queued.
    pub const BROKEN: u8 = 16;
    /// The driver has finished; the session is out of the registry.
    pub const ENDED: u8 = 32;
}

/// A frame (or raw bytes such as the 101 response) waiting to be written. The header lives beside the
/// payload so that the payload, often a slice of the buffer it was read into, is never copied.
struct OutFrame {
    payload: Bytes,
    head: [u8; MAX_HEADER_LEN],
    head_len: u8,
    /// Bytes of head + payload already written.
    sent: usize,
}

impl OutFrame {
    fn len(&self) -> usize {
        self.head_len as usize + self.payload.len()
    }
}

pub struct Session {
    pub stream: TcpStream,
    pub id: u64,
    pub key: SessionKey,
    pub user: Option<Box<str>>,
    flags: Cell<u8>,
    /// Core clock (seconds) of the last byte received.
    pub last_rx: Cell<u32>,
    /// Core clock of the last ping sent.
    pub last_ping: Cell<u32>,
    /// Core clock by which a close must have completed.
    pub close_deadline: Cell<u32>,
    out: RefCell<VecDeque<OutFrame>>,
    queued: Cell<usize>,
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    Done,
    Blocked,
}

/// At most this many slices per sendmsg: enough to batch a burst, small enough for the stack.
const MAX_IOV: usize = 64;

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
            out: RefCell::new(VecDeque::new()),
            queued: Cell::new(0),
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags.get() & f != 0
    }

    pub fn set(&self, f: u8) {
        self.flags.set(self.flags.get() | f);
    }

    pub fn clear(&self, f: u8) {
        self.flags.set(self.flags.get() & !f);
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued.get()
    }

    /// Queues one frame; the caller decides when to flush.
    pub fn push_frame(&self, opcode: OpCode, payload: Bytes) {
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_len = encode_header(&mut head, true, opcode, payload.len() as u64) as u8;
        self.push(OutFrame {
            payload,
            head,
            head_len,
            sent: 0,
        });
    }

    /// Queues bytes verbatim (the handshake response).
    pub fn push_raw(&self, bytes: Bytes) {
        self.push(OutFrame {
            payload: bytes,
            head: [0; MAX_HEADER_LEN],
            head_len: 0,
            sent: 0,
        });
    }

    fn push(&self, f: OutFrame) {
        self.queued.set(self.queued.get() + f.len());
        self.out.borrow_mut().push_back(f);
    }

    /// Drops every queued frame that has not started to leave; a partly written frame must finish
    /// or the client would see a corrupt stream.
    pub fn discard_unsent(&self) {
        let mut out = self.out.borrow_mut();
        let keep = usize::from(out.front().is_some_and(|f| f.sent > 0));
        out.truncate(keep);
        self.queued.set(out.iter().map(|f| f.len() - f.sent).sum());
    }

    pub fn discard_all(&self) {
        *self.out.borrow_mut() = VecDeque::new();
        self.queued.set(0);
    }

    /// Writes as much of the queue as the socket takes, in vectored writes of up to 64 slices.
    pub fn flush(&self) -> io::Result<Flush> {
        let fd = self.stream.as_raw_fd();
        let mut out = self.out.borrow_mut();
        while !out.is_empty() {
            let mut iov: [libc::iovec; MAX_IOV] = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV];
            let mut n_iov = 0;
            for f in out.iter() {
                if n_iov + 2 > MAX_IOV {
                    break;
                }
                let head_len = f.head_len as usize;
                if f.sent < head_len {
                    let head = &f.head[f.sent..head_len];
                    iov[n_iov] = libc::iovec {
                        iov_base: head.as_ptr() as *mut libc::c_void,
                        iov_len: head.len(),
                    };
                    n_iov += 1;
                }
                let body = &f.payload[f.sent.saturating_sub(head_len)..];
                if !body.is_empty() {
                    iov[n_iov] = libc::iovec {
                        iov_base: body.as_ptr() as *mut libc::c_void,
                        iov_len: body.len(),
                    };
                    n_iov += 1;
                }
            }
            let Some(mut written) = sys::send_vectored(fd, &iov[..n_iov])? else {
                return Ok(Flush::Blocked);
            };
            self.queued.set(self.queued.get() - written);
            while written > 0 {
                let Some(front) = out.front_mut() else { break };
                let left = front.len() - front.sent;
                if written >= left {
                    written -= left;
                    out.pop_front();
                } else {
                    front.sent += written;
                    written = 0;
                }
            }
        }
        // An idle connection must not keep the queue's allocation.
        *out = VecDeque::new();
        Ok(Flush::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_stays_small() {
        // The idle-connection budget (docs/architecture.md) counts on this.
        assert!(
            std::mem::size_of::<Session>() <= 192,
            "{}",
            std::mem::size_of::<Session>()
        );
    }
}
