//! A bounded-by-its-owner queue of outgoing frames, written with vectored nonblocking sends: large
//! payloads as `Bytes` handles with their small header beside them, game-sized ones copied with their
//! header into one contiguous run behind them.
//!
//! Owns the bytes waiting for one socket (a client's or an upstream link's). Never copies a large
//! payload, never keeps an allocation once everything has left, and never blocks: what the socket
//! does not take stays queued. Its owner enforces the byte bound (`queued()`), since the right
//! reaction differs (close a client, pause the sessions feeding a link).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::io::IoSlice;
use std::marker::PhantomData;
use std::os::fd::BorrowedFd;

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
    /// Which `latest` series the frame belongs to (see [`OutQueue::push_latest`]); 0 for none.
    tag: u32,
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

pub struct OutQueue {
    frames: VecDeque<OutFrame>,
    /// Frames copied in whole ([`OutQueue::push_copy`]), in order after every frame in `frames`.
    /// A game-sized message costs a copy of a few dozen bytes here, against a `Bytes` handle with
    /// atomic reference counts and a queue slot each; a flush of nothing else is one `send`.
    run: Vec<u8>,
    /// Bytes of `run` already written.
    run_sent: usize,
    queued: usize,
    /// The largest run kept for the next burst once everything has left.
    keep: usize,
}

impl Default for OutQueue {
    /// A client's queue: keeps a run of the starting size, for [`spare`] to hand out again.
    fn default() -> Self {
        OutQueue::keeping(RUN_START)
    }
}

