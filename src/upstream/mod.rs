//! The game-server side of a core: its links to every configured game server, the routing of
//! sessions over them, and the echo game server used by the demo, tests and load tests.
//!
//! Owns each core's [`Upstreams`]. Everything here runs on the core it was built for and must never
//! block or touch another core's links or sessions.

use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::config::Config;
use crate::runtime::event::Countdown;
use crate::runtime::{flag, Core, Gate, Session};
use crate::shard::user_hash;
use crate::ws::UpgradeRequest;

pub mod echo_server;
pub mod link;
pub mod protocol;
pub mod router;

use link::Link;

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

/// Why no session can be placed now; the client gets HTTP 503 before its upgrade.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no upstream link is up")]
    NoUpstream,
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
    pub paused: bool,
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

    /// Called before the 101 response: is any game server reachable from this core?
    pub fn admit(&self) -> Result<(), Unavailable> {
        if self.links.iter().any(|l| l.is_up()) {
            Ok(())
        } else {
            Err(Unavailable::NoUpstream)
        }
    }

    /// Routes a newly upgraded session and sends its OPEN.
    pub fn opened(&self, core: &Rc<Core>, s: &Rc<Session>, req: &UpgradeRequest, peer: SocketAddr) {
        let id_key = s.id.to_be_bytes();
        let key = s.user.as_deref().map_or(&id_key[..], str::as_bytes);
        let up = self
            .links
            .iter()
            .zip(&self.name_hashes)
            .enumerate()
            .filter(|(_, (l, _))| l.is_up())
            .map(|(i, (_, &h))| (h, i));
        let Some(link) = router::choose(key, up).and_then(|i| self.links.get(i)) else {
            // admit() saw a link up in this same turn, so this is a race with nothing to route to.
            s.set(flag::UPSTREAM_DONE);
            core.close(s, 1013, "no upstream available");
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
            .collect();
        let info = protocol::OpenInfo {
            user: s.user.as_deref().unwrap_or(""),
            client_addr: &peer.to_string(),
            target: &target,
            headers: &headers,
        };
        link.open(s, &info);
        if s.has(flag::UPSTREAM_DONE) {
            core.close(s, 1008, "session description too large");
        }
    }

    pub fn data(&self, s: &Session, text: bool, payload: Bytes) {
        if let Some(l) = self.links.get(s.route.get() as usize) {
            l.data(s, text, payload);
        }
    }

    /// [`Upstreams::data`] for a game-sized message, copied into the link's queue.
    pub fn data_copy(&self, s: &Session, text: bool, payload: &[u8]) {
        if let Some(l) = self.links.get(s.route.get() as usize) {
            l.data_copy(s, text, payload);
        }
    }

    pub fn closed(&self, s: &Session, code: u16) {
        if let Some(l) = self.links.get(s.route.get() as usize) {
            l.closed(s, code);
        }
    }

    /// The gate to wait at before reading more from this session's client, if its link is congested.
    pub fn backpressure(&self, s: &Session) -> Option<Rc<Gate>> {
        let l = self.links.get(s.route.get() as usize)?;
        l.gate.is_shut().then(|| l.gate.clone())
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
                times_up: l.links_up.get(),
                connect_failures: l.connect_failures.get(),
            })
            .collect()
    }
}

/// Checks an upstream address of the form `HOST:PORT` (resolution happens at start).
pub fn parse_address(addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or("expected HOST:PORT")?;
    if host.is_empty() {
        return Err("empty host".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("port must be a number from 1 to 65535".into()),
    }
}
