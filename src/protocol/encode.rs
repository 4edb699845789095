//! Encoding the frame header and whole frames.
//!
//! Owns the header layout, the bodies of every frame except OPEN (`open.rs`), and the ranges an
//! encoder checks before it writes a length or count prefix ([`EncodeError`]). Must never copy a
//! DATA payload on the proxy's path: the proxy writes [`encode_header`] and the payload as one
//! vectored write, and [`data_frame`] exists only for servers and tests. The same goes for the
//! version-2 fan-out frames, which only game servers send: [`publish`], [`broadcast`] and
//! [`multicast`] copy their payload, and the proxy never calls them.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    FrameType, Policy, Targets, FLAG_TEXT, HEADER_LEN, MAX_CLOSE_REASON, MAX_GROUP_NAME,
    MAX_TARGETS, MAX_VERSION, MIN_LENGTH, MIN_VERSION,
};

/// Why a frame cannot be built from the values given: one does not fit its field or prefix, or
/// names something the receiver would reject as malformed. A decoded frame always re-encodes.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum EncodeError {
    #[error("OPEN {field} is {len} bytes, more than its length prefix allows ({max})")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("OPEN has {0} headers, more than the 255 its count allows")]
    TooManyHeaders(usize),
    #[error(
        "HELLO cannot offer versions {version} to {max_version}: the highest must be at least \
         the lowest, and fit the flags byte unless they are equal"
    )]
    VersionRange { version: u16, max_version: u16 },
    #[error("{0:?} for session 0")]
    ZeroSession(FrameType),
    #[error("{0:?} with an empty group name")]
    EmptyGroup(FrameType),
    #[error("{ty:?} group name is {len} bytes, more than the 255 allowed")]
    GroupTooLong { ty: FrameType, len: usize },
    #[error("MULTICAST to {0} sessions; 1 to 65535 are allowed")]
    TargetCount(usize),
    #[error("MULTICAST target {index} is session 0")]
    ZeroTarget { index: usize },
}

// `hello` puts MAX_VERSION in the flags byte, and a range of one would be sent as flags 0.
const _: () = assert!(MIN_VERSION < MAX_VERSION && MAX_VERSION <= u8::MAX as u16);

/// Writes the 14-byte header for a frame whose body is `body_len` bytes. The body is written
/// separately (vectored write), so DATA payloads are never copied.
///
/// Bodies are bounded by the configured message size, far below 4 GiB. Should a caller still pass
/// a longer one, `length` saturates at `u32::MAX`, which every receiver rejects as too large, so
/// the link fails loudly instead of desynchronising.
pub fn encode_header(
    out: &mut [u8; HEADER_LEN],
    ty: FrameType,
    flags: u8,
    session: u64,
    body_len: usize,
) {
    let length = u32::try_from(body_len.saturating_add(MIN_LENGTH)).unwrap_or(u32::MAX);
    let [l0, l1, l2, l3] = length.to_be_bytes();
    let [s0, s1, s2, s3, s4, s5, s6, s7] = session.to_be_bytes();
    *out = [
        l0, l1, l2, l3, ty as u8, flags, s0, s1, s2, s3, s4, s5, s6, s7,
    ];
}

/// A buffer holding the header of a frame whose body, `body_len` bytes, the caller writes next.
fn start(ty: FrameType, flags: u8, session: u64, body_len: usize) -> BytesMut {
    let mut header = [0; HEADER_LEN];
    encode_header(&mut header, ty, flags, session, body_len);
    let mut out = BytesMut::with_capacity(HEADER_LEN + body_len);
    out.put_slice(&header);
    out
}

/// One whole frame whose body is the concatenation of `parts`.
fn frame(ty: FrameType, flags: u8, session: u64, parts: &[&[u8]]) -> Bytes {
    let body_len = parts.iter().map(|part| part.len()).sum();
    let mut out = start(ty, flags, session, body_len);
    for part in parts {
        out.put_slice(part);
    }
    out.freeze()
}

fn text_flags(text: bool) -> u8 {
    if text {
        FLAG_TEXT
    } else {
        0
    }
}