impl OutQueue {
    /// A queue that keeps a run of up to `keep` bytes' capacity once everything has left: a link
    /// carries every session's burst of a turn and is never idle for long, so regrowing its run
    /// from nothing at each flush would cost more than the memory it holds.
    pub fn keeping(keep: usize) -> Self {
        OutQueue {
            frames: VecDeque::new(),
            run: Vec::new(),
            run_sent: 0,
            queued: 0,
            keep,
        }
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Queues `head` then `payload` by copying both behind what is queued: for payloads of a few
    /// hundred bytes at most, which the flush would copy together anyway.
    pub fn push_copy(&mut self, head: &[u8], payload: &[u8]) {
        if self.run.capacity() == 0 {
            self.run.reserve(RUN_START);
        }
        self.run.extend_from_slice(head);
        self.run.extend_from_slice(payload);
        self.queued += head.len() + payload.len();
    }

    /// Queues `head` (at most [`HEAD_CAP`] bytes; longer is a caller bug and is cut) then `payload`.
    pub fn push(&mut self, head: &[u8], payload: Bytes) {
        self.push_tagged(head, payload, 0);
    }

    /// Queues a whole frame of the series `tag` (non-zero) and drops the series' older frame if it
    /// has not started to leave: a reader that falls behind gets only the newest of the series.
    /// The newer frame goes to the back, not into the older one's place, so that it still leaves
    /// after everything queued before it. Returns whether an older frame was dropped.
    pub fn push_latest(&mut self, frame: Bytes, tag: u32) -> bool {
        let older = self
            .frames
            .iter()
            .rposition(|f| f.tag == tag && f.sent == 0);
        let dropped = older
            .and_then(|i| self.frames.remove(i))
            .map(|f| self.queued -= f.len())
            .is_some();
        self.push_tagged(&[], frame, tag);
        dropped
    }

    fn push_tagged(&mut self, head: &[u8], payload: Bytes, tag: u32) {
        self.seal_run();
        let n = head.len().min(HEAD_CAP);
        let mut h = [0u8; HEAD_CAP];
        h[..n].copy_from_slice(&head[..n]);
        let f = OutFrame {
            payload,
            head: h,
            head_len: n as u8,
            tag,
            sent: 0,
        };
        self.queued += f.len();
        self.frames.push_back(f);
    }

    /// Moves the copied run into `frames`, so that a frame queued after it leaves after it.
    fn seal_run(&mut self) {
        if self.run_sent < self.run.len() {
            let run = Bytes::from(std::mem::take(&mut self.run));
            self.frames.push_back(OutFrame {
                payload: run,
                head: [0; HEAD_CAP],
                head_len: 0,
                tag: 0,
                sent: std::mem::take(&mut self.run_sent),
            });
        }
    }

    /// Drops every frame that has not started to leave; a partly written frame must finish or the
    /// peer would see a corrupt stream. A copied run keeps no frame boundaries, so one that has
    /// started to leave is kept whole.
    pub fn discard_unsent(&mut self) {
        // (A run that started to leave is behind every frame, so `frames` is empty then.)
        if self.run_sent == 0 {
            self.run.clear();
        }
        let keep = usize::from(self.frames.front().is_some_and(|f| f.sent > 0));
        self.frames.truncate(keep);
        self.queued = self.frames.iter().map(|f| f.len() - f.sent).sum::<usize>()
            + (self.run.len() - self.run_sent);
    }

    pub fn clear(&mut self) {
        *self = OutQueue::keeping(self.keep);
    }

    /// Writes as much as the socket takes, in vectored writes of up to 64 slices. Runs of small
    /// pieces (headers, game-sized payloads) are first copied into one contiguous stretch: the
    /// kernel pays per slice in `sendmsg`, and a burst of 64-byte messages would otherwise cost two
    /// slices each.
    pub fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<Flush> {
        SCRATCH_BUF.with(|scratch| self.flush_with(fd, &mut scratch.borrow_mut()))
    }

    fn flush_with(&mut self, fd: BorrowedFd<'_>, scratch: &mut Vec<u8>) -> io::Result<Flush> {
        while !self.frames.is_empty() {
            let mut plan = Plan::new(scratch);
            let mut all = true;
            for f in self.frames.iter() {
                if plan.n_iov + 2 > MAX_IOV {
                    all = false;
                    break;
                }
                let head_len = f.head_len as usize;
                if f.sent < head_len {
                    plan.add(&f.head[f.sent..head_len]);
                }
                let body = &f.payload[f.sent.saturating_sub(head_len)..];
                if !body.is_empty() {
                    plan.add(body);
                }
            }
            // The copied run goes out in the same call, as it is: it is contiguous already.
            let run = &self.run[self.run_sent..];
            if all && !run.is_empty() && plan.n_iov < MAX_IOV {
                plan.add_whole(run);
            }
            let iov = plan.iovecs();
            let Some(written) = sys::send_vectored(fd, iov)? else {
                return Ok(Flush::Blocked);
            };
            self.consume(written);
        }
        while self.run_sent < self.run.len() {
            let one = [IoSlice::new(&self.run[self.run_sent..])];
            let Some(written) = sys::send_vectored(fd, &one)? else {
                return Ok(Flush::Blocked);
            };
            self.queued -= written;
            self.run_sent += written;
        }
        self.emptied();
        Ok(Flush::Done)
    }

    /// Appends the queue's next bytes to `iov` as they lie, up to [`MAX_IOV`] slices and without
    /// copying anything (unlike [`OutQueue::flush`]): for a send the caller submits together with
    /// other sockets' ([`crate::runtime::send_batch`]). The slices point into the queue, so it must
    /// not change until that send has completed.
    pub fn gather(&self, iov: &mut Vec<libc::iovec>) {
        fn slice(iov: &mut Vec<libc::iovec>, piece: &[u8]) {
            iov.push(libc::iovec {
                iov_base: piece.as_ptr() as *mut libc::c_void,
                iov_len: piece.len(),
            });
        }
        let start = iov.len();
        for f in &self.frames {
            if iov.len() - start + 2 > MAX_IOV {
                // The run leaves after every frame: it waits for the next send too.
                return;
            }
            let head_len = f.head_len as usize;
            if f.sent < head_len {
                slice(iov, &f.head[f.sent..head_len]);
            }
            let body = &f.payload[f.sent.saturating_sub(head_len)..];
            if !body.is_empty() {
                slice(iov, body);
            }
        }
        if self.run_sent < self.run.len() {
            slice(iov, &self.run[self.run_sent..]);
        }
    }

    /// Forgets the first `written` bytes, which a send outside [`OutQueue::flush`] wrote; whether
    /// the queue is empty now (then it holds no allocation beyond what [`OutQueue::flush`] keeps).
    pub fn advance(&mut self, written: usize) -> bool {
        self.consume(written.min(self.queued));
        if self.queued == 0 {
            self.emptied();
            return true;
        }
        false
    }

    fn consume(&mut self, mut written: usize) {
        self.queued -= written;
        while written > 0 {
            let Some(front) = self.frames.front_mut() else {
                self.run_sent += written;
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

    /// Forgets what has left. A run of at most `keep` bytes' capacity is kept for the next burst;
    /// anything larger, and the frame slots, are freed, so no socket parks a big allocation.
    fn emptied(&mut self) {
        self.frames = VecDeque::new();
        self.run_sent = 0;
        if self.run.capacity() <= self.keep {
            self.run.clear();
        } else {
            self.run = Vec::new();
        }
    }
}

/// A core's spare client queues. A session holds a queue only while bytes wait for its socket;
/// taking it from here and giving it back once the flush is done spares the allocator two blocks
/// per burst, and the run that is written into next is one that was written a moment ago, still in
/// cache. Bounded, so a burst to very many sessions at once does not leave its queues behind.
pub mod spare {
    use super::OutQueue;
    use std::cell::RefCell;

    /// About 1.1 KiB each: at most a few hundred KiB per core.
    const MAX: usize = 256;

    thread_local! {
        // Boxed as the sessions hold them: handing one out or back moves a pointer, no allocation.
        #[allow(clippy::vec_box)]
        static SPARES: RefCell<Vec<Box<OutQueue>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty queue: a spare one if this thread has one.
    pub fn take() -> Box<OutQueue> {
        SPARES.with(|s| s.borrow_mut().pop()).unwrap_or_default()
    }

    /// Takes back a queue its session no longer needs, dropping whatever it still held.
    pub fn give(mut q: Box<OutQueue>) {
        q.queued = 0;
        q.emptied();
        SPARES.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < MAX {
                s.push(q);
            }
        });
    }

    /// Spare queues held by this thread.
    #[cfg(test)]
    pub fn held() -> usize {
        SPARES.with(|s| s.borrow().len())
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use bytes::Bytes;

        #[test]
        fn a_queue_given_back_is_handed_out_again_empty_with_its_run() {
            // Each test runs on a thread of its own, so the spares start empty.
            assert_eq!(held(), 0);
            let mut q = take();
            q.push_copy(b"h", &[1; 100]);
            q.push(b"H", Bytes::from(vec![2u8; 5000]));
            q.push_copy(b"h", &[3; 10]);
            let run = q.run.as_ptr();
            give(q);
            assert_eq!(held(), 1);
            let q = take();
            assert_eq!(held(), 0);
            assert_eq!(q.queued(), 0);
            assert!(q.frames.is_empty() && q.run.is_empty() && q.run_sent == 0);
            // The same queue, still holding the run it was given back with.
            assert_eq!(q.run.as_ptr(), run);
        }

        #[test]
        fn spares_are_bounded() {
            let all: Vec<_> = (0..MAX + 10).map(|_| take()).collect();
            all.into_iter().for_each(give);
            assert_eq!(held(), MAX);
        }
    }
}

/// Pieces up to this size are copied together rather than given a slice each; payloads up to this
/// size are what callers hand to [`OutQueue::push_copy`].
pub const SMALL: usize = 256;
/// First allocation of a copied run: room for a burst of a dozen 64-byte frames without regrowing.
const RUN_START: usize = 1024;
/// Room for the copied pieces of one sendmsg: a burst of a few hundred small frames to a link.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    /// The copy space of every flush on this thread (a core, or the echo server): allocated once
    /// at its full size, never zeroed again, and never held across an await.
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH));
}

