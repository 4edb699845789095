//! Property tests of the sans-I/O codecs: the WebSocket receive side (`ringgate::ws`) and the
//! upstream link codec (`ringgate::protocol`).
//!
//! The central property for both is that framing does not depend on how the byte stream is cut
//! into reads: the same bytes, fed whole, one byte at a time or in random chunks (with the driver
//! sometimes moving the unconsumed bytes into a fresh buffer, as the runtime may), decode to the
//! same messages and the same error. For streams built with the encoders, that outcome is the
//! original messages (identity).
//!
//! The fuzz targets in `fuzz/` check the same properties on arbitrary bytes (docs/fuzzing.md);
//! inputs they find that crash are replayed by plain tests at the end of this file.
//!
//! Case counts are kept low (`CASES`) so `cargo test` stays fast in debug builds; raise them with
//! `PROPTEST_CASES=10000 cargo test --release --test properties` for a longer search.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;

use ringgate::protocol::{
    self as up, DecodeError, Frame, Open, Policy, Targets, HEADER_LEN, MAX_CLOSE_REASON,
    MAX_GROUP_NAME,
};
use ringgate::ws::{self, close_payload, CloseFrame, Decoder, Message, ProtocolError};

/// Cases per property, unless `PROPTEST_CASES` says otherwise.
const CASES: u32 = 64;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    ProptestConfig {
        cases,
        // Persisted failures would land in tests/ (a directory others own); failures print
        // their minimal input instead, to be turned into a #[test] below.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Cuts `stream` into chunks whose sizes cycle through `sizes` (each at least 1).
fn chunks<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .max(1);
        let (head, tail) = rest.split_at(size.min(rest.len()));
        out.push(head);
        rest = tail;
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// WebSocket: the driver
// ---------------------------------------------------------------------------------------------

const WS_MAX: usize = 1 << 20;

/// What a connection's receive side ends with: the messages in order and the error, if any.
type WsOutcome = (Vec<Message>, Option<ProtocolError>);

/// The WebSocket decoder through [`feed`]; stops after a Close message, as the runtime does.
fn ws_drive(chunks: &[&[u8]], max: usize, migrate: &[bool]) -> WsOutcome {
    let mut decoder = Decoder::new();
    feed(
        chunks,
        migrate,
        |buf| decoder.decode(buf, max),
        |m| matches!(m, Message::Close(_)),
    )
}

/// The runtime's read loop, for any decoder: appends each chunk, then calls `decode` until it
/// yields nothing or fails. Before a call whose `migrate` bit is set, the unconsumed bytes move to
/// a new buffer. Stops after an item for which `last` holds.
fn feed<T, E>(
    chunks: &[&[u8]],
    migrate: &[bool],
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
    last: impl Fn(&T) -> bool,
) -> (Vec<T>, Option<E>) {
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut call = 0usize;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            if !migrate.is_empty() && migrate[call % migrate.len()] {
                buf = BytesMut::from(&buf[..]);
            }
            call += 1;
            match decode(&mut buf) {
                Ok(Some(item)) => {
                    let stop = last(&item);
                    items.push(item);
                    if stop {
                        return (items, None);
                    }
                }
                Ok(None) => break,
                Err(err) => return (items, Some(err)),
            }
        }
    }
    (items, None)
}

/// The outcome of `stream` fed whole, byte by byte, and in `sizes` chunks with `migrate`;
/// asserts all three agree and returns it.
fn ws_all_splits(stream: &[u8], max: usize, sizes: &[usize], migrate: &[bool]) -> WsOutcome {
    all_splits(stream, sizes, migrate, |chunks, migrate| {
        ws_drive(chunks, max, migrate)
    })
}

/// `drive`'s outcome for `stream` fed whole, byte by byte, and in `sizes` chunks with `migrate`:
/// asserts all three agree and returns it.
fn all_splits<T: PartialEq + std::fmt::Debug>(
    stream: &[u8],
    sizes: &[usize],
    migrate: &[bool],
    drive: impl Fn(&[&[u8]], &[bool]) -> T,
) -> T {
    let whole = drive(&[stream], &[]);
    let bytewise = drive(&chunks(stream, &[1]), &[]);
    assert_eq!(bytewise, whole, "1-byte reads differ from one read");
    let random = drive(&chunks(stream, sizes), migrate);
    assert_eq!(random, whole, "reads of {sizes:?} differ from one read");
    whole
}

