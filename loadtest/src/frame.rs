//! The client side of RFC 6455 framing: masked frames written straight into a connection's send
//! buffer (masking with ringgate's word-wide `apply_mask`), and a parser for the unmasked frames a
//! server sends. ringgate's own `Decoder` is server-side (it requires masked frames), hence this.
//! The opcodes are ringgate's [`OpCode`].

pub use ringgate::ws::OpCode;

/// The opcode of a data message: text or binary.
pub fn data_opcode(text: bool) -> OpCode {
    if text {
        OpCode::Text
    } else {
        OpCode::Binary
    }
}

/// Appends the header of a final, masked client frame of `len` payload bytes to `out` and returns
/// the offset where the payload must go. The caller appends the payload and then calls
/// [`mask_from`] with that offset.
pub fn begin_client_frame(out: &mut Vec<u8>, opcode: OpCode, len: usize, mask: [u8; 4]) -> usize {
    out.push(0x80 | opcode.as_u8());
    if len <= 125 {
        out.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.len()
}

/// Masks everything in `out` from `start` on (the payload of the frame begun there).
pub fn mask_from(out: &mut [u8], start: usize, mask: [u8; 4]) {
    ringgate::ws::apply_mask(&mut out[start..], mask, 0);
}

/// Appends a whole final, masked client frame.
pub fn write_client_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], mask: [u8; 4]) {
    let start = begin_client_frame(out, opcode, payload.len(), mask);
    out.extend_from_slice(payload);
    mask_from(out, start, mask);
}

/// A parsed server frame header; the payload is `buf[header_len..header_len + payload_len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub header_len: usize,
    pub payload_len: usize,
}

impl Frame {
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A server must not mask its frames (RFC 6455 sec. 5.1).
    Masked,
    /// RSV bits set without a negotiated extension.
    Reserved,
    UnknownOpcode(u8),
    /// A control frame with more than 125 payload bytes or without FIN.
    BadControl,
    /// A payload longer than the harness accepts.
    TooLarge(u64),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Masked => write!(f, "masked server frame"),
            FrameError::Reserved => write!(f, "reserved bits set"),
            FrameError::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            FrameError::BadControl => write!(f, "fragmented or oversized control frame"),
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes is over the limit"),
        }
    }
}

/// Parses one server frame at the start of `buf`. `Ok(None)` means the frame is not complete yet.
pub fn parse_server_frame(buf: &[u8], max_payload: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(FrameError::UnknownOpcode(b0 & 0x0F))?;
    let control = opcode.is_control();
    let (header_len, len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, u64::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, u64::from_be_bytes(b))
        }
        n => (2, u64::from(n)),
    };
    if control && (len > 125 || !fin) {
        return Err(FrameError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let payload_len = len as usize;
    if buf.len() < header_len + payload_len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        header_len,
        payload_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_match_ringgate_encoder() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mask = [0x37, 0xfa, 0x21, 0x3d];
            let mut ours = Vec::new();
            write_client_frame(&mut ours, OpCode::Binary, &payload, mask);
            let theirs =
                ringgate::ws::encode_client_frame(true, 0, OpCode::Binary.as_u8(), mask, &payload);
            assert_eq!(ours, theirs, "len {len}");
        }
    }

    #[test]
    fn client_frames_decode_in_ringgate() {
        let mut buf = Vec::new();
        write_client_frame(&mut buf, OpCode::Text, b"Hello", [1, 2, 3, 4]);
        let mut bytes = bytes::BytesMut::from(&buf[..]);
        let mut dec = ringgate::ws::Decoder::new();
        let msg = dec.decode(&mut bytes, 1 << 20).unwrap();
        assert_eq!(
            msg,
            Some(ringgate::ws::Message::Text(bytes::Bytes::from_static(
                b"Hello"
            )))
        );
    }

    #[test]
    fn parses_rfc_examples() {
        // RFC 6455 sec. 5.7: a single-frame unmasked text message "Hello".
        let f = parse_server_frame(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o'], 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(
            f,
            Frame {
                fin: true,
                opcode: OpCode::Text,
                header_len: 2,
                payload_len: 5
            }
        );
        // Fragmented: "Hel" then "lo".
        let f = parse_server_frame(&[0x01, 0x03, b'H', b'e', b'l'], 100)
            .unwrap()
            .unwrap();
        assert!(!f.fin);
        let f = parse_server_frame(&[0x80, 0x02, b'l', b'o'], 100)
            .unwrap()
            .unwrap();
        assert_eq!((f.fin, f.opcode), (true, OpCode::Continuation));
        // Unmasked ping.
        let f = parse_server_frame(&[0x89, 0x05, b'H', b'e', b'l', b'l', b'o'], 100)
            .unwrap()
            .unwrap();
        assert_eq!(f.opcode, OpCode::Ping);
        // 256 bytes and 64 KiB binary.
        let mut b = vec![0x82, 0x7E, 0x01, 0x00];
        b.resize(4 + 256, 0);
        let f = parse_server_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!((f.header_len, f.payload_len, f.total_len()), (4, 256, 260));
        let mut b = vec![0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0];
        b.resize(10 + 65536, 0);
        let f = parse_server_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!((f.header_len, f.payload_len), (10, 65536));
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        assert_eq!(parse_server_frame(&[], 100), Ok(None));
        assert_eq!(parse_server_frame(&[0x82], 100), Ok(None));
        assert_eq!(parse_server_frame(&[0x82, 0x05, 1, 2], 100), Ok(None));
        assert_eq!(parse_server_frame(&[0x82, 0x7E, 0x01], 1000), Ok(None));
        assert_eq!(parse_server_frame(&[0x82, 0x7F, 0, 0, 0], 1000), Ok(None));
        let mut b = vec![0x82, 0x7E, 0x01, 0x00];
        b.resize(4 + 255, 0);
        assert_eq!(parse_server_frame(&b, 1000), Ok(None));
    }

    #[test]
    fn rejects_bad_server_frames() {
        assert_eq!(
            parse_server_frame(&[0x82, 0x80, 0, 0, 0, 0], 100),
            Err(FrameError::Masked)
        );
        assert_eq!(
            parse_server_frame(&[0xC2, 0x00], 100),
            Err(FrameError::Reserved)
        );
        assert_eq!(
            parse_server_frame(&[0x83, 0x00], 100),
            Err(FrameError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_server_frame(&[0x09, 0x00], 100),
            Err(FrameError::BadControl)
        );
        assert_eq!(
            parse_server_frame(&[0x89, 0x7E, 0, 126], 1000),
            Err(FrameError::BadControl)
        );
        assert_eq!(
            parse_server_frame(&[0x82, 0x7E, 0x10, 0], 1000),
            Err(FrameError::TooLarge(4096))
        );
    }
}
