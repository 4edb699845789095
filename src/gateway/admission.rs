//! Admission: whether a connection may be held at all, who the client really is, and whether a
//! valid upgrade request may become a session. The one place for checks before the 101 response.
//!
//! Owns the process-wide connection budget (`max_connections`), the trust in the proxies in front
//! of ringgate (`trusted_proxies`, `real_ip_header`; the PROXY header's bytes are
//! `proxy_protocol`'s) and the refusals decided at the upgrade (shutting down, no game server
//! reachable). Never reads a socket and never keeps per-connection state: a [`Permit`] travels with
//! the connection instead.
//!
//! The budget is the one counter the cores share. Sessions are sharded by user, so a per-core share
//! would shed on one core while the process still had room; one atomic add when a connection is
//! accepted and one subtraction when it is released (never per message) buys an exact limit.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::{Config, OneSessionPerUser, ProxyProtocol, RealIpHeader};

/// Client connections held by the process (handshaking and upgraded), against a limit.
#[derive(Clone)]
pub struct Budget {
    held: Arc<AtomicUsize>,
    max: usize,
}

/// One connection's place in the [`Budget`]; released when dropped, unless [`Permit::keep`] hands
/// it to a session (which releases it through [`Budget::release`] when it ends).
pub struct Permit(Budget);

impl Budget {
    pub fn new(max: usize) -> Budget {
        Budget {
            held: Arc::new(AtomicUsize::new(0)),
            max: max.max(1),
        }
    }

    /// A place for one more connection, or how many are held if there is none.
    pub fn admit(&self) -> Result<Permit, usize> {
        let before = self.held.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Err(before);
        }
        Ok(Permit(self.clone()))
    }

    /// Gives back the place of a session that ended (one whose permit was kept).
    pub fn release(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Permit {
    /// The connection became a session: its place is now released by the session's end.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Why a valid upgrade request does not become a session; the client gets the refusal's status
/// before its upgrade.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("server shutting down")]
    ShuttingDown,
    #[error("no upstream available")]
    NoUpstream,
    #[error("user already connected")]
    Duplicate,
    #[error("origin not allowed")]
    Origin,
    #[error("origin required")]
    NoOrigin,
    #[error("too many connections from this address")]
    TooManyFromAddress,
    #[error("too many upgrade requests from this address")]
    RequestRate {
        /// Seconds until a request would pass (`Retry-After`).
        retry_after: u32,
    },
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::ShuttingDown | Refusal::NoUpstream => 503,
            Refusal::Duplicate => 409,
            Refusal::Origin | Refusal::NoOrigin => 403,
            Refusal::TooManyFromAddress | Refusal::RequestRate { .. } => 429,
        }
    }

    /// The refusal's name in logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::ShuttingDown => "shutting down",
            Refusal::NoUpstream => "no upstream",
            Refusal::Duplicate => "user already connected",
            Refusal::Origin => "origin not allowed",
            Refusal::NoOrigin => "origin required",
            Refusal::TooManyFromAddress => "max_connections_per_ip",
            Refusal::RequestRate { .. } => "handshake_rate_per_ip",
        }
    }

    /// Seconds a client should wait before trying again, where that is known.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Refusal::ShuttingDown | Refusal::NoUpstream | Refusal::TooManyFromAddress => Some(1),
            Refusal::RequestRate { retry_after } => Some(*retry_after),
            Refusal::Duplicate | Refusal::Origin | Refusal::NoOrigin => None,
        }
    }
}

/// The browser origins allowed to connect (`allowed_origins`, `origin_required`).
#[derive(Clone, Debug, Default)]
pub struct Origins {
    /// Lowercased patterns; a host starting with `*.` matches any subdomain.
    allowed: Vec<String>,
    required: bool,
}

impl Origins {
    pub fn from_config(cfg: &Config) -> Origins {
        Origins {
            allowed: cfg
                .allowed_origins
                .iter()
                .filter_map(|o| crate::config::parse_origin_pattern(o).ok())
                .collect(),
            required: cfg.origin_required,
        }
    }

    /// Checks the request's `Origin` values (a browser sends exactly one).
    pub fn check(&self, origin: Option<&[u8]>) -> Result<(), Refusal> {
        let Some(origin) = origin else {
            return if self.required {
                Err(Refusal::NoOrigin)
            } else {
                Ok(())
            };
        };
        if self.allowed.is_empty() {
            return Ok(());
        }
        let origin = String::from_utf8_lossy(origin).trim().to_ascii_lowercase();
        let Some((scheme, host)) = origin.split_once("://") else {
            return Err(Refusal::Origin);
        };
        let allowed = self.allowed.iter().any(|p| match p.split_once("://") {
            Some((s, h)) if s == scheme => match h.strip_prefix('*') {
                // `*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`.
                Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
                None => h == host,
            },
            _ => false,
        });
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Origin)
        }
    }
}

