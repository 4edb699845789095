//! Close frame payloads and status code rules (RFC 6455 sec. 5.5.1, 7.4).
//!
//! Owns which close codes may appear on the wire, parsing a received close
//! payload and building one to send. Must never accept a reserved or
//! unassigned code from the peer (1004-1006, 1015 and 1016-2999 are not for
//! the wire) and never build a payload longer than the 125 bytes a control
//! frame can carry.

use bytes::{BufMut, Bytes, BytesMut};

use super::decoder::ProtocolError;

/// Control frame payloads are at most 125 bytes; 2 of them are the code.
const MAX_CLOSE_PAYLOAD: usize = 125;

/// A received close frame with a validated code and UTF-8 reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: Bytes,
}

/// Whether `code` may be sent in a close frame. 1004 is reserved, 1005 and
/// 1006 are only for local reporting, 1015 is TLS-only, 1016-2999 are
/// reserved for future RFCs and 3000-4999 are for libraries and apps.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Splits a close payload into code and reason. Empty means "no status";
/// 1 byte cannot hold a code.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<(u16, &[u8])>, ProtocolError> {
    let (code, reason) = match payload {
        [] => return Ok(None),
        [_] => return Err(ProtocolError::CloseTooShort),
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
    };
    if !is_valid_close_code(code) {
        return Err(ProtocolError::InvalidCloseCode(code));
    }
    if simdutf8::basic::from_utf8(reason).is_err() {
        return Err(ProtocolError::InvalidCloseReason);
    }
    Ok(Some((code, reason)))
}

/// Builds a close payload: big-endian code then as much of `reason` as fits
/// in 125 bytes total, cut at a char boundary so it stays valid UTF-8.
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let room = MAX_CLOSE_PAYLOAD - 2;
    let mut end = reason.len().min(room);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = BytesMut::with_capacity(2 + end);
    out.put_u16(code);
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_boundaries() {
        let cases = [
            (0, false),
            (999, false),
            (1000, true),
            (1001, true),
            (1002, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1011, true),
            (1014, true),
            (1015, false),
            (1016, false),
            (2000, false),
            (2999, false),
            (3000, true),
            (4000, true),
            (4999, true),
            (5000, false),
            (u16::MAX, false),
        ];
        for (code, valid) in cases {
            assert_eq!(is_valid_close_code(code), valid, "{code}");
        }
    }

    #[test]
    fn parse_empty_is_none() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
    }

    #[test]
    fn parse_one_byte_is_1002() {
        let err = parse_close_payload(&[0x03]).unwrap_err();
        assert_eq!(err, ProtocolError::CloseTooShort);
        assert_eq!(err.close_code(), 1002);
    }

    #[test]
    fn parse_code_only_and_with_reason() {
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8]),
            Ok(Some((1000, &b""[..])))
        );
        let payload = [&[0x0F, 0xA0][..], "bye ✓".as_bytes()].concat();
        assert_eq!(
            parse_close_payload(&payload),
            Ok(Some((4000, "bye ✓".as_bytes())))
        );
    }

    #[test]
    fn parse_invalid_codes_are_1002() {
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let err = parse_close_payload(&code.to_be_bytes()).unwrap_err();
            assert_eq!(err, ProtocolError::InvalidCloseCode(code));
            assert_eq!(err.close_code(), 1002);
        }
    }

    #[test]
    fn parse_invalid_reason_is_1007() {
        for reason in [&b"\xFF"[..], b"ok\xED\xA0\x80", b"\xCE"] {
            let payload = [&[0x03, 0xE8][..], reason].concat();
            let err = parse_close_payload(&payload).unwrap_err();
            assert_eq!(err, ProtocolError::InvalidCloseReason);
            assert_eq!(err.close_code(), 1007);
        }
    }

    #[test]
    fn build_short_payload() {
        assert_eq!(&close_payload(1000, "")[..], &[0x03, 0xE8]);
        assert_eq!(&close_payload(1001, "bye")[..], b"\x03\xE9bye");
    }

    #[test]
    fn build_truncates_at_char_boundary() {
        let ascii = "x".repeat(200);
        let p = close_payload(1000, &ascii);
        assert_eq!(p.len(), 125);
        // 'é' is 2 bytes: 61 of them make 122, the 62nd would end at 124 > 123.
        let accents = "é".repeat(100);
        let p = close_payload(1000, &accents);
        assert_eq!(p.len(), 2 + 122);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        // 4-byte chars: 30 of them make 120, the next would end at 124.
        let emoji = "\u{1F600}".repeat(40);
        let p = close_payload(1000, &emoji);
        assert_eq!(p.len(), 2 + 120);
        assert_eq!(parse_close_payload(&p).unwrap().unwrap().0, 1000);
    }
}
