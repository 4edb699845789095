//! RFC 6455 WebSocket protocol codec, server side, sans-I/O.
//!
//! Owns the wire format: the HTTP upgrade handshake, frame headers, masking,
//! UTF-8 validation, close payloads and the per-connection receive state
//! machine. Everything here is a pure function or state machine over byte
//! buffers supplied by the caller.
//!
//! Must never touch sockets, threads, timers or the clock, never panic on
//! peer-supplied bytes, and never allocate based on a length the peer merely
//! declared. The runtime owns all I/O and drives these types.

pub mod close;
pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod utf8;

pub use close::{close_payload, is_valid_close_code, parse_close_payload, CloseFrame};
pub use decoder::{Decoded, Decoder, Message, ProtocolError};
pub use frame::{
    apply_mask, apply_mask_bytewise, encode_client_frame, encode_header, encode_server_frame,
    OpCode, MAX_HEADER_LEN,
};
pub use handshake::{
    accept_key, parse_request, percent_decode, query_param, write_accept_response, HandshakeConfig,
    HandshakeError, ParseOutcome, UpgradeRequest,
};
pub use utf8::{Utf8Error, Utf8Validator};
