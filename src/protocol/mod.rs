//! The upstream link protocol (docs/protocol.md), sans-I/O.
//!
//! Owns the byte layout of every frame on a link between ringgate and a game server, versions 1
//! and 2: the 14-byte header, the bodies, and turning bytes back into [`Frame`]s. Must never do
//! I/O, keep state between calls, allocate or reserve based on a length a peer declared, or panic
//! on any input. Which version a link negotiated, and so which frames it may carry, is the link's
//! business (the link state machine's): the decoder accepts every type of every version.
//!
//! Copies: a DATA payload is never copied in either direction. Outbound, the proxy writes
//! [`encode_header`] and the payload `Bytes` as one vectored write; inbound, [`decode`] returns the
//! payload as a frozen slice of the caller's buffer, and so are the payloads, group names and
//! target lists of the fan-out frames. Only the small link and control frames are built or parsed
//! into owned values.

mod decode;
mod encode;
mod frame;
mod open;

pub use decode::{decode, decode_small, DecodeError, Decoded};
pub use encode::{
    broadcast, close, data_frame, encode_header, goaway, hello, hello_ack, hello_versions,
    hello_with_version, join, leave, link_error, multicast, ping, pong, publish, refuse,
    EncodeError,
};
pub use frame::{Frame, FrameType, Policy, SessionRule, TargetIter, Targets};
pub use open::{open, Open, OpenInfo};

/// The lowest protocol version ringgate speaks: what HELLO's `version` field carries, so that a
/// version-1 server, which compares that field alone, still accepts the link.
pub const MIN_VERSION: u16 = 1;

/// The highest protocol version ringgate speaks: what HELLO's `flags` byte offers.
pub const MAX_VERSION: u16 = 2;

/// The longest group name a JOIN, LEAVE or PUBLISH may carry: PUBLISH prefixes it with a `u8`.
pub const MAX_GROUP_NAME: usize = 255;

/// The most sessions one MULTICAST may name: its count is a `u16`.
pub const MAX_TARGETS: usize = u16::MAX as usize;

/// Bytes before a frame's body: `length u32`, `type u8`, `flags u8`, `session u64`.
pub const HEADER_LEN: usize = 14;

/// `flags` bit of a DATA, PUBLISH, BROADCAST or MULTICAST frame whose payload is a text message.
pub const FLAG_TEXT: u8 = 1;

/// The smallest valid `length`: it counts everything after itself, and type, flags and session
/// are always there.
pub const MIN_LENGTH: usize = HEADER_LEN - 4;

/// Longest CLOSE reason the proxy can pass on: a WebSocket close frame carries at most 125 bytes,
/// 2 of them the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// LINK_ERROR codes (docs/protocol.md, "LINK_ERROR codes").
pub mod link_code {
    pub const UNSUPPORTED_VERSION: u16 = 1;
    pub const MALFORMED: u16 = 2;
    pub const BEFORE_HELLO: u16 = 3;
    pub const TOO_LARGE: u16 = 4;
    pub const INTERNAL: u16 = 5;
}

#[cfg(test)]
mod tests;
