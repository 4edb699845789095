//! From an accepted socket to an upgraded session: the accept loop, reading the request head under
//! the handshake timeout, handing the socket to the core that owns its user, and answering.
//!
//! Owns the connection until its 101 response is queued. Never answers a request on a core that
//! does not own its user: the socket and the bytes already read move first (the owning core writes
//! the response), so a session never changes core after its upgrade.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::{TcpListener, TcpStream};

use crate::runtime::core::{bump, Core};
use crate::runtime::sys::{self, ReadOutcome};
use crate::runtime::{conn, CoreMsg};
use crate::shard;
use crate::ws::{
    parse_request, query_param, write_accept_response, HandshakeConfig, HandshakeError,
    ParseOutcome, UpgradeRequest,
};

/// A socket on its way to the core that owns its user.
pub struct Handoff {
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub req: UpgradeRequest,
    pub user: Option<String>,
    /// Bytes that followed the request head (frames the client pipelined).
    pub rest: BytesMut,
}

/// Accepts until shutdown. A core at its connection cap, or out of file descriptors, turns clients
/// away with a 503 at once (out of descriptors, with one kept in reserve for that) instead of
/// leaving them hanging in the backlog; either condition is logged once per interval, not once
/// per connection.
pub async fn accept_loop(core: Rc<Core>, listener: TcpListener) {
    let mut at_cap = Throttled::default();
    let mut no_fds = Throttled::default();
    let mut reserve = std::fs::File::open("/dev/null").ok();
    loop {
        let accepted = monoio::select! {
            _ = core.shutdown.wait() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                bump(&core.counters.accepted);
                let held = core.handshaking.get() + core.live_sessions();
                if held >= core.settings.max_connections {
                    bump(&core.counters.shed);
                    at_cap.warn(|suppressed| {
                        tracing::warn!(
                            core = core.index,
                            held,
                            suppressed,
                            "connection limit reached, answering 503"
                        )
                    });
                    turn_away(stream.as_raw_fd());
                    continue;
                }
                core.handshaking.set(core.handshaking.get() + 1);
                let owner = core.clone();
                // The socket is dropped with the task's state; `Handshaking` uncounts it.
                monoio::spawn(conn::Contained::new(
                    handshake(core.clone(), stream, peer),
                    move || {
                        bump(&owner.counters.panics);
                        tracing::error!(%peer, "handshake task panicked; connection dropped");
                    },
                ));
            }
            Err(e) => {
                bump(&core.counters.accept_errors);
                let exhausted = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if !exhausted {
                    tracing::debug!(error = %e, "accept failed");
                    continue;
                }
                no_fds.warn(|suppressed| {
                    tracing::warn!(core = core.index, error = %e, suppressed, "cannot accept: out of resources")
                });
                if reserve.take().is_some() {
                    // Only clients already waiting: one arriving later may find descriptors again.
                    if let Ok(Some(fd)) = sys::accept_now(listener.as_raw_fd()) {
                        bump(&core.counters.shed);
                        turn_away(fd.as_raw_fd());
                    }
                    reserve = std::fs::File::open("/dev/null").ok();
                }
                if reserve.is_none() {
                    // Not even the reserve is back: wait for descriptors to free up.
                    monoio::time::sleep(Duration::from_millis(20)).await;
                    reserve = std::fs::File::open("/dev/null").ok();
                }
            }
        }
    }
}

