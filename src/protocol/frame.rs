//! Frame types and the decoded form of a frame.
//!
//! Owns the type byte's meaning (which version introduced it, what its session field must hold),
//! the values [`super::decode`] produces, and the MULTICAST target list's view of its bytes. Must
//! never know about bytes beyond the type byte and the target ids: layout lives in `encode.rs`,
//! `decode.rs` and `open.rs`.

use std::fmt;

use bytes::Bytes;

use super::open::Open;

/// The `type` byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 1,
    HelloAck = 2,
    LinkError = 3,
    Ping = 4,
    Pong = 5,
    GoAway = 6,
    Open = 0x10,
    Refuse = 0x11,
    Data = 0x12,
    Close = 0x13,
    // 0x14 is reserved for MOVED (docs/protocol.md, "Sessions that move"): no version defines it
    // yet, so it decodes as an unknown type.
    Join = 0x20,
    Leave = 0x21,
    Publish = 0x22,
    Broadcast = 0x23,
    Multicast = 0x24,
}

/// What a frame type's `session` field must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRule {
    /// A link frame: session 0.
    Zero,
    /// A session frame: the (non-zero) id of the session it is about.
    NonZero,
    /// PUBLISH and BROADCAST: a session to leave out of the delivery, or 0 for none.
    Any,
}

impl FrameType {
    /// The type for a byte read off the wire; `None` for a type no version defines.
    pub fn from_u8(byte: u8) -> Option<FrameType> {
        Some(match byte {
            1 => FrameType::Hello,
            2 => FrameType::HelloAck,
            3 => FrameType::LinkError,
            4 => FrameType::Ping,
            5 => FrameType::Pong,
            6 => FrameType::GoAway,
            0x10 => FrameType::Open,
            0x11 => FrameType::Refuse,
            0x12 => FrameType::Data,
            0x13 => FrameType::Close,
            0x20 => FrameType::Join,
            0x21 => FrameType::Leave,
            0x22 => FrameType::Publish,
            0x23 => FrameType::Broadcast,
            0x24 => FrameType::Multicast,
            _ => return None,
        })
    }

    /// What the `session` field of frames of this type must hold; the decoder rejects the others.
    pub fn session_rule(self) -> SessionRule {
        match self {
            FrameType::Hello
            | FrameType::HelloAck
            | FrameType::LinkError
            | FrameType::Ping
            | FrameType::Pong
            | FrameType::GoAway => SessionRule::Zero,
            // Its sessions are in the body; one in the header would be a second, ambiguous list.
            FrameType::Multicast => SessionRule::Zero,
            FrameType::Open
            | FrameType::Refuse
            | FrameType::Data
            | FrameType::Close
            | FrameType::Join
            | FrameType::Leave => SessionRule::NonZero,
            FrameType::Publish | FrameType::Broadcast => SessionRule::Any,
        }
    }

    /// The protocol version that introduced this type: a link that negotiated an older one must
    /// treat the type as unknown (the link checks this, not the decoder).
    pub fn since_version(self) -> u16 {
        match self {
            FrameType::Join
            | FrameType::Leave
            | FrameType::Publish
            | FrameType::Broadcast
            | FrameType::Multicast => 2,
            _ => 1,
        }
    }
}

/// What ringgate does with a group member that does not read fast enough (JOIN's `flags`;
/// docs/protocol.md, "Slow members").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Policy {
    /// Over its outbound limit the session is closed with 1008, as for a DATA.
    Close = 0,
    /// While over the limit, the group's messages for it are dropped (and counted).
    Drop = 1,
    /// Only the group's newest message not yet being sent to it is kept.
    Latest = 2,
}

impl Policy {
    /// The policy a JOIN's `flags` byte names; `None` for a value no version defines.
    pub fn from_u8(byte: u8) -> Option<Policy> {
        Some(match byte {
            0 => Policy::Close,
            1 => Policy::Drop,
            2 => Policy::Latest,
            _ => return None,
        })
    }
}

/// The sessions a MULTICAST goes to: a view of the frame's `count × u64` ids, kept as the bytes
/// they arrived in so that decoding allocates nothing however many ids a peer declares.
///
/// Always holds 1 to [`super::MAX_TARGETS`] non-zero ids, whether decoded or built with
/// [`Targets::new`].
#[derive(Clone, PartialEq, Eq)]
pub struct Targets {
    /// Big-endian ids, a whole multiple of 8 bytes long.
    ids: Bytes,
}

impl Targets {
    /// Targets that the decoder has already checked.
    pub(super) fn from_checked(ids: Bytes) -> Targets {
        Targets { ids }
    }

    /// Targets for [`Frame::Multicast`], copied from `ids`: for servers and tests building a frame
    /// value. Fails as the encoder does on 0 or too many ids, or a zero id.
    pub fn new(ids: &[u64]) -> Result<Targets, super::EncodeError> {
        super::encode::check_targets(ids)?;
        Ok(Targets {
            ids: ids.iter().flat_map(|id| id.to_be_bytes()).collect(),
        })
    }

    /// How many sessions are named.
    pub fn len(&self) -> usize {
        self.ids.len() / 8
    }

    /// Never true for a value of this type; here because `len` is.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The session ids, in the order the frame lists them (duplicates included).
    pub fn iter(&self) -> TargetIter<'_> {
        TargetIter { rest: &self.ids }
    }

    /// The ids as they are on the wire: `len() × u64`, big-endian.
    pub fn as_bytes(&self) -> &Bytes {
        &self.ids
    }
}

