//! The write side of a core: frames queued to clients as the session decides, server-initiated
//! closes and resets, and the flusher and writer tasks that put queues on the wire.
//!
//! Owns the core's dirty list (sessions with bytes to flush this turn). Applies the session's
//! decisions (may this be sent, is the backlog over, must the write side shut) and decides none of
//! them. Never blocks: a socket that does not take everything gets a writer task that waits for it.

use std::io;
use std::rc::Rc;

use bytes::Bytes;

use crate::gateway::conn::{flag, Conn};
use crate::gateway::core::{bump, Core};
use crate::runtime::contain::{catch, Contained};
use crate::runtime::send_batch::{self, SendBatch, Sent};
use crate::runtime::{sys, Flush};
use crate::session::Session;
use crate::ws::{close_payload, OpCode};

/// A message going into a queue whose socket is blocked may wait there long: copy it out of the
/// buffer it was read into, so that it holds only its own bytes, not the (shared, larger) buffer.
/// Messages to sockets that are writing go as they are: the fast path stays zero-copy.
pub fn detach_if_parked(parked: bool, payload: Bytes) -> Bytes {
    if parked && !payload.is_empty() {
        Bytes::copy_from_slice(&payload)
    } else {
        payload
    }
}

impl Core {
    /// Queues a message for the client, if its session may still be sent to (see
    /// [`Session::over_backlog`] for what happens to a client that does not read).
    pub fn send(&self, c: &Rc<Conn>, opcode: OpCode, payload: Bytes) {
        let mut st = c.state.borrow_mut();
        self.send_on(c, &mut st.session, |c| {
            c.push_frame(opcode, detach_if_parked(c.has(flag::WRITER), payload))
        });
    }

    /// [`Core::send`] for a game-sized payload, copied into the queue.
    pub fn send_copy(&self, c: &Rc<Conn>, opcode: OpCode, payload: &[u8]) {
        let mut st = c.state.borrow_mut();
        self.send_on(c, &mut st.session, |c| c.push_frame_copy(opcode, payload));
    }

    /// Queues what `push` queues, with the session already borrowed by the caller.
    pub(super) fn send_on(&self, c: &Rc<Conn>, session: &mut Session, push: impl FnOnce(&Conn)) {
        if !session.may_send() || c.has(flag::BROKEN) {
            return;
        }
        let before = c.queued();
        push(c);
        bump(&self.counters.messages_out);
        if Session::over_backlog(before, self.settings.max_client_backlog) {
            bump(&self.counters.backlog_closes);
            tracing::debug!(
                session = c.id,
                queued = c.queued(),
                "client not reading, closing"
            );
            c.discard_unsent();
            self.close_on(c, session, 1008, "client not reading");
            return;
        }
        self.mark_dirty(c);
    }

    /// Starts a server-initiated close: the close frame is queued, nothing may follow it, and the
    /// client has `close_timeout` to answer before the connection is reset.
    pub fn close(&self, c: &Rc<Conn>, code: u16, reason: &str) {
        let mut st = c.state.borrow_mut();
        self.close_on(c, &mut st.session, code, reason);
    }

    pub(super) fn close_on(&self, c: &Rc<Conn>, session: &mut Session, code: u16, reason: &str) {
        let Some(deadline) = session.begin_close(code, self.now(), &self.settings.timing) else {
            return;
        };
        c.push_frame(OpCode::Close, close_payload(code, reason));
        c.wake();
        self.wheel.borrow_mut().insert(c.key, deadline);
        self.mark_dirty(c);
    }

    /// Cuts the connection now: queued data is dropped and the peer gets a RST. The driver wakes
    /// up (its socket reads end) and cleans up.
    pub fn abort(&self, c: &Conn) {
        c.set(flag::BROKEN);
        c.wake();
        c.discard_all();
        let fd = sys::fd(&c.stream);
        sys::set_linger_zero(fd);
        sys::shutdown(fd, libc::SHUT_RDWR);
    }

    pub fn mark_dirty(&self, c: &Rc<Conn>) {
        if !c.has(flag::DIRTY) {
            c.set(flag::DIRTY);
            let mut dirty = self.dirty.borrow_mut();
            if dirty.is_empty() {
                self.flush_wake.notify();
            }
            dirty.push(c.clone());
        }
    }

    /// Flushes one session now; a full socket hands the rest to a writer task.
    fn flush(self: &Rc<Self>, c: &Rc<Conn>) {
        c.clear(flag::DIRTY);
        if c.has(flag::WRITER | flag::BROKEN) {
            return;
        }
        self.flushed(c, c.flush());
    }

    /// Acts on what a flush of `c` achieved.
    fn flushed(self: &Rc<Self>, c: &Rc<Conn>, result: io::Result<Flush>) {
        match result {
            Ok(Flush::Done) => self.after_flush(c),
            Ok(Flush::Blocked) => {
                c.set(flag::WRITER);
                let (core, conn) = (self.clone(), c.clone());
                monoio::spawn(Contained::new(writer(self.clone(), c.clone()), move || {
                    core.release_after_panic(&conn)
                }));
            }
            Err(e) => {
                tracing::debug!(session = c.id, error = %e, "write failed");
                self.abort(c);
            }
        }
    }