/// A warning that is logged at most once per interval, with the count of those it held back.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    const EVERY: Duration = Duration::from_secs(10);

    fn warn(&mut self, log: impl FnOnce(u64)) {
        if self.last.is_none_or(|t| t.elapsed() >= Self::EVERY) {
            log(self.suppressed);
            self.last = Some(Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}

enum HeadError {
    Closed,
    Rejected(HandshakeError),
}

/// Counts a connection as handshaking until its handshake task ends, however it ends.
struct Handshaking(Rc<Core>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        let n = &self.0.handshaking;
        n.set(n.get().saturating_sub(1));
    }
}

async fn handshake(core: Rc<Core>, stream: TcpStream, peer: SocketAddr) {
    let _counted = Handshaking(core.clone());
    if let Err(e) = sys::prepare_client_socket(stream.as_raw_fd()) {
        tracing::debug!(%peer, error = %e, "socket setup failed");
        return;
    }
    let settings = core.settings.clone();
    let head = monoio::time::timeout(
        settings.handshake_timeout,
        read_head(&stream, &settings.handshake),
    )
    .await;
    let (req, mut buf) = match head {
        Ok(Ok(done)) => done,
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::Rejected(e))) => {
            bump(&core.counters.handshake_rejected);
            tracing::debug!(%peer, status = e.status(), error = %e, "handshake rejected");
            reject(stream, e.response()).await;
            return;
        }
        Err(_) => {
            bump(&core.counters.handshake_timeouts);
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    buf.advance(req.head_len);
    let user = req.query.as_deref().and_then(|q| query_param(q, "user"));
    let owner = match &user {
        Some(u) => shard::owner_core(u.as_bytes(), settings.workers),
        None => core.index,
    };
    if owner == core.index {
        establish(&core, stream, peer, req, user, buf);
        return;
    }
    bump(&core.counters.handed_off);
    // SAFETY of the conversion: the stream has no operation in flight (read_head has returned), so
    // this is the only reference to the fd and ownership moves whole.
    let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
    let msg = CoreMsg::Handoff(Box::new(Handoff {
        fd,
        peer,
        req,
        user,
        rest: buf,
    }));
    let sent = match core.peers.get(owner) {
        Some(channel) => channel.send_async(msg).await.is_ok(),
        None => false,
    };
    if !sent {
        tracing::debug!(%peer, owner, "owning core is gone; dropping connection");
    }
}

/// Receives a socket handed over by another core.
pub fn adopt(core: &Rc<Core>, h: Box<Handoff>) {
    let h = *h;
    bump(&core.counters.received_from_other_core);
    let std = std::net::TcpStream::from(h.fd);
    match TcpStream::from_std(std) {
        Ok(stream) => establish(core, stream, h.peer, h.req, h.user, h.rest),
        Err(e) => tracing::debug!(peer = %h.peer, error = %e, "cannot adopt socket"),
    }
}

/// Upgrades on the owning core: queue the 101 and start the connection driver in a task of its
/// own, so the handshake's state is freed rather than carried for the life of the connection.
fn establish(
    core: &Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    req: UpgradeRequest,
    user: Option<String>,
    rest: BytesMut,
) {
    let refusal = if core.shutdown.is_set() {
        Some("server shutting down")
    } else if core.upstream.admit().is_err() {
        Some("no upstream available")
    } else {
        None
    };
    if let Some(why) = refusal {
        bump(&core.counters.handshake_rejected);
        monoio::spawn(reject(stream, service_unavailable(why)));
        return;
    }
    let session = core.register(stream, user.map(String::into_boxed_str));
    let mut response = Vec::with_capacity(160);
    write_accept_response(&req, &mut response);
    session.push_raw(Bytes::from(response));
    core.mark_dirty(&session);
    bump(&core.counters.upgraded);
    tracing::debug!(session = session.id, %peer, core = core.index, user = session.user.as_deref(), "session open");
    core.upstream.opened(core, &session, &req, peer);
    let driver = conn::drive(core.clone(), session.clone(), rest);
    let owner = core.clone();
    monoio::spawn(conn::Contained::new(driver, move || {
        conn::release_after_panic(&owner, &session)
    }));
}

/// Answers 503 on a socket we cannot afford to keep, synchronously. What the client already sent is
/// read first: closing with unread input would send a RST instead of the response.
fn turn_away(fd: std::os::fd::RawFd) {
    let mut scratch = BytesMut::with_capacity(4096);
    let _ = sys::read_into(fd, &mut scratch);
    let response = service_unavailable("server out of resources");
    let iov = [libc::iovec {
        iov_base: response.as_ptr() as *mut libc::c_void,
        iov_len: response.len(),
    }];
    let _ = sys::send_vectored(fd, &iov);
    sys::shutdown(fd, libc::SHUT_WR);
}

fn service_unavailable(why: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n{why}\n",
        why.len() + 1
    )
    .into_bytes()
}

async fn read_head(
    stream: &TcpStream,
    cfg: &HandshakeConfig,
) -> Result<(UpgradeRequest, BytesMut), HeadError> {
    let fd = stream.as_raw_fd();
    // One byte past the limit is enough to tell "too large" from "exactly at the limit".
    let cap = cfg.max_head_bytes + 1;
    let mut buf = BytesMut::with_capacity(cap.min(1024));
    loop {
        stream
            .readable(false)
            .await
            .map_err(|_| HeadError::Closed)?;
        if buf.len() == buf.capacity() {
            let grow = buf.len().min(cap.saturating_sub(buf.len())).max(1);
            buf.reserve(grow);
        }
        match sys::read_into(fd, &mut buf) {
            Ok(ReadOutcome::Data(_)) => match parse_request(&buf, cfg) {
                Ok(ParseOutcome::Partial) => {}
                Ok(ParseOutcome::Complete(req)) => return Ok((req, buf)),
                Err(e) => return Err(HeadError::Rejected(e)),
            },
            Ok(ReadOutcome::WouldBlock) => {}
            Ok(ReadOutcome::Eof) | Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// Sends an HTTP error and closes politely: our write side first, then a bounded drain of what
/// the client still sends, because closing with unread input would answer it with a RST that can
/// destroy the response before the client reads it.
async fn reject(stream: TcpStream, response: Vec<u8>) {
    let fd = stream.as_raw_fd();
    let iov = [libc::iovec {
        iov_base: response.as_ptr() as *mut libc::c_void,
        iov_len: response.len(),
    }];
    // The response is a few hundred bytes: it fits in a fresh socket's buffer or the peer is gone.
    let _ = sys::send_vectored(fd, &iov);
    sys::shutdown(fd, libc::SHUT_WR);
    let drain = async {
        let mut scratch = BytesMut::with_capacity(4096);
        let mut total = 0usize;
        while total < 64 * 1024 {
            if stream.readable(false).await.is_err() {
                return;
            }
            scratch.clear();
            match sys::read_into(fd, &mut scratch) {
                Ok(ReadOutcome::Data(n)) => total += n,
                Ok(ReadOutcome::WouldBlock) => {}
                Ok(ReadOutcome::Eof) | Err(_) => return,
            }
        }
    };
    let _ = monoio::time::timeout(Duration::from_secs(1), drain).await;
}