impl fmt::Debug for Targets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Targets {
    type Item = u64;
    type IntoIter = TargetIter<'a>;

    fn into_iter(self) -> TargetIter<'a> {
        self.iter()
    }
}

/// The ids of a [`Targets`], read off its bytes one at a time.
#[derive(Clone, Debug)]
pub struct TargetIter<'a> {
    rest: &'a [u8],
}

impl Iterator for TargetIter<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let (id, rest) = self.rest.split_first_chunk::<8>()?;
        self.rest = rest;
        Some(u64::from_be_bytes(*id))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.len() / 8;
        (n, Some(n))
    }
}

impl ExactSizeIterator for TargetIter<'_> {}

/// A decoded frame. Bodies are zero-copy slices (`Bytes`) of the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello {
        /// The lowest version the sender speaks (the only one, for a version-1 sender).
        version: u16,
        /// The highest: the `flags` byte, or `version` when that is 0 or lower.
        max_version: u16,
        core: u16,
        workers: u16,
        instance: String,
    },
    HelloAck {
        version: u16,
        server: String,
    },
    LinkError {
        code: u16,
        message: String,
    },
    Ping([u8; 8]),
    Pong([u8; 8]),
    GoAway {
        code: u16,
        reason: String,
    },
    Open {
        session: u64,
        open: Open,
    },
    Refuse {
        session: u64,
        code: u16,
        reason: String,
    },
    Data {
        session: u64,
        text: bool,
        payload: Bytes,
    },
    Close {
        session: u64,
        code: u16,
        reason: String,
    },
    /// Version 2: `session` becomes a member of `group` on this link.
    Join {
        session: u64,
        policy: Policy,
        group: Bytes,
    },
    /// Version 2: `session` stops being a member of `group`.
    Leave {
        session: u64,
        group: Bytes,
    },
    /// Version 2: `payload` to every member of `group` on this link but `except` (0: none).
    Publish {
        group: Bytes,
        except: u64,
        text: bool,
        payload: Bytes,
    },
    /// Version 2: `payload` to every session on this link but `except` (0: none).
    Broadcast {
        except: u64,
        text: bool,
        payload: Bytes,
    },
    /// Version 2: `payload` to each session in `targets`.
    Multicast {
        targets: Targets,
        text: bool,
        payload: Bytes,
    },
}

impl Frame {
    /// The type this frame is sent as.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::HelloAck { .. } => FrameType::HelloAck,
            Frame::LinkError { .. } => FrameType::LinkError,
            Frame::Ping(_) => FrameType::Ping,
            Frame::Pong(_) => FrameType::Pong,
            Frame::GoAway { .. } => FrameType::GoAway,
            Frame::Open { .. } => FrameType::Open,
            Frame::Refuse { .. } => FrameType::Refuse,
            Frame::Data { .. } => FrameType::Data,
            Frame::Close { .. } => FrameType::Close,
            Frame::Join { .. } => FrameType::Join,
            Frame::Leave { .. } => FrameType::Leave,
            Frame::Publish { .. } => FrameType::Publish,
            Frame::Broadcast { .. } => FrameType::Broadcast,
            Frame::Multicast { .. } => FrameType::Multicast,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFINED: [u8; 15] = [
        1, 2, 3, 4, 5, 6, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x23, 0x24,
    ];

    #[test]
    fn type_byte_round_trips_and_unknown_is_none() {
        for byte in 0..=u8::MAX {
            match FrameType::from_u8(byte) {
                Some(ty) => assert_eq!(ty as u8, byte),
                None => assert!(!DEFINED.contains(&byte), "{byte:#x}"),
            }
        }
        assert_eq!(
            FrameType::from_u8(0x14),
            None,
            "MOVED is reserved, not defined"
        );
    }

    #[test]
    fn session_rules() {
        for byte in DEFINED {
            let ty = FrameType::from_u8(byte).unwrap();
            let expected = match byte {
                1..=6 | 0x24 => SessionRule::Zero,
                0x10..=0x13 | 0x20 | 0x21 => SessionRule::NonZero,
                _ => SessionRule::Any,
            };
            assert_eq!(ty.session_rule(), expected, "{ty:?}");
        }
    }

    #[test]
    fn the_0x2x_types_are_version_2() {
        for byte in DEFINED {
            let ty = FrameType::from_u8(byte).unwrap();
            assert_eq!(
                ty.since_version(),
                if byte >= 0x20 { 2 } else { 1 },
                "{ty:?}"
            );
        }
    }

    #[test]
    fn policy_byte_round_trips_and_others_are_none() {
        for byte in 0..=u8::MAX {
            match Policy::from_u8(byte) {
                Some(policy) => assert_eq!(policy as u8, byte),
                None => assert!(byte > 2, "{byte}"),
            }
        }
    }

    #[test]
    fn targets_view_their_bytes() {
        let targets = Targets::new(&[1, u64::MAX, 1]).unwrap();
        assert_eq!(targets.len(), 3);
        assert!(!targets.is_empty());
        assert_eq!(targets.iter().len(), 3);
        assert_eq!(targets.iter().collect::<Vec<_>>(), [1, u64::MAX, 1]);
        assert_eq!(&targets.as_bytes()[..9], &[0, 0, 0, 0, 0, 0, 0, 1, 0xff]);
        assert_eq!(format!("{targets:?}"), "[1, 18446744073709551615, 1]");
    }
}
