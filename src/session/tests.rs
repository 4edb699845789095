//! Unit tests of the session state machine, driven without sockets or a runtime.

use super::*;

use bytes::Buf;

use crate::ws::{encode_client_frame, parse_close_payload, OpCode};

// ---------------------------------------------------------------------------------------------
// Helpers: client frames as a browser sends them (masked), and a miniature driver.
// ---------------------------------------------------------------------------------------------

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const MAX: usize = 1 << 20;
/// Messages up to this size come out as `SmallData`.
const SMALL: usize = 16;
const T: Timing = Timing {
    ping_interval: 30,
    idle_timeout: 90,
    close_timeout: 5,
};
/// An arbitrary start time, far from 0 so saturating arithmetic never hides a bug.
const NOW: u32 = 1_000;

const OP_CONT: u8 = OpCode::Continuation.as_u8();
const OP_TEXT: u8 = OpCode::Text.as_u8();
const OP_BINARY: u8 = OpCode::Binary.as_u8();
const OP_CLOSE: u8 = OpCode::Close.as_u8();
const OP_PING: u8 = OpCode::Ping.as_u8();
const OP_PONG: u8 = OpCode::Pong.as_u8();

/// One final, masked client frame.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode_client_frame(true, 0, opcode, MASK, payload)
}

fn text(s: &str) -> Vec<u8> {
    frame(OP_TEXT, s.as_bytes())
}

fn binary(b: &[u8]) -> Vec<u8> {
    frame(OP_BINARY, b)
}

fn close(code: u16, reason: &str) -> Vec<u8> {
    frame(OP_CLOSE, &close_payload(code, reason))
}

fn empty_close() -> Vec<u8> {
    frame(OP_CLOSE, b"")
}

/// A buffer holding these frames back to back, as one read would leave them.
fn buf_of(frames: &[Vec<u8>]) -> BytesMut {
    let mut buf = BytesMut::new();
    for f in frames {
        buf.extend_from_slice(f);
    }
    buf
}

/// A message longer than `SMALL`, so it comes out as `Data`.
fn large(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// What the driver did with one input, with `SmallData` already copied out and consumed.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Small { text: bool, payload: Vec<u8> },
    Data { text: bool, payload: Vec<u8> },
    Pong(Vec<u8>),
    Violation(u16),
    Closed(Option<Vec<u8>>),
    OverRate { close: bool },
}

/// One call to `receive`, applied the way `gateway::receive::process` applies it.
fn step(s: &mut Session, buf: &mut BytesMut) -> Option<Out> {
    Some(match s.receive(buf, MAX, SMALL)? {
        Received::SmallData { text, len } => {
            assert!(len <= SMALL, "SmallData of {len} bytes over the limit");
            assert!(
                len <= buf.len(),
                "SmallData promises {len} bytes, buffer has {}",
                buf.len()
            );
            let payload = buf[..len].to_vec();
            buf.advance(len);
            Out::Small { text, payload }
        }
        Received::Data { text, payload } => Out::Data {
            text,
            payload: payload.to_vec(),
        },
        Received::Pong(p) => Out::Pong(p.to_vec()),
        Received::Violation { code, reason } => {
            assert!(!reason.is_empty(), "a violation names its reason");
            Out::Violation(code)
        }
        Received::Closed { echo } => Out::Closed(echo.map(|e| e.to_vec())),
        Received::OverRate { close } => Out::OverRate { close },
    })
}

/// Every input the buffer holds, in order.
fn drain(s: &mut Session, buf: &mut BytesMut) -> Vec<Out> {
    let mut out = Vec::new();
    while let Some(o) = step(s, buf) {
        out.push(o);
        assert!(out.len() < 1000, "receive never ran dry");
    }
    out
}

fn small_text(s: &str) -> Out {
    Out::Small {
        text: true,
        payload: s.as_bytes().to_vec(),
    }
}

fn small_binary(b: &[u8]) -> Out {
    Out::Small {
        text: false,
        payload: b.to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Message flow
// ---------------------------------------------------------------------------------------------

#[test]
fn small_text_is_left_in_place_for_the_caller() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[text("hello")]);
    let got = s.receive(&mut buf, MAX, SMALL);
    assert_eq!(got, Some(Received::SmallData { text: true, len: 5 }));
    // Unmasked in place: exactly the payload is left at the front.
    assert_eq!(&buf[..], b"hello");
    buf.advance(5);
    assert_eq!(s.receive(&mut buf, MAX, SMALL), None);
    assert!(buf.is_empty());
}

