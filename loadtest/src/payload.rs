//! Echo payloads: a per-connection sequence number and a send timestamp (monotonic nanoseconds),
//! followed by a fill pattern that depends on the connection, so every echo can be checked for
//! order and content.
//!
//! Binary layout: `seq` (u64 LE), `ts` (u64 LE), fill. Text layout (valid UTF-8, ASCII): `seq` as
//! 16 lowercase hex digits, `ts` as 16, then fill letters.

pub const BINARY_HEAD: usize = 16;
pub const TEXT_HEAD: usize = 32;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// The fill bytes for every connection: connection `c` uses the window starting at `c % 256`.
pub struct Pattern {
    bytes: Vec<u8>,
    size: usize,
    text: bool,
}

impl Pattern {
    pub fn new(size: usize, text: bool) -> Pattern {
        let len = size + 256;
        let bytes = if text {
            (0..len)
                .map(|k| ALPHABET[(k * 7) % ALPHABET.len()])
                .collect()
        } else {
            (0..len)
                .map(|k| (k as u32).wrapping_mul(131).wrapping_add(k as u32 >> 8) as u8)
                .collect()
        };
        Pattern { bytes, size, text }
    }

    pub fn head_len(&self) -> usize {
        if self.text {
            TEXT_HEAD
        } else {
            BINARY_HEAD
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn fill(&self, conn: u64) -> &[u8] {
        let off = (conn % 256) as usize;
        &self.bytes[off..off + self.size - self.head_len()]
    }

    /// Appends the payload of message `seq` of connection `conn`, stamped `ts`.
    pub fn write(&self, out: &mut Vec<u8>, conn: u64, seq: u64, ts: u64) {
        if self.text {
            push_hex(out, seq);
            push_hex(out, ts);
        } else {
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&ts.to_le_bytes());
        }
        out.extend_from_slice(self.fill(conn));
    }

    /// The sequence number and timestamp of an echoed payload, `None` if it is not one of ours.
    pub fn parse_head(&self, p: &[u8]) -> Option<(u64, u64)> {
        if p.len() != self.size {
            return None;
        }
        if self.text {
            Some((parse_hex(&p[..16])?, parse_hex(&p[16..32])?))
        } else {
            let seq = u64::from_le_bytes(p[..8].try_into().ok()?);
            let ts = u64::from_le_bytes(p[8..16].try_into().ok()?);
            Some((seq, ts))
        }
    }

    /// Whether the fill of an echoed payload is the one connection `conn` sent.
    pub fn check_fill(&self, p: &[u8], conn: u64) -> bool {
        p.len() == self.size && p[self.head_len()..] == *self.fill(conn)
    }
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    for shift in (0..16).rev() {
        out.push(HEX[((v >> (shift * 4)) & 0xF) as usize]);
    }
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trip() {
        let p = Pattern::new(64, false);
        let mut buf = Vec::new();
        p.write(&mut buf, 7, 42, 123_456_789);
        assert_eq!(buf.len(), 64);
        assert_eq!(p.parse_head(&buf), Some((42, 123_456_789)));
        assert!(p.check_fill(&buf, 7));
        assert!(!p.check_fill(&buf, 8), "another connection's fill differs");
        buf[40] ^= 1;
        assert!(!p.check_fill(&buf, 7));
        assert_eq!(p.parse_head(&buf[..63]), None);
    }

    #[test]
    fn text_round_trip_is_ascii() {
        let p = Pattern::new(100, true);
        let mut buf = Vec::new();
        p.write(&mut buf, 3, u64::MAX, 0xdead_beef);
        assert_eq!(buf.len(), 100);
        assert!(buf.is_ascii());
        assert_eq!(p.parse_head(&buf), Some((u64::MAX, 0xdead_beef)));
        assert!(p.check_fill(&buf, 3));
        buf[3] = b'z';
        assert_eq!(p.parse_head(&buf), None);
    }

    #[test]
    fn minimal_sizes() {
        let p = Pattern::new(BINARY_HEAD, false);
        let mut buf = Vec::new();
        p.write(&mut buf, 1, 2, 3);
        assert_eq!(p.parse_head(&buf), Some((2, 3)));
        assert!(p.check_fill(&buf, 1));
        let p = Pattern::new(TEXT_HEAD, true);
        let mut buf = Vec::new();
        p.write(&mut buf, 1, 2, 3);
        assert_eq!(p.parse_head(&buf), Some((2, 3)));
    }
}
