//! A core's readiness poller for upgraded client sockets: one edge-triggered epoll instance per
//! core, which the runtime waits on as a single descriptor, handing each ready token to the
//! gateway.
//!
//! Why not one io_uring poll per socket: that request is submitted, armed in the kernel and
//! completed again for every read (docs/benchmarks.md has the measurement). Registered here once, a
//! socket costs nothing until data arrives, and one pass over the epoll instance covers every
//! socket that became readable meanwhile.
//!
//! Owns the epoll descriptor. Never reads a socket and knows nothing of sessions: a watched socket
//! is a token, and what readiness means for it is the caller's (`gateway::receive::on_readable`).
//! Closed sockets leave the epoll instance by themselves.

use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd};
use std::time::Duration;

use crate::runtime::sys;
use crate::runtime::throttle::Throttled;

/// Events taken per pass; more ready sockets simply take another pass.
const BATCH: usize = 256;

/// What an event says beyond "readable": the peer finished or the socket failed. No edge follows
/// such an event, so the caller must read on until the socket reports the end.
pub const PEER_DONE: u32 = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;

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

    /// Watches `socket` for input and its end from now on (edge-triggered), tagged with `token`.
    pub fn watch(&self, socket: BorrowedFd<'_>, token: u64) -> std::io::Result<()> {
        let events = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        sys::epoll_add(sys::fd(&self.ep), socket, events, token)
    }

    /// Calls `ready(token, events)` for every watched socket with news; runs for the life of the
    /// core. A failing wait (which the kernel reports for no reason we know of, short of the
    /// descriptor being closed) is logged and retried after a short pause: the epoll instance keeps
    /// whatever became ready meanwhile.
    pub async fn run(&self, core: usize, mut ready: impl FnMut(u64, u32)) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let mut failing = Throttled::default();
        loop {
            if let Err(e) = self.ep.readable(false).await {
                failing.warn(|suppressed| {
                    tracing::error!(core, error = %e, suppressed, "cannot wait on the poller, retrying")
                });
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            loop {
                let n = sys::epoll_ready(sys::fd(&self.ep), &mut events);
                for ev in events.iter().take(n) {
                    ready(ev.u64, ev.events);
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }
}