#[test]
fn small_binary_is_left_in_place_for_the_caller() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[binary(&[0, 0xFF, 7]), text("next")]);
    assert_eq!(
        s.receive(&mut buf, MAX, SMALL),
        Some(Received::SmallData {
            text: false,
            len: 3
        })
    );
    assert_eq!(&buf[..3], &[0, 0xFF, 7]);
    buf.advance(3);
    // Only once the caller advanced is the next frame at the front.
    assert_eq!(
        s.receive(&mut buf, MAX, SMALL),
        Some(Received::SmallData { text: true, len: 4 })
    );
    assert_eq!(&buf[..4], b"next");
}

#[test]
fn a_message_of_exactly_small_bytes_is_still_small() {
    let mut s = Session::new(NOW);
    let exact = "x".repeat(SMALL);
    let over = "y".repeat(SMALL + 1);
    let mut buf = buf_of(&[text(&exact), text(&over)]);
    assert_eq!(
        drain(&mut s, &mut buf),
        vec![
            small_text(&exact),
            Out::Data {
                text: true,
                payload: over.into_bytes()
            }
        ]
    );
}

#[test]
fn large_messages_come_out_as_data() {
    let mut s = Session::new(NOW);
    let payload = large(300);
    let words = "a longer text message, well over the small limit ✓";
    let mut buf = buf_of(&[binary(&payload), text(words)]);
    match s.receive(&mut buf, MAX, SMALL) {
        Some(Received::Data {
            text: false,
            payload: p,
        }) => assert_eq!(&p[..], &payload[..]),
        other => panic!("expected binary Data, got {other:?}"),
    }
    match s.receive(&mut buf, MAX, SMALL) {
        Some(Received::Data {
            text: true,
            payload: p,
        }) => assert_eq!(&p[..], words.as_bytes()),
        other => panic!("expected text Data, got {other:?}"),
    }
    assert_eq!(s.receive(&mut buf, MAX, SMALL), None);
    assert!(buf.is_empty(), "Data consumes its frame");
}

#[test]
fn several_frames_in_one_buffer_come_out_in_order() {
    let mut s = Session::new(NOW);
    let big = large(100);
    let mut buf = buf_of(&[
        text("one"),
        binary(&big),
        frame(OP_PING, b"are you there"),
        binary(b"two"),
        frame(OP_PONG, b"ignored"),
        text("three"),
    ]);
    assert_eq!(
        drain(&mut s, &mut buf),
        vec![
            small_text("one"),
            Out::Data {
                text: false,
                payload: big
            },
            Out::Pong(b"are you there".to_vec()),
            small_binary(b"two"),
            small_text("three"),
        ]
    );
    assert!(buf.is_empty());
    assert!(s.is_open());
}

#[test]
fn a_frame_split_across_two_reads_completes_on_the_second() {
    let whole = text("split me");
    for cut in 1..whole.len() {
        let mut s = Session::new(NOW);
        let mut buf = BytesMut::from(&whole[..cut]);
        assert_eq!(step(&mut s, &mut buf), None, "cut at {cut}");
        buf.extend_from_slice(&whole[cut..]);
        assert_eq!(
            drain(&mut s, &mut buf),
            vec![small_text("split me")],
            "cut at {cut}"
        );
        assert!(buf.is_empty(), "cut at {cut}");
    }
}

#[test]
fn a_large_frame_split_across_reads_reports_what_is_missing() {
    let payload = large(1000);
    let whole = binary(&payload);
    // 4-byte header (16-bit length) + 4-byte mask, then 100 payload bytes.
    let mut s = Session::new(NOW);
    let mut buf = BytesMut::from(&whole[..108]);
    assert_eq!(step(&mut s, &mut buf), None);
    assert_eq!(s.frame_remaining(), Some(900));
    buf.extend_from_slice(&whole[108..]);
    assert_eq!(
        drain(&mut s, &mut buf),
        vec![Out::Data {
            text: false,
            payload
        }]
    );
    assert_eq!(s.frame_remaining(), None);
}

#[test]
fn a_frame_split_after_other_frames_in_the_same_read() {
    let mut s = Session::new(NOW);
    let second = text("second");
    let mut buf = buf_of(&[text("first")]);
    buf.extend_from_slice(&second[..3]);
    assert_eq!(drain(&mut s, &mut buf), vec![small_text("first")]);
    buf.extend_from_slice(&second[3..]);
    assert_eq!(drain(&mut s, &mut buf), vec![small_text("second")]);
}

