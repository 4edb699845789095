//! The HTTP/1.1 upgrade handshake (RFC 6455 sec. 4.2), server side.
//!
//! Owns deciding whether a request head opens a WebSocket, and writing the
//! 101 or error response. Must never read past the head (bytes after it
//! belong to the WebSocket stream), never parse more than `max_head_bytes`,
//! and never copy peer bytes into a response header.

pub mod accept;
pub mod request;
pub mod response;

pub use accept::accept_key;
pub use request::{
    parse_request, percent_decode, query_param, HandshakeConfig, HandshakeError, ParseOutcome,
    UpgradeRequest,
};
pub use response::write_accept_response;