/// One sendmsg being assembled: slices of the queued frames, with runs of small pieces copied into
/// `scratch` so that they leave as one slice.
struct Plan<'a> {
    /// Raw slices, so that pieces of the queue and of `scratch` can sit side by side while
    /// `scratch` still grows; every one points into memory borrowed for `'a`.
    iov: [libc::iovec; MAX_IOV],
    /// Which slices point into `scratch` (their `iov_base` holds an offset until `iovecs`).
    in_scratch: u64,
    n_iov: usize,
    scratch: &'a mut Vec<u8>,
    pieces: PhantomData<&'a [u8]>,
}

impl<'a> Plan<'a> {
    fn new(scratch: &'a mut Vec<u8>) -> Self {
        scratch.clear();
        Plan {
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV],
            in_scratch: 0,
            n_iov: 0,
            scratch,
            pieces: PhantomData,
        }
    }

    fn add(&mut self, piece: &'a [u8]) {
        let len = piece.len();
        let used = self.scratch.len();
        if len <= SMALL && used + len <= SCRATCH {
            // Slices into the scratch are kept as offsets until `iovecs`, so this may move it.
            self.scratch.extend_from_slice(piece);
            let last = self.n_iov.wrapping_sub(1);
            if self.n_iov > 0 && self.in_scratch & (1 << last) != 0 {
                // The previous slice is the scratch run this piece continues.
                self.iov[last].iov_len += len;
                return;
            }
            self.in_scratch |= 1 << self.n_iov;
            self.iov[self.n_iov] = libc::iovec {
                iov_base: used as *mut libc::c_void,
                iov_len: len,
            };
            self.n_iov += 1;
        } else {
            self.add_whole(piece);
        }
    }

    /// Adds a piece as a slice of its own, never copied.
    fn add_whole(&mut self, piece: &'a [u8]) {
        self.iov[self.n_iov] = libc::iovec {
            iov_base: piece.as_ptr() as *mut libc::c_void,
            iov_len: piece.len(),
        };
        self.n_iov += 1;
    }

    /// The finished slices; scratch offsets become pointers only now, once nothing more is copied.
    fn iovecs(&mut self) -> &[IoSlice<'a>] {
        let base = self.scratch.as_ptr();
        for i in 0..self.n_iov {
            if self.in_scratch & (1 << i) != 0 {
                let off = self.iov[i].iov_base as usize;
                self.iov[i].iov_base = base.wrapping_add(off) as *mut libc::c_void;
                self.in_scratch &= !(1 << i);
            }
        }
        let iov = &self.iov[..self.n_iov];
        // SAFETY: `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix; every slice points
        // into a piece borrowed for `'a` (`add`, `add_whole`) or into `scratch`, which is borrowed
        // for `'a` and cannot change while the returned slices borrow `self`.
        unsafe { std::slice::from_raw_parts(iov.as_ptr().cast::<IoSlice<'a>>(), iov.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    /// Flushes all of `q` into `a` while a thread reads everything from `b`; what `b` read.
    fn flush_to_reader(q: &mut OutQueue, a: UnixStream, mut b: UnixStream) -> Vec<u8> {
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            b.read_to_end(&mut all).unwrap();
            all
        });
        while q.flush(a.as_fd()).unwrap() == Flush::Blocked {
            std::thread::yield_now();
        }
        assert_eq!(q.queued(), 0);
        drop(a);
        reader.join().unwrap()
    }

    #[test]
    fn partial_writes_resume_mid_frame_in_order() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        let big = Bytes::from(vec![7u8; 4 << 20]);
        q.push(b"HEAD", big.clone());
        q.push(b"", Bytes::from_static(b"tail"));
        assert_eq!(q.queued(), 4 + big.len() + 4);
        // The socket buffer is far smaller than 4 MiB: the first flush must stop part way.
        assert_eq!(q.flush(a.as_fd()).unwrap(), Flush::Blocked);
        assert!(q.queued() > 0 && q.queued() < big.len());
        let all = flush_to_reader(&mut q, a, b);
        assert_eq!(&all[..4], b"HEAD");
        assert!(all[4..4 + big.len()].iter().all(|&x| x == 7));
        assert_eq!(&all[4 + big.len()..], b"tail");
    }

    #[test]
    fn mixed_small_and_large_frames_leave_in_order_through_partial_writes() {
        // Enough small frames to overflow the copy space, large payloads between them, and a
        // reader slower than the writer, so flushes stop mid-run, mid-copy and mid-frame.
        let mut rng = crate::test_rng::Rng(0x5eed_0ff1_u64);
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for i in 0..3000 {
            let head_len = rng.below(HEAD_CAP + 1);
            let head = rng.bytes(head_len);
            let len = match i % 50 {
                0 => 300 + rng.below(5000),
                _ => rng.below(SMALL + 1),
            };
            let payload = rng.bytes(len);
            expect.extend_from_slice(&head);
            expect.extend_from_slice(&payload);
            // Copied and handed-over frames interleave, so runs are sealed between large frames.
            if len <= SMALL && rng.below(3) > 0 {
                q.push_copy(&head, &payload);
            } else {
                q.push(&head, Bytes::from(payload));
            }
        }
        assert_eq!(q.queued(), expect.len());
        let total = expect.len();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut chunk = [0u8; 777];
            while all.len() < total {
                let n = b.read(&mut chunk).unwrap();
                assert!(n > 0);
                all.extend_from_slice(&chunk[..n]);
            }
            all
        });
        while q.flush(a.as_fd()).unwrap() == Flush::Blocked {
            std::thread::yield_now();
        }
        assert_eq!(q.queued(), 0);
        let all = reader.join().unwrap();
        assert!(all == expect, "the stream differs from the frames queued");
    }

    #[test]
    fn a_copied_run_that_started_to_leave_is_kept_whole_and_sealed_in_order() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for i in 0..200_000u32 {
            let piece = i.to_be_bytes();
            q.push_copy(b"h", &piece);
            expect.push(b'h');
            expect.extend_from_slice(&piece);
        }
        assert_eq!(q.flush(a.as_fd()).unwrap(), Flush::Blocked);
        let left = q.queued();
        assert!(left > 0 && left < expect.len());
        // No frame boundaries are known inside the run: all of it stays.
        q.discard_unsent();
        assert_eq!(q.queued(), left);
        // A large frame queued now must leave after the rest of the run.
        q.push(b"BIG", Bytes::from(vec![9u8; 100_000]));
        expect.extend_from_slice(b"BIG");
        expect.extend_from_slice(&[9u8; 100_000]);
        let total = expect.len();
        let reader = std::thread::spawn(move || {
            let mut all = vec![0u8; total];
            b.read_exact(&mut all).unwrap();
            all
        });
        while q.flush(a.as_fd()).unwrap() == Flush::Blocked {
            std::thread::yield_now();
        }
        assert_eq!(q.queued(), 0);
        assert!(reader.join().unwrap() == expect);
    }

    #[test]
    fn discard_unsent_drops_a_copied_run_that_has_not_started() {
        let mut q = OutQueue::default();
        q.push_copy(b"h", b"one");
        q.push_copy(b"h", b"two");
        q.discard_unsent();
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn discard_unsent_keeps_a_started_frame() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        q.push(b"", Bytes::from(vec![1u8; 4 << 20]));
        q.push(b"", Bytes::from_static(b"later"));
        assert_eq!(q.flush(a.as_fd()).unwrap(), Flush::Blocked);
        let left_of_first = q.queued() - 5;
        q.discard_unsent();
        assert_eq!(q.queued(), left_of_first);
    }

    fn drain(q: &mut OutQueue) -> Vec<u8> {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        assert_eq!(q.flush(a.as_fd()).unwrap(), Flush::Done);
        drop(a);
        let mut all = Vec::new();
        b.read_to_end(&mut all).unwrap();
        all
    }

    #[test]
    fn push_latest_keeps_the_newest_of_a_series_behind_what_came_between() {
        let mut q = OutQueue::default();
        assert!(!q.push_latest(Bytes::from_static(b"[s1]"), 7));
        q.push(b"", Bytes::from_static(b"[d]"));
        q.push_copy(b"", b"[c]");
        assert!(
            !q.push_latest(Bytes::from_static(b"[t1]"), 9),
            "another series"
        );
        assert!(q.push_latest(Bytes::from_static(b"[s2]"), 7));
        assert!(q.push_latest(Bytes::from_static(b"[s3]"), 7));
        assert_eq!(q.queued(), 3 + 3 + 4 + 4, "[s1] and [s2] left the count");
        assert_eq!(drain(&mut q), b"[d][c][t1][s3]");
    }

    #[test]
    fn push_latest_never_drops_a_frame_that_started_to_leave() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        let big = Bytes::from(vec![1u8; 4 << 20]);
        q.push_latest(big.clone(), 3);
        assert_eq!(q.flush(a.as_fd()).unwrap(), Flush::Blocked);
        assert!(!q.push_latest(Bytes::from_static(b"new"), 3));
        let all = flush_to_reader(&mut q, a, b);
        assert_eq!(all.len(), big.len() + 3);
        assert_eq!(&all[big.len()..], b"new");
    }

    #[test]
    fn a_frame_queued_to_many_is_one_allocation_and_a_slot_each() {
        // docs/architecture.md ("Fan-out") counts on this: N members waiting on one published
        // message hold its bytes once, and a queue slot of at most 64 bytes each.
        assert!(std::mem::size_of::<OutFrame>() <= 64);
        let frame = Bytes::from(vec![3u8; 1000]);
        let queues: Vec<OutQueue> = (0..1000)
            .map(|i| {
                let mut q = OutQueue::default();
                if i % 2 == 0 {
                    q.push(&[], frame.clone());
                } else {
                    q.push_latest(frame.clone(), 1);
                }
                q
            })
            .collect();
        for q in &queues {
            assert_eq!(
                q.frames.back().map(|f| f.payload.as_ptr()),
                Some(frame.as_ptr())
            );
        }
    }
}
