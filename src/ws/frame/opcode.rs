//! The frame opcode (RFC 6455 sec. 5.2, 11.8).
//!
//! Owns the mapping between the 4-bit wire value and the defined opcodes.
//! Must never map a reserved value (0x3-0x7, 0xB-0xF) to an opcode: the
//! decoder relies on `from_u8` returning `None` to fail those connections.

/// A defined WebSocket opcode. Reserved values have no variant on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// Maps the low 4 bits of a frame's first byte; `None` for reserved values
    /// and for anything above 0xF.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Control frames (high opcode bit set) may not be fragmented and carry
    /// at most 125 payload bytes.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x8 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_defined_and_rejects_reserved() {
        for v in 0u8..=255 {
            match OpCode::from_u8(v) {
                Some(op) => assert_eq!(op.as_u8(), v),
                None => assert!(matches!(v, 0x3..=0x7 | 0xB..=0xFF), "{v:#x}"),
            }
        }
    }

    #[test]
    fn control_classification() {
        assert!(!OpCode::Continuation.is_control());
        assert!(!OpCode::Text.is_control());
        assert!(!OpCode::Binary.is_control());
        assert!(OpCode::Close.is_control());
        assert!(OpCode::Ping.is_control());
        assert!(OpCode::Pong.is_control());
    }
}
