//! Fan-out workload: the payload a publisher stamps, the per-member order check, and the state the
//! publishing side ([`crate::hub`]) shares with the worker threads (how many messages each stream
//! has published).
//!
//! Owns the meaning of "delivered correctly": with the close policy every member receives every
//! message of its stream exactly once and in order; with drop or latest a strictly increasing
//! subsequence (latest: ending with the newest). Must never panic on what a peer sends: a payload
//! that does not parse is a counted mismatch.
//!
//! Payload layout, all big-endian: `room u32` ([`ALL`] for a broadcast), `seq u64`, `ts u64`
//! (CLOCK_MONOTONIC nanoseconds: the publisher runs in the harness process), then fill up to the
//! message size; the fill depends on room and sequence number, so a corrupted or truncated message
//! is caught.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes before the fill: room, sequence number, timestamp.
pub const HEAD: usize = 20;

/// The room field of a broadcast: every client, whatever its room.
pub const ALL: u32 = u32::MAX;

/// The text message that tells a client it is in its room: the game server sends it as DATA after
/// the JOIN (ringgate mode), a peer once the client is in the room's set.
pub const JOINED: &[u8] = b"joined";

/// What a member may see of its stream, by the policy its JOIN named (docs/protocol.md, "Slow
/// members"). A peer has no policy: it is checked as asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Every message exactly once, in order (a gap is a lost message, an error).
    Close,
    /// A strictly increasing subsequence; the messages left out are counted, not errors.
    Drop,
    /// As drop, and the last message received must be the last one published.
    Latest,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Close => "close",
            Policy::Drop => "drop",
            Policy::Latest => "latest",
        }
    }

    /// The JOIN flags value for this policy.
    pub fn wire(self) -> ringgate::protocol::Policy {
        match self {
            Policy::Close => ringgate::protocol::Policy::Close,
            Policy::Drop => ringgate::protocol::Policy::Drop,
            Policy::Latest => ringgate::protocol::Policy::Latest,
        }
    }
}

/// One published message, as parsed from what a member received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    pub room: u32,
    pub seq: u64,
    pub ts: u64,
}

/// Why a received message is not one the publisher sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bad {
    /// Not the message size the run publishes.
    Length(usize),
    /// The fill after the head is not the one of this room and sequence number.
    Fill,
}

fn fill_byte(room: u32, seq: u64, k: usize) -> u8 {
    (room as u64)
        .wrapping_mul(31)
        .wrapping_add(seq.wrapping_mul(7))
        .wrapping_add(k as u64) as u8
}

/// Appends the `size`-byte payload of message `seq` of `room`, stamped `ts`. `size` is at least
/// [`HEAD`] (checked when the run starts); a smaller one still writes the whole head.
pub fn encode(out: &mut Vec<u8>, room: u32, seq: u64, ts: u64, size: usize) {
    out.extend_from_slice(&room.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend((HEAD..size).map(|k| fill_byte(room, seq, k)));
}

/// Parses and checks a received payload of a run publishing `size`-byte messages.
pub fn parse(p: &[u8], size: usize) -> Result<Msg, Bad> {
    if p.len() != size || size < HEAD {
        return Err(Bad::Length(p.len()));
    }
    let (room, rest) = p.split_first_chunk::<4>().ok_or(Bad::Length(p.len()))?;
    let (seq, rest) = rest.split_first_chunk::<8>().ok_or(Bad::Length(p.len()))?;
    let (ts, fill) = rest.split_first_chunk::<8>().ok_or(Bad::Length(p.len()))?;
    let msg = Msg {
        room: u32::from_be_bytes(*room),
        seq: u64::from_be_bytes(*seq),
        ts: u64::from_be_bytes(*ts),
    };
    let intact = fill
        .iter()
        .enumerate()
        .all(|(k, &b)| b == fill_byte(msg.room, msg.seq, HEAD + k));
    if intact {
        Ok(msg)
    } else {
        Err(Bad::Fill)
    }
}

/// What one received sequence number means for the member's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The next one expected.
    Next,
    /// Newer than the next one expected: `skipped` messages before it never came (yet).
    Gap { skipped: u64 },
    /// The same as the last one received.
    Duplicate,
    /// Older than the last one received.
    Backwards,
}

