//! The per-connection receive state machine (RFC 6455 sec. 5, server side).
//!
//! Owns turning client bytes into messages: header validation, in-place
//! unmasking, fragmentation, incremental UTF-8 checks and the message size
//! limit. Must never keep pointers into the caller's buffer (only counts, so
//! the driver may move the unconsumed bytes to another `BytesMut`), never
//! unmask a byte twice, never allocate or reserve based on a declared length,
//! and never panic on any input.
//!
//! Memory and copies:
//! - `size_of::<Decoder>()` is 40 bytes on 64-bit targets (8 of them the
//!   boxed fragment accumulator, which exists only while a fragmented message
//!   is in flight); a unit test pins it at ≤ 40.
//! - An unfragmented data frame, and every control frame, is returned with
//!   `split_to(len).freeze()` on the caller's buffer: no copy. Through
//!   [`Decoder::decode_small`], an unfragmented data message up to the
//!   caller's limit is instead left unmasked in place for the caller to copy
//!   and consume, which spares a game-sized message its `Bytes` handle.
//! - A fragmented message is copied once, frame by frame as each frame
//!   completes, into the accumulator (plus that buffer's amortised growth).
//!
//! Length encoding: RFC 6455 sec. 5.2 says the minimal number of bytes MUST
//! be used for the payload length, but a longer encoding is unambiguous and
//! harmless, so it is accepted, as most implementations and Autobahn do.
//! Only the 64-bit form with its top bit set is rejected, as the RFC requires.

use bytes::{Buf, BytesMut};

use super::close::{parse_close_payload, CloseFrame};
use super::frame::{apply_mask, OpCode};
use super::utf8::Utf8Validator;

/// A complete message from the client. `Text` payloads are valid UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Text(bytes::Bytes),
    Binary(bytes::Bytes),
    Ping(bytes::Bytes),
    Pong(bytes::Bytes),
    /// `None` when the close frame had an empty payload.
    Close(Option<CloseFrame>),
}

/// What [`Decoder::decode_small`] found at the front of the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    Message(Message),
    /// A whole, unfragmented data message of at most the caller's limit, unmasked (and, for text,
    /// validated) in place: it is `buf[..len]`, and the caller consumes it with `buf.advance(len)`
    /// before decoding on.
    InPlace {
        text: bool,
        len: usize,
    },
}

impl Decoded {
    /// The message [`Decoder::decode`] would have returned, taking a body left in place out of
    /// `buf` (the buffer it was decoded from). For comparing the two calls; the runtime copies
    /// the body instead.
    pub fn take(self, buf: &mut BytesMut) -> Message {
        match self {
            Decoded::Message(m) => m,
            Decoded::InPlace { text, len } => {
                let payload = buf.split_to(len.min(buf.len())).freeze();
                if text {
                    Message::Text(payload)
                } else {
                    Message::Binary(payload)
                }
            }
        }
    }
}

/// Why the connection must be failed; `close_code` is the status to send.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ProtocolError {
    #[error("client frame is not masked")]
    UnmaskedFrame,
    #[error("reserved header bits set ({0:#05b}) but no extension was negotiated")]
    ReservedBits(u8),
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("control frame without FIN (control frames cannot be fragmented)")]
    FragmentedControlFrame,
    #[error("control frame payload longer than 125 bytes")]
    ControlFrameTooLong,
    #[error("continuation frame without a fragmented message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is still in progress")]
    ExpectedContinuation,
    #[error("64-bit payload length with the most significant bit set")]
    InvalidLength,
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { size: u64, max: usize },
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("close frame payload of 1 byte cannot hold a status code")]
    CloseTooShort,
    #[error("close frame with invalid status code {0}")]
    InvalidCloseCode(u16),
    #[error("close frame reason is not valid UTF-8")]
    InvalidCloseReason,
}

impl ProtocolError {
    /// The close status to fail the connection with (RFC 6455 sec. 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 | Self::InvalidCloseReason => 1007,
            Self::MessageTooLarge { .. } => 1009,
            Self::UnmaskedFrame
            | Self::ReservedBits(_)
            | Self::ReservedOpcode(_)
            | Self::FragmentedControlFrame
            | Self::ControlFrameTooLong
            | Self::UnexpectedContinuation
            | Self::ExpectedContinuation
            | Self::InvalidLength
            | Self::CloseTooShort
            | Self::InvalidCloseCode(_) => 1002,
        }
    }
}

