//! Frame header encoding (RFC 6455 sec. 5.2).
//!
//! Owns writing headers: unmasked server-to-client headers for the runtime,
//! and whole masked client frames for tests, fuzzing and benchmarks. Must
//! never parse peer input (the decoder does) and never mask server frames
//! (RFC 6455 sec. 5.1 forbids it).

use super::mask::apply_mask;
use super::opcode::OpCode;

/// Largest possible header: 2 fixed bytes, 8 extended length bytes, 4 mask
/// bytes. Server headers never use the mask, so they take at most 10.
pub const MAX_HEADER_LEN: usize = 14;

/// Writes an unmasked server frame header into `out` and returns how many
/// bytes were written (2, 4 or 10), always using the shortest length form.
///
/// `payload_len` must be below 2^63: the wire format has no room for more,
/// and no in-memory payload can be that large anyway.
pub fn encode_header(
    out: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    payload_len: u64,
) -> usize {
    debug_assert!(
        payload_len >> 63 == 0,
        "payload length needs 63 bits or fewer"
    );
    out[0] = (u8::from(fin) << 7) | opcode.as_u8();
    write_len(out, 0, payload_len)
}

/// Writes the length field starting at byte 1, ORing `mask_bit` into byte 1,
/// and returns the header length so far.
fn write_len(out: &mut [u8; MAX_HEADER_LEN], mask_bit: u8, len: u64) -> usize {
    if len <= 125 {
        // Fits in 7 bits by the branch condition.
        out[1] = mask_bit | len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    }
}

/// A whole unmasked, final server frame (header and payload in one buffer): what a message sent
/// to many clients is framed as once, each client's queue sharing it.
pub fn encode_server_frame(opcode: OpCode, payload: &[u8]) -> bytes::Bytes {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut head, true, opcode, payload.len() as u64);
    let mut frame = bytes::BytesMut::with_capacity(n + payload.len());
    frame.extend_from_slice(&head[..n]);
    frame.extend_from_slice(payload);
    frame.freeze()
}

/// Builds a complete masked client frame. `rsv` is the 3-bit RSV field
/// (0b100 = RSV1, 0b010 = RSV2, 0b001 = RSV3) and `opcode` the raw 4-bit
/// value, so tests can produce frames the decoder must reject.
pub fn encode_client_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: [u8; 4],
    payload: &[u8],
) -> Vec<u8> {
    let mut head = [0u8; MAX_HEADER_LEN];
    head[0] = (u8::from(fin) << 7) | ((rsv & 0x7) << 4) | (opcode & 0x0F);
    let len = write_len(&mut head, 0x80, payload.len() as u64);
    head[len..len + 4].copy_from_slice(&mask);
    let head_len = len + 4;

    let mut frame = Vec::with_capacity(head_len + payload.len());
    frame.extend_from_slice(&head[..head_len]);
    frame.extend_from_slice(payload);
    apply_mask(&mut frame[head_len..], mask, 0);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_frame_is_its_header_then_its_payload() {
        assert_eq!(
            &encode_server_frame(OpCode::Text, b"hello")[..],
            b"\x81\x05hello"
        );
        let long = encode_server_frame(OpCode::Binary, &[9u8; 300]);
        assert_eq!(&long[..4], &[0x82, 126, 0x01, 0x2c]);
        assert_eq!(long.len(), 4 + 300);
    }

    fn header(fin: bool, opcode: OpCode, len: u64) -> Vec<u8> {
        let mut out = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut out, fin, opcode, len);
        out[..n].to_vec()
    }

    #[test]
    fn rfc_5_7_unmasked_hello_header() {
        assert_eq!(header(true, OpCode::Text, 5), [0x81, 0x05]);
    }

    #[test]
    fn rfc_5_7_fragmented_headers() {
        assert_eq!(header(false, OpCode::Text, 3), [0x01, 0x03]);
        assert_eq!(header(true, OpCode::Continuation, 2), [0x80, 0x02]);
    }

    #[test]
    fn rfc_5_7_unmasked_pong_header() {
        assert_eq!(header(true, OpCode::Pong, 5), [0x8a, 0x05]);
    }

    #[test]
    fn rfc_5_7_256_and_64k_binary_headers() {
        assert_eq!(header(true, OpCode::Binary, 256), [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(
            header(true, OpCode::Binary, 65536),
            [0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]
        );
    }

    #[test]
    fn minimal_length_boundaries() {
        assert_eq!(header(true, OpCode::Binary, 0), [0x82, 0]);
        assert_eq!(header(true, OpCode::Binary, 125), [0x82, 125]);
        assert_eq!(header(true, OpCode::Binary, 126), [0x82, 126, 0, 126]);
        assert_eq!(header(true, OpCode::Binary, 65535), [0x82, 126, 0xFF, 0xFF]);
        assert_eq!(header(true, OpCode::Binary, 65536).len(), 10);
        assert_eq!(
            header(true, OpCode::Binary, (1 << 63) - 1),
            [0x82, 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
    }

    #[test]
    fn rfc_5_7_masked_hello_client_frame() {
        let frame = encode_client_frame(true, 0, 0x1, [0x37, 0xfa, 0x21, 0x3d], b"Hello");
        assert_eq!(
            frame,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn client_frame_raw_bits() {
        let frame = encode_client_frame(false, 0b101, 0xB, [0; 4], &[]);
        assert_eq!(frame, [0x5B, 0x80, 0, 0, 0, 0]);
        let frame = encode_client_frame(true, 0, 0x2, [1, 2, 3, 4], &[0; 300]);
        assert_eq!(&frame[..8], &[0x82, 0xFE, 0x01, 0x2C, 1, 2, 3, 4]);
        assert_eq!(frame.len(), 8 + 300);
    }
}