/// The body shape shared by LINK_ERROR, GOAWAY, REFUSE and CLOSE: a code, then text.
fn coded(ty: FrameType, session: u64, code: u16, text: &str) -> Bytes {
    frame(ty, 0, session, &[&code.to_be_bytes(), text.as_bytes()])
}

/// The HELLO ringgate opens a link with: every version from [`MIN_VERSION`] to [`MAX_VERSION`].
pub fn hello(core: u16, workers: u16, instance: &str) -> Bytes {
    // Cannot truncate: MAX_VERSION fits a byte (asserted above).
    hello_frame(MIN_VERSION, MAX_VERSION as u8, core, workers, instance)
}

/// HELLO offering `version` alone, with flags 0 as version 1 sent it: a version-1 ringgate, or
/// any version to exercise a server's mismatch handling.
pub fn hello_with_version(version: u16, core: u16, workers: u16, instance: &str) -> Bytes {
    hello_frame(version, 0, core, workers, instance)
}

/// HELLO offering every version from `version` to `max_version`. A range of one is sent with
/// flags 0, the same bytes as [`hello_with_version`]; a wider one needs `max_version` to fit the
/// flags byte.
pub fn hello_versions(
    version: u16,
    max_version: u16,
    core: u16,
    workers: u16,
    instance: &str,
) -> Result<Bytes, EncodeError> {
    let flags = match max_version {
        max if max == version => Some(0),
        max if max > version => u8::try_from(max).ok(),
        _ => None,
    }
    .ok_or(EncodeError::VersionRange {
        version,
        max_version,
    })?;
    Ok(hello_frame(version, flags, core, workers, instance))
}

fn hello_frame(version: u16, flags: u8, core: u16, workers: u16, instance: &str) -> Bytes {
    frame(
        FrameType::Hello,
        flags,
        0,
        &[
            &version.to_be_bytes(),
            &core.to_be_bytes(),
            &workers.to_be_bytes(),
            instance.as_bytes(),
        ],
    )
}

pub fn hello_ack(version: u16, server: &str) -> Bytes {
    frame(
        FrameType::HelloAck,
        0,
        0,
        &[&version.to_be_bytes(), server.as_bytes()],
    )
}

pub fn link_error(code: u16, message: &str) -> Bytes {
    coded(FrameType::LinkError, 0, code, message)
}

pub fn ping(token: [u8; 8]) -> Bytes {
    frame(FrameType::Ping, 0, 0, &[&token])
}

pub fn pong(token: [u8; 8]) -> Bytes {
    frame(FrameType::Pong, 0, 0, &[&token])
}

pub fn goaway(code: u16, reason: &str) -> Bytes {
    coded(FrameType::GoAway, 0, code, reason)
}

pub fn refuse(session: u64, code: u16, reason: &str) -> Bytes {
    coded(FrameType::Refuse, session, code, reason)
}

/// CLOSE with `reason` cut at a char boundary to at most [`MAX_CLOSE_REASON`] bytes, so the
/// other side can put it in a WebSocket close frame unchanged.
pub fn close(session: u64, code: u16, reason: &str) -> Bytes {
    coded(
        FrameType::Close,
        session,
        code,
        truncate_utf8(reason, MAX_CLOSE_REASON),
    )
}

/// DATA as one buffer. A convenience for servers and tests: it copies `payload`, which the
/// proxy never does (it writes [`encode_header`] and the payload separately).
pub fn data_frame(session: u64, text: bool, payload: &[u8]) -> Bytes {
    frame(FrameType::Data, text_flags(text), session, &[payload])
}

/// JOIN (version 2): `session` becomes a member of `group`, with `policy` for when it is slow.
pub fn join(session: u64, policy: Policy, group: &[u8]) -> Result<Bytes, EncodeError> {
    let ty = FrameType::Join;
    check_session(ty, session)?;
    check_group(ty, group)?;
    Ok(frame(ty, policy as u8, session, &[group]))
}

/// LEAVE (version 2): `session` stops being a member of `group`.
pub fn leave(session: u64, group: &[u8]) -> Result<Bytes, EncodeError> {
    let ty = FrameType::Leave;
    check_session(ty, session)?;
    check_group(ty, group)?;
    Ok(frame(ty, 0, session, &[group]))
}

