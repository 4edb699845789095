//! Many sockets' sends in one kernel entry: a core's own small io_uring, used synchronously.
//!
//! Every send carries `MSG_DONTWAIT`, so the kernel performs it during the `io_uring_enter` that
//! submits it (a full socket completes with `EAGAIN` instead of arming a poll), and every
//! completion is read before [`SendBatch::send`] returns: no buffer stays lent to the kernel past
//! the call, which is what lets the queues be borrowed rather than handed over.
//!
//! Owns the ring and the slice and header arrays of one batch. Never decides what to send or what
//! a result means for a connection (the caller applies them), and never holds anything across an
//! await. Whether this beats one `sendmsg` per socket is measured, not assumed
//! (docs/benchmarks.md, "Batched sends").

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{opcode, types, IoUring};

use crate::runtime::outq::OutQueue;

/// Sockets per submission; the ring holds one entry each and twice as many completions, so the
/// completion queue cannot overflow.
pub const MAX: usize = 256;

/// What one socket's send did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// This many bytes left (possibly fewer than were offered).
    Wrote(usize),
    /// The socket took nothing: its buffer is full.
    Full,
    /// The send failed (the peer reset, the socket was shut): `errno`.
    Failed(i32),
}

pub struct SendBatch {
    ring: IoUring,
    iov: Vec<libc::iovec>,
    /// One header per socket with more than one slice; only their addresses go to the kernel.
    hdr: Vec<libc::msghdr>,
    /// Each socket's slices in `iov`.
    spans: Vec<std::ops::Range<usize>>,
    results: Vec<i32>,
}

impl SendBatch {
    /// A ring of [`MAX`] entries, only ever entered from the calling thread.
    pub fn new() -> io::Result<SendBatch> {
        let build = |coop: bool| {
            let mut b = IoUring::builder();
            b.setup_submit_all();
            if coop {
                b.setup_single_issuer().setup_coop_taskrun();
            }
            b.build(MAX as u32)
        };
        let ring = build(true).or_else(|_| build(false))?;
        Ok(SendBatch {
            ring,
            iov: Vec::new(),
            hdr: Vec::new(),
            spans: Vec::new(),
            results: Vec::new(),
        })
    }