#[test]
fn a_fragmented_message_comes_out_whole_as_data_even_when_small() {
    let mut s = Session::new(NOW);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&encode_client_frame(false, 0, OP_TEXT, MASK, b"he"));
    buf.extend_from_slice(&frame(OP_PING, b"mid"));
    buf.extend_from_slice(&encode_client_frame(true, 0, OP_CONT, MASK, b"llo"));
    assert_eq!(
        drain(&mut s, &mut buf),
        vec![
            Out::Pong(b"mid".to_vec()),
            Out::Data {
                text: true,
                payload: b"hello".to_vec()
            }
        ]
    );
}

#[test]
fn ping_is_answered_with_its_payload() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[frame(OP_PING, b"\x00\x01tok"), frame(OP_PING, b"")]);
    assert_eq!(
        s.receive(&mut buf, MAX, SMALL),
        Some(Received::Pong(Bytes::from_static(b"\x00\x01tok")))
    );
    assert_eq!(
        s.receive(&mut buf, MAX, SMALL),
        Some(Received::Pong(Bytes::new()))
    );
    assert_eq!(s.receive(&mut buf, MAX, SMALL), None);
}

#[test]
fn pongs_are_consumed_silently() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[
        frame(OP_PONG, b"a"),
        frame(OP_PONG, b""),
        frame(OP_PONG, b"b"),
    ]);
    assert_eq!(s.receive(&mut buf, MAX, SMALL), None);
    assert!(buf.is_empty(), "the pongs were consumed");
    assert!(s.is_open());
    assert!(s.may_send());
}

// ---------------------------------------------------------------------------------------------
// Close handshake, client first
// ---------------------------------------------------------------------------------------------

#[test]
fn client_close_1000_is_echoed_with_its_code_and_no_reason() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[close(1000, "bye now")]);
    let Some(Received::Closed { echo: Some(echo) }) = s.receive(&mut buf, MAX, SMALL) else {
        panic!("expected a Closed with an echo");
    };
    assert_eq!(&echo[..], &[0x03, 0xE8], "code 1000, empty reason");
    assert_eq!(parse_close_payload(&echo), Ok(Some((1000, &b""[..]))));
    assert!(s.close_sent(), "the echo is our close frame");
    assert!(!s.may_send(), "nothing may follow the echo");
    assert!(!s.is_reading());
    assert!(!s.is_open());
}

#[test]
fn client_close_with_an_application_code_is_echoed_with_that_code() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[close(4001, "gg")]);
    let got = drain(&mut s, &mut buf);
    assert_eq!(got, vec![Out::Closed(Some(vec![0x0F, 0xA1]))]);
    assert_eq!(
        s.end(),
        Some(End {
            code: 4001,
            tell_upstream: true
        })
    );
}

#[test]
fn empty_client_close_is_echoed_empty_and_reported_as_1005() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[empty_close()]);
    assert_eq!(
        s.receive(&mut buf, MAX, SMALL),
        Some(Received::Closed {
            echo: Some(Bytes::new())
        })
    );
    assert!(!s.is_reading());
    assert_eq!(
        s.end(),
        Some(End {
            code: 1005,
            tell_upstream: true
        })
    );
}

#[test]
fn input_after_the_client_close_is_ignored_and_cleared() {
    let mut s = Session::new(NOW);
    // The close and trailing garbage in one read, then more in a later read.
    let mut buf = buf_of(&[close(1000, ""), text("after"), frame(OP_PING, b"p")]);
    assert_eq!(
        drain(&mut s, &mut buf),
        vec![Out::Closed(Some(vec![0x03, 0xE8]))]
    );
    assert!(buf.is_empty(), "what followed the close was dropped");
    let mut buf = buf_of(&[text("later"), close(1001, "")]);
    buf.extend_from_slice(b"\x81"); // even an unmasked-looking fragment: never parsed
    assert_eq!(s.receive(&mut buf, MAX, SMALL), None);
    assert!(buf.is_empty(), "the buffer is cleared, not left to grow");
    assert!(!s.is_reading());
}

#[test]
fn client_close_ends_with_the_clients_code_and_tells_upstream() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[text("hi"), close(1000, "")]);
    drain(&mut s, &mut buf);
    assert_eq!(
        s.end(),
        Some(End {
            code: 1000,
            tell_upstream: true
        })
    );
}

#[test]
fn after_the_echo_no_server_close_is_started() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[close(1000, "")]);
    drain(&mut s, &mut buf);
    assert_eq!(s.begin_close(1001, NOW, &T), None, "the echo was our close");
    // The end code is still the client's: we did not close first.
    assert_eq!(s.end().map(|e| e.code), Some(1000));
}