/// PUBLISH (version 2): `payload` to every member of `group` on the link but `except` (0: none).
pub fn publish(
    group: &[u8],
    except: u64,
    text: bool,
    payload: &[u8],
) -> Result<Bytes, EncodeError> {
    let ty = FrameType::Publish;
    let len = check_group(ty, group)?;
    Ok(frame(
        ty,
        text_flags(text),
        except,
        &[&[len], group, payload],
    ))
}

/// BROADCAST (version 2): `payload` to every session on the link but `except` (0: none).
pub fn broadcast(except: u64, text: bool, payload: &[u8]) -> Bytes {
    frame(FrameType::Broadcast, text_flags(text), except, &[payload])
}

/// MULTICAST (version 2): `payload` to each session of `targets`, in that order.
pub fn multicast(targets: &[u64], text: bool, payload: &[u8]) -> Result<Bytes, EncodeError> {
    let count = check_targets(targets)?;
    // Cannot overflow: at most 65535 ids of 8 bytes.
    let body_len = 2 + 8 * targets.len() + payload.len();
    let mut out = start(FrameType::Multicast, text_flags(text), 0, body_len);
    out.put_u16(count);
    for &id in targets {
        out.put_u64(id);
    }
    out.put_slice(payload);
    Ok(out.freeze())
}

fn check_session(ty: FrameType, session: u64) -> Result<(), EncodeError> {
    if session == 0 {
        return Err(EncodeError::ZeroSession(ty));
    }
    Ok(())
}

/// A group name's length, after checking it is 1 to [`MAX_GROUP_NAME`] bytes.
fn check_group(ty: FrameType, group: &[u8]) -> Result<u8, EncodeError> {
    if group.is_empty() {
        return Err(EncodeError::EmptyGroup(ty));
    }
    match u8::try_from(group.len()) {
        Ok(len) if usize::from(len) <= MAX_GROUP_NAME => Ok(len),
        _ => Err(EncodeError::GroupTooLong {
            ty,
            len: group.len(),
        }),
    }
}

/// A MULTICAST count, after checking there are 1 to [`MAX_TARGETS`] ids and none is 0.
pub(super) fn check_targets(ids: &[u64]) -> Result<u16, EncodeError> {
    let count = match u16::try_from(ids.len()) {
        Ok(count) if count > 0 && usize::from(count) <= MAX_TARGETS => count,
        _ => return Err(EncodeError::TargetCount(ids.len())),
    };
    if let Some(index) = ids.iter().position(|&id| id == 0) {
        return Err(EncodeError::ZeroTarget { index });
    }
    Ok(count)
}

/// MULTICAST from targets that are already checked.
fn multicast_to(targets: &Targets, text: bool, payload: &[u8]) -> Result<Bytes, EncodeError> {
    // Cannot fail for a `Targets`, which holds at most 65535 ids; checked all the same, as a wrong
    // count would desynchronise the link.
    let count =
        u16::try_from(targets.len()).map_err(|_| EncodeError::TargetCount(targets.len()))?;
    Ok(frame(
        FrameType::Multicast,
        text_flags(text),
        0,
        &[&count.to_be_bytes(), targets.as_bytes(), payload],
    ))
}

/// The longest prefix of `s` that is at most `max` bytes and still valid UTF-8.
fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        // Cannot underflow: offset 0 is always a char boundary.
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

