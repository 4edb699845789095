//! Counters and latency histograms, as harvested from the workers once a second, sent between
//! processes as JSON, and merged.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors by kind. Every field is a count of events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    /// TCP connect failed, was refused, or did not complete within the connect timeout.
    pub connect: u64,
    /// The upgrade was answered with another status than 101, by status.
    pub handshake_status: BTreeMap<u16, u64>,
    /// The upgrade response was malformed, had a wrong `Sec-WebSocket-Accept`, or did not come.
    pub handshake: u64,
    /// The server closed (close frame, EOF or reset) a connection the harness had not closed.
    pub closed: u64,
    /// An echo differed from what was sent (content, length, type or timestamp).
    pub mismatch: u64,
    /// An echo came back out of sequence (skipping or repeating messages).
    pub out_of_order: u64,
    /// An echo did not come back within the timeout (including those unanswered at the end).
    pub timeout: u64,
    /// The server broke the framing protocol (masked or malformed frame).
    pub protocol: u64,
    /// Echoes whose message boundaries differed from what was sent (merged or split messages, as
    /// TCP bridges do); their bytes are still checked, as a stream.
    pub boundary: u64,
    /// Fan-out: a client's "joined" did not come within the connect timeout.
    pub join: u64,
    /// Fan-out, close policy: messages of a member's stream that it never received (skipped in
    /// the sequence, or still owed when the drain ended).
    pub lost: u64,
    /// Fan-out: a message received again right after itself.
    pub duplicate: u64,
    /// Fan-out, latest policy: members whose last message received is not the last published.
    pub stale_end: u64,
}

impl Errors {
    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        for (k, v) in &o.handshake_status {
            *self.handshake_status.entry(*k).or_default() += v;
        }
        self.handshake += o.handshake;
        self.closed += o.closed;
        self.mismatch += o.mismatch;
        self.out_of_order += o.out_of_order;
        self.timeout += o.timeout;
        self.protocol += o.protocol;
        self.boundary += o.boundary;
        self.join += o.join;
        self.lost += o.lost;
        self.duplicate += o.duplicate;
        self.stale_end += o.stale_end;
    }

    /// All errors (boundary deviations included).
    pub fn total(&self) -> u64 {
        self.connect
            + self.handshake_status.values().sum::<u64>()
            + self.handshake
            + self.closed
            + self.mismatch
            + self.out_of_order
            + self.timeout
            + self.protocol
            + self.boundary
            + self.join
            + self.lost
            + self.duplicate
            + self.stale_end
    }

    /// `kind count` pairs of the nonzero kinds.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |name: &str, n: u64| {
            if n > 0 {
                parts.push(format!("{name} {n}"));
            }
        };
        push("connect", self.connect);
        for (k, v) in &self.handshake_status {
            push(&format!("handshake-status-{k}"), *v);
        }
        push("handshake", self.handshake);
        push("closed", self.closed);
        push("mismatch", self.mismatch);
        push("out-of-order", self.out_of_order);
        push("timeout", self.timeout);
        push("protocol", self.protocol);
        push("boundary", self.boundary);
        push("join", self.join);
        push("lost", self.lost);
        push("duplicate", self.duplicate);
        push("stale-end", self.stale_end);
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// Event counts. Deltas when harvested; sums in totals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// TCP connects started.
    pub connect_attempts: u64,
    /// Upgrades completed (101 with a correct accept key).
    pub connects: u64,
    /// Messages sent.
    pub msgs_sent: u64,
    /// Echoes received and verified: completed round trips.
    pub round_trips: u64,
    /// Payload bytes sent and received (frame headers not counted).
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// Connections closed cleanly by the harness (close handshake completed).
    pub closes: u64,
    /// Closes whose handshake or TCP shutdown did not finish in the close timeout (then reset).
    pub close_timeouts: u64,
    /// Open-loop sends skipped because a connection already had too many messages in flight.
    pub skipped: u64,
    /// Close codes the server sent on connections it closed itself.
    pub close_codes: BTreeMap<u16, u64>,
    /// Fan-out: clients told they are in their room.
    pub joined: u64,
    /// Fan-out: published messages received and accepted by a member.
    pub delivered: u64,
    /// Fan-out, drop and latest policies: messages of a member's stream left out (a gap, or not
    /// received by the end of the drain); with close they are errors (`lost`) instead.
    pub missing: u64,
    /// Fan-out: messages the members still open at the end were owed (the published count of
    /// each one's stream), counted when they close.
    pub expected: u64,
    pub errors: Errors,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.connect_attempts += o.connect_attempts;
        self.connects += o.connects;
        self.msgs_sent += o.msgs_sent;
        self.round_trips += o.round_trips;
        self.bytes_sent += o.bytes_sent;
        self.bytes_recv += o.bytes_recv;
        self.closes += o.closes;
        self.close_timeouts += o.close_timeouts;
        self.skipped += o.skipped;
        for (k, v) in &o.close_codes {
            *self.close_codes.entry(*k).or_default() += v;
        }
        self.joined += o.joined;
        self.delivered += o.delivered;
        self.missing += o.missing;
        self.expected += o.expected;
        self.errors.add(&o.errors);
    }
}

