//! The core's readiness poller for upgraded client sockets: one edge-triggered epoll instance per
//! core, which the runtime waits on as a single descriptor, marking sessions readable and waking
//! their drivers.
//!
//! Why not one io_uring poll per socket: that request is submitted, armed in the kernel and
//! completed again for every read, which at game-sized messages cost about a tenth of the proxy's
//! CPU (docs/benchmarks.md). Registered here once, a socket costs nothing until data arrives, and
//! one pass over the epoll instance covers every session that became readable meanwhile.
//!
//! Owns the epoll descriptor. Reads a socket only through the connection's own receive path
//! (`conn::on_readable`), for a driver parked on it; the read clears the mark once it shows the
//! socket drained (edge-triggered: the next arrival marks it again). The peer's end is marked apart
//! and never cleared, since no edge follows it.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;

use crate::runtime::conn;
use crate::runtime::core::Core;
use crate::runtime::session::{flag, Session, SessionKey};
use crate::runtime::sys;

/// Events taken per pass; more ready sessions simply take another pass.
const BATCH: usize = 256;

pub struct Poller {
    /// The epoll descriptor, adopted by the runtime only so that it can be awaited like a socket
    /// (io_uring polls it; the epoll driver nests it in its own instance). Nothing else of the
    /// socket type is ever used on it.
    ep: monoio::net::TcpStream,
}

impl Poller {
    /// Must run inside the core's runtime, which adopts the descriptor.
    pub fn new() -> std::io::Result<Poller> {
        let fd = sys::epoll_create()?;
        // SAFETY: the descriptor is ours alone; the std type is only a vehicle into the runtime,
        // which closes it when the poller drops.
        let vehicle = unsafe { std::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
        Ok(Poller {
            ep: monoio::net::TcpStream::from_std(vehicle)?,
        })
    }

    /// Watches the session's socket from now on. The session starts marked readable, so bytes
    /// that arrived before this call are read without waiting for an edge.
    pub fn watch(&self, s: &Session) -> std::io::Result<()> {
        s.set(flag::READABLE);
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        sys::epoll_add(
            self.ep.as_raw_fd(),
            s.stream.as_raw_fd(),
            events,
            token(s.key),
        )
    }

    /// Marks readable every watched session with news, and reads for it or wakes its driver
    /// (`conn::on_readable`); runs for the life of the core. Closed sockets leave the epoll instance
    /// by themselves, and a token whose slot was reused no longer matches, so a late event is
    /// dropped.
    pub async fn run(self: Rc<Self>, core: Rc<Core>) {
        let fd: RawFd = self.ep.as_raw_fd();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            if let Err(e) = self.ep.readable(false).await {
                tracing::error!(core = core.index, error = %e, "cannot wait on the poller");
                return;
            }
            loop {
                let n = sys::epoll_ready(fd, &mut events);
                for ev in &events[..n] {
                    if let Some(s) = core.get(key(ev.u64)) {
                        let done = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
                        if ev.events & done != 0 {
                            s.set(flag::PEER_DONE);
                        }
                        s.set(flag::READABLE);
                        conn::on_readable(&core, &s);
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }
}

fn token(key: SessionKey) -> u64 {
    (u64::from(key.slot) << 32) | u64::from(key.generation)
}

fn key(token: u64) -> SessionKey {
    SessionKey {
        slot: (token >> 32) as u32,
        generation: token as u32,
    }
}

/// Parks the session's driver until the poller has marked it readable, or the peer finished, or
/// the session broke meanwhile, or the poller gave the driver back what an inline read left it
/// (by clearing `PARKED`).
pub async fn parked(s: &Session) {
    s.set(flag::PARKED);
    std::future::poll_fn(|cx| {
        if !s.has(flag::PARKED) || s.has(flag::READABLE | flag::PEER_DONE | flag::BROKEN) {
            std::task::Poll::Ready(())
        } else {
            s.waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        }
    })
    .await;
    s.clear(flag::PARKED);
}

#[cfg(test)]
mod tests {
    use super::{key, token};
    use crate::runtime::session::SessionKey;

    #[test]
    fn tokens_carry_slot_and_generation() {
        let k = SessionKey {
            slot: 0xdead_beef,
            generation: 7,
        };
        assert_eq!(key(token(k)), k);
    }
}