/// What happens to a user's older session when a newer one is admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Older {
    Keep,
    Replace,
}

/// The checks at the upgrade, in order. `duplicate`: the user already has a live session on this
/// core (the one that owns every session of that user, so the answer needs no other core).
pub fn check_upgrade(
    shutting_down: bool,
    upstream_up: bool,
    duplicate: bool,
    policy: OneSessionPerUser,
) -> Result<Older, Refusal> {
    if shutting_down {
        return Err(Refusal::ShuttingDown);
    }
    if !upstream_up {
        return Err(Refusal::NoUpstream);
    }
    match (duplicate, policy) {
        (true, OneSessionPerUser::Reject) => Err(Refusal::Duplicate),
        (true, OneSessionPerUser::Replace) => Ok(Older::Replace),
        _ => Ok(Older::Keep),
    }
}

/// How the real client address is learnt, from `proxy_protocol`, `trusted_proxies` and
/// `real_ip_header`.
#[derive(Clone, Debug, Default)]
pub struct ClientAddress {
    pub proxy_protocol: ProxyProtocol,
    pub trust: Trust,
    pub real_ip_header: Option<RealIpHeader>,
}

impl ClientAddress {
    /// From a validated configuration (whose networks parse).
    pub fn from_config(cfg: &Config) -> ClientAddress {
        ClientAddress {
            proxy_protocol: cfg.proxy_protocol,
            trust: Trust {
                nets: cfg
                    .trusted_proxies
                    .iter()
                    .filter_map(|t| crate::config::parse_network(t).ok())
                    .collect(),
            },
            real_ip_header: cfg.real_ip_header,
        }
    }
}

/// The proxies whose word about a client is believed.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    nets: Vec<ipnet::IpNet>,
}