/// Latencies in microseconds, 1 us to 10 minutes, 3 significant digits. Serialized as the list of
/// its nonzero buckets, `[[value, count], ...]`, which merges back bucket for bucket.
#[derive(Clone, Debug)]
pub struct Hist(pub Histogram<u64>);

const HIST_MAX_US: u64 = 600_000_000;

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds"))
    }
}

impl PartialEq for Hist {
    fn eq(&self, other: &Self) -> bool {
        self.pairs() == other.pairs()
    }
}

impl Hist {
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn add(&mut self, o: &Hist) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.0.add(&o.0);
    }

    pub fn pairs(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    pub fn from_pairs(pairs: &[(u64, u64)]) -> Hist {
        let mut h = Hist::default();
        for &(v, c) in pairs {
            let _ = h.0.record_n(v.clamp(1, HIST_MAX_US), c);
        }
        h
    }

    pub fn summary(&self) -> Percentiles {
        let h = &self.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

impl Serialize for Hist {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.pairs().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(u64, u64)>::deserialize(d)?;
        Ok(Hist::from_pairs(&pairs))
    }
}

/// Percentiles of a histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

/// What one unit (a worker thread, or a whole child process) reports at a harvest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub counters: Counters,
    /// Round-trip latency of the echoes received since the last harvest (fan-out: from publish to
    /// receipt).
    pub rtt: Hist,
    /// Connect-plus-upgrade latency of the upgrades completed since the last harvest.
    pub handshake: Hist,
    /// TCP connect latency (connect(2) to writable), the first part of the upgrade latency.
    pub tcp_connect: Hist,
    /// Gauges at the time of the harvest: connections open, connects in progress.
    pub open: u64,
    pub connecting: u64,
    /// CPU time of the child process that sent this (0 for a thread of this process).
    pub cpu_ns: u64,
}

impl Snapshot {
    /// Merges a snapshot of another unit taken at the same harvest: counts add, gauges add.
    pub fn merge(&mut self, o: &Snapshot) {
        self.counters.add(&o.counters);
        self.rtt.add(&o.rtt);
        self.handshake.add(&o.handshake);
        self.tcp_connect.add(&o.tcp_connect);
        self.open += o.open;
        self.connecting += o.connecting;
        self.cpu_ns += o.cpu_ns;
    }

    /// Adds a later snapshot of the same units: counts add, gauges take the later value.
    pub fn accumulate(&mut self, later: &Snapshot) {
        self.counters.add(&later.counters);
        self.rtt.add(&later.rtt);
        self.handshake.add(&later.handshake);
        self.tcp_connect.add(&later.tcp_connect);
        self.open = later.open;
        self.connecting = later.connecting;
        self.cpu_ns = later.cpu_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Hist {
        let mut h = Hist::default();
        for &v in values {
            h.record(v);
        }
        h
    }

    #[test]
    fn histogram_survives_json_and_merges() {
        let a = hist(&[1, 2, 3, 100, 1000, 12_345, 999_999, 5_000_000]);
        let b = hist(&[7, 7, 7, 250, 250_000]);
        let mut direct = a.clone();
        direct.add(&b);

        let ja = serde_json::to_string(&a).unwrap();
        let jb = serde_json::to_string(&b).unwrap();
        let mut merged: Hist = serde_json::from_str(&ja).unwrap();
        merged.add(&serde_json::from_str::<Hist>(&jb).unwrap());

        assert_eq!(merged.0.len(), 13);
        assert_eq!(merged, direct);
        let (m, d) = (merged.summary(), direct.summary());
        assert_eq!(
            (m.p50, m.p90, m.p99, m.p99_9, m.max),
            (d.p50, d.p90, d.p99, d.p99_9, d.max)
        );
        assert!(d.max >= 5_000_000 && d.max < 5_010_000);
    }

    #[test]
    fn histogram_clamps_out_of_range_values() {
        let h = hist(&[0, u64::MAX]);
        assert_eq!(h.0.len(), 2);
        assert_eq!(h.summary().p50, 1);
    }

    #[test]
    fn snapshots_merge_counts_and_gauges() {
        let mut a = Snapshot {
            open: 10,
            ..Default::default()
        };
        a.counters.round_trips = 5;
        a.counters.errors.handshake_status.insert(503, 2);
        a.rtt = hist(&[10, 20]);
        let mut b = Snapshot {
            open: 7,
            cpu_ns: 3,
            ..Default::default()
        };
        b.counters.round_trips = 4;
        b.counters.errors.handshake_status.insert(503, 1);
        b.counters.errors.timeout = 1;
        b.rtt = hist(&[30]);

        let wire: Snapshot = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(wire, b);

        let mut m = a.clone();
        m.merge(&wire);
        assert_eq!(m.open, 17);
        assert_eq!(m.counters.round_trips, 9);
        assert_eq!(m.counters.errors.handshake_status[&503], 3);
        assert_eq!(m.counters.errors.total(), 4);
        assert_eq!(m.rtt.0.len(), 3);
        assert_eq!(
            m.counters.errors.describe(),
            "handshake-status-503 3, timeout 1"
        );

        let mut t = a;
        t.accumulate(&wire);
        assert_eq!(t.open, 7);
        assert_eq!(t.counters.round_trips, 9);
    }
}
