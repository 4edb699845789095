//! Conformance tests for the codec as a whole: the byte-by-byte examples of docs/protocol.md
//! (checked against the document itself), version negotiation in HELLO, the version-2 fan-out
//! frames and their malformed forms, round trips of every frame type at every split of the stream,
//! and inputs that must not panic.
//!
//! Owns nothing the runtime uses. Must never depend on anything but this module's public API.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::test_rng::Rng;

const MAX: usize = 1 << 20;

/// Bytes from the space-separated hex of the doc's examples.
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// The frames of `stream` fed to the decoder in the given reads.
fn decode_reads<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            let before = buf.len();
            match decode(&mut buf, MAX).unwrap() {
                Some(frame) => frames.push(frame),
                None => {
                    assert_eq!(buf.len(), before, "Ok(None) must not consume");
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frames
}

fn decode_one(bytes: &[u8]) -> Frame {
    let frames = decode_reads([bytes]);
    assert_eq!(frames.len(), 1);
    frames.into_iter().next().unwrap()
}

/// The error decoding `bytes` stops at, and that it is a MALFORMED one.
fn malformed(bytes: &[u8]) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    let err = decode(&mut buf, MAX).expect_err("malformed");
    assert_eq!(err.link_error_code(), link_code::MALFORMED, "{err}");
    err
}

/// A frame with any header fields; `length` matches `body`.
fn raw(ty: u8, flags: u8, session: u64, body: &[u8]) -> Vec<u8> {
    let mut out = (10 + body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&[ty, flags]);
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(body);
    out
}

// The examples of docs/protocol.md, copied byte for byte; `doc_examples_are_in_the_doc` checks
// the copies against the document.

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

/// Whitespace-separated words of a line.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn is_hex_byte(word: &str) -> bool {
    word.len() == 2 && word.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether the lines of `example` are consecutive lines of the document, each holding exactly
/// those bytes (an annotation may follow, but no further byte).
fn in_doc(example: &str) -> bool {
    let doc: Vec<Vec<&str>> = PROTOCOL_MD.lines().map(words).collect();
    let lines: Vec<Vec<&str>> = example.lines().map(words).collect();
    doc.windows(lines.len()).any(|window| {
        window.iter().zip(&lines).all(|(doc, ours)| {
            doc.starts_with(ours) && doc.get(ours.len()).is_none_or(|next| !is_hex_byte(next))
        })
    })
}

const DOC_HELLO: &str =
    "00 00 00 13  01  02  00 00 00 00 00 00 00 00   00 01  00 00  00 02  67 77 31";
const DOC_HELLO_ACK: &str = "00 00 00 10  02  00  00 00 00 00 00 00 00 00   00 01  65 63 68 6f";
const DOC_OPEN: &str = "00 00 00 32  10  00  00 00 00 00 00 00 00 07
    00 05 61 6c 69 63 65
    0f 31 32 37 2e 30 2e 30 2e 31 3a 34 30 30 30 30
    00 0e 2f 77 73 3f 75 73 65 72 3d 61 6c 69 63 65
    00";
const DOC_DATA: &str = "00 00 00 0c  12  01  00 00 00 00 00 00 00 07  68 69";
const DOC_CLOSE: &str = "00 00 00 0f  13  00  00 00 00 00 00 00 00 07  0f a0 62 79 65";

const DOC_HELLO_ACK_V2: &str = "00 00 00 0f  02  00  00 00 00 00 00 00 00 00   00 02  68 75 62";
const DOC_JOIN: &str = "00 00 00 10  20  02  00 00 00 00 00 00 00 07  72 6f 6f 6d 2d 33";
const DOC_LEAVE: &str = "00 00 00 10  21  00  00 00 00 00 00 00 00 07  72 6f 6f 6d 2d 33";
const DOC_PUBLISH: &str =
    "00 00 00 13  22  01  00 00 00 00 00 00 00 07  06 72 6f 6f 6d 2d 33  68 69";
const DOC_BROADCAST: &str = "00 00 00 0c  23  01  00 00 00 00 00 00 00 00  67 6f";
const DOC_MULTICAST: &str = "00 00 00 1d  24  00  00 00 00 00 00 00 00 00
    00 02
    00 00 00 00 00 00 00 07
    00 00 00 00 00 00 00 09
    2a";