// ---------------------------------------------------------------------------------------------
// WebSocket: generators
// ---------------------------------------------------------------------------------------------

/// One data message as the client sends it: the message, where its payload is cut into
/// fragments, the control frames sent after each fragment, and a mask per frame.
#[derive(Clone, Debug)]
struct ClientMessage {
    text: bool,
    payload: Vec<u8>,
    /// Sorted cut offsets into `payload` (may repeat: empty fragments are legal).
    cuts: Vec<usize>,
    /// Control frames (ping when `true`, pong otherwise) after fragment `i`, for every
    /// fragment but the last.
    interleaved: Vec<Vec<(bool, Vec<u8>)>>,
    masks: Vec<[u8; 4]>,
}

fn control_payload() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=125)
}

fn payload() -> impl Strategy<Value = (bool, Vec<u8>)> {
    prop_oneof![
        ".{0,80}".prop_map(|s: String| (true, s.into_bytes())),
        // Some long enough for the 16-bit length form.
        "\\PC{100,200}".prop_map(|s: String| (true, s.into_bytes())),
        vec(any::<u8>(), 0..200).prop_map(|b| (false, b)),
        vec(any::<u8>(), 120..400).prop_map(|b| (false, b)),
    ]
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    (payload(), 0usize..5).prop_flat_map(|((text, payload), ncuts)| {
        let len = payload.len();
        (
            Just(text),
            Just(payload),
            vec(0..=len, ncuts),
            vec(vec((any::<bool>(), control_payload()), 0..3), ncuts),
            vec(any::<[u8; 4]>(), 4 * ncuts + 1),
        )
            .prop_map(|(text, payload, mut cuts, interleaved, masks)| {
                cuts.sort_unstable();
                ClientMessage {
                    text,
                    payload,
                    cuts,
                    interleaved,
                    masks,
                }
            })
    })
}

impl ClientMessage {
    /// The frames on the wire, and the messages a server must see, in order.
    fn encode(&self, out: &mut Vec<u8>, expected: &mut Vec<Message>) {
        let mut masks = self.masks.iter().copied().cycle();
        let mut bounds = vec![0];
        bounds.extend_from_slice(&self.cuts);
        bounds.push(self.payload.len());
        let fragments = bounds.len() - 1;
        for i in 0..fragments {
            let fin = i + 1 == fragments;
            let opcode = match (i, self.text) {
                (0, true) => 0x1,
                (0, false) => 0x2,
                _ => 0x0,
            };
            let piece = &self.payload[bounds[i]..bounds[i + 1]];
            out.extend(ws::encode_client_frame(
                fin,
                0,
                opcode,
                masks.next().unwrap(),
                piece,
            ));
            if fin {
                break;
            }
            for (ping, data) in &self.interleaved[i] {
                let opcode = if *ping { 0x9 } else { 0xA };
                out.extend(ws::encode_client_frame(
                    true,
                    0,
                    opcode,
                    masks.next().unwrap(),
                    data,
                ));
                let data = Bytes::copy_from_slice(data);
                expected.push(if *ping {
                    Message::Ping(data)
                } else {
                    Message::Pong(data)
                });
            }
        }
        let payload = Bytes::copy_from_slice(&self.payload);
        expected.push(if self.text {
            Message::Text(payload)
        } else {
            Message::Binary(payload)
        });
    }
}

/// A close frame the client may end with: no payload, or a valid code and a reason.
fn client_close() -> impl Strategy<Value = Option<Option<(u16, String)>>> {
    let code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
    proptest::option::of(proptest::option::of((code, ".{0,50}")))
}

/// Byte strings built around UTF-8's edges: units of a lead byte of every kind (including the
/// never-valid 0x80-0xC1 and 0xF5-0xFF) followed by up to 3 bytes at the ends of the
/// continuation sub-ranges (which is where overlongs, surrogates and values past U+10FFFF are
/// told apart), mixed with ASCII. Most are invalid or truncated, some valid.
fn utf8_edge_bytes() -> impl Strategy<Value = Vec<u8>> {
    const LEADS: [u8; 16] = [
        0x80, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5,
        0xFF,
    ];
    const TAILS: [u8; 7] = [0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF];
    let unit = prop_oneof![
        1 => (0u8..0x80).prop_map(|b| vec![b]),
        3 => (
            proptest::sample::select(&LEADS[..]),
            vec(proptest::sample::select(&TAILS[..]), 0..=3)
        )
            .prop_map(|(lead, tail)| [vec![lead], tail].concat()),
    ];
    vec(unit, 0..8).prop_map(|units| units.concat())
}

