//! `ws::Decoder` on arbitrary bytes, fed the way the runtime feeds it (and, for coverage, on past a
//! Close, where the runtime stops). Calls alternate between `decode` and `decode_small` (the
//! runtime's call, with half the size limit as its in-place limit); a message left in place is taken
//! out as `decode` would have returned it, so the three ways of cutting the stream, which alternate
//! differently, also check the two calls against each other.
//!
//! Input layout: byte 0 picks `max_message_size` (`8 * byte`, so 0..=2040: small, so the limit
//! is hit often), bytes 1-2 seed the read-size and buffer-migration choices, the rest is the
//! client's byte stream. The seeds in corpus/frame_decoder/ follow this layout.
//!
//! The stream is decoded three ways: in one read, one byte per read, and in reads of
//! pseudo-random sizes with the unconsumed bytes sometimes moved to a fresh `BytesMut` before a
//! call (the runtime may do that). All three must give the same messages and the same error.
//! Every message must obey RFC 6455: text is UTF-8, control payloads are at most 125 bytes, data
//! messages at most `max_message_size`, close codes are valid and reasons UTF-8. After
//! `Ok(None)` in the middle of a frame, `frame_remaining()` plus the buffered payload is the
//! frame's length, which passed the size checks.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "splits.rs"]
mod splits;
use ringgate::ws::{is_valid_close_code, Decoded, Decoder, Message, ProtocolError};

type Outcome = (Vec<Message>, Option<ProtocolError>);

fn check(message: &Message, max: usize) {
    match message {
        Message::Text(p) => {
            assert!(std::str::from_utf8(p).is_ok(), "text is not UTF-8");
            assert!(p.len() <= max, "text of {} > {max}", p.len());
        }
        Message::Binary(p) => assert!(p.len() <= max, "binary of {} > {max}", p.len()),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
        Message::Close(Some(close)) => {
            assert!(is_valid_close_code(close.code), "close code {}", close.code);
            assert!(std::str::from_utf8(&close.reason).is_ok());
            assert!(close.reason.len() <= 123);
        }
        Message::Close(None) => {}
    }
}

/// Decodes `stream` cut into reads as `size` and `migrate` say, checking every result.
fn drive(
    stream: &[u8],
    max: usize,
    size: &mut dyn FnMut() -> usize,
    migrate: &mut dyn FnMut() -> bool,
) -> Outcome {
    let mut decoder = Decoder::new();
    let mut calls = 0u64;
    splits::feed(stream, size, migrate, |buf| {
        calls += 1;
        let result = if calls % 2 == 0 {
            decoder.decode(buf, max)
        } else {
            let small = max / 2;
            decoder.decode_small(buf, max, small).map(|d| {
                d.map(|d| {
                    if let Decoded::InPlace { len, .. } = d {
                        assert!(len <= small, "{len} left in place over the limit {small}");
                    }
                    d.take(buf)
                })
            })
        };
        match &result {
            Ok(Some(message)) => check(message, max),
            Ok(None) => {
                if let Some(remaining) = decoder.frame_remaining() {
                    // The frame's payload is what is buffered plus what is missing.
                    assert!(remaining >= 1, "a complete frame was left undecoded");
                    assert!(
                        buf.len() + remaining <= max.max(125),
                        "frame of {} + {remaining} bytes passed the size checks",
                        buf.len()
                    );
                }
            }
            Err(err) => assert!(matches!(err.close_code(), 1002 | 1007 | 1009)),
        }
        result
    })
}

fuzz_target!(|data: &[u8]| splits::check(data, drive));