#[test]
fn doc_examples_are_in_the_doc() {
    for example in [
        DOC_HELLO,
        DOC_HELLO_ACK,
        DOC_OPEN,
        DOC_DATA,
        DOC_CLOSE,
        DOC_HELLO_ACK_V2,
        DOC_JOIN,
        DOC_LEAVE,
        DOC_PUBLISH,
        DOC_BROADCAST,
        DOC_MULTICAST,
    ] {
        assert!(in_doc(example), "not in docs/protocol.md:\n{example}");
    }
    // The check itself: a byte more, a byte less or a changed byte is not found.
    assert!(!in_doc("00 00 00 0c  23  01  00 00 00 00 00 00 00 00  67"));
    assert!(!in_doc(
        "00 00 00 0c  23  01  00 00 00 00 00 00 00 00  67 6f 00"
    ));
    assert!(!in_doc(
        "00 00 00 0c  23  01  00 00 00 00 00 00 00 01  67 6f"
    ));
}

#[test]
fn doc_example_hello() {
    let bytes = hex(DOC_HELLO);
    assert_eq!(hello(0, 2, "gw1")[..], bytes[..]);
    assert_eq!(hello_versions(1, 2, 0, 2, "gw1").unwrap()[..], bytes[..]);
    assert_eq!(
        decode_one(&bytes),
        Frame::Hello {
            version: 1,
            max_version: 2,
            core: 0,
            workers: 2,
            instance: "gw1".into()
        }
    );
}

#[test]
fn doc_example_hello_ack() {
    let bytes = hex(DOC_HELLO_ACK);
    assert_eq!(hello_ack(1, "echo")[..], bytes[..]);
    assert_eq!(
        decode_one(&bytes),
        Frame::HelloAck {
            version: 1,
            server: "echo".into()
        }
    );
}

#[test]
fn doc_example_open() {
    let bytes = hex(DOC_OPEN);
    let info = OpenInfo {
        user: "alice",
        client_addr: "127.0.0.1:40000",
        target: "/ws?user=alice",
        headers: &[],
    };
    assert_eq!(open(7, &info).unwrap()[..], bytes[..]);
    assert_eq!(
        decode_one(&bytes),
        Frame::Open {
            session: 7,
            open: Open {
                user: "alice".into(),
                client_addr: "127.0.0.1:40000".into(),
                target: "/ws?user=alice".into(),
                headers: vec![],
            }
        }
    );
}

#[test]
fn doc_example_data() {
    let bytes = hex(DOC_DATA);
    assert_eq!(data_frame(7, true, b"hi")[..], bytes[..]);
    let mut header = [0; HEADER_LEN];
    encode_header(&mut header, FrameType::Data, FLAG_TEXT, 7, 2);
    assert_eq!(header[..], bytes[..HEADER_LEN]);
    assert_eq!(
        decode_one(&bytes),
        Frame::Data {
            session: 7,
            text: true,
            payload: Bytes::from_static(b"hi")
        }
    );
}

#[test]
fn doc_example_hello_ack_version_2() {
    let bytes = hex(DOC_HELLO_ACK_V2);
    assert_eq!(hello_ack(2, "hub")[..], bytes[..]);
    assert_eq!(
        decode_one(&bytes),
        Frame::HelloAck {
            version: 2,
            server: "hub".into()
        }
    );
}

#[test]
fn doc_example_join() {
    let bytes = hex(DOC_JOIN);
    assert_eq!(join(7, Policy::Latest, b"room-3").unwrap()[..], bytes[..]);
    assert_eq!(
        decode_one(&bytes),
        Frame::Join {
            session: 7,
            policy: Policy::Latest,
            group: Bytes::from_static(b"room-3")
        }
    );
}

#[test]
fn doc_example_leave() {
    let bytes = hex(DOC_LEAVE);
    assert_eq!(leave(7, b"room-3").unwrap()[..], bytes[..]);
    assert_eq!(
        decode_one(&bytes),
        Frame::Leave {
            session: 7,
            group: Bytes::from_static(b"room-3")
        }
    );
}

#[test]
fn doc_example_publish() {
    let bytes = hex(DOC_PUBLISH);
    assert_eq!(publish(b"room-3", 7, true, b"hi").unwrap()[..], bytes[..]);
    assert_eq!(
        decode_one(&bytes),
        Frame::Publish {
            group: Bytes::from_static(b"room-3"),
            except: 7,
            text: true,
            payload: Bytes::from_static(b"hi")
        }
    );
}

