//! From an accepted socket to an upgraded session: the accept loop, reading the request head under
//! the handshake timeout, handing the socket to the core that owns its user, and answering.
//!
//! Owns the connection until its 101 response is queued, or until it goes to `page` as a plain
//! `GET /` (no session, and no place in the connection budget). Never answers a request on a core
//! that does not own its user: the socket and the bytes already read move first (the owning core
//! writes the response), so a session never changes core after its upgrade. What may be admitted
//! is `admission`'s to say; this module applies it.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use monoio::net::{TcpListener, TcpStream};

use crate::auth;
use crate::config::{ProxyProtocol, RealIpHeader};
use crate::gateway::admission::{self, ClientAddress, Older, Permit, Refusal};
use crate::gateway::core::{bump, Core};
use crate::gateway::page;
use crate::gateway::{receive, CoreMsg};
use crate::proxy_protocol::{self, Header, Parsed};
use crate::runtime::contain::Contained;
use crate::runtime::sys::{self, ReadOutcome};
use crate::runtime::throttle::Throttled;
use crate::shard;
use crate::ws::{
    parse_request, query_param, write_accept_response, HandshakeConfig, HandshakeError,
    ParseOutcome, UpgradeRequest,
};

/// Who a connection is: its user (the verified token's, or `?user=` without authentication) and
/// the claims forwarded to the game server.
pub struct Identity {
    pub user: Option<String>,
    /// A JSON object, when `forward_claims` is configured.
    pub claims: Option<String>,
}

/// Finds and verifies the request's token. A token offered as a subprotocol is never selected for
/// the answer: without configured subprotocols, the client's first other offered one is (browsers
/// fail a connection whose offered subprotocols all go unanswered).
fn authenticate(core: &Core, req: &mut UpgradeRequest) -> Result<Identity, auth::Rejection> {
    let cfg = &core.settings.auth;
    let (token, found) = auth::find_token(cfg, &req.headers, req.query.as_deref())
        .ok_or(auth::Rejection::Missing)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let verified = core.verifier.borrow().verify(&token, now)?;
    // With subprotocols configured, the answer selects only among them (parse_request did).
    let free_choice = core.settings.handshake.subprotocols.is_empty();
    if found == auth::Found::Subprotocol && free_choice && req.subprotocol.is_none() {
        req.subprotocol = req
            .headers
            .iter()
            .filter(|(name, _)| name == "sec-websocket-protocol")
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| !p.is_empty() && !auth::is_bearer_subprotocol(p))
            .map(str::to_string);
    }
    Ok(Identity {
        user: Some(verified.user),
        claims: (!cfg.forward_claims.is_empty()).then_some(verified.claims),
    })
}

/// The 401 answer to a request without a valid token: the check that failed, never the token.
fn unauthorized(why: auth::Rejection) -> Vec<u8> {
    let challenge = format!("WWW-Authenticate: {}\r\n", why.www_authenticate());
    plain_answer("401 Unauthorized", &challenge, &why.to_string())
}