impl super::Frame {
    /// The frame's bytes, as a peer would send them. Fails only for values a decoder never
    /// produces ([`EncodeError`]: an OPEN field too long for its prefix, a HELLO version range that
    /// cannot be sent, a JOIN or LEAVE for session 0, a group name out of range), so a decoded
    /// frame always re-encodes. A CLOSE reason over 123 bytes is cut.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        use super::Frame;
        Ok(match self {
            Frame::Hello {
                version,
                max_version,
                core,
                workers,
                instance,
            } => hello_versions(*version, *max_version, *core, *workers, instance)?,
            Frame::HelloAck { version, server } => hello_ack(*version, server),
            Frame::LinkError { code, message } => link_error(*code, message),
            Frame::Ping(token) => ping(*token),
            Frame::Pong(token) => pong(*token),
            Frame::GoAway { code, reason } => goaway(*code, reason),
            Frame::Open { session, open } => {
                let headers: Vec<(&str, &[u8])> = open
                    .headers
                    .iter()
                    .map(|(name, value)| (name.as_str(), &value[..]))
                    .collect();
                let info = super::OpenInfo {
                    user: &open.user,
                    client_addr: &open.client_addr,
                    target: &open.target,
                    headers: &headers,
                };
                super::open(*session, &info)?
            }
            Frame::Refuse {
                session,
                code,
                reason,
            } => refuse(*session, *code, reason),
            Frame::Data {
                session,
                text,
                payload,
            } => data_frame(*session, *text, payload),
            Frame::Close {
                session,
                code,
                reason,
            } => close(*session, *code, reason),
            Frame::Join {
                session,
                policy,
                group,
            } => join(*session, *policy, group)?,
            Frame::Leave { session, group } => leave(*session, group)?,
            Frame::Publish {
                group,
                except,
                text,
                payload,
            } => publish(group, *except, *text, payload)?,
            Frame::Broadcast {
                except,
                text,
                payload,
            } => broadcast(*except, *text, payload),
            Frame::Multicast {
                targets,
                text,
                payload,
            } => multicast_to(targets, *text, payload)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let mut out = [0xaa; HEADER_LEN];
        encode_header(
            &mut out,
            FrameType::Data,
            FLAG_TEXT,
            0x0102_0304_0506_0708,
            2,
        );
        assert_eq!(
            out,
            [0, 0, 0, 12, 0x12, 1, 1, 2, 3, 4, 5, 6, 7, 8],
            "length counts type, flags, session and body"
        );
    }

    #[test]
    fn header_length_saturates_instead_of_wrapping() {
        let mut out = [0; HEADER_LEN];
        encode_header(&mut out, FrameType::Data, 0, 1, usize::MAX);
        assert_eq!(out[..4], [0xff; 4]);
        if usize::BITS > 32 {
            encode_header(&mut out, FrameType::Data, 0, 1, u32::MAX as usize - 9);
            assert_eq!(out[..4], [0xff; 4]);
        }
    }

    #[test]
    fn close_reason_is_cut_to_123_bytes_at_a_char_boundary() {
        let ascii = "x".repeat(200);
        let frame = close(1, 4000, &ascii);
        assert_eq!(frame.len(), HEADER_LEN + 2 + 123);

        // 'é' is 2 bytes; 61 of them plus "a" is 123 bytes, 62 would be 124.
        let accented = format!("a{}", "é".repeat(80));
        let frame = close(1, 4000, &accented);
        let reason = std::str::from_utf8(&frame[HEADER_LEN + 2..]).unwrap();
        assert_eq!(reason.len(), 123);
        assert!(accented.starts_with(reason));

        // Without the "a", byte 123 falls inside a 2-byte char, so only 122 bytes fit.
        let accented = "é".repeat(80);
        let frame = close(1, 4000, &accented);
        assert_eq!(frame.len(), HEADER_LEN + 2 + 122);
    }

    #[test]
    fn short_reasons_are_kept_whole() {
        let frame = close(1, 1000, "");
        assert_eq!(frame.len(), HEADER_LEN + 2);
        let frame = close(1, 1000, "é");
        assert_eq!(&frame[HEADER_LEN + 2..], "é".as_bytes());
    }

    #[test]
    fn other_reasons_are_not_truncated() {
        let long = "r".repeat(1000);
        assert_eq!(refuse(1, 4003, &long).len(), HEADER_LEN + 2 + 1000);
        assert_eq!(goaway(1012, &long).len(), HEADER_LEN + 2 + 1000);
        assert_eq!(link_error(5, &long).len(), HEADER_LEN + 2 + 1000);
    }

    #[test]
    fn data_frame_flags() {
        assert_eq!(data_frame(9, true, b"a")[5], FLAG_TEXT);
        assert_eq!(data_frame(9, false, b"a")[5], 0);
    }
}