#[test]
fn doc_example_broadcast() {
    let bytes = hex(DOC_BROADCAST);
    assert_eq!(broadcast(0, true, b"go")[..], bytes[..]);
    assert_eq!(
        decode_one(&bytes),
        Frame::Broadcast {
            except: 0,
            text: true,
            payload: Bytes::from_static(b"go")
        }
    );
}

#[test]
fn doc_example_multicast() {
    let bytes = hex(DOC_MULTICAST);
    assert_eq!(multicast(&[7, 9], false, b"\x2a").unwrap()[..], bytes[..]);
    let frame = decode_one(&bytes);
    assert_eq!(
        frame,
        Frame::Multicast {
            targets: Targets::new(&[7, 9]).unwrap(),
            text: false,
            payload: Bytes::from_static(b"\x2a")
        }
    );
    let Frame::Multicast { targets, .. } = frame else {
        unreachable!()
    };
    assert_eq!(targets.len(), 2);
    assert_eq!(targets.iter().collect::<Vec<_>>(), [7, 9]);
}

#[test]
fn doc_example_close() {
    let bytes = hex(DOC_CLOSE);
    assert_eq!(close(7, 4000, "bye")[..], bytes[..]);
    assert_eq!(
        decode_one(&bytes),
        Frame::Close {
            session: 7,
            code: 4000,
            reason: "bye".into()
        }
    );
}

/// Encodes `frame` with the public encoders, the way a peer would.
fn encode(frame: &Frame) -> Bytes {
    frame
        .encode()
        .expect("sample OPEN fields fit their prefixes")
}

/// At least one frame of every type, with empty, multi-byte and edge values.
fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello {
            version: MIN_VERSION,
            max_version: MAX_VERSION,
            core: 3,
            workers: 8,
            instance: "host-ü:1234".into(),
        },
        Frame::Hello {
            version: 1,
            max_version: 1,
            core: 1,
            workers: 2,
            instance: "v1".into(),
        },
        Frame::Hello {
            version: u16::MAX,
            max_version: u16::MAX,
            core: 0,
            workers: 0,
            instance: String::new(),
        },
        Frame::Hello {
            version: 0,
            max_version: 255,
            core: 0,
            workers: 0,
            instance: String::new(),
        },
        Frame::HelloAck {
            version: 1,
            server: "zone-7".into(),
        },
        Frame::LinkError {
            code: 1,
            message: "unsupported version".into(),
        },
        Frame::Ping([0, 1, 2, 3, 4, 5, 6, 7]),
        Frame::Pong([0xff; 8]),
        Frame::GoAway {
            code: 1012,
            reason: "restarting".into(),
        },
        Frame::Open {
            session: u64::MAX,
            open: Open {
                user: "ålice".into(),
                client_addr: "[2001:db8::1]:443".into(),
                target: "/ws?user=%C3%A5lice&room=3".into(),
                headers: vec![
                    ("user-agent".into(), Bytes::from_static(b"game/2.1")),
                    ("x-forwarded-for".into(), Bytes::from_static(b"\x80\xff")),
                    ("origin".into(), Bytes::new()),
                ],
            },
        },
        Frame::Open {
            session: 1,
            open: Open {
                user: String::new(),
                client_addr: String::new(),
                target: String::new(),
                headers: vec![],
            },
        },
        Frame::Refuse {
            session: 1 << 48,
            code: 4003,
            reason: "refused".into(),
        },
        Frame::Data {
            session: 7,
            text: true,
            payload: Bytes::from_static("héllo".as_bytes()),
        },
        Frame::Data {
            session: 7,
            text: false,
            payload: Bytes::from(vec![0u8; 300]),
        },
        Frame::Data {
            session: 8,
            text: false,
            payload: Bytes::new(),
        },
        Frame::Close {
            session: 7,
            code: 1006,
            reason: String::new(),
        },
        Frame::Close {
            session: 9,
            code: 4000,
            reason: "kicked".into(),
        },
        Frame::Join {
            session: 7,
            policy: Policy::Close,
            group: Bytes::from_static(b"lobby"),
        },
        Frame::Join {
            session: u64::MAX,
            policy: Policy::Drop,
            group: Bytes::from_static(b"\x00"),
        },
        Frame::Join {
            session: 1,
            policy: Policy::Latest,
            group: Bytes::from(vec![0xff; MAX_GROUP_NAME]),
        },
        Frame::Leave {
            session: 7,
            group: Bytes::from_static("salle-é".as_bytes()),
        },
        Frame::Leave {
            session: 2,
            group: Bytes::from(vec![b'g'; MAX_GROUP_NAME]),
        },
        Frame::Publish {
            group: Bytes::from_static(b"lobby"),
            except: 0,
            text: true,
            payload: Bytes::from_static("héllo".as_bytes()),
        },
        Frame::Publish {
            group: Bytes::from(vec![b'x'; MAX_GROUP_NAME]),
            except: u64::MAX,
            text: false,
            payload: Bytes::from(vec![7u8; 300]),
        },
        Frame::Publish {
            group: Bytes::from_static(b"g"),
            except: 7,
            text: false,
            payload: Bytes::new(),
        },
        Frame::Broadcast {
            except: 0,
            text: true,
            payload: Bytes::from_static(b"server restarting"),
        },
        Frame::Broadcast {
            except: 1 << 48,
            text: false,
            payload: Bytes::new(),
        },
        Frame::Multicast {
            targets: Targets::new(&[7]).unwrap(),
            text: false,
            payload: Bytes::new(),
        },
        Frame::Multicast {
            targets: Targets::new(&[u64::MAX, 7, 7, 1]).unwrap(),
            text: true,
            payload: Bytes::from_static(b"you four"),
        },
    ]
}