/// Read sizes for the random split: mostly small, sometimes large, always at least 1.
fn read_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(
        prop_oneof![3 => 1usize..8, 2 => 1usize..64, 1 => 64usize..2000],
        1..12,
    )
}

/// Encodes `messages` (and the optional close) into one stream and the expected messages.
fn ws_stream(
    messages: &[ClientMessage],
    close: &Option<Option<(u16, String)>>,
    close_mask: [u8; 4],
) -> (Vec<u8>, Vec<Message>) {
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    for message in messages {
        message.encode(&mut stream, &mut expected);
    }
    if let Some(close) = close {
        let payload = match close {
            Some((code, reason)) => close_payload(*code, reason),
            None => Bytes::new(),
        };
        stream.extend(ws::encode_client_frame(true, 0, 0x8, close_mask, &payload));
        expected.push(Message::Close(close.as_ref().map(|(code, _)| CloseFrame {
            code: *code,
            reason: payload.slice(2..),
        })));
    }
    (stream, expected)
}

// ---------------------------------------------------------------------------------------------
// WebSocket: properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Encoded client messages, fragmented at arbitrary byte offsets (inside UTF-8 code points
    /// too) with pings and pongs between fragments, decode to exactly the originals whatever
    /// the read boundaries.
    #[test]
    fn ws_messages_round_trip_at_every_split(
        messages in vec(client_message(), 0..6),
        close in client_close(),
        close_mask in any::<[u8; 4]>(),
        sizes in read_sizes(),
        migrate in vec(any::<bool>(), 1..8),
    ) {
        let (stream, expected) = ws_stream(&messages, &close, close_mask);
        let (got, err) = ws_all_splits(&stream, WS_MAX, &sizes, &migrate);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, expected);
    }

    /// A message longer than the limit fails the connection with 1009 (whether or not it is
    /// fragmented); the messages before it are delivered; the size is checked before its
    /// payload arrives, so the result does not depend on the read boundaries.
    #[test]
    fn ws_message_size_limit(
        messages in vec(client_message(), 1..6),
        max in 0usize..300,
        sizes in read_sizes(),
        migrate in vec(any::<bool>(), 1..8),
    ) {
        // Where each message's expected entries (its interleaved control frames, then itself)
        // start.
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        let mut starts = Vec::new();
        for message in &messages {
            starts.push(expected.len());
            message.encode(&mut stream, &mut expected);
        }
        let (got, err) = ws_all_splits(&stream, max, &sizes, &migrate);
        match messages.iter().position(|m| m.payload.len() > max) {
            None => {
                prop_assert_eq!(err, None);
                prop_assert_eq!(got, expected);
            }
            Some(k) => {
                let err = err.expect("an oversized message must fail the connection");
                prop_assert!(matches!(err, ProtocolError::MessageTooLarge { .. }), "{:?}", err);
                prop_assert_eq!(err.close_code(), 1009);
                // Everything before the oversized message is delivered, and of its own entries
                // only control frames sent before the fragment that crossed the limit.
                let data_index = starts.get(k + 1).map_or(expected.len(), |&next| next) - 1;
                prop_assert!(got.len() >= starts[k] && got.len() <= data_index);
                prop_assert_eq!(&got[..], &expected[..got.len()]);
            }
        }
    }

    /// A text message that is not valid UTF-8, however it is fragmented and read, fails the
    /// connection with 1007 after the messages before it.
    #[test]
    fn ws_invalid_utf8_fails_with_1007(
        before in vec(client_message(), 0..3),
        bad in prop_oneof![vec(any::<u8>(), 1..100), utf8_edge_bytes()]
            .prop_filter("not UTF-8", |b| std::str::from_utf8(b).is_err()),
        cuts in vec(0usize..100, 0..4),
        mask in any::<[u8; 4]>(),
        sizes in read_sizes(),
        migrate in vec(any::<bool>(), 1..8),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bad.len() + 1)).collect();
        cuts.sort_unstable();
        let bad_message = ClientMessage {
            text: true,
            payload: bad,
            interleaved: vec![Vec::new(); cuts.len()],
            cuts,
            masks: vec![mask],
        };
        let mut messages = before;
        messages.push(bad_message);
        let (stream, mut expected) = ws_stream(&messages, &None, [0; 4]);
        expected.pop();
        let (got, err) = ws_all_splits(&stream, WS_MAX, &sizes, &migrate);
        prop_assert_eq!(err, Some(ProtocolError::InvalidUtf8));
        prop_assert_eq!(got, expected);
    }

    /// Arbitrary frames (any FIN, RSV and opcode bits, control frames of any length, lengths in
    /// every form) followed by arbitrary bytes: whatever the decoder makes of them, it makes the
    /// same of them at every split, and what it delivers obeys RFC 6455.
    #[test]
    fn ws_arbitrary_frames_are_split_invariant(
        frames in vec((any::<bool>(), prop_oneof![8 => Just(0u8), 1 => 0u8..8], 0u8..16,
                       any::<[u8; 4]>(), prop_oneof![vec(any::<u8>(), 0..130), vec(any::<u8>(), 0..400)]), 0..8),
        tail in vec(any::<u8>(), 0..16),
        max in prop_oneof![Just(WS_MAX), 0usize..400],
        sizes in read_sizes(),
        migrate in vec(any::<bool>(), 1..8),
    ) {
        let mut stream = Vec::new();
        for (fin, rsv, opcode, mask, payload) in &frames {
            stream.extend(ws::encode_client_frame(*fin, *rsv, *opcode, *mask, payload));
        }
        stream.extend_from_slice(&tail);
        let (got, _) = ws_all_splits(&stream, max, &sizes, &migrate);
        for message in &got {
            match message {
                Message::Text(p) => {
                    prop_assert!(std::str::from_utf8(p).is_ok());
                    prop_assert!(p.len() <= max);
                }
                Message::Binary(p) => prop_assert!(p.len() <= max),
                Message::Ping(p) | Message::Pong(p) => prop_assert!(p.len() <= 125),
                Message::Close(close) => {
                    if let Some(close) = close {
                        prop_assert!(ws::is_valid_close_code(close.code));
                        prop_assert!(std::str::from_utf8(&close.reason).is_ok());
                        prop_assert!(close.reason.len() <= 123);
                    }
                }
            }
        }
    }

    /// The incremental UTF-8 validator agrees with std on any bytes fed in any pieces, and
    /// fails no later than the first byte after which no continuation could be valid.
    #[test]
    fn utf8_validator_matches_std(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..64),
            utf8_edge_bytes(),
            utf8_edge_bytes(),
            ".{0,40}".prop_map(String::into_bytes),
            (".{0,20}", vec(any::<u8>(), 0..4), ".{0,20}")
                .prop_map(|(a, b, c)| [a.into_bytes(), b, c.into_bytes()].concat()),
        ],
        sizes in prop_oneof![Just(vec![1usize]), read_sizes()],
    ) {
        let possible = |n: usize| match std::str::from_utf8(&bytes[..n]) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        };
        let mut validator = ws::Utf8Validator::new();
        let mut fed = 0;
        let mut failed = false;
        for piece in chunks(&bytes, &sizes) {
            fed += piece.len();
            // Fails inside this piece exactly when the bytes so far can no longer be completed.
            let ok = validator.feed(piece).is_ok();
            prop_assert_eq!(ok, possible(fed), "after {} bytes", fed);
            if !ok {
                failed = true;
                break;
            }
        }
        let valid = !failed && validator.finish().is_ok();
        prop_assert_eq!(valid, std::str::from_utf8(&bytes).is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream link protocol
// ---------------------------------------------------------------------------------------------

const UP_MAX: usize = 1 << 20;

type UpOutcome = (Vec<Frame>, Option<DecodeError>);

/// The upstream decoder through [`feed`], checking that `Ok(None)` consumed nothing.
fn up_drive(chunks: &[&[u8]], max: usize, migrate: &[bool]) -> UpOutcome {
    let decode = |buf: &mut BytesMut| {
        let before = buf.clone();
        let result = up::decode(buf, max);
        if let Ok(None) = result {
            assert_eq!(*buf, before, "Ok(None) must consume nothing");
        }
        result
    };
    feed(chunks, migrate, decode, |_| false)
}

fn up_all_splits(stream: &[u8], max: usize, sizes: &[usize], migrate: &[bool]) -> UpOutcome {
    all_splits(stream, sizes, migrate, |chunks, migrate| {
        up_drive(chunks, max, migrate)
    })
}

/// Strings whose UTF-8 form is at most `max_chars * 4` bytes.
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!(".{{0,{max_chars}}}")).unwrap()
}

