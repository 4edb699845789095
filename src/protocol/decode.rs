//! Decoding frames from a link's receive buffer.
//!
//! Owns framing (the `length` field and its bounds), the header checks (type, session rules) and
//! the bodies of every frame but OPEN's (`open.rs`). Must never panic on any input, never
//! allocate or reserve based on a declared length (a MULTICAST's target count included), never
//! consume bytes for an incomplete frame, and never copy a payload, group name or target list:
//! they are frozen slices of the caller's buffer.
//!
//! Checks run as soon as their bytes are in: `length` with the first 4 bytes, type and session
//! with the 14-byte header, the body once the whole frame is buffered. Text payloads are not
//! checked for UTF-8 here; the WebSocket side validates what clients send, and the proxy trusts
//! servers (docs/protocol.md, "Sessions"). Unknown flag bits are ignored; JOIN's flags are a
//! value, not bits, so an unknown one is an error. Every type of every version decodes: whether
//! the link's version allows it is the link's check.

use bytes::{Buf, Bytes, BytesMut};

use super::open::decode_body;
use super::{
    link_code, Frame, FrameType, Policy, SessionRule, Targets, FLAG_TEXT, HEADER_LEN,
    MAX_GROUP_NAME, MIN_LENGTH,
};

/// Why the bytes on a link are not a valid frame. Every one of them ends the link with a
/// LINK_ERROR carrying [`DecodeError::link_error_code`].
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    #[error("frame length {0} is below the minimum of 10")]
    LengthTooSmall(u32),
    #[error("frame length {length} is above the maximum frame size {max}")]
    FrameTooLarge { length: u32, max: usize },
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("{0:?} frame with session 0")]
    ZeroSession(FrameType),
    #[error("{ty:?} is a link frame but has session {session}")]
    NonZeroSession { ty: FrameType, session: u64 },
    #[error("{ty:?} body ends inside its {field}")]
    Truncated { ty: FrameType, field: &'static str },
    #[error("{ty:?} body has {extra} bytes after its last field")]
    TrailingBytes { ty: FrameType, extra: usize },
    #[error("{ty:?} body is {len} bytes, expected {expected}")]
    BodyLength {
        ty: FrameType,
        len: usize,
        expected: usize,
    },
    #[error("{ty:?} {field} is not valid UTF-8")]
    InvalidUtf8 { ty: FrameType, field: &'static str },
    #[error("JOIN policy {0} is not 0 (close), 1 (drop) or 2 (latest)")]
    UnknownPolicy(u8),
    #[error("{0:?} with an empty group name")]
    EmptyGroup(FrameType),
    #[error("{ty:?} group name is {len} bytes, more than the 255 allowed")]
    GroupTooLong { ty: FrameType, len: usize },
    #[error("MULTICAST with a target count of 0")]
    NoTargets,
    #[error("MULTICAST target {index} is session 0")]
    ZeroTarget { index: usize },
}

impl DecodeError {
    /// The LINK_ERROR code to send before closing the link (docs/protocol.md, "LINK_ERROR codes").
    pub fn link_error_code(&self) -> u16 {
        match self {
            DecodeError::FrameTooLarge { .. } => link_code::TOO_LARGE,
            _ => link_code::MALFORMED,
        }
    }
}

/// What [`decode_small`] found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    /// A DATA frame whose body is at most the caller's limit, left in place: its header is
    /// consumed, the body is `buf[..len]`, and the caller consumes it with `buf.advance(len)`
    /// before decoding on.
    Data {
        session: u64,
        text: bool,
        len: usize,
    },
}

impl Decoded {
    /// The frame [`decode`] would have returned, taking a body left in place out of `buf` (the
    /// buffer it was decoded from). For comparing the two calls; the link copies the body instead.
    pub fn take(self, buf: &mut BytesMut) -> Frame {
        match self {
            Decoded::Frame(f) => f,
            Decoded::Data { session, text, len } => Frame::Data {
                session,
                text,
                payload: buf.split_to(len.min(buf.len())).freeze(),
            },
        }
    }
}