fn sample_stream() -> (Vec<Frame>, Vec<u8>) {
    let frames = samples();
    let stream = frames.iter().flat_map(|f| encode(f).to_vec()).collect();
    (frames, stream)
}

#[test]
fn samples_cover_every_type() {
    let types: Vec<FrameType> = samples().iter().map(Frame::frame_type).collect();
    for byte in 0..=u8::MAX {
        if let Some(ty) = FrameType::from_u8(byte) {
            assert!(types.contains(&ty), "{ty:?} has no sample");
        }
    }
}

#[test]
fn round_trip_every_frame_type() {
    for frame in samples() {
        let bytes = encode(&frame);
        assert_eq!(decode_one(&bytes), frame);
    }
}

#[test]
fn round_trip_at_every_split_into_two_reads() {
    let (frames, stream) = sample_stream();
    for split in 0..=stream.len() {
        let (a, b) = stream.split_at(split);
        assert_eq!(decode_reads([a, b]), frames, "split at {split}");
    }
}

#[test]
fn round_trip_one_byte_at_a_time() {
    let (frames, stream) = sample_stream();
    assert_eq!(decode_reads(stream.chunks(1)), frames);
}

/// Decodes until the decoder wants more or fails; every call must make progress or stop.
/// Returns how many frames decoded, so the tests can tell bodies were reached at all.
fn drain(mut buf: BytesMut, max_frame: usize) -> usize {
    let mut frames = 0;
    loop {
        let before = buf.len();
        match decode(&mut buf, max_frame) {
            Ok(Some(_)) => {
                assert!(buf.len() < before, "a frame consumes bytes");
                frames += 1;
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                return frames;
            }
            Err(err) => {
                assert!(matches!(err.link_error_code(), 2 | 4));
                return frames;
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decoded = 0;
    for round in 0..4000 {
        let len = rng.below(80);
        let mut bytes = rng.bytes(len);
        // Random lengths are almost always huge; half the time make one that fits what was
        // generated, with a known type and a session that passes, so bodies get parsed too.
        let max_frame = if round % 2 == 0 && len >= HEADER_LEN {
            let length = (rng.below(len - 3) + 10) as u32;
            bytes[..4].copy_from_slice(&length.to_be_bytes());
            let types = [
                1u8, 2, 3, 4, 5, 6, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x23, 0x24,
            ];
            let ty = types[rng.below(types.len())];
            bytes[4] = ty;
            let session = match FrameType::from_u8(ty).map(FrameType::session_rule) {
                Some(SessionRule::NonZero) => rng.next() | 1,
                Some(SessionRule::Any) => [0, rng.next()][rng.below(2)],
                _ => 0,
            };
            bytes[6..14].copy_from_slice(&session.to_be_bytes());
            [64, MAX][rng.below(2)]
        } else {
            [0, 10, 64, MAX][rng.below(4)]
        };
        decoded += drain(BytesMut::from(&bytes[..]), max_frame);
    }
    assert!(decoded > 100, "only {decoded} random frames were valid");
}

#[test]
fn mutated_valid_frames_never_panic() {
    let (_, stream) = sample_stream();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut decoded = 0;
    for round in 0..4000 {
        let mut bytes = stream.clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(3) {
                0 => {
                    let at = rng.below(bytes.len());
                    bytes[at] = rng.byte();
                }
                1 => {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                _ => bytes.truncate(rng.below(bytes.len() + 1).max(1)),
            }
        }
        decoded += drain(BytesMut::from(&bytes[..]), [MAX, 200][round % 2]);
    }
    assert!(decoded > 4000, "only {decoded} frames survived mutation");
}

/// Every frame of `bytes`, and the error that stopped decoding if one did; through `decode_small`
/// when `small` is given, with what it leaves in place turned into the frame `decode` returns.
fn outcome(
    bytes: &[u8],
    max_frame: usize,
    small: Option<usize>,
) -> (Vec<Frame>, Option<DecodeError>) {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    loop {
        let before = buf.len();
        let next = match small {
            None => decode(&mut buf, max_frame),
            Some(limit) => decode_small(&mut buf, max_frame, limit).map(|d| {
                d.map(|d| {
                    if let Decoded::Data { len, .. } = d {
                        assert!(len <= limit, "{len} left in place over the limit {limit}");
                    }
                    d.take(&mut buf)
                })
            }),
        };
        match next {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) must not consume");
                return (frames, None);
            }
            Err(e) => return (frames, Some(e)),
        }
    }
}

#[test]
fn small_data_left_in_place_matches_decode() {
    let (frames, stream) = sample_stream();
    for small in [0, 1, 2, 16, 256, MAX] {
        assert_eq!(
            outcome(&stream, MAX, Some(small)),
            (frames.clone(), None),
            "small {small}"
        );
    }
    let mut rng = Rng(0x6a09_e667_f3bc_c908);
    for round in 0..4000 {
        let mut bytes = stream.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len());
            bytes[at] ^= 1 << rng.below(8);
        }
        bytes.truncate(rng.below(bytes.len() + 1).max(1));
        let max_frame = [MAX, 200][round % 2];
        let small = Some(rng.below(300));
        assert_eq!(
            outcome(&bytes, max_frame, small),
            outcome(&bytes, max_frame, None),
            "round {round}, small {small:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Version negotiation in HELLO
// ---------------------------------------------------------------------------------------------

#[test]
fn hello_offers_the_range_version_1_in_version_and_2_in_flags() {
    let bytes = hello(3, 8, "edge");
    assert_eq!(
        bytes[4..6],
        [FrameType::Hello as u8, 2],
        "type, then flags = MAX_VERSION"
    );
    assert_eq!(
        bytes[HEADER_LEN..HEADER_LEN + 2],
        [0, 1],
        "version = MIN_VERSION"
    );
    assert_eq!((MIN_VERSION, MAX_VERSION), (1, 2));
}

#[test]
fn hello_with_flags_0_is_version_1_alone() {
    let bytes = hello_with_version(1, 0, 2, "gw1");
    assert_eq!(bytes[5], 0);
    // The version-1 HELLO of the document before version 2, byte for byte.
    let v1 = hex("00 00 00 13  01  00  00 00 00 00 00 00 00 00   00 01  00 00  00 02  67 77 31");
    assert_eq!(bytes[..], v1[..]);
    assert_eq!(hello_versions(1, 1, 0, 2, "gw1").unwrap(), bytes);
    assert_eq!(
        decode_one(&bytes),
        Frame::Hello {
            version: 1,
            max_version: 1,
            core: 0,
            workers: 2,
            instance: "gw1".into()
        }
    );
}

#[test]
fn hello_max_version_is_the_larger_of_version_and_flags() {
    for (version, flags, max_version) in [
        (1, 0, 1),
        (1, 1, 1),
        (1, 2, 2),
        (1, 0xff, 0xff),
        (3, 2, 3),
        (0x0100, 0xff, 0x0100),
        (0, 0, 0),
    ] {
        let mut bytes = hello_with_version(version, 0, 1, "x").to_vec();
        bytes[5] = flags;
        let Frame::Hello {
            version: got,
            max_version: max,
            ..
        } = decode_one(&bytes)
        else {
            panic!("expected HELLO");
        };
        assert_eq!((got, max), (version, max_version), "flags {flags}");
    }
}

#[test]
fn hello_ranges_that_cannot_be_sent() {
    for (version, max_version) in [(2, 1), (1, 256), (300, 301), (1, u16::MAX)] {
        assert_eq!(
            hello_versions(version, max_version, 0, 1, "x"),
            Err(EncodeError::VersionRange {
                version,
                max_version
            })
        );
    }
    // A range of one needs no flags, whatever the version.
    assert!(hello_versions(300, 300, 0, 1, "x").is_ok());
    assert!(hello_versions(1, 255, 0, 1, "x").is_ok());
}

// ---------------------------------------------------------------------------------------------
// Version 2: fan-out frames
// ---------------------------------------------------------------------------------------------

#[test]
fn fan_out_frames_decode_on_any_link_version() {
    // The codec has no notion of the link's version: right after a version-1 HELLO_ACK, a JOIN
    // still decodes, and it is the link that refuses it.
    let mut stream = hello_ack(1, "old").to_vec();
    stream.extend_from_slice(&join(7, Policy::Close, b"g").unwrap());
    let frames = decode_reads([&stream[..]]);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1].frame_type().since_version(), 2);
}