#[test]
fn the_write_side_shuts_once_the_echo_is_written() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[close(1000, "")]);
    drain(&mut s, &mut buf);
    assert!(!s.on_written(2), "echo still queued");
    assert!(s.on_written(0));
    assert!(!s.on_written(0), "only once");
}

#[test]
fn an_invalid_close_code_from_the_client_is_a_violation() {
    let mut s = Session::new(NOW);
    // 1005 may not appear on the wire.
    let mut buf = buf_of(&[frame(OP_CLOSE, &1005u16.to_be_bytes())]);
    assert_eq!(drain(&mut s, &mut buf), vec![Out::Violation(1002)]);
    assert!(!s.is_open());
}

// ---------------------------------------------------------------------------------------------
// Close handshake, server first
// ---------------------------------------------------------------------------------------------

#[test]
fn begin_close_returns_the_deadline_once() {
    let mut s = Session::new(NOW);
    assert!(!s.close_sent());
    assert_eq!(
        s.begin_close(1001, NOW + 10, &T),
        Some(NOW + 10 + T.close_timeout)
    );
    assert!(s.close_sent());
    assert_eq!(s.begin_close(1001, NOW + 11, &T), None);
    assert_eq!(
        s.begin_close(1008, NOW + 12, &T),
        None,
        "not even with another code"
    );
}

#[test]
fn after_begin_close_nothing_more_is_sent() {
    let mut s = Session::new(NOW);
    assert!(s.may_send());
    s.begin_close(1001, NOW, &T);
    assert!(!s.may_send());
    // Still reading: the client's answer is awaited.
    assert!(s.is_reading());
    assert!(s.is_open());
}

#[test]
fn after_begin_close_data_is_consumed_not_forwarded() {
    let mut s = Session::new(NOW);
    s.begin_close(1001, NOW, &T);
    let mut buf = buf_of(&[
        text("small"),
        binary(&large(200)),
        binary(b"b"),
        frame(OP_PING, b"no pong now"),
        frame(OP_PONG, b""),
    ]);
    assert_eq!(s.receive(&mut buf, MAX, SMALL), None);
    assert!(
        buf.is_empty(),
        "consumed, including the small ones left in place"
    );
    assert!(s.is_open());
}

#[test]
fn after_begin_close_the_clients_close_is_processed_without_echo() {
    let mut s = Session::new(NOW);
    s.begin_close(1001, NOW, &T);
    // Data before the close is skipped correctly (a small message left in place must be advanced
    // past, or the close would be misparsed).
    let mut buf = buf_of(&[text("skip"), binary(&large(40)), close(1000, "ok")]);
    assert_eq!(
        s.receive(&mut buf, MAX, SMALL),
        Some(Received::Closed { echo: None })
    );
    assert!(!s.is_reading());
    assert!(buf.is_empty());
}

#[test]
fn server_first_close_ends_with_our_code() {
    let mut s = Session::new(NOW);
    s.begin_close(1001, NOW, &T);
    let mut buf = buf_of(&[close(1000, "")]);
    assert_eq!(drain(&mut s, &mut buf), vec![Out::Closed(None)]);
    assert_eq!(
        s.end(),
        Some(End {
            code: 1001,
            tell_upstream: true
        })
    );
}

#[test]
fn server_first_close_ends_with_our_code_even_if_the_client_never_answers() {
    let mut s = Session::new(NOW);
    s.begin_close(1008, NOW, &T);
    s.on_peer_gone();
    assert_eq!(s.end().map(|e| e.code), Some(1008));
}

#[test]
fn on_written_shuts_the_write_side_exactly_once_when_drained() {
    let mut s = Session::new(NOW);
    assert!(
        !s.on_written(0),
        "no close queued yet: keep the write side open"
    );
    s.begin_close(1001, NOW, &T);
    assert!(!s.on_written(120), "bytes still queued");
    assert!(!s.on_written(1));
    assert!(s.on_written(0));
    assert!(!s.on_written(0));
    assert!(!s.on_written(5));
}

// ---------------------------------------------------------------------------------------------
// Protocol violations
// ---------------------------------------------------------------------------------------------

/// Feeds `input` to a fresh session and checks the violation and what it leaves.
fn violation(input: &[u8], code: u16) -> Session {
    let mut s = Session::new(NOW);
    let mut buf = BytesMut::from(input);
    buf.extend_from_slice(&text("never seen"));
    assert_eq!(drain(&mut s, &mut buf), vec![Out::Violation(code)]);
    assert!(buf.is_empty(), "the rest of the input is dropped");
    assert!(!s.is_open(), "nothing more is read");
    s
}