impl Trust {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// The client named by the values of `header` (every such header of the request, in order), or
/// `None` to keep the direct peer's address. The caller has checked that the direct peer is
/// trusted. For `X-Forwarded-For`, each proxy appends the address it saw, so the right-most entry
/// that is not a trusted proxy is the first one no trusted party vouches for: entries left of it
/// could have been written by the client itself. A malformed entry on the way makes the whole
/// header unusable.
pub fn real_ip(header: RealIpHeader, values: &[&[u8]], trust: &Trust) -> Option<IpAddr> {
    match header {
        RealIpHeader::XRealIp => values.last().and_then(|v| ip_of(v)),
        RealIpHeader::XForwardedFor => {
            let entries: Vec<&[u8]> = values
                .iter()
                .flat_map(|v| v.split(|&b| b == b','))
                .collect();
            let mut leftmost = None;
            for entry in entries.iter().rev() {
                let ip = ip_of(entry)?;
                if !trust.trusts(ip) {
                    return Some(ip);
                }
                leftmost = Some(ip);
            }
            // Every hop is a trusted proxy: the first of them is as close to the client as known.
            leftmost
        }
    }
}

/// An address as proxies write it: `203.0.113.7`, `2001:db8::1`, or with a port
/// (`203.0.113.7:51234`, `[2001:db8::1]:443`), with spaces around.
fn ip_of(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust(nets: &[&str]) -> Trust {
        Trust {
            nets: nets
                .iter()
                .map(|n| crate::config::parse_network(n).unwrap())
                .collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trust_covers_networks_single_addresses_and_mapped_ipv4() {
        let t = trust(&["10.0.0.0/8", "192.0.2.7", "fd00::/8"]);
        assert!(t.trusts(ip("10.1.2.3")));
        assert!(t.trusts(ip("192.0.2.7")));
        assert!(!t.trusts(ip("192.0.2.8")));
        assert!(t.trusts(ip("fd12::1")));
        assert!(
            t.trusts(ip("::ffff:10.9.9.9")),
            "an IPv4 peer on a dual-stack socket"
        );
        assert!(!t.trusts(ip("203.0.113.1")));
        assert!(!Trust::default().trusts(ip("127.0.0.1")));
    }

    #[test]
    fn x_forwarded_for_gives_the_right_most_untrusted_hop() {
        let t = trust(&["10.0.0.0/8"]);
        let xff = RealIpHeader::XForwardedFor;
        // A client that forges a left-most entry does not get it believed.
        let v: &[&[u8]] = &[b"6.6.6.6, 203.0.113.7, 10.0.0.2"];
        assert_eq!(real_ip(xff, v, &t), Some(ip("203.0.113.7")));
        // Several headers are one list, in order.
        let v: &[&[u8]] = &[b"6.6.6.6", b"203.0.113.9 , 10.1.1.1"];
        assert_eq!(real_ip(xff, v, &t), Some(ip("203.0.113.9")));
        // Ports and IPv6 as proxies write them.
        let v: &[&[u8]] = &[b"[2001:db8::5]:443, 10.0.0.1:80"];
        assert_eq!(real_ip(xff, v, &t), Some(ip("2001:db8::5")));
        // Only trusted hops: the left-most of them.
        let v: &[&[u8]] = &[b"10.0.0.9, 10.0.0.2"];
        assert_eq!(real_ip(xff, v, &t), Some(ip("10.0.0.9")));
        // A malformed hop on the way, an empty header, no header: the peer's own address stands.
        let v: &[&[u8]] = &[b"203.0.113.7, garbage, 10.0.0.2"];
        assert_eq!(real_ip(xff, v, &t), None);
        assert_eq!(real_ip(xff, &[b""], &t), None);
        assert_eq!(real_ip(xff, &[], &t), None);
    }

    #[test]
    fn x_real_ip_is_one_address() {
        let t = trust(&["10.0.0.0/8"]);
        let v: &[&[u8]] = &[b" 198.51.100.4 "];
        assert_eq!(
            real_ip(RealIpHeader::XRealIp, v, &t),
            Some(ip("198.51.100.4"))
        );
        let v: &[&[u8]] = &[b"198.51.100.4, 10.0.0.1"];
        assert_eq!(real_ip(RealIpHeader::XRealIp, v, &t), None);
    }

    #[test]
    fn the_budget_counts_the_process_and_permits_give_back_their_place() {
        let b = Budget::new(2);
        let first = b.admit().unwrap();
        let second = b.admit().unwrap();
        assert_eq!(b.admit().err(), Some(2), "a third connection was admitted");
        drop(first);
        assert_eq!(b.held(), 1);
        second.keep();
        assert_eq!(b.held(), 1, "a kept permit was released");
        let third = b.admit().unwrap();
        assert_eq!(b.held(), 2);
        b.release();
        drop(third);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn permits_of_another_thread_count_in_the_same_budget() {
        let b = Budget::new(10);
        let p = b.admit().unwrap();
        std::thread::spawn(move || drop(p)).join().unwrap();
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn upgrade_refusals_say_why() {
        use OneSessionPerUser::*;
        assert_eq!(
            check_upgrade(true, true, false, Allow),
            Err(Refusal::ShuttingDown)
        );
        assert_eq!(
            check_upgrade(false, false, true, Reject),
            Err(Refusal::NoUpstream)
        );
        assert_eq!(check_upgrade(false, true, false, Reject), Ok(Older::Keep));
        assert_eq!(Refusal::NoUpstream.to_string(), "no upstream available");
        assert_eq!(Refusal::NoUpstream.status(), 503);
    }

    fn origins(allowed: &[&str], required: bool) -> Origins {
        Origins::from_config(&Config {
            allowed_origins: allowed.iter().map(|s| s.to_string()).collect(),
            origin_required: required,
            ..Config::default()
        })
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let o = origins(
            &[
                "https://Game.Example.com",
                "https://*.example.org",
                "http://localhost:8080",
            ],
            false,
        );
        let check = |v: &str| o.check(Some(v.as_bytes()));
        assert_eq!(check("https://game.example.com"), Ok(()));
        assert_eq!(check("HTTPS://GAME.EXAMPLE.COM"), Ok(()));
        assert_eq!(check("https://a.example.org"), Ok(()));
        assert_eq!(check("https://a.b.example.org"), Ok(()));
        assert_eq!(check("http://localhost:8080"), Ok(()));
        for refused in [
            "https://example.org",
            "http://a.example.org",
            "https://evil-example.org",
            "https://a.example.org.evil.com",
            "https://game.example.com:444",
            "http://localhost:8081",
            "null",
            "",
        ] {
            assert_eq!(
                check(refused),
                Err(Refusal::Origin),
                "{refused:?} was allowed"
            );
        }
        assert_eq!(o.check(None), Ok(()), "a non-browser client without Origin");
        assert_eq!(origins(&[], true).check(None), Err(Refusal::NoOrigin));
        assert_eq!(origins(&[], true).check(Some(b"https://any.where")), Ok(()));
        assert_eq!(Refusal::Origin.status(), 403);
    }

    #[test]
    fn a_second_session_of_a_user_replaces_is_refused_or_joins_by_policy() {
        use OneSessionPerUser::*;
        assert_eq!(
            check_upgrade(false, true, true, Replace),
            Ok(Older::Replace)
        );
        assert_eq!(
            check_upgrade(false, true, true, Reject),
            Err(Refusal::Duplicate)
        );
        assert_eq!(Refusal::Duplicate.status(), 409);
        assert_eq!(check_upgrade(false, true, true, Allow), Ok(Older::Keep));
        assert_eq!(check_upgrade(false, true, false, Replace), Ok(Older::Keep));
    }
}
