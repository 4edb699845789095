//! Frame-level wire primitives: opcodes, header encoding and payload masking.
//!
//! Owns the bit layout of RFC 6455 sec. 5.2. Must never hold connection state
//! or decide protocol policy (fragmentation, sizes, close handling): that is
//! the decoder's job.

pub mod header;
pub mod mask;
pub mod opcode;

pub use header::{encode_client_frame, encode_header, encode_server_frame, MAX_HEADER_LEN};
pub use mask::{apply_mask, apply_mask_bytewise};
pub use opcode::OpCode;