/// One member's view of its stream: which sequence number it expects next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Order {
    /// The sequence number expected next: one past the last one received.
    next: u64,
    /// Whether anything was received (`next` 0 is then "nothing yet").
    any: bool,
    /// Messages received and accepted (in order, or after a gap).
    pub received: u64,
}

/// What is still owed to a member when the run ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// Published messages after the last one received: never arrived.
    pub missing: u64,
    /// With latest: the last message received is not the last one published.
    pub stale: bool,
}

impl Order {
    pub fn accept(&mut self, seq: u64) -> Verdict {
        if self.any && seq < self.next {
            return if seq + 1 == self.next {
                Verdict::Duplicate
            } else {
                Verdict::Backwards
            };
        }
        let skipped = seq - self.next;
        // Saturating: a peer may send any number.
        self.next = seq.saturating_add(1);
        self.any = true;
        self.received += 1;
        if skipped == 0 {
            Verdict::Next
        } else {
            Verdict::Gap { skipped }
        }
    }

    /// Whether every one of `published` messages (sequence numbers `0..published`) has been
    /// received or skipped.
    pub fn caught_up(&self, published: u64) -> bool {
        self.next >= published
    }

    /// What the member lacks once `published` messages were published in all.
    pub fn finish(&self, published: u64, policy: Policy) -> Tail {
        Tail {
            missing: published.saturating_sub(self.next),
            stale: policy == Policy::Latest && published > 0 && self.next != published,
        }
    }
}

/// The stream a client follows: its room, or the single broadcast stream.
pub fn stream_of(client: u64, rooms: u32, broadcast: bool) -> (usize, u32) {
    if broadcast {
        (0, ALL)
    } else {
        let room = (client % u64::from(rooms.max(1))) as u32;
        (room as usize, room)
    }
}

/// The query of client `i` (before `{i}` and `{p}` are expanded): its room, its user in ringgate
/// mode (ringgate routes by user, which spreads the clients over its cores), then the user's own
/// `--query` template.
pub fn query_template(i: u64, rooms: u32, ringgate: bool, extra: Option<&str>) -> String {
    let room = i % u64::from(rooms.max(1));
    let mut q = format!("room={room}");
    if ringgate {
        q.push_str("&user=u{i}");
    }
    if let Some(e) = extra.filter(|e| !e.is_empty()) {
        q.push('&');
        q.push_str(e);
    }
    q
}

/// The room a ringgate OPEN's target names (`/ws?user=u7&room=3` is room 3), if any and below
/// `rooms`.
pub fn room_of_target(target: &str, rooms: u32) -> Option<u32> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("room="))
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|&r| r < rooms)
}

/// Published counts per stream, written by the publishing side and read by the workers. A count
/// is raised before its message goes out, so a member that receives a sequence number at or past
/// it received something nobody published.
#[derive(Debug)]
pub struct Shared {
    published: Vec<AtomicU64>,
}

