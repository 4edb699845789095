//! A bounded-by-its-owner queue of outgoing frames, each a small header beside a `Bytes` payload,
//! written with vectored nonblocking sends.
//!
//! Owns the bytes waiting for one socket (a client's or an upstream link's). Never copies a payload
//! to prepend its header and never blocks: what the socket does not take stays queued. Its owner
//! enforces the byte bound (`queued()`), since the right reaction differs (close a client, pause the
//! sessions feeding a link).

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use bytes::Bytes;

use crate::runtime::sys;

/// Room for the largest header either side writes: 14 bytes (upstream frames; WebSocket ≤ 10).
pub const HEAD_CAP: usize = 14;

/// At most this many slices per sendmsg: enough to batch a burst, small enough for the stack.
const MAX_IOV: usize = 64;

struct OutFrame {
    payload: Bytes,
    head: [u8; HEAD_CAP],
    head_len: u8,
    /// Bytes of head + payload already written.
    sent: usize,
}

impl OutFrame {
    fn len(&self) -> usize {
        self.head_len as usize + self.payload.len()
    }
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    Done,
    Blocked,
}

#[derive(Default)]
pub struct OutQueue {
    frames: VecDeque<OutFrame>,
    queued: usize,
}

impl OutQueue {
    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queues `head` (at most [`HEAD_CAP`] bytes; longer is a caller bug and is cut) then `payload`.
    pub fn push(&mut self, head: &[u8], payload: Bytes) {
        let n = head.len().min(HEAD_CAP);
        let mut h = [0u8; HEAD_CAP];
        h[..n].copy_from_slice(&head[..n]);
        let f = OutFrame {
            payload,
            head: h,
            head_len: n as u8,
            sent: 0,
        };
        self.queued += f.len();
        self.frames.push_back(f);
    }

    /// Drops every frame that has not started to leave; a partly written frame must finish or the
    /// peer would see a corrupt stream.
    pub fn discard_unsent(&mut self) {
        let keep = usize::from(self.frames.front().is_some_and(|f| f.sent > 0));
        self.frames.truncate(keep);
        self.queued = self.frames.iter().map(|f| f.len() - f.sent).sum();
    }

    pub fn clear(&mut self) {
        *self = OutQueue::default();
    }

    /// Writes as much as the socket takes, in vectored writes of up to 64 slices.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<Flush> {
        while !self.frames.is_empty() {
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV];
            let mut n_iov = 0;
            for f in self.frames.iter() {
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
            self.queued -= written;
            while written > 0 {
                let Some(front) = self.frames.front_mut() else {
                    break;
                };
                let left = front.len() - front.sent;
                if written >= left {
                    written -= left;
                    self.frames.pop_front();
                } else {
                    front.sent += written;
                    written = 0;
                }
            }
        }
        // An idle socket must not keep the queue's allocation.
        self.frames = VecDeque::new();
        Ok(Flush::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn partial_writes_resume_mid_frame_in_order() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        let big = Bytes::from(vec![7u8; 4 << 20]);
        q.push(b"HEAD", big.clone());
        q.push(b"", Bytes::from_static(b"tail"));
        assert_eq!(q.queued(), 4 + big.len() + 4);
        // The socket buffer is far smaller than 4 MiB: the first flush must stop part way.
        assert_eq!(q.flush(a.as_raw_fd()).unwrap(), Flush::Blocked);
        assert!(q.queued() > 0 && q.queued() < big.len());
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.read_to_end(&mut all).unwrap();
            all
        });
        while q.flush(a.as_raw_fd()).unwrap() == Flush::Blocked {
            std::thread::yield_now();
        }
        assert_eq!(q.queued(), 0);
        drop(a);
        let all = reader.join().unwrap();
        assert_eq!(&all[..4], b"HEAD");
        assert!(all[4..4 + big.len()].iter().all(|&x| x == 7));
        assert_eq!(&all[4 + big.len()..], b"tail");
    }

    #[test]
    fn discard_unsent_keeps_a_started_frame() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        q.push(b"", Bytes::from(vec![1u8; 4 << 20]));
        q.push(b"", Bytes::from_static(b"later"));
        assert_eq!(q.flush(a.as_raw_fd()).unwrap(), Flush::Blocked);
        let left_of_first = q.queued() - 5;
        q.discard_unsent();
        assert_eq!(q.queued(), left_of_first);
    }
}