    /// Sends the head of every queue to its socket (at most [`MAX`] of them; the rest are
    /// ignored), all in one kernel entry; what each send did, in the order given. The borrows
    /// keep every queue as it was until the kernel is done with it.
    pub fn send(
        &mut self,
        items: &[(BorrowedFd<'_>, &OutQueue)],
    ) -> impl Iterator<Item = Sent> + '_ {
        let items = &items[..items.len().min(MAX)];
        self.iov.clear();
        self.hdr.clear();
        self.spans.clear();
        self.results.clear();
        self.results.resize(items.len(), 0);
        // Gather first: the arrays must not move once their addresses are in an entry.
        for (_, q) in items {
            let start = self.iov.len();
            q.gather(&mut self.iov);
            self.spans.push(start..self.iov.len());
        }
        for span in &self.spans {
            if span.len() > 1 {
                // SAFETY: msghdr is plain data; all-zero is a valid (empty) header.
                let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
                h.msg_iov = self.iov[span.clone()].as_ptr() as *mut libc::iovec;
                h.msg_iovlen = span.len() as _;
                self.hdr.push(h);
            }
        }
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        let mut hdrs = self.hdr.iter();
        let mut pending = 0;
        for (i, ((fd, _), span)) in items.iter().zip(&self.spans).enumerate() {
            let fd = types::Fd(fd.as_raw_fd());
            let entry = match span.len() {
                0 => continue,
                1 => {
                    let one = &self.iov[span.start];
                    let len = u32::try_from(one.iov_len).unwrap_or(u32::MAX);
                    opcode::Send::new(fd, one.iov_base as *const u8, len)
                        .flags(flags)
                        .build()
                }
                _ => {
                    let Some(h) = hdrs.next() else { continue };
                    opcode::SendMsg::new(fd, h as *const libc::msghdr)
                        .flags(flags as u32)
                        .build()
                }
            };
            // SAFETY: every address in the entry (slices, header) points into `self` or into a
            // queue borrowed for this call, and stays valid until its completion is read below.
            // The ring has MAX entries and this loop pushes at most MAX, so the push cannot fail.
            let pushed = unsafe { self.ring.submission().push(&entry.user_data(i as u64)) };
            if pushed.is_ok() {
                pending += 1;
            }
        }
        self.complete(pending);
        // A socket with nothing to send keeps its result of 0.
        self.results.iter().map(|&res| match res {
            n if n >= 0 => Sent::Wrote(n as usize),
            n if -n == libc::EAGAIN => Sent::Full,
            n => Sent::Failed(-n),
        })
    }

    /// Submits what is queued and reads `pending` completions. Returning earlier would leave the
    /// kernel addresses into memory the caller is about to reuse, so an error of the ring itself
    /// (which only a bug could cause: the queue sizes rule out overflow) ends the process.
    fn complete(&mut self, mut pending: usize) {
        while pending > 0 {
            match self.ring.submit_and_wait(pending) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) => {}
                Err(e) => {
                    tracing::error!(error = %e, "io_uring_enter failed with sends in flight");
                    std::process::abort();
                }
            }
            for cqe in self.ring.completion() {
                if let Some(r) = self.results.get_mut(cqe.user_data() as usize) {
                    *r = cqe.result();
                }
                pending -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn read_all(s: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn one_submission_sends_each_queue_to_its_socket_in_order() {
        let mut batch = SendBatch::new().unwrap();
        let sockets: Vec<_> = (0..40).map(|_| pair()).collect();
        let mut queues: Vec<OutQueue> = Vec::new();
        let shared = Bytes::from(vec![0x5a; 300]);
        for i in 0..sockets.len() {
            let mut q = OutQueue::default();
            // One slice (a shared frame), several (head and payload, then a copied run), or none.
            match i % 3 {
                0 => q.push(&[], shared.clone()),
                1 => {
                    q.push(b"HD", shared.clone());
                    q.push_copy(b"h", format!("small {i}").as_bytes());
                }
                _ => {}
            }
            queues.push(q);
        }
        let items: Vec<_> = sockets
            .iter()
            .map(|(a, _)| a.as_fd())
            .zip(&queues)
            .collect();
        let sent: Vec<Sent> = batch.send(&items).collect();
        drop(items);
        for (i, ((_, b), (q, s))) in sockets.iter().zip(queues.iter_mut().zip(sent)).enumerate() {
            let want = q.queued();
            assert_eq!(s, Sent::Wrote(want), "socket {i}");
            assert!(q.advance(want));
            let mut b = b.try_clone().unwrap();
            let got = read_all(&mut b);
            let mut expect = Vec::new();
            match i % 3 {
                0 => expect.extend_from_slice(&shared),
                1 => {
                    expect.extend_from_slice(b"HD");
                    expect.extend_from_slice(&shared);
                    expect.extend_from_slice(format!("hsmall {i}").as_bytes());
                }
                _ => {}
            }
            assert_eq!(got, expect, "socket {i}");
        }
    }

    #[test]
    fn a_full_socket_answers_full_and_a_closed_one_fails_without_stopping_the_rest() {
        let mut batch = SendBatch::new().unwrap();
        let (full, _full_peer) = pair();
        // Fill the first socket until it refuses.
        let chunk = vec![1u8; 65536];
        while rustix::net::send(full.as_fd(), &chunk, rustix::net::SendFlags::DONTWAIT).is_ok() {}
        let (gone, gone_peer) = pair();
        drop(gone_peer);
        let (fine, mut fine_peer) = pair();
        let mut q = OutQueue::default();
        q.push(&[], Bytes::from_static(b"hello"));
        let items = [(full.as_fd(), &q), (gone.as_fd(), &q), (fine.as_fd(), &q)];
        let sent: Vec<Sent> = batch.send(&items).collect();
        assert_eq!(sent[0], Sent::Full);
        assert_eq!(sent[1], Sent::Failed(libc::EPIPE));
        assert_eq!(sent[2], Sent::Wrote(5));
        assert_eq!(read_all(&mut fine_peer), b"hello");
    }

    #[test]
    fn a_partial_send_is_resumed_where_it_stopped() {
        let mut batch = SendBatch::new().unwrap();
        let (a, b) = pair();
        let mut q = OutQueue::default();
        let big = Bytes::from((0..4u32 << 20).map(|i| i as u8).collect::<Vec<u8>>());
        q.push(b"HEAD", big.clone());
        let mut got = Vec::new();
        let mut b = b;
        while q.queued() > 0 {
            let sent: Vec<Sent> = batch.send(&[(a.as_fd(), &q)]).collect();
            match sent[0] {
                Sent::Wrote(n) => {
                    q.advance(n);
                }
                Sent::Full => {}
                Sent::Failed(e) => panic!("errno {e}"),
            }
            got.extend(read_all(&mut b));
        }
        assert_eq!(&got[..4], b"HEAD");
        assert_eq!(&got[4..], &big[..]);
    }
}
