//! When a link tries again: exponential backoff with jitter.
//!
//! Owns the count of failures in a series and the jitter's generator. Pure: the driver reports
//! attempts and how long a link stayed up, and sleeps for what [`Backoff::next_delay`] says.

use std::time::Duration;

pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
    jitter: Jitter,
}

impl Backoff {
    /// `seed` spreads the links of many cores and instances (with the clock mixed in).
    pub fn new(min: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            min,
            max,
            failures: 0,
            jitter: Jitter::new(seed),
        }
    }

    /// Whether the next failure is the first of a series (worth a warning; retries are not).
    pub fn is_first(&self) -> bool {
        self.failures == 0
    }

    /// A link that was up for `lasted`: one that stayed up longer than the longest delay starts its
    /// backoff afresh.
    pub fn on_link_ended(&mut self, lasted: Duration) {
        if lasted > self.max {
            self.failures = 0;
        }
    }

    /// The delay before the next attempt, after an attempt failed or a link ended: from `min`,
    /// doubling, up to `max`, drawn from the upper half of its interval so that links do not
    /// reconnect in step.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let cap = self
            .min
            .saturating_mul(1 << self.failures.min(16))
            .min(self.max);
        cap / 2 + cap.mul_f64(self.jitter.next_unit() / 2.0)
    }
}

/// xorshift64*: jitter for backoff needs spread, not secrecy.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((seed ^ t) | 1)
    }

    /// A number in [0, 1).
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_within_the_upper_half_up_to_the_cap() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, 7);
        assert!(b.is_first());
        let caps = [200, 400, 800, 1000, 1000, 1000];
        for cap in caps {
            let d = b.next_delay();
            assert!(
                d >= cap * MS / 2 && d <= cap * MS,
                "delay {d:?} outside [{}, {cap}] ms",
                cap / 2
            );
            assert!(!b.is_first());
        }
    }

    #[test]
    fn a_link_that_stayed_up_long_starts_afresh_and_a_short_one_does_not() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, 1);
        for _ in 0..5 {
            b.next_delay();
        }
        b.on_link_ended(500 * MS);
        assert!(!b.is_first());
        assert!(b.next_delay() >= 500 * MS, "a short link reset the series");
        b.on_link_ended(2000 * MS);
        assert!(b.is_first());
        assert!(b.next_delay() <= 200 * MS);
    }

    #[test]
    fn jitter_spreads_links_that_fail_together() {
        let delays: Vec<Duration> = (0..16)
            .map(|seed| Backoff::new(100 * MS, 1000 * MS, seed).next_delay())
            .collect();
        let distinct = delays
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len();
        assert!(distinct > 8, "{delays:?}");
    }
}
