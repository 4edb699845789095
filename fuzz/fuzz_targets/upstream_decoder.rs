//! `upstream::protocol::decode` and `decode_small` driven like a link's read loop, on arbitrary
//! bytes. Calls alternate between the two (`decode_small` with half the maximum frame size as its
//! in-place limit); a DATA body left in place is taken out as `decode` would have returned it, so
//! the three ways of cutting the stream, which alternate differently, also check the two calls
//! against each other.
//!
//! Input layout: byte 0 picks the maximum frame size (`8 * byte`, so 0..=2040), bytes 1-2 seed
//! the read-size and buffer-migration choices, the rest is the byte stream from the peer. The
//! seeds in corpus/upstream_decoder/ follow this layout.
//!
//! The stream is decoded in one read, one byte per read, and in reads of pseudo-random sizes
//! (sometimes moving the unconsumed bytes to a fresh `BytesMut`); all three must give the same
//! frames and the same error, and `Ok(None)` must consume nothing. Every frame returned must
//! re-encode with the module's encoders to bytes that decode to the same frame (a CLOSE reason
//! longer than 123 bytes comes back cut at a char boundary, as documented), and no frame may be
//! longer than the maximum. Re-encoding may change bytes the decoder ignores (unknown flag bits,
//! a HELLO `flags` byte at or below its `version`), so frames are compared, not bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

#[path = "splits.rs"]
mod splits;
use ringgate::protocol::{
    self as up, DecodeError, Decoded, Frame, FLAG_TEXT, HEADER_LEN, MAX_CLOSE_REASON,
};

type Outcome = (Vec<Frame>, Option<DecodeError>);

fn encode(frame: &Frame) -> bytes::Bytes {
    // Decoded fields came through the same length prefixes and range checks, so they fit.
    let bytes = frame.encode().expect("a decoded frame re-encodes");
    if let Frame::Data {
        session,
        text,
        payload,
    } = frame
    {
        // The proxy's vectored form: header then payload, same bytes.
        let mut header = [0u8; HEADER_LEN];
        let flags = if *text { FLAG_TEXT } else { 0 };
        up::encode_header(
            &mut header,
            up::FrameType::Data,
            flags,
            *session,
            payload.len(),
        );
        assert_eq!(&bytes[..HEADER_LEN], &header[..]);
        assert_eq!(&bytes[HEADER_LEN..], &payload[..]);
    }
    bytes
}

fn check(frame: &Frame, max: usize) {
    let bytes = encode(frame);
    let length = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(length + 4, bytes.len());
    assert_eq!(bytes[4], frame.frame_type() as u8);
    let mut buf = BytesMut::from(&bytes[..]);
    let again = up::decode(&mut buf, usize::MAX)
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is complete");
    assert!(
        buf.is_empty(),
        "re-encoded frame has {} extra bytes",
        buf.len()
    );
    match (frame, &again) {
        (
            Frame::Close {
                session,
                code,
                reason,
            },
            Frame::Close {
                session: s2,
                code: c2,
                reason: r2,
            },
        ) if reason.len() > MAX_CLOSE_REASON => {
            assert_eq!((session, code), (s2, c2));
            assert!(r2.len() <= MAX_CLOSE_REASON && reason.starts_with(r2.as_str()));
        }
        _ => {
            assert_eq!(&again, frame);
            // The original frame was at most `max` long, so its re-encoding is too.
            assert!(length <= max, "frame of length {length} > {max}");
        }
    }
}

/// Decodes `stream` cut into reads as `size` and `migrate` say, checking every result.
fn drive(
    stream: &[u8],
    max: usize,
    size: &mut dyn FnMut() -> usize,
    migrate: &mut dyn FnMut() -> bool,
) -> Outcome {
    let mut calls = 0u64;
    splits::feed(stream, size, migrate, |buf| {
        let before = buf.clone();
        calls += 1;
        let result = if calls % 2 == 0 {
            up::decode(buf, max)
        } else {
            let small = max / 2;
            up::decode_small(buf, max, small).map(|d| {
                d.map(|d| {
                    if let Decoded::Data { len, .. } = d {
                        assert!(len <= small, "{len} left in place over the limit {small}");
                    }
                    d.take(buf)
                })
            })
        };
        match &result {
            Ok(Some(frame)) => check(frame, max),
            Ok(None) => assert_eq!(*buf, before, "Ok(None) consumed bytes"),
            Err(err) => assert!(matches!(err.link_error_code(), 2 | 4)),
        }
        result
    })
}

fuzz_target!(|data: &[u8]| splits::check(data, drive));