#[test]
fn malformed_fan_out_frames() {
    let g256 = vec![b'g'; 256];
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        // The session rules.
        (
            raw(0x20, 0, 0, b"g"),
            DecodeError::ZeroSession(FrameType::Join),
        ),
        (
            raw(0x21, 0, 0, b"g"),
            DecodeError::ZeroSession(FrameType::Leave),
        ),
        (
            raw(0x24, 0, 5, b"\x00\x01\x00\x00\x00\x00\x00\x00\x00\x07"),
            DecodeError::NonZeroSession {
                ty: FrameType::Multicast,
                session: 5,
            },
        ),
        // JOIN: the policy and the group name.
        (raw(0x20, 3, 7, b"g"), DecodeError::UnknownPolicy(3)),
        (raw(0x20, 0xff, 7, b"g"), DecodeError::UnknownPolicy(0xff)),
        (raw(0x20, 0x81, 7, b"g"), DecodeError::UnknownPolicy(0x81)),
        (
            raw(0x20, 0, 7, b""),
            DecodeError::EmptyGroup(FrameType::Join),
        ),
        (
            raw(0x20, 1, 7, &g256),
            DecodeError::GroupTooLong {
                ty: FrameType::Join,
                len: 256,
            },
        ),
        // LEAVE: the group name.
        (
            raw(0x21, 0, 7, b""),
            DecodeError::EmptyGroup(FrameType::Leave),
        ),
        (
            raw(0x21, 0, 7, &g256),
            DecodeError::GroupTooLong {
                ty: FrameType::Leave,
                len: 256,
            },
        ),
        // PUBLISH: the group length and name.
        (
            raw(0x22, 0, 0, b""),
            DecodeError::Truncated {
                ty: FrameType::Publish,
                field: "group length",
            },
        ),
        (
            raw(0x22, 0, 0, b"\x00"),
            DecodeError::EmptyGroup(FrameType::Publish),
        ),
        (
            raw(0x22, 1, 3, b"\x00hi"),
            DecodeError::EmptyGroup(FrameType::Publish),
        ),
        (
            raw(0x22, 0, 0, b"\x05abc"),
            DecodeError::Truncated {
                ty: FrameType::Publish,
                field: "group",
            },
        ),
        (
            raw(0x22, 0, 0, b"\xff"),
            DecodeError::Truncated {
                ty: FrameType::Publish,
                field: "group",
            },
        ),
        // MULTICAST: the count and the ids.
        (
            raw(0x24, 0, 0, b""),
            DecodeError::Truncated {
                ty: FrameType::Multicast,
                field: "target count",
            },
        ),
        (
            raw(0x24, 0, 0, b"\x00"),
            DecodeError::Truncated {
                ty: FrameType::Multicast,
                field: "target count",
            },
        ),
        (raw(0x24, 0, 0, b"\x00\x00"), DecodeError::NoTargets),
        (raw(0x24, 0, 0, b"\x00\x00payload"), DecodeError::NoTargets),
        (
            // Two ids announced, 15 bytes there.
            raw(0x24, 0, 0, &[&[0, 2][..], &[1; 15]].concat()),
            DecodeError::Truncated {
                ty: FrameType::Multicast,
                field: "targets",
            },
        ),
        (
            // The largest count, with one id there: an error, and nothing sized by the count.
            raw(
                0x24,
                0,
                0,
                &[&[0xff, 0xff][..], &7u64.to_be_bytes()].concat(),
            ),
            DecodeError::Truncated {
                ty: FrameType::Multicast,
                field: "targets",
            },
        ),
        (
            raw(
                0x24,
                0,
                0,
                &[&[0, 2][..], &7u64.to_be_bytes(), &[0; 8]].concat(),
            ),
            DecodeError::ZeroTarget { index: 1 },
        ),
        (
            raw(0x24, 1, 0, &[&[0, 1][..], &[0; 8], b"x"].concat()),
            DecodeError::ZeroTarget { index: 0 },
        ),
        // MOVED is reserved, not defined; neither is anything else past MULTICAST.
        (raw(0x14, 0, 7, b""), DecodeError::UnknownType(0x14)),
        (raw(0x25, 0, 0, b""), DecodeError::UnknownType(0x25)),
        (raw(0x1f, 0, 0, b""), DecodeError::UnknownType(0x1f)),
    ];
    for (bytes, expected) in cases {
        assert_eq!(malformed(&bytes), expected, "{bytes:02x?}");
        // Whatever the read boundaries, the same error.
        for small in [None, Some(0), Some(MAX)] {
            assert_eq!(
                outcome(&bytes, MAX, small),
                (vec![], Some(expected.clone()))
            );
        }
        // A body error waits for the whole body; a header error does not.
        let in_header = matches!(
            expected,
            DecodeError::ZeroSession(_)
                | DecodeError::NonZeroSession { .. }
                | DecodeError::UnknownType(_)
        );
        let short = &bytes[..bytes.len() - 1];
        let early = outcome(short, MAX, None).1;
        assert_eq!(
            early.is_some(),
            in_header && short.len() >= HEADER_LEN,
            "{early:?}"
        );
    }
}