/// A socket on its way to the core that owns its user.
pub struct Handoff {
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub req: UpgradeRequest,
    pub identity: Identity,
    /// Bytes that followed the request head (frames the client pipelined).
    pub rest: BytesMut,
    /// The connection's place in the process's budget travels with it.
    pub permit: Permit,
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
                let permit = match core.budget.admit() {
                    Ok(p) => p,
                    Err(held) => {
                        bump(&core.counters.shed);
                        at_cap.warn(|suppressed| {
                            tracing::warn!(
                                core = core.index,
                                held,
                                max = core.budget.max(),
                                suppressed,
                                "connection limit reached, answering 503"
                            )
                        });
                        turn_away(sys::fd(&stream));
                        continue;
                    }
                };
                let owner = core.clone();
                // The socket and the permit are dropped with the task's state.
                monoio::spawn(Contained::new(
                    handshake(core.clone(), stream, peer, permit),
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
                    if let Ok(Some(fd)) = sys::accept_now(sys::fd(&listener)) {
                        bump(&core.counters.shed);
                        turn_away(fd.as_fd());
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

enum HeadError {
    Closed,
    Rejected(HandshakeError),
    /// Not an upgrade but a plain request for the chat page.
    Page(page::Method),
    /// The PROXY header is missing, malformed or from a peer that may not send one: the connection
    /// is closed without an answer, since what it speaks is not HTTP.
    Proxy(ProxyRefusal),
}

/// Why a connection's PROXY header was not accepted.
#[derive(Debug, thiserror::Error)]
enum ProxyRefusal {
    #[error("a PROXY header from a peer not in trusted_proxies")]
    Untrusted,
    #[error("no PROXY header, and proxy_protocol is required")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(proxy_protocol::ProxyError),
}

async fn handshake(core: Rc<Core>, stream: TcpStream, peer: SocketAddr, permit: Permit) {
    if let Err(e) = sys::prepare_client_socket(sys::fd(&stream)) {
        tracing::debug!(%peer, error = %e, "socket setup failed");
        return;
    }
    let settings = core.settings.clone();
    let head = monoio::time::timeout(
        settings.handshake_timeout,
        read_head(
            &stream,
            &settings.handshake,
            &settings.client,
            peer,
            settings.chat_page.is_some(),
        ),
    )
    .await;
    let (mut req, mut buf, peer) = match head {
        Ok(Ok(done)) => done,
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::Rejected(e))) => {
            bump(&core.counters.handshake_rejected);
            core.note_refusal("malformed request");
            tracing::debug!(%peer, status = e.status(), error = %e, "handshake rejected");
            reject(stream, e.response()).await;
            return;
        }
        Ok(Err(HeadError::Page(method))) => {
            // Not a session: its place goes back now, as a refused upgrade's does in `establish`,
            // so that page loads never turn a session away at the connection cap.
            drop(permit);
            bump(&core.counters.pages_served);
            tracing::debug!(%peer, ?method, "chat page");
            if let Some(page) = &settings.chat_page {
                page::serve(stream, page.answer(method), settings.handshake_timeout).await;
            }
            return;
        }
        Ok(Err(HeadError::Proxy(why))) => {
            bump(&core.counters.proxy_refused);
            core.note_refusal("PROXY header");
            tracing::debug!(%peer, error = %why, "PROXY header refused, closing");
            return;
        }
        Err(_) => {
            bump(&core.counters.handshake_timeouts);
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    buf.advance(req.head_len);
    let peer = forwarded_for(&settings.client, peer, &req);
    // Checks that need only the request head run here, before any hand-over.
    let rate = core
        .request_rate
        .borrow_mut()
        .admit(peer.ip(), std::time::Instant::now());
    let origin = req
        .headers
        .iter()
        .find(|(name, _)| name == "origin")
        .map(|(_, v)| v.as_slice());
    let refusal = match rate {
        Err(retry_after) => Some((
            &core.counters.rate_rejected_handshakes,
            Refusal::RequestRate { retry_after },
        )),
        Ok(()) => settings
            .origins
            .check(origin)
            .err()
            .map(|why| (&core.counters.origin_rejected, why)),
    };
    if let Some((counter, why)) = refusal {
        let response = refusal_response(&why);
        return refuse(&core, stream, peer, counter, why.reason(), response).await;
    }
    let identity = match core.settings.auth.mode {
        auth::Mode::None => Identity {
            user: req.query.as_deref().and_then(|q| query_param(q, "user")),
            claims: None,
        },
        auth::Mode::Jwt => match authenticate(&core, &mut req) {
            Ok(identity) => identity,
            Err(why) => {
                let counter = &core.counters.auth_rejected;
                return refuse(
                    &core,
                    stream,
                    peer,
                    counter,
                    why.reason(),
                    unauthorized(why),
                )
                .await;
            }
        },
    };
    let owner = match &identity.user {
        Some(u) => shard::owner_core(u.as_bytes(), settings.workers),
        None => core.index,
    };
    if owner == core.index {
        establish(&core, stream, peer, req, identity, buf, permit);
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
        identity,
        rest: buf,
        permit,
    }));
    let sent = match core.peers.get(owner) {
        Some(channel) => channel.send_async(msg).await.is_ok(),
        None => false,
    };
    if !sent {
        tracing::debug!(%peer, owner, "owning core is gone; dropping connection");
    }
}

/// Answers a refused upgrade request: counted (in all and by reason), logged (throttled per reason,
/// and at debug level each), and answered politely.
async fn refuse(
    core: &Core,
    stream: TcpStream,
    peer: SocketAddr,
    counter: &std::cell::Cell<u64>,
    reason: &'static str,
    response: Vec<u8>,
) {
    bump(&core.counters.handshake_rejected);
    bump(counter);
    core.note_refusal(reason);
    tracing::debug!(%peer, reason, "handshake refused");
    reject(stream, response).await;
}

/// Receives a socket handed over by another core.
pub fn adopt(core: &Rc<Core>, h: Box<Handoff>) {
    let h = *h;
    bump(&core.counters.received_from_other_core);
    let std = std::net::TcpStream::from(h.fd);
    match TcpStream::from_std(std) {
        Ok(stream) => establish(core, stream, h.peer, h.req, h.identity, h.rest, h.permit),
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
    identity: Identity,
    rest: BytesMut,
    permit: Permit,
) {
    let Identity { user, claims } = identity;
    let older = user.as_deref().and_then(|u| core.session_of(u));
    let verdict = admission::check_upgrade(
        core.shutdown.is_set(),
        core.upstream.any_up(),
        older.is_some(),
        core.settings.one_session_per_user,
    );
    // A session that this one replaces does not count against its address.
    let credit = matches!(verdict, Ok(Older::Replace))
        && older.as_ref().and_then(|o| core.session_ip(o)) == Some(peer.ip());
    let verdict = match verdict {
        Ok(_) if !core.per_ip.acquire(peer.ip(), credit) => {
            bump(&core.counters.ip_rejected);
            Err(Refusal::TooManyFromAddress)
        }
        v => v,
    };
    match verdict {
        Err(why) => {
            bump(&core.counters.handshake_rejected);
            core.note_refusal(why.reason());
            if why == Refusal::Duplicate {
                bump(&core.counters.duplicates_rejected);
            }
            drop(permit);
            monoio::spawn(reject(stream, refusal_response(&why)));
            return;
        }
        Ok(Older::Replace) => {
            if let Some(old) = older {
                core.replace(&old);
            }
        }
        Ok(Older::Keep) => {}
    }
    permit.keep();
    let conn = core.register(stream, user.map(String::into_boxed_str));
    core.remember_ip(&conn, peer.ip());
    let mut response = Vec::with_capacity(160);
    write_accept_response(&req, &mut response);
    conn.push_raw(Bytes::from(response));
    core.mark_dirty(&conn);
    bump(&core.counters.upgraded);
    tracing::debug!(session = conn.id, %peer, core = core.index, user = conn.user.as_deref(), "session open");
    core.upstream
        .opened(core, &conn, &req, peer, claims.as_deref());
    let driver = receive::drive(core.clone(), conn.clone(), rest);
    let owner = core.clone();
    monoio::spawn(Contained::new(driver, move || {
        owner.release_after_panic(&conn)
    }));
}

/// Answers 503 on a socket we cannot afford to keep, synchronously. What the client already sent is
/// read first: closing with unread input would send a RST instead of the response.
fn turn_away(fd: BorrowedFd<'_>) {
    let mut scratch = BytesMut::with_capacity(4096);
    let _ = sys::read_into(fd, &mut scratch);
    let response = service_unavailable("server out of resources");
    let _ = sys::send_vectored(fd, &[IoSlice::new(&response)]);
    sys::shutdown(fd, libc::SHUT_WR);
}

fn service_unavailable(why: &str) -> Vec<u8> {
    plain_answer("503 Service Unavailable", "Retry-After: 1\r\n", why)
}

/// The answer to a refused upgrade.
fn refusal_response(why: &Refusal) -> Vec<u8> {
    let status = match why.status() {
        403 => "403 Forbidden",
        409 => "409 Conflict",
        429 => "429 Too Many Requests",
        _ => "503 Service Unavailable",
    };
    let retry = why
        .retry_after()
        .map_or(String::new(), |s| format!("Retry-After: {s}\r\n"));
    plain_answer(status, &retry, &why.to_string())
}

/// A complete HTTP error response with a one-line text body, closing the connection.
fn plain_answer(status: &str, extra_headers: &str, why: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{why}\n",
        why.len() + 1
    )
    .into_bytes()
}

/// Reads the request head, after the PROXY header where one is expected; returns the request, the
/// bytes read so far (the head and what followed it) and the client's address (the PROXY header's
/// source, or the peer's). With `chat_page`, a head that is not an upgrade but asks for the page
/// is `HeadError::Page`.
async fn read_head(
    stream: &TcpStream,
    cfg: &HandshakeConfig,
    client: &ClientAddress,
    peer: SocketAddr,
    chat_page: bool,
) -> Result<(UpgradeRequest, BytesMut, SocketAddr), HeadError> {
    let fd = sys::fd(stream);
    let trusted = client.trust.trusts(peer.ip());
    let mut proxy_pending = match client.proxy_protocol {
        ProxyProtocol::Off => false,
        ProxyProtocol::Optional => true,
        ProxyProtocol::Required if trusted => true,
        ProxyProtocol::Required => return Err(HeadError::Proxy(ProxyRefusal::Untrusted)),
    };
    let mut source = peer;
    // One byte past the limit is enough to tell "too large" from "exactly at the limit".
    let cap = cfg.max_head_bytes
        + 1
        + if proxy_pending {
            proxy_protocol::MAX_HEADER
        } else {
            0
        };
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
            Ok(ReadOutcome::Data(_)) => {}
            Ok(ReadOutcome::WouldBlock) => continue,
            Ok(ReadOutcome::Eof) | Err(_) => return Err(HeadError::Closed),
        }
        if proxy_pending {
            let refuse = |why| Err(HeadError::Proxy(why));
            match proxy_protocol::parse(&buf) {
                Ok(Parsed::Incomplete) => continue,
                Ok(Parsed::Absent) if client.proxy_protocol == ProxyProtocol::Required => {
                    return refuse(ProxyRefusal::Missing)
                }
                Ok(Parsed::Absent) => {}
                Ok(Parsed::Complete { .. }) if !trusted => return refuse(ProxyRefusal::Untrusted),
                Ok(Parsed::Complete { header, len }) => {
                    if let Header::Proxied { source: s, .. } = header {
                        source = s;
                    }
                    buf.advance(len);
                }
                Err(e) => return refuse(ProxyRefusal::Malformed(e)),
            }
            proxy_pending = false;
        }
        match parse_request(&buf, cfg) {
            Ok(ParseOutcome::Partial) => {}
            Ok(ParseOutcome::Complete(req)) => return Ok((req, buf, source)),
            // Only a head that is no valid upgrade is parsed a second time: upgrades pay nothing.
            Err(e) if chat_page => {
                return Err(match page::wanted(&buf, cfg.max_head_bytes) {
                    Some(method) => HeadError::Page(method),
                    None => HeadError::Rejected(e),
                })
            }
            Err(e) => return Err(HeadError::Rejected(e)),
        }
    }
}

