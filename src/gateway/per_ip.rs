//! Limits per client address (the real one, after `proxy_protocol` and `real_ip_header`): the
//! sessions one address holds in the whole process (`max_connections_per_ip`) and the rate of its
//! upgrade requests on one core (`handshake_rate_per_ip`).
//!
//! Owns the process-wide count of sessions per address and one core's table of request buckets.
//! Touched once when a connection is admitted and once when its session ends, never per message.
//! Both tables are bounded: the counts hold only addresses with live sessions, the buckets at most
//! [`MAX_TRACKED`] addresses, forgetting the ones whose bucket has refilled (idle) first.
//! Addresses are keyed with std's SipHash: behind trusted proxies a client can choose the address it
//! claims, and must not be able to pile them into one bucket of the table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::config::RateLimit;

/// Addresses one core tracks for its request buckets at most.
pub const MAX_TRACKED: usize = 65_536;

/// Sessions per address in the whole process. Cores share it (one lock per admission and per
/// release), since sessions are sharded by user and one address's sessions live on many cores.
#[derive(Clone, Default)]
pub struct AddressCounts {
    max: u32,
    counts: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl AddressCounts {
    pub fn new(max: u32) -> AddressCounts {
        AddressCounts {
            max,
            counts: Arc::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.max > 0
    }

    /// Takes a place for one more session of `ip`; false when it already holds the maximum. With
    /// `credit`, one of its sessions is about to go (it is being replaced by this one) and does not
    /// count against it.
    pub fn acquire(&self, ip: IpAddr, credit: bool) -> bool {
        if !self.enabled() {
            return true;
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(ip.to_canonical()).or_insert(0);
        if n.saturating_sub(u32::from(credit)) >= self.max {
            if *n == 0 {
                counts.remove(&ip.to_canonical());
            }
            return false;
        }
        *n += 1;
        true
    }

    pub fn release(&self, ip: IpAddr) {
        if !self.enabled() {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let ip = ip.to_canonical();
        if let Some(n) = counts.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.counts.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// One core's upgrade-request buckets, one per address.
pub struct RequestRate {
    limit: Option<RateLimit>,
    /// Tokens in thousandths, and when they were last counted.
    buckets: HashMap<IpAddr, (u64, Instant)>,
}

impl RequestRate {
    pub fn new(limit: Option<RateLimit>) -> RequestRate {
        RequestRate {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Counts one upgrade request of `ip` at `now`. Err carries the seconds after which one would
    /// pass (for `Retry-After`).
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), u32> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let (rate, full) = (u64::from(limit.rate), u64::from(limit.burst) * 1000);
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            self.forget_idle(now, rate, full);
        }
        let (tokens, at) = self.buckets.entry(ip.to_canonical()).or_insert((full, now));
        let elapsed = now
            .saturating_duration_since(*at)
            .as_millis()
            .min(u128::from(u32::MAX)) as u64;
        *tokens = (*tokens + elapsed * rate).min(full);
        *at = now;
        if *tokens >= 1000 {
            *tokens -= 1000;
            return Ok(());
        }
        let wait_ms = (1000 - *tokens).div_ceil(rate.max(1));
        Err(wait_ms.div_ceil(1000).max(1) as u32)
    }

    /// Forgets the addresses whose bucket has refilled: they would start full anyway. If every one is
    /// still draining (a flood from more addresses than the table holds), forgets them all rather
    /// than grow: the limit then errs on the side of letting requests through.
    fn forget_idle(&mut self, now: Instant, rate: u64, full: u64) {
        self.buckets.retain(|_, (tokens, at)| {
            let elapsed = now
                .saturating_duration_since(*at)
                .as_millis()
                .min(u128::from(u32::MAX)) as u64;
            *tokens + elapsed * rate < full
        });
        if self.buckets.len() >= MAX_TRACKED {
            self.buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn sessions_per_address_are_counted_in_the_whole_process() {
        let c = AddressCounts::new(2);
        let other_core = c.clone();
        assert!(c.acquire(ip("203.0.113.1"), false));
        assert!(other_core.acquire(ip("203.0.113.1"), false));
        assert!(
            !c.acquire(ip("203.0.113.1"), false),
            "a third session was admitted"
        );
        assert!(
            c.acquire(ip("::ffff:203.0.113.1"), true),
            "a replacement counts the one it replaces"
        );
        assert!(
            c.acquire(ip("203.0.113.2"), false),
            "another address is not limited"
        );
        for _ in 0..3 {
            other_core.release(ip("203.0.113.1"));
        }
        c.release(ip("203.0.113.2"));
        assert_eq!(c.tracked(), 0, "addresses without sessions are forgotten");
        assert!(AddressCounts::new(0).acquire(ip("203.0.113.1"), false));
    }

    #[test]
    fn requests_pass_in_a_burst_then_at_the_rate_with_a_retry_after() {
        let mut r = RequestRate::new(Some(RateLimit { rate: 2, burst: 3 }));
        let t0 = Instant::now();
        let a = ip("198.51.100.7");
        for _ in 0..3 {
            assert_eq!(r.admit(a, t0), Ok(()));
        }
        assert_eq!(r.admit(a, t0), Err(1), "over the burst");
        assert_eq!(
            r.admit(ip("198.51.100.8"), t0),
            Ok(()),
            "another address has its own bucket"
        );
        assert_eq!(
            r.admit(a, t0 + Duration::from_millis(500)),
            Ok(()),
            "half a second refills one"
        );
        assert_eq!(r.admit(a, t0 + Duration::from_millis(500)), Err(1));
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(r.admit(a, later), Ok(()), "refilled to the burst, no more");
        }
        assert!(r.admit(a, later).is_err());
        assert_eq!(RequestRate::new(None).admit(a, t0), Ok(()));
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_idle_addresses_first() {
        let mut r = RequestRate::new(Some(RateLimit { rate: 1, burst: 1 }));
        let t0 = Instant::now();
        let addr = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..MAX_TRACKED as u32 {
            assert_eq!(r.admit(addr(i), t0), Ok(()));
        }
        // All drained: a flood from new addresses keeps the table bounded.
        assert_eq!(r.admit(addr(MAX_TRACKED as u32), t0), Ok(()));
        assert!(r.buckets.len() <= MAX_TRACKED);
        // Once they have refilled they are forgotten first, and a new address still gets in.
        let later = t0 + Duration::from_secs(5);
        for i in 0..MAX_TRACKED as u32 {
            r.admit(addr(1_000_000 + i), later).ok();
        }
        assert!(r.buckets.len() <= MAX_TRACKED, "{}", r.buckets.len());
    }
}