fn session() -> impl Strategy<Value = u64> {
    prop_oneof![1u64..16, 1u64..=u64::MAX]
}

fn open_body() -> impl Strategy<Value = Open> {
    (
        text(40),
        // client address: u8 length prefix, so at most 255 bytes (63 chars * 4 = 252).
        text(63),
        text(80),
        vec((text(63), vec(any::<u8>(), 0..100)), 0..6),
    )
        .prop_map(|(user, client_addr, target, headers)| Open {
            user,
            client_addr,
            target,
            headers: headers
                .into_iter()
                .map(|(name, value)| (name, Bytes::from(value)))
                .collect(),
        })
}

/// A group name: 1 to 255 bytes of anything.
fn group() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 1..=MAX_GROUP_NAME).prop_map(Bytes::from)
}

/// The session a PUBLISH or BROADCAST leaves out: often none.
fn except() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), session()]
}

fn up_payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

/// The version-2 fan-out frames.
fn fan_out_frame() -> impl Strategy<Value = Frame> {
    let policy = prop_oneof![
        Just(Policy::Close),
        Just(Policy::Drop),
        Just(Policy::Latest)
    ];
    prop_oneof![
        (session(), policy, group()).prop_map(|(session, policy, group)| Frame::Join {
            session,
            policy,
            group
        }),
        (session(), group()).prop_map(|(session, group)| Frame::Leave { session, group }),
        (group(), except(), any::<bool>(), up_payload()).prop_map(
            |(group, except, text, payload)| Frame::Publish {
                group,
                except,
                text,
                payload
            }
        ),
        (except(), any::<bool>(), up_payload()).prop_map(|(except, text, payload)| {
            Frame::Broadcast {
                except,
                text,
                payload,
            }
        }),
        (vec(session(), 1..20), any::<bool>(), up_payload()).prop_map(|(ids, text, payload)| {
            Frame::Multicast {
                targets: Targets::new(&ids).expect("1 to 19 non-zero ids"),
                text,
                payload,
            }
        }),
    ]
}

