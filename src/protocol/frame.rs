//! Frame types and the decoded form of a frame.
//!
//! Owns the type byte's meaning, which types belong to a session and which to the link, and the
//! values [`super::decode`] produces. Must never know about bytes beyond the type byte: layout
//! lives in `encode.rs`, `decode.rs` and `open.rs`.

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
}

impl FrameType {
    /// The type for a byte read off the wire; `None` for a type this version does not define.
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
            _ => return None,
        })
    }

    /// Whether frames of this type carry a (non-zero) session id; the others are link frames
    /// with session 0.
    pub fn is_session(self) -> bool {
        matches!(
            self,
            FrameType::Open | FrameType::Refuse | FrameType::Data | FrameType::Close
        )
    }
}

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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_byte_round_trips_and_unknown_is_none() {
        for byte in 0..=u8::MAX {
            match FrameType::from_u8(byte) {
                Some(ty) => assert_eq!(ty as u8, byte),
                None => assert!(!matches!(byte, 1..=6 | 0x10..=0x13), "{byte:#x}"),
            }
        }
    }

    #[test]
    fn session_types_are_the_0x1x_range() {
        for byte in (1..=6).chain(0x10..=0x13) {
            let ty = FrameType::from_u8(byte).unwrap();
            assert_eq!(ty.is_session(), byte >= 0x10, "{ty:?}");
        }
    }
}