/// Like [`decode`], except that a DATA body of at most `small` bytes is left in place
/// ([`Decoded::Data`]) for the caller to copy: a game-sized message then costs no `Bytes` handle.
/// PUBLISH, BROADCAST and MULTICAST come whole as [`decode`] returns them, whatever their size:
/// their payload goes to many sessions, which share one `Bytes` instead of a copy each.
pub fn decode_small(
    buf: &mut BytesMut,
    max_frame: usize,
    small: usize,
) -> Result<Option<Decoded>, DecodeError> {
    next(buf, max_frame, Some(small))
}

/// Decodes the next complete frame from the front of `buf`, consuming it; `Ok(None)` if more
/// bytes are needed, in which case nothing is consumed.
///
/// `max_frame` bounds `length`: a larger declared length is an error as soon as the 4 length
/// bytes are in (nothing reserved or allocated for it). After an error the link is unusable and
/// what is left in `buf` is meaningless.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, DecodeError> {
    match next(buf, max_frame, None)? {
        Some(Decoded::Frame(frame)) => Ok(Some(frame)),
        // Only returned when a limit is given.
        Some(Decoded::Data { .. }) | None => Ok(None),
    }
}

fn next(
    buf: &mut BytesMut,
    max_frame: usize,
    small: Option<usize>,
) -> Result<Option<Decoded>, DecodeError> {
    let Some(&length_bytes) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let length = u32::from_be_bytes(length_bytes);
    let too_large = DecodeError::FrameTooLarge {
        length,
        max: max_frame,
    };
    // A length that does not fit usize cannot be buffered anyway, whatever max_frame says.
    let len = usize::try_from(length).map_err(|_| too_large.clone())?;
    let Some(body_len) = len.checked_sub(MIN_LENGTH) else {
        return Err(DecodeError::LengthTooSmall(length));
    };
    if len > max_frame {
        return Err(too_large);
    }

    let Some(&[_, _, _, _, ty, flags, s0, s1, s2, s3, s4, s5, s6, s7]) =
        buf.first_chunk::<HEADER_LEN>()
    else {
        return Ok(None);
    };
    let ty = FrameType::from_u8(ty).ok_or(DecodeError::UnknownType(ty))?;
    let session = u64::from_be_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    match (ty.session_rule(), session) {
        (SessionRule::NonZero, 0) => return Err(DecodeError::ZeroSession(ty)),
        (SessionRule::Zero, 1..) => return Err(DecodeError::NonZeroSession { ty, session }),
        _ => {}
    }

    // Never saturates: the whole header is in.
    if buf.len().saturating_sub(HEADER_LEN) < body_len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    if ty == FrameType::Data && small.is_some_and(|limit| body_len <= limit) {
        return Ok(Some(Decoded::Data {
            session,
            text: flags & FLAG_TEXT != 0,
            len: body_len,
        }));
    }
    let body = buf.split_to(body_len).freeze();
    body_frame(ty, flags, session, body).map(|f| Some(Decoded::Frame(f)))
}