#[test]
fn unmasked_frame_is_1002() {
    let unmasked = [0x81, 0x05, b'H', b'e', b'l', b'l', b'o'];
    let mut s = violation(&unmasked, 1002);
    assert_eq!(
        s.end(),
        Some(End {
            code: 1002,
            tell_upstream: true
        })
    );
}

#[test]
fn reserved_opcode_is_1002() {
    for op in [0x3u8, 0x7, 0xB, 0xF] {
        let mut s = violation(&frame(op, b"x"), 1002);
        assert_eq!(s.end().map(|e| e.code), Some(1002), "opcode {op:#x}");
    }
}

#[test]
fn reserved_bits_are_1002() {
    let mut s = violation(&encode_client_frame(true, 0b100, OP_TEXT, MASK, b"x"), 1002);
    assert_eq!(s.end().map(|e| e.code), Some(1002));
}

#[test]
fn invalid_utf8_text_is_1007_small_or_large() {
    let mut s = violation(&frame(OP_TEXT, b"ab\xFFcd"), 1007);
    assert_eq!(s.end().map(|e| e.code), Some(1007));

    let mut long = vec![b'a'; 100];
    long.push(0xC0);
    let mut s = violation(&frame(OP_TEXT, &long), 1007);
    assert_eq!(s.end().map(|e| e.code), Some(1007));
}

#[test]
fn a_message_over_max_message_is_1009() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[binary(&large(101))]);
    assert_eq!(
        s.receive(&mut buf, 100, SMALL),
        Some(Received::Violation {
            code: 1009,
            reason: "message of 101 bytes exceeds the limit of 100 bytes".into()
        })
    );
    assert!(!s.is_open());
    assert_eq!(s.end().map(|e| e.code), Some(1009));
}

#[test]
fn a_violation_after_valid_messages_keeps_what_came_before() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[text("ok"), frame(0x3, b""), text("lost")]);
    assert_eq!(
        drain(&mut s, &mut buf),
        vec![small_text("ok"), Out::Violation(1002)]
    );
}

#[test]
fn after_a_violation_even_a_close_is_ignored() {
    let mut s = violation(&frame(0x4, b""), 1002);
    let mut buf = buf_of(&[close(1000, "")]);
    assert_eq!(s.receive(&mut buf, MAX, SMALL), None);
    assert!(buf.is_empty());
    // The driver answers a violation by closing with its code.
    assert_eq!(s.begin_close(1002, NOW, &T), Some(NOW + T.close_timeout));
    assert_eq!(s.end().map(|e| e.code), Some(1002), "not the ignored 1000");
}

// ---------------------------------------------------------------------------------------------
// Heartbeat and idle
// ---------------------------------------------------------------------------------------------

#[test]
fn first_due_is_the_sooner_of_ping_and_idle() {
    let s = Session::new(NOW);
    assert_eq!(s.first_due(&T), NOW + 30);
    let idle_first = Timing {
        ping_interval: 100,
        idle_timeout: 20,
        close_timeout: 5,
    };
    assert_eq!(s.first_due(&idle_first), NOW + 20);
}

#[test]
fn a_tick_before_ping_time_waits_for_it() {
    let mut s = Session::new(NOW);
    assert_eq!(s.on_tick(NOW, &T), Tick::Wait(NOW + 30));
    assert_eq!(s.on_tick(NOW + 29, &T), Tick::Wait(NOW + 30));
}

#[test]
fn pings_are_spaced_by_ping_interval() {
    let mut s = Session::new(NOW);
    assert_eq!(s.on_tick(NOW + 30, &T), Tick::Ping(NOW + 60));
    // A second tick at the same time does not ping twice.
    assert_eq!(s.on_tick(NOW + 30, &T), Tick::Wait(NOW + 60));
    assert_eq!(s.on_tick(NOW + 59, &T), Tick::Wait(NOW + 60));
    assert_eq!(s.on_tick(NOW + 60, &T), Tick::Ping(NOW + 90));
    // The next ping would come after the idle deadline (last_rx + 90 + 1): look then instead.
    assert_eq!(s.on_tick(NOW + 90, &T), Tick::Ping(NOW + 91));
}

#[test]
fn a_late_tick_spaces_the_next_ping_from_when_it_was_sent() {
    let mut s = Session::new(NOW);
    s.on_read(NOW + 40);
    assert_eq!(s.on_tick(NOW + 45, &T), Tick::Ping(NOW + 75));
    assert_eq!(s.on_tick(NOW + 74, &T), Tick::Wait(NOW + 75));
    assert_eq!(s.on_tick(NOW + 75, &T), Tick::Ping(NOW + 105));
}

