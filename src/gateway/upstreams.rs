//! The game-server side of a core: its links to every configured game server and the routing of
//! sessions over them.
//!
//! Owns each core's [`Upstreams`]. Everything here runs on the core it was built for and must never
//! block or touch another core's links or sessions. The choice of link is `link::router`'s.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::config::Config;
use crate::gateway::conn::Conn;
use crate::gateway::core::Core;
use crate::gateway::link::Link;
use crate::link::router;
use crate::link::senders::{self, Wait};
use crate::protocol;
use crate::runtime::event::{Countdown, Gate};
use crate::shard::user_hash;
use crate::ws::UpgradeRequest;

/// The OPEN pseudo-header carrying a verified token's forwarded claims.
pub const CLAIMS_HEADER: &str = ":claims";

/// Link settings shared by every link of a core, resolved once from [`Config`].
#[derive(Clone)]
pub struct LinkSettings {
    pub instance: String,
    pub backlog: usize,
    pub max_frame: usize,
    pub ping_interval: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub forward_headers: Vec<String>,
}

impl LinkSettings {
    pub fn from_config(cfg: &Config) -> LinkSettings {
        LinkSettings {
            instance: cfg.instance_id(),
            backlog: cfg.link_backlog,
            // OPEN frames carry headers; DATA frames carry at most one message.
            max_frame: cfg.max_message_size.saturating_add(64 * 1024),
            ping_interval: cfg.link_ping_interval,
            timeout: cfg.link_timeout,
            connect_timeout: cfg.link_connect_timeout,
            reconnect_min: cfg.reconnect_min,
            reconnect_max: cfg.reconnect_max,
            forward_headers: cfg
                .forward_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }
}

/// Resolves every configured upstream once, at start: names are not looked up again on the data
/// path (a core must never block on DNS).
pub fn resolve(cfg: &Config) -> Result<Vec<(String, SocketAddr)>, String> {
    cfg.upstreams
        .iter()
        .map(|u| {
            let addr = u
                .address
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve upstream {}: {e}", u.address))?
                .next()
                .ok_or_else(|| format!("upstream {} resolves to no address", u.address))?;
            Ok((u.address.clone(), addr))
        })
        .collect()
}

/// One link's state as the admin endpoint reports it.
#[derive(Debug, Serialize, serde::Deserialize, Clone)]
pub struct LinkSnapshot {
    pub address: String,
    pub up: bool,
    pub sessions: usize,
    pub queued_bytes: usize,
    /// Past `link_backlog`.
    pub paused: bool,
    /// Past the heavy senders' share: the heaviest senders are not read.
    pub heavy_paused: bool,
    pub times_up: u64,
    pub connect_failures: u64,
}

/// One core's links, one per configured game server.
pub struct Upstreams {
    links: Vec<Rc<Link>>,
    /// Each link's name hashed once, for rendezvous routing.
    name_hashes: Vec<u64>,
    settings: Rc<LinkSettings>,
}

impl Upstreams {
    pub fn new(targets: &[(String, SocketAddr)], settings: LinkSettings) -> Upstreams {
        let settings = Rc::new(settings);
        let links = targets
            .iter()
            .enumerate()
            .map(|(i, (name, addr))| {
                Rc::new(Link::new(i as u16, name.clone(), *addr, settings.clone()))
            })
            .collect();
        Upstreams {
            links,
            name_hashes: targets
                .iter()
                .map(|(n, _)| user_hash(n.as_bytes()))
                .collect(),
            settings,
        }
    }

    /// Starts every link's supervisor on this core; the countdown reaches zero once every link
    /// has made its first connect attempt (up or failed).
    pub fn start(&self, core: &Rc<Core>) -> Rc<Countdown> {
        let first = Rc::new(Countdown::new(self.links.len()));
        for l in &self.links {
            monoio::spawn(l.clone().supervise(core.clone(), first.clone()));
        }
        first
    }

    /// Is any game server reachable from this core (asked before the 101 response)?
    pub fn any_up(&self) -> bool {
        self.links.iter().any(|l| l.is_up())
    }