impl Shared {
    pub fn new(streams: usize) -> Shared {
        Shared {
            published: (0..streams.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn streams(&self) -> usize {
        self.published.len()
    }

    pub fn published(&self, stream: usize) -> u64 {
        self.published
            .get(stream)
            .map_or(0, |p| p.load(Ordering::Acquire))
    }

    pub fn set_published(&self, stream: usize, n: u64) {
        if let Some(p) = self.published.get(stream) {
            p.store(n, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        for size in [HEAD, 21, 64, 1000] {
            let mut buf = Vec::new();
            encode(&mut buf, 7, 123_456, 987_654_321, size);
            assert_eq!(buf.len(), size);
            assert_eq!(
                parse(&buf, size),
                Ok(Msg {
                    room: 7,
                    seq: 123_456,
                    ts: 987_654_321
                })
            );
        }
        let mut buf = Vec::new();
        encode(&mut buf, ALL, u64::MAX, 0, 64);
        assert_eq!(&buf[..4], &[0xff; 4], "room first, big-endian");
        assert_eq!(parse(&buf, 64).map(|m| m.room), Ok(ALL));
    }

    #[test]
    fn damaged_payloads_are_caught() {
        let mut buf = Vec::new();
        encode(&mut buf, 3, 9, 1, 64);
        assert_eq!(parse(&buf[..63], 64), Err(Bad::Length(63)));
        assert_eq!(parse(&[], 64), Err(Bad::Length(0)));
        assert_eq!(parse(&buf[..10], 10), Err(Bad::Length(10)), "below HEAD");
        let mut bad = buf.clone();
        bad[40] ^= 1;
        assert_eq!(parse(&bad, 64), Err(Bad::Fill));
        // Another room's or sequence number's head over this fill.
        let mut other = buf.clone();
        other[3] = 4;
        assert_eq!(parse(&other, 64), Err(Bad::Fill));
        let mut other = buf;
        other[11] ^= 1;
        assert_eq!(parse(&other, 64), Err(Bad::Fill));
    }

    #[test]
    fn exactly_once_in_order() {
        let mut o = Order::default();
        for seq in 0..5 {
            assert_eq!(o.accept(seq), Verdict::Next);
        }
        assert_eq!(o.received, 5);
        assert!(o.caught_up(5));
        assert!(!o.caught_up(6));
        assert_eq!(o.finish(5, Policy::Close), Tail::default());
    }

    #[test]
    fn gaps_are_counted() {
        let mut o = Order::default();
        // The first message was lost too.
        assert_eq!(o.accept(1), Verdict::Gap { skipped: 1 });
        assert_eq!(o.accept(2), Verdict::Next);
        assert_eq!(o.accept(6), Verdict::Gap { skipped: 3 });
        assert_eq!(o.received, 3);
        // Two more were published after the last one received.
        assert_eq!(
            o.finish(9, Policy::Drop),
            Tail {
                missing: 2,
                stale: false
            }
        );
        assert_eq!(
            o.finish(9, Policy::Latest),
            Tail {
                missing: 2,
                stale: true
            }
        );
        assert_eq!(
            o.finish(7, Policy::Latest),
            Tail {
                missing: 0,
                stale: false
            },
            "latest ended with the newest"
        );
    }

    #[test]
    fn duplicates_and_reordering_are_detected() {
        let mut o = Order::default();
        assert_eq!(o.accept(0), Verdict::Next);
        assert_eq!(o.accept(0), Verdict::Duplicate);
        assert_eq!(o.accept(1), Verdict::Next);
        assert_eq!(o.accept(3), Verdict::Gap { skipped: 1 });
        // 2 arriving late is out of order, not a fill of the gap.
        assert_eq!(o.accept(2), Verdict::Backwards);
        assert_eq!(o.accept(3), Verdict::Duplicate);
        assert_eq!(o.accept(0), Verdict::Backwards);
        assert_eq!(o.received, 3, "only accepted messages count");
        assert_eq!(o.accept(4), Verdict::Next);
    }

    #[test]
    fn nothing_received() {
        let o = Order::default();
        assert!(o.caught_up(0));
        assert_eq!(o.finish(0, Policy::Latest), Tail::default());
        assert_eq!(
            o.finish(3, Policy::Latest),
            Tail {
                missing: 3,
                stale: true
            }
        );
        assert_eq!(o.finish(3, Policy::Close).missing, 3);
    }

    #[test]
    fn streams_queries_and_targets() {
        assert_eq!(stream_of(7, 3, false), (1, 1));
        assert_eq!(stream_of(7, 3, true), (0, ALL));
        assert_eq!(stream_of(5, 0, false), (0, 0), "no rooms is one room");
        assert_eq!(query_template(7, 3, false, None), "room=1");
        assert_eq!(query_template(7, 3, true, None), "room=1&user=u{i}");
        assert_eq!(
            query_template(4, 100, true, Some("token=t{i}")),
            "room=4&user=u{i}&token=t{i}"
        );
        assert_eq!(room_of_target("/ws?user=u7&room=3", 4), Some(3));
        assert_eq!(room_of_target("/ws?room=3", 3), None, "out of range");
        assert_eq!(room_of_target("/ws?room=x", 3), None);
        assert_eq!(room_of_target("/ws", 3), None);
        assert_eq!(room_of_target("/ws?myroom=1&room=2", 3), Some(2));
    }

    #[test]
    fn shared_counts() {
        let s = Shared::new(3);
        s.set_published(1, 5);
        s.set_published(2, 7);
        s.set_published(9, 1);
        assert_eq!((s.published(0), s.published(1), s.published(9)), (0, 5, 0));
        assert_eq!(Shared::new(0).streams(), 1);
    }
}