#[test]
fn silence_past_idle_timeout_plus_a_second_is_idle() {
    let mut s = Session::new(NOW);
    assert_ne!(
        s.on_tick(NOW + 90, &T),
        Tick::Idle,
        "the full idle_timeout is allowed"
    );
    assert_eq!(s.on_tick(NOW + 91, &T), Tick::Idle);
    let mut s = Session::new(NOW);
    assert_eq!(s.on_tick(NOW + 500, &T), Tick::Idle);
}

#[test]
fn reading_pushes_the_idle_deadline() {
    let mut s = Session::new(NOW);
    s.on_read(NOW + 50);
    assert_eq!(s.on_tick(NOW + 91, &T), Tick::Ping(NOW + 121));
    assert_eq!(s.on_tick(NOW + 140, &T), Tick::Ping(NOW + 141));
    assert_eq!(s.on_tick(NOW + 141, &T), Tick::Idle);
}

#[test]
fn idle_before_ping_when_idle_timeout_is_shorter() {
    let t = Timing {
        ping_interval: 100,
        idle_timeout: 20,
        close_timeout: 5,
    };
    let mut s = Session::new(NOW);
    assert_eq!(s.on_tick(s.first_due(&t), &t), Tick::Wait(NOW + 21));
    assert_eq!(s.on_tick(NOW + 21, &t), Tick::Idle);
}

#[test]
fn after_begin_close_ticks_retire_until_the_deadline_then_time_out() {
    let mut s = Session::new(NOW);
    let deadline = s.begin_close(1001, NOW + 10, &T).unwrap();
    assert_eq!(deadline, NOW + 15);
    // An old heartbeat entry, even one past the idle time, just retires.
    assert_eq!(s.on_tick(NOW + 11, &T), Tick::Retire);
    assert_eq!(s.on_tick(deadline - 1, &T), Tick::Retire);
    assert_eq!(s.on_tick(deadline, &T), Tick::CloseTimedOut);
    assert_eq!(s.on_tick(deadline + 100, &T), Tick::CloseTimedOut);
}

#[test]
fn an_idle_session_that_was_closed_times_out_on_the_close_deadline() {
    let mut s = Session::new(NOW);
    assert_eq!(s.on_tick(NOW + 91, &T), Tick::Idle);
    let deadline = s.begin_close(1001, NOW + 91, &T).unwrap();
    assert_eq!(deadline, NOW + 96);
    assert_eq!(s.on_tick(NOW + 95, &T), Tick::Retire, "not Idle again");
    assert_eq!(s.on_tick(NOW + 96, &T), Tick::CloseTimedOut);
    assert_eq!(s.end().map(|e| e.code), Some(1001));
}

// ---------------------------------------------------------------------------------------------
// Backlog
// ---------------------------------------------------------------------------------------------

#[test]
fn over_backlog_is_strictly_over() {
    assert!(!Session::over_backlog(0, 0));
    assert!(Session::over_backlog(1, 0));
    assert!(!Session::over_backlog(999, 1000));
    assert!(!Session::over_backlog(1000, 1000));
    assert!(Session::over_backlog(1001, 1000));
    assert!(Session::over_backlog(usize::MAX, 1000));
}

// ---------------------------------------------------------------------------------------------
// End of the session
// ---------------------------------------------------------------------------------------------

#[test]
fn end_reports_once() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[close(1000, "")]);
    drain(&mut s, &mut buf);
    assert!(s.end().is_some());
    assert_eq!(s.end(), None);
    assert_eq!(s.end(), None);
}

#[test]
fn an_ended_session_sends_and_reads_nothing() {
    let mut s = Session::new(NOW);
    assert!(s.end().is_some());
    assert!(!s.may_send());
    assert!(!s.is_reading());
    assert_eq!(s.begin_close(1001, NOW, &T), None);
    let mut buf = buf_of(&[text("late")]);
    assert_eq!(s.receive(&mut buf, MAX, SMALL), None);
    assert!(buf.is_empty());
}

#[test]
fn a_vanished_client_ends_with_1006() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[text("hi")]);
    drain(&mut s, &mut buf);
    s.on_peer_gone();
    assert!(!s.is_reading());
    let mut buf = buf_of(&[text("stale")]);
    assert_eq!(s.receive(&mut buf, MAX, SMALL), None);
    assert!(buf.is_empty());
    assert_eq!(
        s.end(),
        Some(End {
            code: VANISHED,
            tell_upstream: true
        })
    );
    assert_eq!(VANISHED, 1006);
}

