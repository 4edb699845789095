//! Who sends the most on a link: each session's recent volume, a byte count that halves every
//! second, and the rule that, while the link is congested, holds back only the heaviest senders.
//!
//! Owns the arithmetic only (sans-I/O): the driver keeps one [`Recent`] per session and one for the
//! link's heaviest sender, and asks [`holds_back`] before reading a client. Never sees a socket or
//! a clock: seconds are passed in.

/// Bytes a session sent recently, halved for every second since: packed in 32 bits (the low 8 the
/// second of the last update, the high 24 the bytes, saturating at 16 MiB), so that a connection
/// pays four bytes for it. A session silent for a multiple of 256 seconds shows its old count
/// again until it next sends: the rule then takes a quiet client for a busy one at worst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recent(u32);

const MAX: u32 = (1 << 24) - 1;

impl Recent {
    /// The count as of second `now`.
    pub fn get(self, now: u32) -> u32 {
        let age = (now as u8).wrapping_sub(self.0 as u8);
        (self.0 >> 8).checked_shr(u32::from(age)).unwrap_or(0)
    }

    /// The count after `len` more bytes at second `now`.
    pub fn add(self, now: u32, len: usize) -> Recent {
        let len = u32::try_from(len).unwrap_or(MAX);
        let v = self.get(now).saturating_add(len).min(MAX);
        Recent((v << 8) | u32::from(now as u8))
    }
}

/// Whether a client that sent `mine` recently waits for its congested link, whose heaviest sender
/// sent `heaviest`: those within half of the heaviest do, so that a flood stops at its source while
/// clients sending a little keep their latency. Past twice the backlog (`queued`), everyone waits:
/// the link's queue stays bounded whoever fills it.
pub fn holds_back(mine: u32, heaviest: u32, queued: usize, backlog: usize) -> bool {
    queued > backlog.saturating_mul(2) || (mine > 0 && mine.saturating_mul(2) >= heaviest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_halves_every_second_and_saturates() {
        let r = Recent::default().add(10, 4096);
        assert_eq!(r.get(10), 4096);
        assert_eq!(r.get(11), 2048);
        assert_eq!(r.get(13), 512);
        assert_eq!(r.get(10 + 30), 0);
        assert_eq!(r.add(12, 100).get(12), 1024 + 100);
        assert_eq!(Recent::default().add(5, usize::MAX).get(5), MAX);
        assert_eq!(r.add(10, 1 << 30).get(10), MAX);
        // Across the 8-bit wrap of the second.
        let r = Recent::default().add(255, 1000);
        assert_eq!(r.get(256), 500);
    }

    #[test]
    fn only_senders_near_the_heaviest_wait_until_the_queue_is_twice_the_backlog() {
        let backlog = 1 << 20;
        assert!(
            holds_back(1 << 20, 1 << 20, backlog, backlog),
            "the heaviest"
        );
        assert!(
            holds_back(600 << 10, 1 << 20, backlog, backlog),
            "within half of it"
        );
        assert!(!holds_back(64, 1 << 20, backlog, backlog), "a light sender");
        assert!(!holds_back(0, 0, backlog, backlog), "a silent one");
        assert!(
            holds_back(64, 1 << 20, 2 * backlog + 1, backlog),
            "the hard bound"
        );
    }
}
