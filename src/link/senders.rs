//! Who sends the most on a link: each session's recent volume, a byte count that halves every
//! second, and the rule that, while the link is congested, holds back only the heaviest senders.
//!
//! The link's queue is one FIFO, so what a light sender's message waits behind is what the heavy
//! ones queued before it. The rule keeps that small: a sender near the heaviest may add to the
//! queue only while it holds less than [`heavy_mark`] (a share of about one read, whatever the
//! backlog), light senders are read on until twice the backlog, and past that everyone waits.
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

/// The queue, in bytes, past which the heaviest senders of a link wait: a client's read is at
/// most 64 KiB, so a flood adds at most about twice this ahead of a light sender's message, where
/// `link_backlog` (megabytes, for bursts of many sessions) would put seconds of a slow game server's
/// time. Never above the backlog.
pub const HEAVY_SHARE: usize = 64 * 1024;

/// [`HEAVY_SHARE`], or the backlog if that is smaller.
pub fn heavy_mark(backlog: usize) -> usize {
    HEAVY_SHARE.min(backlog)
}

/// The heavy senders' rule, coming down: they are read again once the queue is down to half the
/// mark, so that each of their turns moves a useful amount.
pub fn heavy_relieved(queued: usize, backlog: usize) -> bool {
    queued <= heavy_mark(backlog) / 2
}

/// Who must wait before a client is read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A sender near the heaviest, while the queue is past [`heavy_mark`].
    Heavy,
    /// Everyone: the queue is past twice the backlog.
    All,
}

/// Whether a client that sent `mine` recently waits for its link, whose heaviest sender sent
/// `heaviest` and whose queue holds `queued` bytes: those within half of the heaviest wait once the
/// queue is past [`heavy_mark`], so that a flood stops at its source while clients sending a little
/// keep their latency; past twice the backlog everyone waits, so the queue stays bounded whoever
/// fills it.
pub fn holds_back(mine: u32, heaviest: u32, queued: usize, backlog: usize) -> Option<Wait> {
    if queued > backlog.saturating_mul(2) {
        Some(Wait::All)
    } else if queued > heavy_mark(backlog) && mine > 0 && mine.saturating_mul(2) >= heaviest {
        Some(Wait::Heavy)
    } else {
        None
    }
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
    fn heavy_senders_wait_past_their_share_and_everyone_past_twice_the_backlog() {
        let backlog = 4 << 20;
        let share = heavy_mark(backlog);
        assert_eq!(share, HEAVY_SHARE);
        let heavy = 8 << 20;
        assert_eq!(
            holds_back(heavy, heavy, share, backlog),
            None,
            "at the mark"
        );
        assert_eq!(
            holds_back(heavy, heavy, share + 1, backlog),
            Some(Wait::Heavy),
            "the heaviest, past the mark"
        );
        assert_eq!(
            holds_back(heavy / 2 + 1, heavy, share + 1, backlog),
            Some(Wait::Heavy),
            "within half of it"
        );
        assert_eq!(
            holds_back(2560, heavy, backlog, backlog),
            None,
            "a light sender, up to twice the backlog"
        );
        assert_eq!(holds_back(0, 0, backlog, backlog), None, "a silent one");
        assert_eq!(
            holds_back(2560, heavy, 2 * backlog + 1, backlog),
            Some(Wait::All),
            "the hard bound"
        );
    }

    #[test]
    fn the_mark_is_never_above_a_small_backlog_and_reopens_at_half() {
        assert_eq!(heavy_mark(1000), 1000);
        assert_eq!(
            holds_back(64, 64, 1001, 1000),
            Some(Wait::Heavy),
            "a backlog smaller than the share"
        );
        assert!(!heavy_relieved(HEAVY_SHARE / 2 + 1, 4 << 20));
        assert!(heavy_relieved(HEAVY_SHARE / 2, 4 << 20));
        assert!(heavy_relieved(500, 1000));
        assert!(!heavy_relieved(501, 1000));
    }
}
