//! Incremental, fail-fast UTF-8 validation across chunk boundaries.
//!
//! Owns deciding whether the bytes of a text message seen so far can still
//! be a prefix of valid UTF-8. Bulk bytes go through `simdutf8`; only the at
//! most three bytes of a code point split across chunks go through the small
//! state machine here. Must never buffer message bytes (the state is the
//! next-byte constraint only, 3 bytes) and must never accept a prefix that no
//! continuation could make valid: Autobahn 6.4.x expects the connection to
//! fail as soon as the offending byte arrives.

/// Why a text payload is not UTF-8. Both map to close code 1007.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum Utf8Error {
    #[error("invalid UTF-8 sequence")]
    Invalid,
    #[error("text ends inside a UTF-8 code point")]
    Incomplete,
}

/// Validator state between chunks: how many continuation bytes the current
/// code point still needs, and the inclusive range the next one must fall in
/// (the range is what rejects overlongs, surrogates and values past U+10FFFF
/// at their second byte).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    need: u8,
    lo: u8,
    hi: u8,
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next chunk of the message. Errors as soon as the bytes
    /// fed so far cannot begin any valid UTF-8 string.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Utf8Error> {
        let mut rest = bytes;
        while self.need != 0 {
            let Some((&byte, tail)) = rest.split_first() else {
                return Ok(());
            };
            self.step(byte)?;
            rest = tail;
        }
        match simdutf8::compat::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(err) if err.error_len().is_some() => Err(Utf8Error::Invalid),
            Err(err) => {
                // The input ends inside a code point. Running those bytes
                // through `step` both records the state and re-checks that the
                // prefix is possible, independent of simdutf8's judgement.
                let tail = rest.get(err.valid_up_to()..).unwrap_or_default();
                tail.iter().try_for_each(|&byte| self.step(byte))
            }
        }
    }

    /// Call at the end of the message: a code point left open is an error.
    pub fn finish(&self) -> Result<(), Utf8Error> {
        if self.need == 0 {
            Ok(())
        } else {
            Err(Utf8Error::Incomplete)
        }
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Unicode Table 3-7 (well-formed UTF-8 byte sequences) as a state step.
    fn step(&mut self, byte: u8) -> Result<(), Utf8Error> {
        if self.need != 0 {
            if byte < self.lo || byte > self.hi {
                return Err(Utf8Error::Invalid);
            }
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xBF;
            return Ok(());
        }
        let (need, lo, hi) = match byte {
            0x00..=0x7F => return Ok(()),
            0xC2..=0xDF => (1, 0x80, 0xBF),
            0xE0 => (2, 0xA0, 0xBF),
            0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
            0xED => (2, 0x80, 0x9F),
            0xF0 => (3, 0x90, 0xBF),
            0xF1..=0xF3 => (3, 0x80, 0xBF),
            0xF4 => (3, 0x80, 0x8F),
            // 0x80..=0xC1 (continuation or overlong lead), 0xF5..=0xFF.
            _ => return Err(Utf8Error::Invalid),
        };
        *self = Self { need, lo, hi };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True when `bytes` is valid UTF-8 or could become so with more bytes.
    fn is_possible_prefix(bytes: &[u8]) -> bool {
        match std::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        }
    }

    /// Index of the first byte after which the input is impossible, if any.
    fn first_bad(bytes: &[u8]) -> Option<usize> {
        (1..=bytes.len()).find(|&n| !is_possible_prefix(&bytes[..n]))
    }

    fn bytewise_first_error(bytes: &[u8]) -> Option<usize> {
        let mut v = Utf8Validator::new();
        (0..bytes.len())
            .find(|&i| v.feed(&bytes[i..=i]).is_err())
            .map(|i| i + 1)
    }

    fn whole(bytes: &[u8]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        v.feed(bytes)?;
        v.finish()
    }

    #[test]
    fn size_is_three_bytes() {
        assert_eq!(std::mem::size_of::<Utf8Validator>(), 3);
    }

    #[test]
    fn accepts_valid_text() {
        assert_eq!(whole(b""), Ok(()));
        assert_eq!(whole("Hello-µ@ßöäüàá-UTF-8!!".as_bytes()), Ok(()));
        assert_eq!(
            whole("κόσμε \u{10FFFF} \u{FFFF} \u{E000}".as_bytes()),
            Ok(())
        );
    }

    #[test]
    fn rejects_overlongs() {
        for bad in [
            &b"\xC0\x80"[..],
            b"\xC1\xBF",
            b"\xE0\x80\x80",
            b"\xE0\x9F\xBF",
            b"\xF0\x80\x80\x80",
            b"\xF0\x8F\xBF\xBF",
        ] {
            assert_eq!(whole(bad), Err(Utf8Error::Invalid), "{bad:x?}");
        }
    }

    #[test]
    fn rejects_surrogates_fail_fast() {
        let mut v = Utf8Validator::new();
        v.feed(b"a\xED").unwrap();
        assert_eq!(v.feed(b"\xA0"), Err(Utf8Error::Invalid));
        assert_eq!(whole(b"\xED\xA0\x80"), Err(Utf8Error::Invalid));
        assert_eq!(whole(b"\xED\xBF\xBF"), Err(Utf8Error::Invalid));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xED\xA0"), Err(Utf8Error::Invalid));
    }

    #[test]
    fn rejects_above_max_fail_fast() {
        assert_eq!(whole(b"\xF4\x90\x80\x80"), Err(Utf8Error::Invalid));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"xx\xF4\x90"), Err(Utf8Error::Invalid));
        let mut v = Utf8Validator::new();
        v.feed(b"\xF4").unwrap();
        assert_eq!(v.feed(b"\x90"), Err(Utf8Error::Invalid));
        for lead in 0xF5..=0xFF {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&[lead]), Err(Utf8Error::Invalid), "{lead:#x}");
        }
    }

    #[test]
    fn rejects_impossible_leads_immediately() {
        for lead in [0xC0u8, 0xC1, 0xF5, 0xFF] {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&[lead]), Err(Utf8Error::Invalid), "{lead:#x}");
        }
    }

    #[test]
    fn rejects_lone_continuations() {
        for c in 0x80u8..=0xBF {
            assert_eq!(whole(&[c]), Err(Utf8Error::Invalid));
            assert_eq!(whole(&[b'a', c]), Err(Utf8Error::Invalid));
        }
        // A continuation after a complete code point.
        assert_eq!(whole(b"\xC3\xA9\xA9"), Err(Utf8Error::Invalid));
    }

    #[test]
    fn truncated_sequences_fail_only_at_finish() {
        for trunc in [
            &b"\xC3"[..],
            b"\xE2\x82",
            b"\xF0\x9F",
            b"\xF0\x9F\x98",
            b"ok\xE2",
        ] {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(trunc), Ok(()), "{trunc:x?}");
            assert_eq!(v.finish(), Err(Utf8Error::Incomplete), "{trunc:x?}");
        }
    }

    #[test]
    fn four_byte_sequence_split_at_every_position() {
        let text = "a\u{1F600}b\u{10FFFF}".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let mut v = Utf8Validator::new();
                v.feed(&text[..i]).unwrap();
                v.feed(&text[i..j]).unwrap();
                v.feed(&text[j..]).unwrap();
                v.finish().unwrap();
            }
        }
    }

    #[test]
    fn reset_clears_partial_code_point() {
        let mut v = Utf8Validator::new();
        v.feed(b"\xF0\x9F").unwrap();
        v.reset();
        assert_eq!(v.finish(), Ok(()));
        v.feed(b"plain").unwrap();
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn matches_std_exhaustively_for_two_bytes() {
        for a in 0u8..=255 {
            for b in 0u8..=255 {
                let s = [a, b];
                assert_eq!(bytewise_first_error(&s), first_bad(&s), "{s:x?}");
                let mut v = Utf8Validator::new();
                assert_eq!(v.feed(&s).is_err(), first_bad(&s).is_some(), "{s:x?}");
            }
        }
    }

    #[test]
    fn matches_std_for_three_and_four_byte_leads() {
        for lead in [0xE0u8, 0xE1, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF4, 0xC2] {
            for b in 0u8..=255 {
                for c in (0u8..=255).step_by(3) {
                    let s = [lead, b, c, 0x80];
                    let expect = first_bad(&s);
                    assert_eq!(bytewise_first_error(&s), expect, "{s:x?}");
                    for split in 0..=s.len() {
                        let mut v = Utf8Validator::new();
                        let r = v.feed(&s[..split]).and_then(|()| v.feed(&s[split..]));
                        assert_eq!(r.is_err(), expect.is_some(), "{s:x?} split {split}");
                        if expect.is_none() {
                            let complete = std::str::from_utf8(&s).is_ok();
                            assert_eq!(v.finish().is_ok(), complete, "{s:x?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn fails_in_the_chunk_carrying_the_bad_byte() {
        // A long valid run, then an invalid byte: the chunk with it errors.
        let mut data = "é".repeat(100).into_bytes();
        data.push(0xFF);
        let mut v = Utf8Validator::new();
        assert!(v.feed(&data[..150]).is_ok());
        assert_eq!(v.feed(&data[150..]), Err(Utf8Error::Invalid));
    }
}