    /// Flushes up to [`send_batch::MAX`] sessions with one kernel entry for all of them. A session
    /// whose send stopped short goes on as a single flush would (the rest, or a writer task).
    fn flush_batch(self: &Rc<Self>, batch: &[Rc<Conn>], ring: &mut SendBatch) {
        let mut queued = Vec::with_capacity(batch.len());
        for c in batch {
            c.clear(flag::DIRTY);
            if c.has(flag::WRITER | flag::BROKEN) {
                continue;
            }
            match c.queue_now() {
                Some(q) => queued.push((c, q)),
                None => self.after_flush(c),
            }
        }
        let items: Vec<_> = queued
            .iter()
            .map(|(c, q)| (sys::fd(&c.stream), &**q))
            .collect();
        let sent: Vec<Sent> = ring.send(&items).collect();
        drop(items);
        let conns = queued.into_iter().map(|(c, _)| c);
        for (c, sent) in conns.zip(sent) {
            let step = || match sent {
                Sent::Wrote(n) if c.wrote(n) => self.after_flush(c),
                Sent::Wrote(_) => self.flushed(c, c.flush()),
                Sent::Full => self.flushed(c, Ok(Flush::Blocked)),
                Sent::Failed(errno) => self.flushed(c, Err(io::Error::from_raw_os_error(errno))),
            };
            if catch(step).is_none() {
                self.release_after_panic(c);
            }
        }
    }

    fn after_flush(&self, c: &Conn) {
        if c.state.borrow_mut().session.on_written(c.queued()) {
            sys::shutdown(sys::fd(&c.stream), libc::SHUT_WR);
        }
    }

    /// The flusher: everything sent during one turn of the event loop goes out in one vectored
    /// write per session, after the producers (connection drivers, upstream links) have yielded;
    /// with `batched_sends`, the writes of many sessions share one kernel entry. A panic while
    /// flushing one session resets that session only.
    pub async fn flusher(self: Rc<Self>) {
        loop {
            self.flush_wake.notified().await;
            let batch = std::mem::take(&mut *self.dirty.borrow_mut());
            let mut ring = self.sends.borrow_mut();
            match ring.as_mut() {
                // One session: a plain send is one kernel entry too, and coalesces small pieces.
                Some(ring) if batch.len() > 1 => {
                    for chunk in batch.chunks(send_batch::MAX) {
                        // Nothing of a session's can panic before the sends are out; a bug there
                        // still costs no session its data: each is flushed on its own instead.
                        if catch(|| self.flush_batch(chunk, ring)).is_none() {
                            chunk.iter().for_each(|c| self.flush_one(c));
                        }
                    }
                }
                _ => batch.iter().for_each(|c| self.flush_one(c)),
            }
            drop(ring);
            // Hand the (now empty) vector back so its capacity is reused.
            let mut dirty = self.dirty.borrow_mut();
            if dirty.is_empty() {
                let mut batch = batch;
                batch.clear();
                *dirty = batch;
            }
        }
    }

    /// [`Core::flush`], with a panic resetting that session only.
    fn flush_one(self: &Rc<Self>, c: &Rc<Conn>) {
        if catch(|| self.flush(c)).is_none() {
            self.release_after_panic(c);
        }
    }
}

/// Waits for a full socket to drain. Bounded by the client: a client that never reads passes
/// `max_client_backlog`, is closed, and is reset at its close deadline, which wakes this task.
async fn writer(core: Rc<Core>, c: Rc<Conn>) {
    loop {
        if c.stream.writable(false).await.is_err() || c.has(flag::BROKEN) {
            break;
        }
        match c.flush() {
            Ok(Flush::Done) => {
                c.clear(flag::WRITER);
                core.after_flush(&c);
                return;
            }
            Ok(Flush::Blocked) => continue,
            Err(_) => {
                core.abort(&c);
                break;
            }
        }
    }
    c.clear(flag::WRITER);
}

#[cfg(test)]
mod tests {
    use super::detach_if_parked;
    use bytes::Bytes;

    #[test]
    fn only_parked_messages_are_copied_out_of_their_buffer() {
        let buffer = Bytes::from(vec![7u8; 65536]);
        let message = buffer.slice(100..164);
        let fast = detach_if_parked(false, message.clone());
        assert_eq!(
            fast.as_ptr(),
            message.as_ptr(),
            "a message to a writing socket was copied"
        );
        let parked = detach_if_parked(true, message.clone());
        assert_eq!(parked, message);
        let inside = buffer.as_ptr_range();
        assert!(
            !inside.contains(&parked.as_ptr()),
            "a parked message still pins its read buffer"
        );
    }
}
