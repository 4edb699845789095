//! The opening of a link: the HELLO ringgate sends and the judgement of the game server's answer.
//!
//! Owns the rules of the handshake (docs/protocol.md, "Link setup"): HELLO offers the range of
//! versions ringgate speaks, exactly one HELLO_ACK picks one of them, nothing is sent before it was
//! processed. Never reads or writes a socket; the driver
//! sends [`hello`], decodes the answer and hands it to [`accept_reply`].

use bytes::Bytes;

use crate::protocol::{self as proto, link_code, Frame};

/// Why the game server's answer to HELLO does not open the link.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error(
        "version mismatch: we speak {}..={}, the game server answered {theirs}",
        proto::MIN_VERSION,
        proto::MAX_VERSION
    )]
    Version { theirs: u16 },
    #[error(
        "the game server speaks none of protocol versions {}..={}: {message}",
        proto::MIN_VERSION,
        proto::MAX_VERSION
    )]
    Unsupported { message: String },
    #[error("game server refused the link ({code}): {message}")]
    Refused { code: u16, message: String },
    #[error("expected HELLO_ACK, got {0}")]
    Unexpected(String),
}

impl HandshakeError {
    /// Worth a warning at every attempt, not only the first of a series: retrying will not help
    /// until someone upgrades one side.
    pub fn is_version(&self) -> bool {
        matches!(
            self,
            HandshakeError::Version { .. } | HandshakeError::Unsupported { .. }
        )
    }
}

/// The HELLO a link opens with.
pub fn hello(core: u16, workers: u16, instance: &str) -> Bytes {
    proto::hello(core, workers, instance)
}

/// Judges the first frame the game server sent; the version it picked if it opens the link.
/// `more` is how many bytes followed it in the same read: the server may send nothing more until
/// ringgate has processed its HELLO_ACK, so anything there is a broken peer.
pub fn accept_reply(frame: Frame, more: usize) -> Result<u16, HandshakeError> {
    let version = match frame {
        Frame::HelloAck { version, .. }
            if (proto::MIN_VERSION..=proto::MAX_VERSION).contains(&version) =>
        {
            version
        }
        Frame::HelloAck { version, .. } => return Err(HandshakeError::Version { theirs: version }),
        Frame::LinkError {
            code: link_code::UNSUPPORTED_VERSION,
            message,
        } => return Err(HandshakeError::Unsupported { message }),
        Frame::LinkError { code, message } => {
            return Err(HandshakeError::Refused { code, message })
        }
        other => return Err(HandshakeError::Unexpected(format!("{other:?}"))),
    };
    if more > 0 {
        return Err(HandshakeError::Unexpected(
            "frames before HELLO_ACK was processed".into(),
        ));
    }
    Ok(version)
}