#[test]
fn fan_out_fields_that_are_accepted() {
    // PUBLISH and BROADCAST take any session, 0 meaning none left out.
    for except in [0, 1, u64::MAX] {
        let frame = decode_one(&raw(0x23, 0, except, b"m"));
        assert!(matches!(frame, Frame::Broadcast { except: e, .. } if e == except));
        let frame = decode_one(&raw(0x22, 0, except, b"\x01gm"));
        assert!(matches!(frame, Frame::Publish { except: e, .. } if e == except));
    }
    // Unknown flag bits are ignored where flags are bits; only bit 0 means text.
    let frame = decode_one(&raw(0x22, 0xfe, 0, b"\x01g"));
    assert_eq!(
        frame,
        Frame::Publish {
            group: Bytes::from_static(b"g"),
            except: 0,
            text: false,
            payload: Bytes::new()
        }
    );
    let frame = decode_one(&raw(0x21, 0xff, 3, b"g"));
    assert_eq!(
        frame,
        Frame::Leave {
            session: 3,
            group: Bytes::from_static(b"g")
        }
    );
    let frame = decode_one(&raw(0x23, 0x81, 0, b""));
    assert!(matches!(frame, Frame::Broadcast { text: true, .. }));
    // A group name is raw bytes, UTF-8 or not; a PUBLISH payload after it may hold anything.
    let frame = decode_one(&raw(0x22, 1, 0, b"\x02\xff\x00\x02\xff"));
    assert_eq!(
        frame,
        Frame::Publish {
            group: Bytes::from_static(b"\xff\x00"),
            except: 0,
            text: true,
            payload: Bytes::from_static(b"\x02\xff")
        }
    );
    // The same id twice is two targets: the list is the server's, as sent.
    let frame = decode_one(&multicast(&[5, 5], false, b"").unwrap());
    let Frame::Multicast { targets, .. } = frame else {
        panic!("expected MULTICAST");
    };
    assert_eq!(targets.iter().collect::<Vec<_>>(), [5, 5]);
}