/// The parsed header of the frame whose payload is being received. `len` is
/// a `usize` because it was already checked against `max_message_size` (data)
/// or 125 (control).
#[derive(Clone, Copy, Debug)]
struct FrameHeader {
    len: usize,
    mask: [u8; 4],
    fin: bool,
    opcode: OpCode,
}

/// Receive state for one connection. See the module doc for the size bound.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Payloads of the fragmented message in flight; `None` between messages.
    /// Boxed: the decoder lives in every session and fragmented messages are rare in games, so an
    /// idle connection holds a pointer here rather than a whole buffer handle.
    fragments: Option<Box<BytesMut>>,
    /// Header of the current frame, once parsed (its bytes are consumed).
    frame: Option<FrameHeader>,
    /// Payload bytes of the current frame at the front of the buffer that
    /// are already unmasked (and, for text, validated).
    unmasked: usize,
    /// UTF-8 state of the text message in flight, carried across fragments
    /// and across partial frames.
    utf8: Utf8Validator,
    /// Whether the fragmented message in flight is text.
    fragments_text: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from the front of `buf` and returns the next complete
    /// message, `Ok(None)` when more bytes are needed.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_message_size: usize,
    ) -> Result<Option<Message>, ProtocolError> {
        match self.next(buf, max_message_size, None)? {
            Some(Decoded::Message(m)) => Ok(Some(m)),
            // Only returned when a limit is given.
            Some(Decoded::InPlace { .. }) | None => Ok(None),
        }
    }

    /// Like [`Decoder::decode`], except that an unfragmented data message of at most `small` bytes
    /// is left in place ([`Decoded::InPlace`]) for the caller to copy.
    pub fn decode_small(
        &mut self,
        buf: &mut BytesMut,
        max_message_size: usize,
        small: usize,
    ) -> Result<Option<Decoded>, ProtocolError> {
        self.next(buf, max_message_size, Some(small))
    }

    fn next(
        &mut self,
        buf: &mut BytesMut,
        max_message_size: usize,
        small: Option<usize>,
    ) -> Result<Option<Decoded>, ProtocolError> {
        loop {
            let frame = match self.frame {
                Some(frame) => frame,
                None => {
                    let Some((frame, header_len)) = self.parse_header(buf, max_message_size)?
                    else {
                        return Ok(None);
                    };
                    buf.advance(header_len);
                    self.frame = Some(frame);
                    self.unmasked = 0;
                    frame
                }
            };

            let available = buf.len().min(frame.len);
            // `get_mut` rather than indexing: if a driver ever hands over a
            // shorter buffer than promised this must not panic.
            if let Some(fresh) = buf.get_mut(self.unmasked..available) {
                if !fresh.is_empty() {
                    apply_mask(fresh, frame.mask, self.unmasked);
                    if self.is_text_frame(frame.opcode) {
                        self.utf8
                            .feed(fresh)
                            .map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                    self.unmasked = available;
                }
            }
            if buf.len() < frame.len {
                return Ok(None);
            }

            self.frame = None;
            self.unmasked = 0;
            // parse_header only lets Text/Binary through when no fragmented message is in flight,
            // so a final one is a whole message.
            let whole_data = frame.fin && matches!(frame.opcode, OpCode::Text | OpCode::Binary);
            if whole_data && small.is_some_and(|limit| frame.len <= limit) {
                let text = frame.opcode == OpCode::Text;
                if text {
                    self.finish_text()?;
                }
                return Ok(Some(Decoded::InPlace {
                    text,
                    len: frame.len,
                }));
            }
            let payload = buf.split_to(frame.len);
            if let Some(message) = self.complete_frame(frame, payload)? {
                return Ok(Some(Decoded::Message(message)));
            }
        }
    }

    pub fn in_fragmented_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// Bytes of the fragmented message in flight held so far (0 between messages).
    pub fn fragments_held(&self) -> usize {
        self.fragments.as_ref().map_or(0, |f| f.len())
    }

    /// Bytes still missing to complete the current frame, if its header has
    /// been parsed. Counts from the last `decode` call, which unmasks every
    /// payload byte present.
    pub fn frame_remaining(&self) -> Option<usize> {
        self.frame
            .map(|frame| frame.len.saturating_sub(self.unmasked))
    }

    fn is_text_frame(&self, opcode: OpCode) -> bool {
        match opcode {
            OpCode::Text => true,
            OpCode::Continuation => self.fragments_text,
            _ => false,
        }
    }

    /// Validates the header at the front of `buf` as far as its bytes are
    /// present, so a bad first byte fails the connection without waiting for
    /// the rest. Returns the header and its length once it is all present.
    fn parse_header(
        &self,
        buf: &[u8],
        max_message_size: usize,
    ) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let rsv = (b0 >> 4) & 0x7;
        if rsv != 0 {
            return Err(ProtocolError::ReservedBits(rsv));
        }
        let raw_opcode = b0 & 0x0F;
        let opcode =
            OpCode::from_u8(raw_opcode).ok_or(ProtocolError::ReservedOpcode(raw_opcode))?;
        let fin = b0 & 0x80 != 0;
        let control = opcode.is_control();
        let held = match (opcode, &self.fragments) {
            _ if control => {
                if !fin {
                    return Err(ProtocolError::FragmentedControlFrame);
                }
                0
            }
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Continuation, Some(acc)) => acc.len(),
            (_, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (_, None) => 0,
        };

        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        if b1 & 0x80 == 0 {
            return Err(ProtocolError::UnmaskedFrame);
        }
        let len7 = b1 & 0x7F;
        if control && len7 > 125 {
            return Err(ProtocolError::ControlFrameTooLong);
        }
        let (declared, len_end) = match len7 {
            126 => match read_array::<2>(buf, 2) {
                Some(bytes) => (u64::from(u16::from_be_bytes(bytes)), 4),
                None => return Ok(None),
            },
            127 => match read_array::<8>(buf, 2) {
                Some(bytes) => {
                    let len = u64::from_be_bytes(bytes);
                    if len >> 63 != 0 {
                        return Err(ProtocolError::InvalidLength);
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };

        // Checked before the mask key arrives and before any payload: a
        // huge declared length costs the peer a 1009, not our memory.
        let too_large = |size: u64| ProtocolError::MessageTooLarge {
            size,
            max: max_message_size,
        };
        if !control {
            let size = declared.saturating_add(held as u64);
            if size > max_message_size as u64 {
                return Err(too_large(size));
            }
        }
        // Only fails where usize is narrower than the declared length, which
        // then also exceeds any max_message_size.
        let len = usize::try_from(declared).map_err(|_| too_large(declared))?;

        let Some(mask) = read_array::<4>(buf, len_end) else {
            return Ok(None);
        };
        let header = FrameHeader {
            len,
            mask,
            fin,
            opcode,
        };
        Ok(Some((header, len_end + 4)))
    }

    /// Handles a frame whose whole (unmasked) payload is in `payload`.
    /// Returns a message, or `None` for a non-final fragment.
    fn complete_frame(
        &mut self,
        frame: FrameHeader,
        payload: BytesMut,
    ) -> Result<Option<Message>, ProtocolError> {
        let message = match frame.opcode {
            OpCode::Ping => Message::Ping(payload.freeze()),
            OpCode::Pong => Message::Pong(payload.freeze()),
            OpCode::Close => {
                let payload = payload.freeze();
                // `Some` means the payload held a 2-byte code, so the slice
                // is in bounds.
                let close = parse_close_payload(&payload)?.map(|(code, _)| CloseFrame {
                    code,
                    reason: payload.slice(2..),
                });
                Message::Close(close)
            }
            // parse_header only lets Text/Binary through when no fragmented
            // message is in flight, so a final one is a whole message.
            OpCode::Text | OpCode::Binary if frame.fin => {
                let is_text = frame.opcode == OpCode::Text;
                self.data_message(is_text, payload)?
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                match &mut self.fragments {
                    Some(acc) => acc.extend_from_slice(&payload),
                    None => {
                        self.fragments_text = frame.opcode == OpCode::Text;
                        self.fragments = Some(Box::new(BytesMut::from(&payload[..])));
                    }
                }
                if !frame.fin {
                    return Ok(None);
                }
                let data = self.fragments.take().map(|acc| *acc).unwrap_or_default();
                self.data_message(self.fragments_text, data)?
            }
        };
        Ok(Some(message))
    }

    fn data_message(&mut self, is_text: bool, data: BytesMut) -> Result<Message, ProtocolError> {
        if !is_text {
            return Ok(Message::Binary(data.freeze()));
        }
        self.finish_text()?;
        Ok(Message::Text(data.freeze()))
    }

    /// A text message ends here: it must not stop inside a UTF-8 sequence.
    fn finish_text(&mut self) -> Result<(), ProtocolError> {
        self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        self.utf8.reset();
        Ok(())
    }
}

/// `N` bytes of `buf` starting at `at`, if present.
fn read_array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;
    use crate::ws::close::close_payload;
    use crate::ws::frame::encode_client_frame;
    use bytes::Bytes;

    const MAX: usize = 1 << 20;
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn client(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        encode_client_frame(fin, 0, opcode, MASK, payload)
    }

    type Outcome = (Vec<Message>, Option<ProtocolError>);

    /// Plays the driver: appends each chunk, then decodes until `None`/error.
    /// With `migrate`, moves the unconsumed bytes to a fresh buffer before
    /// every call, as the driver is allowed to.
    fn run(chunks: &[&[u8]], max: usize, migrate: bool) -> Outcome {
        run_with(chunks, max, migrate, None)
    }

    /// [`run`] through `decode_small` when `small` is given, turning what it leaves in place into
    /// the message `decode` would have returned.
    fn run_with(chunks: &[&[u8]], max: usize, migrate: bool, small: Option<usize>) -> Outcome {
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let mut messages = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                if migrate {
                    buf = BytesMut::from(&buf[..]);
                }
                let next = match small {
                    None => decoder.decode(&mut buf, max),
                    Some(limit) => decoder.decode_small(&mut buf, max, limit).map(|d| {
                        d.map(|d| {
                            if let Decoded::InPlace { len, .. } = d {
                                assert!(len <= limit, "{len} left in place over the limit {limit}");
                            }
                            d.take(&mut buf)
                        })
                    }),
                };
                match next {
                    Ok(Some(m)) => {
                        let stop = matches!(m, Message::Close(_));
                        messages.push(m);
                        if stop {
                            return (messages, None);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return (messages, Some(e)),
                }
            }
        }
        (messages, None)
    }

    fn whole(input: &[u8]) -> Outcome {
        run(&[input], MAX, false)
    }

    fn err_of(input: &[u8]) -> ProtocolError {
        whole(input).1.expect("expected a protocol error")
    }

    fn text(s: &str) -> Message {
        Message::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn decoder_size_bound() {
        // Documented in the module doc; grow it only deliberately.
        assert!(std::mem::size_of::<Decoder>() <= 40);
    }

    #[test]
    fn rfc_5_7_masked_hello() {
        let input = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(whole(&input), (vec![text("Hello")], None));
    }

    #[test]
    fn rfc_5_7_fragmented_hello() {
        let mut input = client(false, 0x1, b"Hel");
        input.extend(client(true, 0x0, b"lo"));
        assert_eq!(whole(&input), (vec![text("Hello")], None));
    }

    #[test]
    fn rfc_5_7_masked_ping() {
        let input = client(true, 0x9, b"Hello");
        assert_eq!(&input[..2], &[0x89, 0x85]);
        assert_eq!(
            whole(&input),
            (vec![Message::Ping(Bytes::from_static(b"Hello"))], None)
        );
    }

    #[test]
    fn rfc_5_7_256_and_64k_binary() {
        let small: Vec<u8> = (0..256).map(|i| i as u8).collect();
        let frame = client(true, 0x2, &small);
        assert_eq!(&frame[..4], &[0x82, 0xFE, 0x01, 0x00]);
        assert_eq!(whole(&frame), (vec![Message::Binary(small.into())], None));

        let big: Vec<u8> = (0..65536).map(|i| (i * 7) as u8).collect();
        let frame = client(true, 0x2, &big);
        assert_eq!(&frame[..10], &[0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(whole(&frame), (vec![Message::Binary(big.into())], None));
    }

    #[test]
    fn message_size_boundaries() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let expected_text = Message::Text(payload.clone().into());
            let expected_bin = Message::Binary(payload.clone().into());
            assert_eq!(
                whole(&client(true, 0x1, &payload)),
                (vec![expected_text.clone()], None)
            );
            assert_eq!(
                whole(&client(true, 0x2, &payload)),
                (vec![expected_bin], None)
            );
            // Same message in three fragments.
            let (a, rest) = payload.split_at(len / 3);
            let (b, c) = rest.split_at(rest.len() / 2);
            let mut input = client(false, 0x1, a);
            input.extend(client(false, 0x0, b));
            input.extend(client(true, 0x0, c));
            assert_eq!(whole(&input), (vec![expected_text], None), "len {len}");
        }
    }

    #[test]
    fn unfragmented_frames_are_zero_copy() {
        let frame = client(true, 0x2, &[1u8; 300]);
        let mut buf = BytesMut::from(&frame[..]);
        let payload_start = buf.as_ptr() as usize + 4 + 4;
        let mut decoder = Decoder::new();
        let Some(Message::Binary(data)) = decoder.decode(&mut buf, MAX).unwrap() else {
            panic!("expected binary");
        };
        assert_eq!(data.as_ptr() as usize, payload_start);
        assert_eq!(&data[..], &[1u8; 300][..]);
    }

    /// Several frames, fragments with control frames interleaved, all opcodes.
    fn mixed_stream() -> (Vec<u8>, Vec<Message>) {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        input.extend(client(true, 0x1, "héllo ✓ \u{1F600}".as_bytes()));
        expected.push(text("héllo ✓ \u{1F600}"));
        // Fragmented text with a code point split across fragments and a
        // ping and a pong between fragments.
        let snow = "a\u{2603}b\u{1F600}c".as_bytes();
        input.extend(client(false, 0x1, &snow[..2]));
        input.extend(client(true, 0x9, b"p1"));
        input.extend(client(false, 0x0, &snow[2..6]));
        input.extend(client(true, 0xA, b""));
        input.extend(client(true, 0x0, &snow[6..]));
        expected.push(Message::Ping(Bytes::from_static(b"p1")));
        expected.push(Message::Pong(Bytes::new()));
        expected.push(text("a\u{2603}b\u{1F600}c"));
        let bin: Vec<u8> = (0..200).map(|i| i as u8).collect();
        input.extend(client(false, 0x2, &bin[..100]));
        input.extend(client(false, 0x0, &[]));
        input.extend(client(true, 0x0, &bin[100..]));
        expected.push(Message::Binary(bin.into()));
        input.extend(client(true, 0x1, b""));
        expected.push(text(""));
        input.extend(client(true, 0x8, &close_payload(1000, "bye")));
        expected.push(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: Bytes::from_static(b"bye"),
        })));
        (input, expected)
    }

    #[test]
    fn every_split_gives_the_same_messages() {
        let (input, expected) = mixed_stream();
        assert_eq!(whole(&input), (expected.clone(), None));
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(
                run(&[a, b], MAX, false),
                (expected.clone(), None),
                "split {i}"
            );
            assert_eq!(
                run(&[a, b], MAX, true),
                (expected.clone(), None),
                "split {i}"
            );
        }
    }

    #[test]
    fn every_two_splits_give_the_same_messages() {
        let (input, expected) = mixed_stream();
        for i in (0..=input.len()).step_by(3) {
            for j in i..=input.len() {
                let chunks = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(run(&chunks, MAX, j % 2 == 0), (expected.clone(), None));
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let (input, expected) = mixed_stream();
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&chunks, MAX, false), (expected.clone(), None));
        assert_eq!(run(&chunks, MAX, true), (expected, None));
    }

    #[test]
    fn frame_remaining_and_fragment_state() {
        let frame = client(false, 0x2, &[9u8; 1000]);
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::from(&frame[..1]);
        assert_eq!(decoder.decode(&mut buf, MAX), Ok(None));
        assert_eq!(decoder.frame_remaining(), None);
        buf.extend_from_slice(&frame[1..8 + 10]);
        assert_eq!(decoder.decode(&mut buf, MAX), Ok(None));
        assert_eq!(buf.len(), 10, "header consumed at once");
        assert_eq!(decoder.frame_remaining(), Some(990));
        assert!(!decoder.in_fragmented_message());
        buf.extend_from_slice(&frame[18..]);
        assert_eq!(decoder.decode(&mut buf, MAX), Ok(None));
        assert_eq!(decoder.frame_remaining(), None);
        assert!(decoder.in_fragmented_message());
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&client(true, 0x0, b"!")[..]);
        assert!(
            matches!(decoder.decode(&mut buf, MAX), Ok(Some(Message::Binary(b))) if b.len() == 1001)
        );
        assert!(!decoder.in_fragmented_message());
    }

    #[test]
    fn non_minimal_length_is_accepted() {
        // "Hello" with a 16-bit and with a 64-bit length field.
        let mut masked = *b"Hello";
        apply_mask(&mut masked, MASK, 0);
        let mut a = vec![0x81, 0xFE, 0x00, 0x05];
        a.extend_from_slice(&MASK);
        a.extend_from_slice(&masked);
        assert_eq!(whole(&a), (vec![text("Hello")], None));
        let mut b = vec![0x81, 0xFF, 0, 0, 0, 0, 0, 0, 0, 5];
        b.extend_from_slice(&MASK);
        b.extend_from_slice(&masked);
        assert_eq!(whole(&b), (vec![text("Hello")], None));
    }

    #[test]
    fn unmasked_frame_is_1002() {
        let e = err_of(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        assert_eq!(e, ProtocolError::UnmaskedFrame);
        assert_eq!(e.close_code(), 1002);
    }

    #[test]
    fn reserved_bits_are_1002() {
        for rsv in 1..=7 {
            let e = err_of(&encode_client_frame(true, rsv, 0x1, MASK, b"x"));
            assert_eq!(e, ProtocolError::ReservedBits(rsv));
            assert_eq!(e.close_code(), 1002);
        }
    }

    #[test]
    fn reserved_opcodes_are_1002_from_the_first_byte() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let frame = client(true, op, b"x");
            let e = err_of(&frame[..1]);
            assert_eq!(e, ProtocolError::ReservedOpcode(op));
            assert_eq!(e.close_code(), 1002);
        }
    }

    #[test]
    fn control_frame_rules_are_1002() {
        for op in [0x8u8, 0x9, 0xA] {
            let e = err_of(&client(false, op, b""));
            assert_eq!(e, ProtocolError::FragmentedControlFrame);
            assert_eq!(e.close_code(), 1002);
            // 126 bytes: detected from the 2-byte header alone.
            let frame = client(true, op, &[0u8; 126]);
            let e = err_of(&frame[..2]);
            assert_eq!(e, ProtocolError::ControlFrameTooLong);
            assert_eq!(e.close_code(), 1002);
        }
        // 125 is fine.
        let (msgs, err) = whole(&client(true, 0x9, &[7u8; 125]));
        assert_eq!((msgs.len(), err), (1, None));
    }

    #[test]
    fn continuation_without_message_is_1002() {
        let e = err_of(&client(true, 0x0, b"x"));
        assert_eq!(e, ProtocolError::UnexpectedContinuation);
        assert_eq!(e.close_code(), 1002);
    }

    #[test]
    fn data_frame_inside_fragmented_message_is_1002() {
        for op in [0x1u8, 0x2] {
            let mut input = client(false, 0x2, b"a");
            input.extend(client(true, op, b"b"));
            let e = err_of(&input);
            assert_eq!(e, ProtocolError::ExpectedContinuation);
            assert_eq!(e.close_code(), 1002);
        }
    }

    #[test]
    fn length_with_top_bit_is_1002() {
        let mut input = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1];
        input.extend_from_slice(&MASK);
        let e = err_of(&input);
        assert_eq!(e, ProtocolError::InvalidLength);
        assert_eq!(e.close_code(), 1002);
    }

    #[test]
    fn too_large_from_header_alone() {
        // 2^62 bytes declared; only the 10 length bytes sent, no mask.
        let input = [0x82, 0xFF, 0x40, 0, 0, 0, 0, 0, 0, 0];
        let mut buf = BytesMut::from(&input[..]);
        let cap = buf.capacity();
        let mut decoder = Decoder::new();
        let e = decoder.decode(&mut buf, MAX).unwrap_err();
        assert_eq!(e.close_code(), 1009);
        assert_eq!(
            e,
            ProtocolError::MessageTooLarge {
                size: 1 << 62,
                max: MAX
            }
        );
        assert_eq!(buf.capacity(), cap);
        assert!(!decoder.in_fragmented_message());

        // 16-bit form, 4 header bytes.
        let e = run(&[&[0x81, 0xFE, 0x01, 0x00]], 255, false).1.unwrap();
        assert_eq!(e.close_code(), 1009);
    }

    #[test]
    fn size_limit_is_inclusive_and_counts_fragments() {
        let exact = client(true, 0x2, &[0u8; 100]);
        assert_eq!(run(&[&exact], 100, false).1, None);
        let over = client(true, 0x2, &[0u8; 101]);
        assert_eq!(run(&[&over[..4]], 100, false).1.unwrap().close_code(), 1009);

        let mut input = client(false, 0x1, &[b'a'; 60]);
        input.extend(client(false, 0x0, &[b'a'; 40]));
        let third = client(true, 0x0, b"a");
        let (msgs, err) = run(&[&input, &third[..2]], 100, false);
        assert!(msgs.is_empty());
        assert_eq!(
            err,
            Some(ProtocolError::MessageTooLarge {
                size: 101,
                max: 100
            })
        );
        // Control frames are bounded by 125, not by max_message_size.
        assert_eq!(run(&[&client(true, 0x9, &[0; 50])], 10, false).1, None);
    }

    #[test]
    fn invalid_utf8_is_1007() {
        let e = err_of(&client(true, 0x1, b"ab\xFFcd"));
        assert_eq!(e, ProtocolError::InvalidUtf8);
        assert_eq!(e.close_code(), 1007);
        // Across fragments.
        let mut input = client(false, 0x1, b"ok\xED");
        input.extend(client(true, 0x0, b"\xA0\x80"));
        assert_eq!(err_of(&input).close_code(), 1007);
    }

    #[test]
    fn truncated_code_point_at_message_end_is_1007() {
        let e = err_of(&client(true, 0x1, b"ok\xE2\x82"));
        assert_eq!(e, ProtocolError::InvalidUtf8);
        let mut input = client(false, 0x1, b"ok\xF0\x9F");
        input.extend(client(true, 0x0, b"\x98"));
        assert_eq!(err_of(&input).close_code(), 1007);
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let (msgs, err) = whole(&client(true, 0x2, b"\xFF\xFE"));
        assert_eq!((msgs.len(), err), (1, None));
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_completes() {
        // Autobahn 6.4.x: the first half of a frame carries the invalid byte.
        let payload =
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64";
        let frame = client(true, 0x1, payload);
        let bad_end = 6 + 13; // header + up to and including 0x90
        let (msgs, err) = run(&[&frame[..bad_end]], MAX, false);
        assert!(msgs.is_empty());
        assert_eq!(err, Some(ProtocolError::InvalidUtf8));
        let (_, err) = run(&[&frame[..bad_end - 1]], MAX, false);
        assert_eq!(err, None);
        // One byte at a time: fails exactly at that byte.
        let chunks: Vec<&[u8]> = frame[..bad_end].chunks(1).collect();
        assert_eq!(run(&chunks, MAX, false).1, Some(ProtocolError::InvalidUtf8));
        // Fragmented, invalid byte in a later, incomplete fragment.
        let mut input = client(false, 0x1, &payload[..5]);
        let second = client(false, 0x0, &payload[5..]);
        input.extend_from_slice(&second[..6 + 8]);
        assert_eq!(
            run(&[&input], MAX, false).1,
            Some(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn control_frames_do_not_disturb_text_validation() {
        // A ping with non-UTF-8 payload between text fragments that split a
        // code point.
        let mut input = client(false, 0x1, b"\xE2\x82");
        input.extend(client(true, 0x9, b"\xFF"));
        input.extend(client(true, 0x0, b"\xAC"));
        assert_eq!(
            whole(&input),
            (
                vec![Message::Ping(Bytes::from_static(b"\xFF")), text("\u{20AC}")],
                None
            )
        );
    }

    #[test]
    fn close_frames() {
        assert_eq!(
            whole(&client(true, 0x8, b"")),
            (vec![Message::Close(None)], None)
        );
        let e = err_of(&client(true, 0x8, b"\x03"));
        assert_eq!(
            (e.clone(), e.close_code()),
            (ProtocolError::CloseTooShort, 1002)
        );
        for code in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let e = err_of(&client(true, 0x8, &code.to_be_bytes()));
            assert_eq!(
                (e.clone(), e.close_code()),
                (ProtocolError::InvalidCloseCode(code), 1002)
            );
        }
        let e = err_of(&client(true, 0x8, b"\x03\xE8\xFF"));
        assert_eq!(
            (e.clone(), e.close_code()),
            (ProtocolError::InvalidCloseReason, 1007)
        );
        let (msgs, _) = whole(&client(true, 0x8, &3000u16.to_be_bytes()));
        assert_eq!(
            msgs,
            vec![Message::Close(Some(CloseFrame {
                code: 3000,
                reason: Bytes::new()
            }))]
        );
    }

    /// A valid client stream of random messages (text split mid code point,
    /// binary, control frames interleaved between fragments, random masks)
    /// and the messages it must decode to.
    fn random_stream(rng: &mut Rng) -> (Vec<u8>, Vec<Message>) {
        const CHARS: [&str; 6] = ["a", "é", "€", "\u{1F600}", "\u{10FFFF}", " "];
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..rng.below(6) {
            let (opcode, payload) = match rng.below(4) {
                0 | 1 => {
                    let chars = rng.below(60);
                    let text: String = (0..chars).map(|_| CHARS[rng.below(6)]).collect();
                    (0x1, text.into_bytes())
                }
                2 => {
                    let len = if rng.below(40) == 0 {
                        65_536 + rng.below(600)
                    } else {
                        rng.below(300)
                    };
                    (0x2, rng.bytes(len))
                }
                _ => {
                    let len = rng.below(126);
                    let opcode = [0x9, 0xA][rng.below(2)];
                    input.extend(encode_client_frame(
                        true,
                        0,
                        opcode,
                        rng.mask(),
                        &rng.bytes(len),
                    ));
                    let frame = &input[input.len() - len..];
                    let mut payload = frame.to_vec();
                    let mask_at = input.len() - len - 4;
                    let mask: [u8; 4] = input[mask_at..mask_at + 4].try_into().unwrap();
                    apply_mask(&mut payload, mask, 0);
                    expected.push(if opcode == 0x9 {
                        Message::Ping(payload.into())
                    } else {
                        Message::Pong(payload.into())
                    });
                    continue;
                }
            };
            // Cut points at arbitrary bytes, so code points straddle frames.
            let mut cuts: Vec<usize> = (0..rng.below(4))
                .map(|_| rng.below(payload.len() + 1))
                .collect();
            cuts.sort_unstable();
            cuts.push(payload.len());
            let mut start = 0;
            for (i, &end) in cuts.iter().enumerate() {
                let fin = i + 1 == cuts.len();
                let op = if i == 0 { opcode } else { 0x0 };
                input.extend(encode_client_frame(
                    fin,
                    0,
                    op,
                    rng.mask(),
                    &payload[start..end],
                ));
                start = end;
                if !fin && rng.below(3) == 0 {
                    input.extend(encode_client_frame(true, 0, 0x9, rng.mask(), b"mid"));
                    expected.push(Message::Ping(Bytes::from_static(b"mid")));
                }
            }
            expected.push(if opcode == 0x1 {
                Message::Text(payload.into())
            } else {
                Message::Binary(payload.into())
            });
        }
        if rng.below(2) == 0 {
            input.extend(encode_client_frame(
                true,
                0,
                0x8,
                rng.mask(),
                &close_payload(4001, "gg"),
            ));
            expected.push(Message::Close(Some(CloseFrame {
                code: 4001,
                reason: Bytes::from_static(b"gg"),
            })));
        }
        (input, expected)
    }

    fn random_chunks<'a>(rng: &mut Rng, input: &'a [u8]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = (0..rng.below(6))
            .map(|_| rng.below(input.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(input.len());
        let mut start = 0;
        cuts.iter()
            .map(|&end| {
                let chunk = &input[start..end];
                start = end;
                chunk
            })
            .collect()
    }

    #[test]
    fn random_valid_streams_decode_under_random_splits() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..1500 {
            let (input, expected) = random_stream(&mut rng);
            let chunks = random_chunks(&mut rng, &input);
            let migrate = rng.below(2) == 0;
            assert_eq!(
                run(&chunks, MAX, migrate),
                (expected.clone(), None),
                "round {round}"
            );
            let small = Some(rng.below(400));
            assert_eq!(
                run_with(&chunks, MAX, migrate, small),
                (expected, None),
                "round {round}, in place up to {small:?}"
            );
        }
    }

    #[test]
    fn mutated_streams_never_panic_and_do_not_depend_on_splits() {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for round in 0..3000 {
            let (mut input, _) = random_stream(&mut rng);
            for _ in 0..=rng.below(3) {
                if input.is_empty() {
                    break;
                }
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
            if rng.below(4) == 0 {
                let len = rng.below(40);
                let noise = rng.bytes(len);
                input.extend(noise);
            }
            let max = [0usize, 10, 200, MAX][round % 4];
            let chunks = random_chunks(&mut rng, &input);
            let split = run(&chunks, max, round % 2 == 0);
            assert_eq!(split, run(&[&input], max, false), "round {round}");
            let small = Some(rng.below(400));
            let in_place = run_with(&chunks, max, round % 2 == 1, small);
            assert_eq!(in_place, split, "round {round}, in place up to {small:?}");
        }
    }
}