/// Every frame type, with fields anywhere in their ranges. CLOSE reasons stay within
/// [`MAX_CLOSE_REASON`] bytes (the encoder cuts longer ones; see `up_close_reason_is_cut`).
fn frame() -> impl Strategy<Value = Frame> {
    let code = any::<u16>();
    prop_oneof![
        // The highest version is what a decoder makes of the flags byte.
        (
            any::<u16>(),
            any::<u8>(),
            any::<u16>(),
            any::<u16>(),
            text(30)
        )
            .prop_map(|(version, flags, core, workers, instance)| Frame::Hello {
                version,
                max_version: version.max(flags.into()),
                core,
                workers,
                instance
            }),
        (any::<u16>(), text(30)).prop_map(|(version, server)| Frame::HelloAck { version, server }),
        (code, text(60)).prop_map(|(code, message)| Frame::LinkError { code, message }),
        any::<[u8; 8]>().prop_map(Frame::Ping),
        any::<[u8; 8]>().prop_map(Frame::Pong),
        (code, text(60)).prop_map(|(code, reason)| Frame::GoAway { code, reason }),
        (session(), open_body()).prop_map(|(session, open)| Frame::Open { session, open }),
        (session(), code, text(60)).prop_map(|(session, code, reason)| Frame::Refuse {
            session,
            code,
            reason
        }),
        (session(), any::<bool>(), vec(any::<u8>(), 0..300)).prop_map(|(session, text, p)| {
            Frame::Data {
                session,
                text,
                payload: Bytes::from(p),
            }
        }),
        // 30 chars are at most 120 bytes, within MAX_CLOSE_REASON.
        (session(), code, text(30)).prop_map(|(session, code, reason)| Frame::Close {
            session,
            code,
            reason
        }),
        fan_out_frame(),
    ]
}

/// The frame's bytes, built with the module's encoders.
fn encode(frame: &Frame) -> Bytes {
    frame.encode().expect("generated fields fit the wire")
}