#[test]
fn fan_out_bodies_are_slices_of_the_input_buffer() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&publish(b"lobby", 0, false, &[1; 500]).unwrap());
    buf.extend_from_slice(&multicast(&[3, 4, 5], false, &[2; 500]).unwrap());
    buf.extend_from_slice(&join(3, Policy::Drop, b"lobby").unwrap());
    let input = buf.as_ptr_range();
    let within = |bytes: &Bytes| {
        let got = bytes.as_ptr_range();
        input.start <= got.start && got.end <= input.end
    };
    let Some(Frame::Publish { group, payload, .. }) = decode(&mut buf, MAX).unwrap() else {
        panic!("expected PUBLISH");
    };
    assert!(within(&group) && within(&payload));
    assert_eq!((&group[..], payload.len()), (&b"lobby"[..], 500));
    let Some(Frame::Multicast {
        targets, payload, ..
    }) = decode(&mut buf, MAX).unwrap()
    else {
        panic!("expected MULTICAST");
    };
    assert!(within(targets.as_bytes()) && within(&payload));
    let Some(Frame::Join { group, .. }) = decode(&mut buf, MAX).unwrap() else {
        panic!("expected JOIN");
    };
    assert!(within(&group));
    assert!(buf.is_empty());
}

#[test]
fn decode_small_returns_fan_out_frames_whole() {
    for bytes in [
        publish(b"g", 0, true, b"hi").unwrap(),
        broadcast(0, false, b"x"),
        multicast(&[1], false, b"x").unwrap(),
    ] {
        let mut buf = BytesMut::from(&bytes[..]);
        match decode_small(&mut buf, MAX, MAX) {
            Ok(Some(Decoded::Frame(frame))) => assert_eq!(frame.encode().unwrap(), bytes),
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
    }
}

#[test]
fn multicast_to_the_most_targets() {
    let ids: Vec<u64> = (1..=MAX_TARGETS as u64).collect();
    let bytes = multicast(&ids, true, b"all").unwrap();
    assert_eq!(bytes.len(), HEADER_LEN + 2 + 8 * MAX_TARGETS + 3);
    let Frame::Multicast {
        targets, payload, ..
    } = decode_one(&bytes)
    else {
        panic!("expected MULTICAST");
    };
    assert_eq!(targets.len(), MAX_TARGETS);
    assert!(targets.iter().eq(ids.iter().copied()));
    assert_eq!(&payload[..], b"all");
}

#[test]
fn fan_out_encoders_refuse_what_a_decoder_would() {
    let g256 = [b'g'; 256];
    let cases = [
        (
            join(0, Policy::Close, b"g"),
            EncodeError::ZeroSession(FrameType::Join),
        ),
        (leave(0, b"g"), EncodeError::ZeroSession(FrameType::Leave)),
        (
            join(1, Policy::Close, b""),
            EncodeError::EmptyGroup(FrameType::Join),
        ),
        (leave(1, b""), EncodeError::EmptyGroup(FrameType::Leave)),
        (
            publish(b"", 0, false, b"m"),
            EncodeError::EmptyGroup(FrameType::Publish),
        ),
        (
            join(1, Policy::Drop, &g256),
            EncodeError::GroupTooLong {
                ty: FrameType::Join,
                len: 256,
            },
        ),
        (
            leave(1, &g256),
            EncodeError::GroupTooLong {
                ty: FrameType::Leave,
                len: 256,
            },
        ),
        (
            publish(&g256, 0, false, b"m"),
            EncodeError::GroupTooLong {
                ty: FrameType::Publish,
                len: 256,
            },
        ),
        (multicast(&[], false, b"m"), EncodeError::TargetCount(0)),
        (
            multicast(&[1, 0, 2], false, b"m"),
            EncodeError::ZeroTarget { index: 1 },
        ),
    ];
    for (result, expected) in cases {
        assert_eq!(result, Err(expected));
    }
    let too_many = vec![1u64; MAX_TARGETS + 1];
    assert_eq!(
        multicast(&too_many, false, b""),
        Err(EncodeError::TargetCount(MAX_TARGETS + 1))
    );
    assert_eq!(
        Targets::new(&too_many),
        Err(EncodeError::TargetCount(MAX_TARGETS + 1))
    );
    assert_eq!(Targets::new(&[]), Err(EncodeError::TargetCount(0)));
    assert_eq!(
        Targets::new(&[0]),
        Err(EncodeError::ZeroTarget { index: 0 })
    );
}