    /// Routes a newly upgraded session and sends its OPEN.
    /// `claims`: the verified token's forwarded claims, a JSON object, which reach the game server as
    /// the `:claims` pseudo-header (no HTTP header name starts with a colon).
    pub fn opened(
        &self,
        core: &Rc<Core>,
        c: &Rc<Conn>,
        req: &UpgradeRequest,
        peer: SocketAddr,
        claims: Option<&str>,
    ) {
        let id_key = c.id.to_be_bytes();
        let key = c.user.as_deref().map_or(&id_key[..], str::as_bytes);
        let up = self
            .links
            .iter()
            .zip(&self.name_hashes)
            .enumerate()
            .filter(|(_, (l, _))| l.is_up())
            .map(|(i, (_, &h))| (h, i));
        let Some(link) = router::choose(key, up).and_then(|i| self.links.get(i)) else {
            // any_up() saw a link up in this same turn, so this is a race with nothing to route to.
            c.state.borrow_mut().session.upstream_gone();
            core.close(c, 1013, "no upstream available");
            return;
        };
        let target = match &req.query {
            Some(q) => format!("{}?{q}", req.path),
            None => req.path.clone(),
        };
        let headers: Vec<(&str, &[u8])> = req
            .headers
            .iter()
            .filter(|(name, _)| self.settings.forward_headers.iter().any(|f| f == name))
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .chain(claims.map(|c| (CLAIMS_HEADER, c.as_bytes())))
            .collect();
        let info = protocol::OpenInfo {
            user: c.user.as_deref().unwrap_or(""),
            client_addr: &peer.to_string(),
            target: &target,
            headers: &headers,
        };
        if !link.open(c, &info) {
            c.state.borrow_mut().session.upstream_gone();
            core.close(c, 1008, "session description too large");
        }
    }

    /// A client message at second `now`, forwarded on the client's link.
    pub fn data(&self, c: &Conn, now: u32, text: bool, payload: Bytes) {
        if let Some(l) = self.links.get(c.route.get() as usize) {
            l.note_sent(c, now, payload.len());
            l.data(c, text, payload);
        }
    }

    /// [`Upstreams::data`] for a game-sized message, copied into the link's queue.
    pub fn data_copy(&self, c: &Conn, now: u32, text: bool, payload: &[u8]) {
        if let Some(l) = self.links.get(c.route.get() as usize) {
            l.note_sent(c, now, payload.len());
            l.data_copy(c, text, payload);
        }
    }

    /// A session ended with `code`; `tell`: the game server does not know yet.
    pub fn closed(&self, c: &Conn, code: u16, tell: bool) {
        if let Some(l) = self.links.get(c.route.get() as usize) {
            l.closed(c, code, tell);
        }
    }

    /// The gate to wait at before reading more from this client at second `now`: it is among the
    /// heaviest senders of a link past their share, or its link is past twice its backlog (see
    /// `link::senders`).
    pub fn backpressure(&self, c: &Conn, now: u32) -> Option<Rc<Gate>> {
        let l = self.links.get(c.route.get() as usize)?;
        // The heavy senders' gate is shut whenever the other one is: nothing to decide when open.
        if !l.heavy_gate.is_shut() {
            return None;
        }
        let mine = c.sent.get().get(now);
        match senders::holds_back(mine, l.heaviest(now), l.queued(), self.settings.backlog)? {
            Wait::Heavy => Some(l.heavy_gate.clone()),
            Wait::All => Some(l.gate.clone()),
        }
    }

    /// Writes every link's queue now, as far as the sockets take it (at shutdown).
    pub fn flush_now(&self) {
        for l in &self.links {
            l.flush_now();
        }
    }

    pub fn snapshot(&self) -> Vec<LinkSnapshot> {
        self.links
            .iter()
            .map(|l| LinkSnapshot {
                address: l.name.clone(),
                up: l.is_up(),
                sessions: l.session_count(),
                queued_bytes: l.queued(),
                paused: l.gate.is_shut(),
                heavy_paused: l.heavy_gate.is_shut(),
                times_up: l.links_up.get(),
                connect_failures: l.connect_failures.get(),
            })
            .collect()
    }
}