proptest! {
    #![proptest_config(config())]

    /// Any sequence of frames of every type, encoded with the encoders, decodes back to the same
    /// frames whatever the read boundaries.
    #[test]
    fn up_frames_round_trip_at_every_split(
        frames in vec(frame(), 0..10),
        sizes in read_sizes(),
        migrate in vec(any::<bool>(), 1..8),
    ) {
        let mut stream = Vec::new();
        for frame in &frames {
            let bytes = encode(frame);
            // The header's length field counts everything after itself.
            let length = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            prop_assert_eq!(length + 4, bytes.len());
            prop_assert_eq!(bytes[4], frame.frame_type() as u8);
            stream.extend_from_slice(&bytes);
        }
        let (got, err) = up_all_splits(&stream, UP_MAX, &sizes, &migrate);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, frames);
    }

    /// A DATA header from `encode_header` followed by the payload (the proxy's vectored write) is
    /// the same bytes as `data_frame`.
    #[test]
    fn up_vectored_data_equals_data_frame(
        session in session(),
        text in any::<bool>(),
        payload in vec(any::<u8>(), 0..300),
    ) {
        let mut header = [0u8; HEADER_LEN];
        let flags = if text { up::FLAG_TEXT } else { 0 };
        up::encode_header(&mut header, up::FrameType::Data, flags, session, payload.len());
        let vectored = [&header[..], &payload].concat();
        prop_assert_eq!(&vectored[..], &up::data_frame(session, text, &payload)[..]);
    }

    /// CLOSE reasons longer than a WebSocket close frame can carry are cut at a char boundary to
    /// at most MAX_CLOSE_REASON bytes; the decoded reason is a prefix of the original.
    #[test]
    fn up_close_reason_is_cut(session in session(), code in any::<u16>(), reason in text(100)) {
        let mut buf = BytesMut::from(&up::close(session, code, &reason)[..]);
        let Some(Frame::Close { reason: got, .. }) = up::decode(&mut buf, UP_MAX).unwrap() else {
            panic!("expected CLOSE");
        };
        prop_assert!(got.len() <= MAX_CLOSE_REASON);
        prop_assert!(reason.starts_with(&got));
        // Cut as little as possible: the next char would not have fitted.
        if got.len() < reason.len() {
            let next = reason[got.len()..].chars().next().unwrap();
            prop_assert!(got.len() + next.len_utf8() > MAX_CLOSE_REASON);
        }
    }

    /// Arbitrary bytes after (or instead of) valid frames: the decoder's outcome is the same at
    /// every split; a declared length above the maximum is an error as soon as the 4 length bytes
    /// are in; whatever it returns re-encodes to bytes that decode to the same frame.
    #[test]
    fn up_arbitrary_bytes_are_split_invariant(
        frames in vec(frame(), 0..4),
        garbage in prop_oneof![
            vec(any::<u8>(), 0..64),
            // A plausible header (small length, a real type) with a random body.
            (10u32..80, prop_oneof![1u8..=6, 0x10u8..=0x13, 0x20u8..=0x24, any::<u8>()],
             any::<u8>(),
             prop_oneof![Just(0u64), 1u64..4, any::<u64>()], vec(any::<u8>(), 0..80))
                .prop_map(|(len, ty, flags, session, body)| {
                    let mut out = len.to_be_bytes().to_vec();
                    out.push(ty);
                    out.push(flags);
                    out.extend_from_slice(&session.to_be_bytes());
                    out.extend_from_slice(&body);
                    out
                }),
        ],
        max in prop_oneof![Just(UP_MAX), 10usize..200],
        sizes in read_sizes(),
        migrate in vec(any::<bool>(), 1..8),
    ) {
        let mut stream = Vec::new();
        for frame in &frames {
            stream.extend_from_slice(&encode(frame));
        }
        stream.extend_from_slice(&garbage);
        let (got, _) = up_all_splits(&stream, max, &sizes, &migrate);
        for frame in got {
            let mut again = BytesMut::from(&encode(&frame)[..]);
            let decoded = up::decode(&mut again, UP_MAX);
            match &frame {
                // The encoder cuts CLOSE reasons; everything else must come back unchanged.
                Frame::Close { reason, .. } if reason.len() > MAX_CLOSE_REASON => {
                    prop_assert!(
                        matches!(decoded, Ok(Some(Frame::Close { .. }))),
                        "{:?}",
                        decoded
                    );
                }
                _ => prop_assert_eq!(decoded, Ok(Some(frame.clone()))),
            }
            prop_assert!(again.is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by fuzzing
// ---------------------------------------------------------------------------------------------
//
// A crashing input found by a fuzz target is minimised (`cargo fuzz tmin`), saved under
// `fuzz/regressions/<target>/`, and replayed here by a plain #[test] that asserts no panic and
// the documented outcome. None so far: the runs recorded in docs/fuzzing.md found no crash.