/// The frame for a complete, header-checked body.
fn body_frame(ty: FrameType, flags: u8, session: u64, body: Bytes) -> Result<Frame, DecodeError> {
    let mut rest = &body[..];
    let text = flags & FLAG_TEXT != 0;
    Ok(match ty {
        FrameType::Data => Frame::Data {
            session,
            text,
            payload: body,
        },
        FrameType::Open => Frame::Open {
            session,
            open: decode_body(body)?,
        },
        FrameType::Hello => {
            let version = take_u16(&mut rest, ty, "version")?;
            Frame::Hello {
                version,
                // A version-1 sender's flags are 0, which leaves `version` alone.
                max_version: version.max(flags.into()),
                core: take_u16(&mut rest, ty, "core")?,
                workers: take_u16(&mut rest, ty, "workers")?,
                instance: utf8(rest, ty, "instance")?,
            }
        }
        FrameType::HelloAck => Frame::HelloAck {
            version: take_u16(&mut rest, ty, "version")?,
            server: utf8(rest, ty, "server")?,
        },
        FrameType::LinkError => Frame::LinkError {
            code: take_u16(&mut rest, ty, "code")?,
            message: utf8(rest, ty, "message")?,
        },
        FrameType::GoAway => Frame::GoAway {
            code: take_u16(&mut rest, ty, "code")?,
            reason: utf8(rest, ty, "reason")?,
        },
        FrameType::Refuse => Frame::Refuse {
            session,
            code: take_u16(&mut rest, ty, "code")?,
            reason: utf8(rest, ty, "reason")?,
        },
        FrameType::Close => Frame::Close {
            session,
            code: take_u16(&mut rest, ty, "code")?,
            reason: utf8(rest, ty, "reason")?,
        },
        FrameType::Ping => Frame::Ping(token(rest, ty)?),
        FrameType::Pong => Frame::Pong(token(rest, ty)?),
        FrameType::Join => Frame::Join {
            session,
            policy: Policy::from_u8(flags).ok_or(DecodeError::UnknownPolicy(flags))?,
            group: group(body, ty)?,
        },
        FrameType::Leave => Frame::Leave {
            session,
            group: group(body, ty)?,
        },
        FrameType::Publish => {
            let len = take_u8(&mut rest, ty, "group length")?;
            let name = take(&mut rest, usize::from(len), ty, "group")?;
            Frame::Publish {
                group: group(body.slice_ref(name), ty)?,
                except: session,
                text,
                payload: body.slice_ref(rest),
            }
        }
        FrameType::Broadcast => Frame::Broadcast {
            except: session,
            text,
            payload: body,
        },
        FrameType::Multicast => {
            let count = take_u16(&mut rest, ty, "target count")?;
            if count == 0 {
                return Err(DecodeError::NoTargets);
            }
            // The count only sizes a slice of bytes that are already here: nothing is allocated
            // for it, and a count the body cannot hold is an error.
            let ids = take(&mut rest, 8 * usize::from(count), ty, "targets")?;
            if let Some(index) = ids
                .chunks_exact(8)
                .position(|id| id.iter().all(|&b| b == 0))
            {
                return Err(DecodeError::ZeroTarget { index });
            }
            Frame::Multicast {
                targets: Targets::from_checked(body.slice_ref(ids)),
                text,
                payload: body.slice_ref(rest),
            }
        }
    })
}

/// A group name: the whole of `name`, 1 to [`MAX_GROUP_NAME`] bytes of anything.
fn group(name: Bytes, ty: FrameType) -> Result<Bytes, DecodeError> {
    match name.len() {
        0 => Err(DecodeError::EmptyGroup(ty)),
        len if len > MAX_GROUP_NAME => Err(DecodeError::GroupTooLong { ty, len }),
        _ => Ok(name),
    }
}

/// Reads a u8 off the front of `rest`.
fn take_u8(rest: &mut &[u8], ty: FrameType, field: &'static str) -> Result<u8, DecodeError> {
    let (&value, tail) = rest
        .split_first()
        .ok_or(DecodeError::Truncated { ty, field })?;
    *rest = tail;
    Ok(value)
}

/// Splits `len` bytes off the front of `rest`.
fn take<'a>(
    rest: &mut &'a [u8],
    len: usize,
    ty: FrameType,
    field: &'static str,
) -> Result<&'a [u8], DecodeError> {
    let (value, tail) = rest
        .split_at_checked(len)
        .ok_or(DecodeError::Truncated { ty, field })?;
    *rest = tail;
    Ok(value)
}

/// Reads a big-endian u16 off the front of `rest`.
fn take_u16(rest: &mut &[u8], ty: FrameType, field: &'static str) -> Result<u16, DecodeError> {
    let (value, tail) = rest
        .split_first_chunk::<2>()
        .ok_or(DecodeError::Truncated { ty, field })?;
    *rest = tail;
    Ok(u16::from_be_bytes(*value))
}

/// A "rest of the body" string field.
fn utf8(bytes: &[u8], ty: FrameType, field: &'static str) -> Result<String, DecodeError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::InvalidUtf8 { ty, field })
}