/// The client named by `real_ip_header`, if configured and sent by a trusted peer (the address
/// learnt so far, after any PROXY header); else `peer` as it is. A header's address has no port:
/// the result carries port 0.
fn forwarded_for(client: &ClientAddress, peer: SocketAddr, req: &UpgradeRequest) -> SocketAddr {
    let Some(header) = client.real_ip_header else {
        return peer;
    };
    if !client.trust.trusts(peer.ip()) {
        return peer;
    }
    let name = match header {
        RealIpHeader::XForwardedFor => "x-forwarded-for",
        RealIpHeader::XRealIp => "x-real-ip",
    };
    let values: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
        .collect();
    match admission::real_ip(header, &values, &client.trust) {
        Some(ip) => SocketAddr::new(ip, 0),
        None => peer,
    }
}

/// Sends an HTTP error and closes politely.
async fn reject(stream: TcpStream, response: Vec<u8>) {
    // The response is a few hundred bytes: it fits in a fresh socket's buffer or the peer is gone.
    let _ = sys::send_vectored(sys::fd(&stream), &[IoSlice::new(&response)]);
    close_politely(stream).await;
}

/// Closes a connection whose answer is sent: our write side first, then a bounded drain of what
/// the client still sends, because closing with unread input would answer it with a RST that can
/// destroy the response before the client reads it.
pub(super) async fn close_politely(stream: TcpStream) {
    let fd = sys::fd(&stream);
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