#[test]
fn after_upstream_gone_data_is_not_forwarded_and_upstream_not_told() {
    let mut s = Session::new(NOW);
    s.upstream_gone();
    let mut buf = buf_of(&[
        text("small"),
        binary(&large(50)),
        frame(OP_PING, b"still"),
        text("again"),
        close(1000, ""),
    ]);
    // Pings are still answered and the client's close still echoed: only data stops.
    assert_eq!(
        drain(&mut s, &mut buf),
        vec![
            Out::Pong(b"still".to_vec()),
            Out::Closed(Some(vec![0x03, 0xE8]))
        ]
    );
    assert_eq!(
        s.end(),
        Some(End {
            code: 1000,
            tell_upstream: false
        })
    );
}

#[test]
fn upstream_gone_then_our_close_ends_with_our_code_untold() {
    let mut s = Session::new(NOW);
    s.upstream_gone();
    // The driver closes the client with the game server's code.
    assert_eq!(s.begin_close(4003, NOW, &T), Some(NOW + 5));
    s.on_peer_gone();
    assert_eq!(
        s.end(),
        Some(End {
            code: 4003,
            tell_upstream: false
        })
    );
}

#[test]
fn a_fresh_session_that_vanishes_is_told_upstream() {
    let mut s = Session::new(NOW);
    assert!(s.is_open() && s.is_reading() && s.may_send() && !s.close_sent());
    s.on_peer_gone();
    assert_eq!(
        s.end(),
        Some(End {
            code: 1006,
            tell_upstream: true
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Rate limits

fn limited(messages: Option<(u32, u32)>, bytes: Option<(u32, u32)>, close: bool) -> Session {
    let bucket = |(rate, burst)| Bucket { rate, burst };
    Session::with_rates(
        NOW,
        Rates {
            messages: messages.map(bucket),
            bytes: bytes.map(bucket),
            close,
        },
    )
}

#[test]
fn a_burst_passes_then_messages_over_the_rate_are_dropped_until_the_clock_refills() {
    let mut s = limited(Some((2, 3)), None, false);
    let mut buf = buf_of(&[
        text("1"),
        text("2"),
        text("3"),
        text("4"),
        binary(&large(100)),
    ]);
    s.on_read(NOW);
    let out = drain(&mut s, &mut buf);
    assert_eq!(out.len(), 5, "{out:?}");
    assert!(matches!(out[2], Out::Small { .. }), "{out:?}");
    assert_eq!(out[3], Out::OverRate { close: false });
    assert_eq!(
        out[4],
        Out::OverRate { close: false },
        "a large message is metered too"
    );
    assert!(buf.is_empty(), "a dropped message stays in the buffer");
    assert!(s.is_open(), "drop keeps the session");
    // One second later: two more tokens (the rate), not the whole burst.
    s.on_read(NOW + 1);
    let mut buf = buf_of(&[text("5"), text("6"), text("7")]);
    let out = drain(&mut s, &mut buf);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Out::Small { .. }))
            .count(),
        2,
        "{out:?}"
    );
    // A long silence refills up to the burst only.
    s.on_read(NOW + 100);
    let mut buf = buf_of(&[text("a"), text("b"), text("c"), text("d")]);
    let out = drain(&mut s, &mut buf);
    assert_eq!(out.last(), Some(&Out::OverRate { close: false }), "{out:?}");
    assert_eq!(out.len(), 4);
}

#[test]
fn over_the_byte_rate_with_close_the_session_stops_reading() {
    let mut s = limited(None, Some((10, 40)), true);
    s.on_read(NOW);
    let mut buf = buf_of(&[binary(&large(30)), binary(&large(30)), text("after")]);
    let out = drain(&mut s, &mut buf);
    assert!(matches!(out[0], Out::Data { .. }), "{out:?}");
    assert_eq!(out[1], Out::OverRate { close: true });
    assert_eq!(out.len(), 2, "input after the limit was read: {out:?}");
    assert!(!s.is_open());
    assert!(buf.is_empty());
    // The driver closes with 1008, which is what the game server is told.
    assert!(s.begin_close(1008, NOW, &T).is_some());
    assert_eq!(s.end().map(|e| e.code), Some(1008));
}

#[test]
fn control_frames_and_a_session_without_limits_are_not_metered() {
    let mut s = limited(Some((1, 1)), None, true);
    s.on_read(NOW);
    let mut buf = buf_of(&[frame(OP_PING, b"p"), frame(OP_PING, b"q"), text("one")]);
    let out = drain(&mut s, &mut buf);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(matches!(out[2], Out::Small { .. }));
    let mut free = Session::new(NOW);
    let frames: Vec<Vec<u8>> = (0..500).map(|i| text(&i.to_string())).collect();
    let mut buf = buf_of(&frames);
    assert_eq!(drain(&mut free, &mut buf).len(), 500);
}

// ---------------------------------------------------------------------------------------------
// Slow messages

#[test]
fn a_message_trickling_slower_than_the_minimum_rate_is_too_slow_after_the_grace() {
    let mut s = Session::new(NOW);
    assert!(!s.too_slow(0, NOW + 100, 10, 1024), "nothing held");
    s.on_partial(4096, NOW);
    assert!(!s.too_slow(4096, NOW + 10, 10, 1024), "within the grace");
    assert!(
        s.too_slow(4096, NOW + 11, 10, 1024),
        "4096 B in 11 s is under 1 KiB/s"
    );
    assert!(
        !s.too_slow(20_000, NOW + 11, 10, 1024),
        "20 kB in 11 s is fast enough"
    );
    // The clock starts with the first byte held, not at each read.
    s.on_partial(8192, NOW + 5);
    assert!(s.too_slow(8192, NOW + 11, 10, 1024));
    // Once the message completes, the next one starts afresh.
    s.on_partial(0, NOW + 12);
    s.on_partial(100, NOW + 20);
    assert!(!s.too_slow(100, NOW + 25, 10, 1024));
    assert!(!s.too_slow(100, NOW + 1000, 10, 0), "off");
}

#[test]
fn a_stream_of_messages_split_across_reads_is_timed_per_message() {
    // Each read ends in the middle of the next message: the session always holds something, but
    // every message completes quickly, so none is too slow however long the stream lasts.
    let mut s = Session::new(NOW);
    let frame = binary(&[7u8; 100]);
    let (head, tail) = frame.split_at(40);
    let mut buf = BytesMut::from(head);
    assert!(s.receive(&mut buf, 1 << 20, 0).is_none());
    s.on_partial(buf.len(), NOW);
    for t in 1..100 {
        buf.extend_from_slice(tail);
        buf.extend_from_slice(head);
        assert!(matches!(
            s.receive(&mut buf, 1 << 20, 0),
            Some(Received::Data { .. })
        ));
        assert!(s.receive(&mut buf, 1 << 20, 0).is_none());
        s.on_partial(buf.len(), NOW + t);
        assert!(!s.too_slow(buf.len(), NOW + t, 10, 1024), "at {t} s");
    }
}

#[test]
fn the_receive_rate_is_the_message_so_far_over_its_age() {
    let mut s = Session::new(NOW);
    s.on_partial(4096, NOW);
    assert_eq!(
        s.receive_rate(4096, NOW),
        4096,
        "a message begun this second is one second old"
    );
    assert_eq!(s.receive_rate(4096, NOW + 4), 1024);
    // A quiet holder sinks below one that keeps sending.
    assert!(s.receive_rate(4096, NOW + 8) < s.receive_rate(40_960, NOW + 8));
}

#[test]
fn a_cut_session_reads_nothing_more_and_drops_its_fragments() {
    let mut s = Session::new(NOW);
    let mut buf = buf_of(&[encode_client_frame(false, 0, OP_TEXT, MASK, b"part one ")]);
    assert!(drain(&mut s, &mut buf).is_empty());
    assert_eq!(s.fragments_held(), 9);
    s.cut();
    assert_eq!(s.fragments_held(), 0);
    assert!(!s.is_open());
    let mut buf = buf_of(&[
        encode_client_frame(true, 0, OP_CONT, MASK, b"two"),
        text("x"),
    ]);
    assert!(
        drain(&mut s, &mut buf).is_empty(),
        "a cut session decided an input"
    );
}

#[test]
fn a_drop_pauses_reading_until_the_next_refill_and_close_does_not() {
    let mut s = limited(Some((1, 1)), None, false);
    s.on_read(NOW);
    assert_eq!(s.read_paused_until(NOW), None);
    let mut buf = buf_of(&[text("a"), text("b")]);
    drain(&mut s, &mut buf);
    assert_eq!(
        s.read_paused_until(NOW),
        Some(NOW + 1),
        "a drop pauses the reads"
    );
    assert_eq!(s.read_paused_until(NOW + 1), None, "until the next second");
    let mut c = limited(Some((1, 1)), None, true);
    c.on_read(NOW);
    let mut buf = buf_of(&[text("a"), text("b")]);
    drain(&mut c, &mut buf);
    assert_eq!(
        c.read_paused_until(NOW),
        None,
        "a closing session is not paused, it is done"
    );
    assert_eq!(Session::new(NOW).read_paused_until(NOW), None);
}