/// PING and PONG bodies are exactly the 8-byte token.
fn token(body: &[u8], ty: FrameType) -> Result<[u8; 8], DecodeError> {
    body.try_into().map_err(|_| DecodeError::BodyLength {
        ty,
        len: body.len(),
        expected: 8,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{
        close, data_frame, encode_header, hello, link_error, open, ping, OpenInfo,
    };

    const MAX: usize = 1 << 20;

    /// A frame with an arbitrary header and body, valid or not.
    fn raw(length: u32, ty: u8, flags: u8, session: u64, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&[ty, flags]);
        out.extend_from_slice(&session.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// `raw` with the length that matches `body`.
    fn framed(ty: u8, session: u64, body: &[u8]) -> BytesMut {
        raw(10 + body.len() as u32, ty, 0, session, body)
    }

    fn decode_all(mut buf: BytesMut) -> Result<Option<Frame>, DecodeError> {
        decode(&mut buf, MAX)
    }

    #[test]
    fn empty_and_partial_length_need_more() {
        for n in 0..4 {
            let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..n]);
            assert_eq!(decode(&mut buf, MAX), Ok(None));
            assert_eq!(buf.len(), n, "nothing consumed");
        }
    }

    #[test]
    fn length_below_10() {
        for length in 0u32..10 {
            let buf = BytesMut::from(&length.to_be_bytes()[..]);
            assert_eq!(decode_all(buf), Err(DecodeError::LengthTooSmall(length)));
        }
        let buf = BytesMut::from(&10u32.to_be_bytes()[..]);
        assert_eq!(decode_all(buf), Ok(None), "10 is the minimum");
    }

    #[test]
    fn length_above_max_fails_from_the_length_alone() {
        let mut buf = BytesMut::from(&101u32.to_be_bytes()[..]);
        let capacity = buf.capacity();
        assert_eq!(
            decode(&mut buf, 100),
            Err(DecodeError::FrameTooLarge {
                length: 101,
                max: 100
            })
        );
        assert_eq!(buf.capacity(), capacity, "nothing reserved");
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            decode(&mut buf, MAX),
            Err(DecodeError::FrameTooLarge { .. })
        ));
        let mut buf = BytesMut::from(&100u32.to_be_bytes()[..]);
        assert_eq!(decode(&mut buf, 100), Ok(None), "max itself is allowed");
    }

    #[test]
    fn link_error_codes() {
        let too_large = DecodeError::FrameTooLarge { length: 1, max: 0 };
        assert_eq!(too_large.link_error_code(), 4);
        for malformed in [
            DecodeError::LengthTooSmall(0),
            DecodeError::UnknownType(0),
            DecodeError::ZeroSession(FrameType::Data),
            DecodeError::NonZeroSession {
                ty: FrameType::Ping,
                session: 1,
            },
            DecodeError::Truncated {
                ty: FrameType::Hello,
                field: "core",
            },
            DecodeError::TrailingBytes {
                ty: FrameType::Open,
                extra: 1,
            },
            DecodeError::BodyLength {
                ty: FrameType::Ping,
                len: 0,
                expected: 8,
            },
            DecodeError::InvalidUtf8 {
                ty: FrameType::Close,
                field: "reason",
            },
            DecodeError::UnknownPolicy(3),
            DecodeError::EmptyGroup(FrameType::Leave),
            DecodeError::GroupTooLong {
                ty: FrameType::Join,
                len: 256,
            },
            DecodeError::NoTargets,
            DecodeError::ZeroTarget { index: 0 },
        ] {
            assert_eq!(malformed.link_error_code(), 2, "{malformed}");
        }
    }

    #[test]
    fn unknown_type_fails_from_the_header_alone() {
        for ty in [0u8, 7, 0x0f, 0x14, 0xff] {
            // Declares a 100-byte body that never arrives.
            let buf = raw(110, ty, 0, 1, &[]);
            assert_eq!(decode_all(buf), Err(DecodeError::UnknownType(ty)));
        }
    }

    #[test]
    fn session_zero_on_session_frames() {
        for ty in [
            FrameType::Open,
            FrameType::Refuse,
            FrameType::Data,
            FrameType::Close,
            FrameType::Join,
            FrameType::Leave,
        ] {
            let buf = raw(12, ty as u8, 0, 0, &[]);
            assert_eq!(decode_all(buf), Err(DecodeError::ZeroSession(ty)));
        }
    }

    #[test]
    fn non_zero_session_on_link_frames() {
        for ty in [
            FrameType::Hello,
            FrameType::HelloAck,
            FrameType::LinkError,
            FrameType::Ping,
            FrameType::Pong,
            FrameType::GoAway,
            FrameType::Multicast,
        ] {
            let buf = raw(18, ty as u8, 0, 1 << 63, &[]);
            assert_eq!(
                decode_all(buf),
                Err(DecodeError::NonZeroSession {
                    ty,
                    session: 1 << 63
                })
            );
        }
    }

    #[test]
    fn publish_and_broadcast_take_any_session_from_the_header_alone() {
        for ty in [FrameType::Publish, FrameType::Broadcast] {
            for session in [0, 1, u64::MAX] {
                // The body never arrives: the header passed its checks.
                assert_eq!(decode_all(raw(110, ty as u8, 0, session, &[])), Ok(None));
            }
        }
    }

    #[test]
    fn hello_body_too_short() {
        let cases: [(&[u8], &str); 4] = [
            (b"", "version"),
            (b"\x00\x01\x00", "core"),
            (b"\x00\x01\x00\x00\x00", "workers"),
            (b"\x00", "version"),
        ];
        for (body, field) in cases {
            assert_eq!(
                decode_all(framed(1, 0, body)),
                Err(DecodeError::Truncated {
                    ty: FrameType::Hello,
                    field
                })
            );
        }
        let empty_instance = decode_all(framed(1, 0, b"\x00\x01\x00\x00\x00\x01"));
        assert!(matches!(empty_instance, Ok(Some(Frame::Hello { .. }))));
    }

    #[test]
    fn coded_bodies_need_their_code() {
        for (ty, session) in [
            (FrameType::HelloAck, 0),
            (FrameType::LinkError, 0),
            (FrameType::GoAway, 0),
            (FrameType::Refuse, 3),
            (FrameType::Close, 3),
        ] {
            let field = if ty == FrameType::HelloAck {
                "version"
            } else {
                "code"
            };
            for body in [&b""[..], b"\x0f"] {
                assert_eq!(
                    decode_all(framed(ty as u8, session, body)),
                    Err(DecodeError::Truncated { ty, field })
                );
            }
        }
    }

    #[test]
    fn ping_and_pong_bodies_are_exactly_8_bytes() {
        for ty in [FrameType::Ping, FrameType::Pong] {
            for len in [0usize, 1, 7, 9, 16] {
                let body = vec![0xab; len];
                assert_eq!(
                    decode_all(framed(ty as u8, 0, &body)),
                    Err(DecodeError::BodyLength {
                        ty,
                        len,
                        expected: 8
                    })
                );
            }
        }
    }

    #[test]
    fn invalid_utf8_in_string_fields() {
        let cases = [
            (
                FrameType::Hello,
                0,
                &b"\x00\x01\x00\x00\x00\x01\xff"[..],
                "instance",
            ),
            (FrameType::HelloAck, 0, b"\x00\x01\xc3", "server"),
            (FrameType::LinkError, 0, b"\x00\x02\xed\xa0\x80", "message"),
            (FrameType::GoAway, 0, b"\x03\xf4\x80", "reason"),
            (FrameType::Refuse, 5, b"\x0f\xa3\xfe", "reason"),
            (FrameType::Close, 5, b"\x0f\xa0ok\xc0\xaf", "reason"),
        ];
        for (ty, session, body, field) in cases {
            assert_eq!(
                decode_all(framed(ty as u8, session, body)),
                Err(DecodeError::InvalidUtf8 { ty, field })
            );
        }
    }

    #[test]
    fn truncated_open_fields() {
        // The user field claims 5 bytes, 2 are there.
        assert_eq!(
            decode_all(framed(0x10, 7, b"\x00\x05al")),
            Err(DecodeError::Truncated {
                ty: FrameType::Open,
                field: "user"
            })
        );
        // One header announced, none present.
        assert_eq!(
            decode_all(framed(0x10, 7, b"\x00\x00\x00\x00\x00\x01")),
            Err(DecodeError::Truncated {
                ty: FrameType::Open,
                field: "header name"
            })
        );
    }

    #[test]
    fn open_with_trailing_garbage() {
        let info = OpenInfo {
            user: "",
            client_addr: "1.2.3.4:5",
            target: "/",
            headers: &[],
        };
        let frame = open(7, &info).unwrap();
        let mut body = frame[HEADER_LEN..].to_vec();
        body.push(0);
        assert_eq!(
            decode_all(framed(0x10, 7, &body)),
            Err(DecodeError::TrailingBytes {
                ty: FrameType::Open,
                extra: 1
            })
        );
    }

    #[test]
    fn data_payload_is_a_slice_of_the_input_buffer() {
        let mut buf = BytesMut::from(&data_frame(9, false, &[1u8; 1000])[..]);
        buf.extend_from_slice(&ping([1; 8]));
        let input = buf.as_ptr_range();
        let Some(Frame::Data { payload, .. }) = decode(&mut buf, MAX).unwrap() else {
            panic!("expected DATA");
        };
        let got = payload.as_ptr_range();
        assert_eq!(payload.len(), 1000);
        assert_eq!(got.start, input.start.wrapping_add(HEADER_LEN));
        assert!(got.end <= input.end);
        assert_eq!(decode(&mut buf, MAX), Ok(Some(Frame::Ping([1; 8]))));
        assert!(buf.is_empty());
    }

    #[test]
    fn data_with_empty_body_and_unknown_flags() {
        let mut header = [0; HEADER_LEN];
        encode_header(&mut header, FrameType::Data, 0xfe, 5, 0);
        assert_eq!(
            decode_all(BytesMut::from(&header[..])),
            Ok(Some(Frame::Data {
                session: 5,
                text: false,
                payload: Bytes::new()
            }))
        );
        encode_header(&mut header, FrameType::Data, 0xff, 5, 0);
        let frame = decode_all(BytesMut::from(&header[..]));
        assert!(matches!(frame, Ok(Some(Frame::Data { text: true, .. }))));
    }

    #[test]
    fn unknown_flag_bits_on_link_frames_are_ignored() {
        // HELLO's flags are a version number, not bits (see `crate::protocol::tests`); every
        // value decodes all the same.
        let mut buf = BytesMut::from(&hello(0, 1, "x")[..]);
        buf[5] = 0xff;
        assert!(matches!(
            decode(&mut buf, MAX),
            Ok(Some(Frame::Hello {
                max_version: 0xff,
                ..
            }))
        ));
        let mut buf = BytesMut::from(&ping([0; 8])[..]);
        buf[5] = 0xff;
        assert_eq!(decode(&mut buf, MAX), Ok(Some(Frame::Ping([0; 8]))));
        let mut buf = BytesMut::from(&close(3, 1000, "")[..]);
        buf[5] = 0x80;
        assert!(matches!(
            decode(&mut buf, MAX),
            Ok(Some(Frame::Close { .. }))
        ));
    }

    #[test]
    fn an_error_in_the_body_is_only_reported_once_the_body_is_in() {
        let mut buf = BytesMut::from(&link_error(2, "bad")[..]);
        buf.truncate(buf.len() - 1);
        buf.extend_from_slice(&[0xff]);
        let last = buf.split_off(buf.len() - 1);
        assert_eq!(decode(&mut buf, MAX), Ok(None));
        buf.unsplit(last);
        assert_eq!(
            decode(&mut buf, MAX),
            Err(DecodeError::InvalidUtf8 {
                ty: FrameType::LinkError,
                field: "message"
            })
        );
    }
}
