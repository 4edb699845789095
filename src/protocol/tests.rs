//! Conformance tests for the codec as a whole: the byte-by-byte example of docs/protocol.md,
//! round trips of every frame type at every split of the stream, and inputs that must not panic.
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

// The examples of docs/protocol.md, "Example: one session, byte by byte", copied byte for byte.

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
            let types = [1u8, 2, 3, 4, 5, 6, 0x10, 0x11, 0x12, 0x13];
            let ty = types[rng.below(types.len())];
            bytes[4] = ty;
            let session = if ty >= 0x10 { rng.next() | 1 } else { 0 };
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
    assert_eq!((MIN_VERSION, MAX_VERSION, VERSION), (1, 2, 1));
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
