//! Unit tests of the link state machine, driven without sockets or a runtime.

use super::*;

use std::rc::Rc;

use bytes::BytesMut;

use crate::link::handshake::{accept_reply, hello, HandshakeError};
use crate::protocol::{Open, Policy, MAX_VERSION, MIN_VERSION};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const MAX_FRAME: usize = 1 << 20;

/// Decodes the one whole frame in `bytes`, as the game server would read it.
fn decode_one(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = proto::decode(&mut buf, MAX_FRAME)
        .expect("the machine's frame decodes")
        .expect("the machine's frame is whole");
    assert!(buf.is_empty(), "{} bytes after the frame", buf.len());
    frame
}

/// A frame as the game server would send it, decoded as the driver would hand it over.
fn from_server(bytes: Bytes) -> Frame {
    decode_one(&bytes)
}

const HEADERS: &[(&str, &[u8])] = &[("user-agent", b"test/1"), ("x-region", b"eu")];

fn info() -> OpenInfo<'static> {
    OpenInfo {
        user: "alice",
        client_addr: "203.0.113.7:50000",
        target: "/play?room=9",
        headers: HEADERS,
    }
}

/// A link that completed its handshake at `now`, on version 1.
fn up_link<S: Clone>(now: Instant) -> Link<S> {
    let mut link = Link::new(now);
    link.on_up(MIN_VERSION, now);
    link
}

/// An up link carrying sessions `id -> handle` for each pair.
fn link_with(sessions: &[(u64, u32)]) -> Link<u32> {
    let mut link = up_link(Instant::now());
    for &(id, handle) in sessions {
        link.open(id, handle, &info()).unwrap();
    }
    link
}

fn close_from_server(session: u64, code: u16, reason: &str) -> Frame {
    from_server(proto::close(session, code, reason))
}

fn refuse_from_server(session: u64, code: u16, reason: &str) -> Frame {
    from_server(proto::refuse(session, code, reason))
}

fn data_from_server(session: u64, text: bool, payload: &[u8]) -> Frame {
    from_server(proto::data_frame(session, text, payload))
}

/// The LINK_ERROR a `Fail` action sends, decoded.
fn link_error_of(action: &Action<u32>) -> (u16, String) {
    let Action::Fail {
        reply: Some(reply), ..
    } = action
    else {
        panic!("expected a Fail with a reply, got {action:?}");
    };
    match decode_one(reply) {
        Frame::LinkError { code, message } => (code, message),
        other => panic!("expected LINK_ERROR, got {other:?}"),
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn hello_carries_our_version_and_identity() {
    assert_eq!(
        decode_one(&hello(3, 8, "edge-a")),
        Frame::Hello {
            version: 1,
            max_version: 2,
            core: 3,
            workers: 8,
            instance: "edge-a".into()
        }
    );
    assert_eq!(MIN_VERSION, 1);
}

#[test]
fn hello_ack_of_a_version_we_offered_opens_the_link_on_it() {
    let ack = from_server(proto::hello_ack(MIN_VERSION, "game-1"));
    assert_eq!(accept_reply(ack, 0), Ok(1));
    let ack = from_server(proto::hello_ack(MAX_VERSION, "game-1"));
    assert_eq!(accept_reply(ack, 0), Ok(2));
    // The server name does not matter.
    let ack = from_server(proto::hello_ack(MIN_VERSION, ""));
    assert_eq!(accept_reply(ack, 0), Ok(1));
}

#[test]
fn hello_ack_of_another_version_is_a_version_mismatch() {
    let ack = from_server(proto::hello_ack(3, "game-1"));
    let err = accept_reply(ack, 0).unwrap_err();
    assert_eq!(err, HandshakeError::Version { theirs: 3 });
    assert_eq!(
        err.to_string(),
        "version mismatch: we speak 1..=2, the game server answered 3"
    );
    assert!(err.is_version());
    // Version 0 as well: not in the range.
    let ack = from_server(proto::hello_ack(0, "game-1"));
    assert_eq!(
        accept_reply(ack, 0),
        Err(HandshakeError::Version { theirs: 0 })
    );
}

#[test]
fn a_version_mismatch_is_reported_even_with_bytes_following() {
    let ack = from_server(proto::hello_ack(3, "game-1"));
    assert_eq!(
        accept_reply(ack, 14),
        Err(HandshakeError::Version { theirs: 3 })
    );
}

#[test]
fn link_error_unsupported_version_is_unsupported() {
    let reply = from_server(proto::link_error(
        link_code::UNSUPPORTED_VERSION,
        "only 2 here",
    ));
    let err = accept_reply(reply, 0).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::Unsupported {
            message: "only 2 here".into()
        }
    );
    assert!(err.is_version());
    assert!(
        err.to_string()
            .starts_with("the game server speaks none of protocol versions 1..=2"),
        "{err}"
    );
    assert!(err.to_string().ends_with(": only 2 here"), "{err}");
}

#[test]
fn another_link_error_is_a_refusal_with_code_and_message() {
    for code in [
        link_code::MALFORMED,
        link_code::BEFORE_HELLO,
        link_code::INTERNAL,
        999,
    ] {
        let reply = from_server(proto::link_error(code, "full"));
        let err = accept_reply(reply, 0).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::Refused {
                code,
                message: "full".into()
            }
        );
        assert!(!err.is_version(), "code {code}");
        assert_eq!(
            err.to_string(),
            format!("game server refused the link ({code}): full")
        );
    }
}

#[test]
fn any_other_first_frame_is_unexpected() {
    let frames = [
        from_server(proto::ping([1; 8])),
        from_server(proto::pong([1; 8])),
        from_server(proto::goaway(1012, "restarting")),
        from_server(proto::hello(0, 1, "echo")),
        data_from_server(5, true, b"hi"),
        close_from_server(5, 1000, ""),
        from_server(proto::open(5, &info()).unwrap()),
    ];
    for frame in frames {
        let shown = format!("{frame:?}");
        let err = accept_reply(frame, 0).unwrap_err();
        assert!(
            matches!(&err, HandshakeError::Unexpected(got) if *got == shown),
            "{err:?}"
        );
        assert!(!err.is_version());
        assert!(
            err.to_string().starts_with("expected HELLO_ACK, got "),
            "{err}"
        );
    }
}

#[test]
fn bytes_after_the_right_ack_are_unexpected() {
    for more in [1, 14, 100_000] {
        let ack = from_server(proto::hello_ack(MIN_VERSION, "game-1"));
        let err = accept_reply(ack, more).unwrap_err();
        assert!(matches!(err, HandshakeError::Unexpected(_)), "{err:?}");
        assert!(!err.is_version());
        assert!(err.to_string().starts_with("expected HELLO_ACK, got "));
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

#[test]
fn open_returns_an_open_frame_for_the_session() {
    let mut link: Link<u32> = up_link(Instant::now());
    let frame = link.open(42, 7, &info()).unwrap();
    assert_eq!(
        decode_one(&frame),
        Frame::Open {
            session: 42,
            open: Open {
                user: "alice".into(),
                client_addr: "203.0.113.7:50000".into(),
                target: "/play?room=9".into(),
                headers: vec![
                    ("user-agent".into(), Bytes::from_static(b"test/1")),
                    ("x-region".into(), Bytes::from_static(b"eu")),
                ],
            }
        }
    );
    assert_eq!(link.session_count(), 1);
    assert_eq!(link.session(42), Some(&7));
    assert_eq!(link.session(43), None);
}

#[test]
fn an_open_that_cannot_be_encoded_opens_nothing() {
    let mut link: Link<u32> = up_link(Instant::now());
    let long_addr = "a".repeat(256);
    let bad = OpenInfo {
        client_addr: &long_addr,
        ..info()
    };
    let err = link.open(1, 10, &bad).unwrap_err();
    assert!(
        matches!(
            err,
            proto::EncodeError::FieldTooLong {
                field: "client address",
                len: 256,
                max: 255
            }
        ),
        "{err:?}"
    );
    assert_eq!(link.session_count(), 0);
    assert_eq!(link.session(1), None);
    assert!(matches!(
        link.on_frame(data_from_server(1, true, b"x")),
        Action::None
    ));
}

#[test]
fn data_header_only_while_up() {
    let mut link: Link<u32> = Link::new(Instant::now());
    assert!(!link.is_up());
    assert_eq!(link.data_header(1, true, 5), None, "before on_up");
    link.on_up(MIN_VERSION, Instant::now());
    assert!(link.is_up());
    assert!(link.data_header(1, true, 5).is_some());
    let _ = link.end();
    assert!(!link.is_up());
    assert_eq!(link.data_header(1, true, 5), None, "after end");
}

#[test]
fn data_header_with_its_payload_decodes_to_data() {
    let link: Link<u32> = up_link(Instant::now());
    for (text, payload) in [
        (true, &b"hello"[..]),
        (false, &[0u8, 0xFF, 3][..]),
        (true, &b""[..]),
    ] {
        let head = link
            .data_header(0x0102_0304_0506_0708, text, payload.len())
            .unwrap();
        let mut wire = head.to_vec();
        wire.extend_from_slice(payload);
        assert_eq!(
            decode_one(&wire),
            Frame::Data {
                session: 0x0102_0304_0506_0708,
                text,
                payload: Bytes::copy_from_slice(payload)
            }
        );
        // The same bytes as the reference encoder's.
        assert_eq!(
            &wire[..],
            &proto::data_frame(0x0102_0304_0506_0708, text, payload)[..]
        );
    }
}

#[test]
fn data_for_a_known_session_is_delivered_to_it() {
    let mut link = link_with(&[(1, 100), (2, 200)]);
    match link.on_frame(data_from_server(2, true, b"state")) {
        Action::Deliver { to, text, payload } => {
            assert_eq!((to, text, &payload[..]), (200, true, &b"state"[..]));
        }
        other => panic!("expected Deliver, got {other:?}"),
    }
    match link.on_frame(data_from_server(1, false, &[9, 9])) {
        Action::Deliver { to, text, payload } => {
            assert_eq!((to, text, &payload[..]), (100, false, &[9u8, 9][..]));
        }
        other => panic!("expected Deliver, got {other:?}"),
    }
    // Delivering keeps the session on the link.
    assert_eq!(link.session_count(), 2);
    assert!(matches!(
        link.on_frame(data_from_server(2, true, b"again")),
        Action::Deliver { to: 200, .. }
    ));
}

#[test]
fn data_for_an_unknown_session_is_dropped() {
    let mut link = link_with(&[(1, 100)]);
    assert!(matches!(
        link.on_frame(data_from_server(3, true, b"who")),
        Action::None
    ));
    assert_eq!(link.session_count(), 1);
}

#[test]
fn close_from_the_server_closes_the_session_with_its_code() {
    let mut link = link_with(&[(1, 100), (2, 200)]);
    match link.on_frame(close_from_server(1, 4000, "kicked")) {
        Action::CloseSession {
            session,
            code,
            reason,
        } => assert_eq!((session, code, reason.as_str()), (100, 4000, "kicked")),
        other => panic!("expected CloseSession, got {other:?}"),
    }
    assert_eq!(link.session_count(), 1);
    assert_eq!(link.session(1), None);
    assert_eq!(link.session(2), Some(&200));
    // Gone from the table: a second CLOSE, data and our own close all find nothing.
    assert!(matches!(
        link.on_frame(close_from_server(1, 4000, "kicked")),
        Action::None
    ));
    assert!(matches!(
        link.on_frame(data_from_server(1, true, b"late")),
        Action::None
    ));
    assert_eq!(link.closed(1, 1000, true), None, "no CLOSE owed");
}

#[test]
fn refuse_from_the_server_closes_the_session_with_its_code() {
    let mut link = link_with(&[(5, 500)]);
    match link.on_frame(refuse_from_server(5, 4003, "banned")) {
        Action::CloseSession {
            session,
            code,
            reason,
        } => assert_eq!((session, code, reason.as_str()), (500, 4003, "banned")),
        other => panic!("expected CloseSession, got {other:?}"),
    }
    assert_eq!(link.session_count(), 0);
    assert!(matches!(
        link.on_frame(refuse_from_server(5, 4003, "banned")),
        Action::None
    ));
    assert_eq!(link.closed(5, 1001, true), None);
}

#[test]
fn a_server_code_invalid_for_websocket_becomes_1011() {
    for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 5000, u16::MAX] {
        let mut link = link_with(&[(1, 100), (2, 200)]);
        assert!(
            matches!(
                link.on_frame(close_from_server(1, bad, "x")),
                Action::CloseSession { code: 1011, .. }
            ),
            "CLOSE {bad}"
        );
        assert!(
            matches!(
                link.on_frame(refuse_from_server(2, bad, "x")),
                Action::CloseSession { code: 1011, .. }
            ),
            "REFUSE {bad}"
        );
    }
    for good in [1000u16, 1001, 1008, 1012, 3000, 4999] {
        let mut link = link_with(&[(1, 100)]);
        assert!(
            matches!(
                link.on_frame(close_from_server(1, good, "")),
                Action::CloseSession { code, .. } if code == good
            ),
            "CLOSE {good}"
        );
    }
}

#[test]
fn ws_close_code_keeps_valid_codes_only() {
    assert_eq!(ws_close_code(1000), 1000);
    assert_eq!(ws_close_code(1012), 1012);
    assert_eq!(ws_close_code(4999), 4999);
    assert_eq!(ws_close_code(1005), 1011);
    assert_eq!(ws_close_code(999), 1011);
    assert_eq!(ws_close_code(5000), 1011);
}

#[test]
fn closed_owes_one_close_frame_while_up() {
    let mut link = link_with(&[(9, 900)]);
    let frame = link.closed(9, 1001, true).expect("a CLOSE is owed");
    assert_eq!(
        decode_one(&frame),
        Frame::Close {
            session: 9,
            code: 1001,
            reason: String::new()
        }
    );
    assert_eq!(link.session_count(), 0);
    assert_eq!(link.closed(9, 1001, true), None, "only once");
}

#[test]
fn closed_carries_the_clients_code() {
    let mut link = link_with(&[(1, 1), (2, 2)]);
    for (id, code) in [(1, 1006), (2, 1005)] {
        let frame = link.closed(id, code, true).unwrap();
        assert!(
            matches!(decode_one(&frame), Frame::Close { session, code: c, .. } if session == id && c == code)
        );
    }
}

#[test]
fn closed_without_tell_sends_nothing_but_removes_the_session() {
    let mut link = link_with(&[(9, 900), (10, 1000)]);
    assert_eq!(link.closed(9, 1000, false), None);
    assert_eq!(link.session_count(), 1);
    assert_eq!(link.session(9), None);
    assert!(matches!(
        link.on_frame(data_from_server(9, true, b"late")),
        Action::None
    ));
    assert_eq!(link.closed(9, 1000, true), None, "already gone");
}

#[test]
fn closed_while_down_sends_nothing_but_removes_the_session() {
    let mut link: Link<u32> = Link::new(Instant::now());
    link.open(3, 30, &info()).unwrap();
    assert_eq!(link.closed(3, 1000, true), None, "the link is not up");
    assert_eq!(link.session_count(), 0);
}

#[test]
fn closed_for_an_unknown_session_owes_nothing() {
    let mut link = link_with(&[(1, 100)]);
    assert_eq!(link.closed(2, 1000, true), None);
    assert_eq!(link.session_count(), 1);
}

#[test]
fn the_link_lets_go_of_session_handles() {
    let a: Rc<str> = Rc::from("a");
    let b: Rc<str> = Rc::from("b");
    let c: Rc<str> = Rc::from("c");
    let mut link: Link<Rc<str>> = up_link(Instant::now());
    for (id, h) in [(1, &a), (2, &b), (3, &c)] {
        link.open(id, Rc::clone(h), &info()).unwrap();
        assert_eq!(Rc::strong_count(h), 2);
    }
    // Delivering lends a clone, the table keeps its own.
    let Action::Deliver { to, .. } = link.on_frame(data_from_server(1, true, b"x")) else {
        panic!("expected Deliver");
    };
    assert!(Rc::ptr_eq(&to, &a));
    drop(to);
    assert_eq!(Rc::strong_count(&a), 2);

    assert!(link.closed(1, 1000, false).is_none());
    assert_eq!(Rc::strong_count(&a), 1, "closed drops the handle");
    let Action::CloseSession { session, .. } = link.on_frame(close_from_server(2, 1000, "")) else {
        panic!("expected CloseSession");
    };
    drop(session);
    assert_eq!(
        Rc::strong_count(&b),
        1,
        "a server CLOSE hands the handle over"
    );
    let teardown = link.end();
    assert_eq!(teardown.sessions.len(), 1);
    assert!(Rc::ptr_eq(&teardown.sessions[0], &c));
    drop(teardown);
    assert_eq!(Rc::strong_count(&c), 1, "end hands every handle over");
}

// ---------------------------------------------------------------------------------------------
// Ping and pong
// ---------------------------------------------------------------------------------------------

#[test]
fn server_ping_is_answered_with_a_pong_of_the_same_token() {
    let mut link = link_with(&[]);
    let token = [1, 2, 3, 4, 5, 6, 7, 8];
    let Action::Reply(reply) = link.on_frame(from_server(proto::ping(token))) else {
        panic!("expected Reply");
    };
    assert_eq!(decode_one(&reply), Frame::Pong(token));
}

#[test]
fn server_pong_needs_nothing() {
    let mut link = link_with(&[(1, 100)]);
    assert!(matches!(
        link.on_frame(from_server(proto::pong([0; 8]))),
        Action::None
    ));
    assert!(link.is_up());
    assert_eq!(link.session_count(), 1);
}

// ---------------------------------------------------------------------------------------------
// GOAWAY and link loss
// ---------------------------------------------------------------------------------------------

#[test]
fn link_loss_closes_every_session_with_1011() {
    let mut link = link_with(&[(1, 100), (2, 200), (3, 300)]);
    let teardown = link.end();
    assert_eq!(teardown.code, 1011);
    assert_eq!(teardown.reason, "upstream lost");
    assert_eq!(sorted(teardown.sessions), vec![100, 200, 300]);
    assert_eq!(link.session_count(), 0);
    assert!(!link.is_up());
    assert_eq!(link.data_header(1, true, 1), None);
    assert_eq!(link.closed(1, 1000, true), None);
    // A second end has nothing left to close.
    assert!(link.end().sessions.is_empty());
}

#[test]
fn link_loss_with_no_sessions_is_empty() {
    let mut link: Link<u32> = up_link(Instant::now());
    let teardown = link.end();
    assert!(teardown.sessions.is_empty());
    assert_eq!(teardown.code, 1011);
}

#[test]
fn goaway_gives_its_code_to_every_session_at_the_end() {
    let mut link = link_with(&[(1, 100), (2, 200)]);
    match link.on_frame(from_server(proto::goaway(1012, "restarting"))) {
        Action::GoingAway { code, reason } => {
            assert_eq!((code, reason.as_str()), (1012, "restarting"))
        }
        other => panic!("expected GoingAway, got {other:?}"),
    }
    // The link and its sessions carry on until the server closes it.
    assert!(link.is_up());
    assert_eq!(link.session_count(), 2);
    let teardown = link.end();
    assert_eq!(
        (teardown.code, teardown.reason.as_str()),
        (1012, "restarting")
    );
    assert_eq!(sorted(teardown.sessions), vec![100, 200]);
}

#[test]
fn the_latest_goaway_wins() {
    let mut link = link_with(&[(1, 100)]);
    let _ = link.on_frame(from_server(proto::goaway(1012, "restarting")));
    let _ = link.on_frame(from_server(proto::goaway(1001, "gone for good")));
    let teardown = link.end();
    assert_eq!(
        (teardown.code, teardown.reason.as_str()),
        (1001, "gone for good")
    );
}

#[test]
fn a_goaway_code_invalid_for_websocket_becomes_1011_but_keeps_its_reason() {
    let mut link = link_with(&[(1, 100)]);
    let action = link.on_frame(from_server(proto::goaway(1005, "odd")));
    assert!(
        matches!(action, Action::GoingAway { code: 1005, .. }),
        "{action:?}"
    );
    let teardown = link.end();
    assert_eq!((teardown.code, teardown.reason.as_str()), (1011, "odd"));
}

#[test]
fn a_goaway_applies_to_one_connection_only() {
    let mut link = link_with(&[(1, 100)]);
    let _ = link.on_frame(from_server(proto::goaway(1012, "restarting")));
    assert_eq!(link.end().code, 1012);
    // Reconnected, and this connection dies without GOAWAY.
    link.on_up(MIN_VERSION, Instant::now());
    link.open(2, 200, &info()).unwrap();
    let teardown = link.end();
    assert_eq!(
        (teardown.code, teardown.reason.as_str()),
        (1011, "upstream lost")
    );
}

#[test]
fn on_up_forgets_an_old_goaway() {
    let mut link = link_with(&[(1, 100)]);
    let _ = link.on_frame(from_server(proto::goaway(1012, "restarting")));
    // A new connection comes up before the old one's end was processed.
    link.on_up(MIN_VERSION, Instant::now());
    assert_eq!(link.end().code, 1011);
}

// ---------------------------------------------------------------------------------------------
// Broken peers
// ---------------------------------------------------------------------------------------------

#[test]
fn handshake_frames_after_the_handshake_fail_the_link() {
    let cases = [
        (from_server(proto::hello(0, 1, "x")), FrameType::Hello),
        (
            from_server(proto::hello_ack(MIN_VERSION, "again")),
            FrameType::HelloAck,
        ),
        (
            from_server(proto::open(7, &info()).unwrap()),
            FrameType::Open,
        ),
    ];
    for (frame, ty) in cases {
        let mut link = link_with(&[(1, 100)]);
        let action = link.on_frame(frame);
        let (code, message) = link_error_of(&action);
        assert_eq!(code, link_code::MALFORMED);
        assert_eq!(code, 2);
        assert_eq!(message, format!("unexpected {ty:?} frame"));
        match action {
            Action::Fail {
                end: LinkEnd::Unexpected(got),
                ..
            } => assert_eq!(got, ty),
            other => panic!("expected Fail(Unexpected), got {other:?}"),
        }
    }
}

#[test]
fn link_error_from_the_server_fails_without_reply() {
    let mut link = link_with(&[(1, 100)]);
    match link.on_frame(from_server(proto::link_error(
        link_code::INTERNAL,
        "db down",
    ))) {
        Action::Fail {
            reply: None,
            end: LinkEnd::Remote { code, message },
        } => assert_eq!((code, message.as_str()), (5, "db down")),
        other => panic!("expected Fail(Remote) without reply, got {other:?}"),
    }
}

#[test]
fn a_decode_error_fails_with_a_link_error_of_its_code() {
    let errors = [
        DecodeError::FrameTooLarge {
            length: 5_000_000,
            max: MAX_FRAME,
        },
        DecodeError::UnknownType(0x99),
        DecodeError::LengthTooSmall(3),
        DecodeError::ZeroSession(FrameType::Data),
    ];
    for e in errors {
        let mut link = link_with(&[(1, 100)]);
        let action = link.on_decode_error(e.clone());
        let (code, message) = link_error_of(&action);
        assert_eq!(code, e.link_error_code(), "{e:?}");
        assert_eq!(message, e.to_string());
        match action {
            Action::Fail {
                end: LinkEnd::Protocol(got),
                ..
            } => assert_eq!(got, e),
            other => panic!("expected Fail(Protocol), got {other:?}"),
        }
    }
}

#[test]
fn a_too_large_frame_is_link_error_4_and_others_2() {
    let mut link: Link<u32> = up_link(Instant::now());
    let too_large = link.on_decode_error(DecodeError::FrameTooLarge {
        length: u32::MAX,
        max: 1024,
    });
    assert_eq!(link_error_of(&too_large).0, 4);
    let unknown = link.on_decode_error(DecodeError::UnknownType(0x7F));
    assert_eq!(link_error_of(&unknown).0, 2);
}

#[test]
fn a_decode_error_from_real_bytes() {
    // A frame of an undefined type, as the driver's decoder sees it.
    let mut wire = BytesMut::from(&proto::ping([0; 8])[..]);
    wire[4] = 0x7F;
    let e = proto::decode(&mut wire, MAX_FRAME).unwrap_err();
    let mut link: Link<u32> = up_link(Instant::now());
    let action = link.on_decode_error(e);
    assert_eq!(
        link_error_of(&action),
        (2, "unknown frame type 0x7f".to_string())
    );
}

#[test]
fn link_end_texts() {
    assert_eq!(
        LinkEnd::Unexpected(FrameType::Hello).to_string(),
        "unexpected Hello frame"
    );
    assert_eq!(
        LinkEnd::Remote {
            code: 5,
            message: "db down".into()
        }
        .to_string(),
        "game server reported error 5: db down"
    );
}

// ---------------------------------------------------------------------------------------------
// Keepalive
// ---------------------------------------------------------------------------------------------

fn ping_token(k: Keepalive) -> u64 {
    let Keepalive::Ping(frame) = k else {
        panic!("expected a ping, got {k:?}");
    };
    match decode_one(&frame) {
        Frame::Ping(token) => u64::from_be_bytes(token),
        other => panic!("expected PING, got {other:?}"),
    }
}

#[test]
fn keepalive_pings_with_increasing_tokens_while_data_arrives() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(30);
    let mut link: Link<u32> = up_link(t0);
    let mut tokens = Vec::new();
    for i in 1..=10u64 {
        // Data every 20 s, ticks every 20 s: never 30 s silent.
        let now = t0 + Duration::from_secs(20 * i);
        link.on_received(now - Duration::from_secs(1));
        tokens.push(ping_token(link.keepalive(now, timeout)));
    }
    assert_eq!(tokens, (1..=10).collect::<Vec<_>>());
}

#[test]
fn keepalive_is_silent_once_nothing_arrived_for_the_timeout() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(30);
    let mut link: Link<u32> = up_link(t0);
    assert_eq!(
        ping_token(link.keepalive(t0 + Duration::from_secs(10), timeout)),
        1
    );
    link.on_received(t0 + Duration::from_secs(20));
    let just_before = t0 + Duration::from_secs(50) - Duration::from_millis(1);
    assert_eq!(ping_token(link.keepalive(just_before, timeout)), 2);
    assert_eq!(
        link.keepalive(t0 + Duration::from_secs(50), timeout),
        Keepalive::Silent,
        "exactly the timeout"
    );
    assert_eq!(
        link.keepalive(t0 + Duration::from_secs(500), timeout),
        Keepalive::Silent
    );
}

#[test]
fn keepalive_counts_silence_from_on_up() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(30);
    let mut link: Link<u32> = Link::new(t0);
    // The handshake took a while; the new connection's silence starts when it came up.
    link.on_up(MIN_VERSION, t0 + Duration::from_secs(100));
    assert_eq!(
        ping_token(link.keepalive(t0 + Duration::from_secs(110), timeout)),
        1
    );
    assert_eq!(
        link.keepalive(t0 + Duration::from_secs(130), timeout),
        Keepalive::Silent
    );
}

#[test]
fn keepalive_with_a_clock_behind_the_last_receive_still_pings() {
    let t0 = Instant::now();
    let mut link: Link<u32> = up_link(t0 + Duration::from_secs(5));
    assert_eq!(ping_token(link.keepalive(t0, Duration::from_secs(1))), 1);
}

// ---------------------------------------------------------------------------------------------
// Backlog
// ---------------------------------------------------------------------------------------------

#[test]
fn congested_strictly_over_the_backlog() {
    assert!(!congested(0, 0));
    assert!(congested(1, 0));
    assert!(!congested(999, 1000));
    assert!(!congested(1000, 1000));
    assert!(congested(1001, 1000));
}

#[test]
fn relieved_at_or_below_half() {
    assert!(relieved(0, 1000));
    assert!(relieved(499, 1000));
    assert!(relieved(500, 1000));
    assert!(!relieved(501, 1000));
    assert!(!relieved(1000, 1000));
    // Odd backlog: half rounds down.
    assert!(relieved(5, 11));
    assert!(!relieved(6, 11));
    assert!(relieved(0, 0));
}

#[test]
fn between_half_and_full_neither_rule_fires() {
    // Hysteresis: a queue in (backlog/2, backlog] neither pauses nor resumes readers.
    for queued in 501..=1000 {
        assert!(!congested(queued, 1000), "{queued}");
        assert!(!relieved(queued, 1000), "{queued}");
    }
}

// ---------------------------------------------------------------------------------------------
// Fan-out (version 2)
// ---------------------------------------------------------------------------------------------

/// An up link on version 2 carrying sessions `id -> handle`.
fn v2_link_with(sessions: &[(u64, u32)]) -> Link<u32> {
    let mut link = Link::new(Instant::now());
    link.on_up(2, Instant::now());
    for &(id, handle) in sessions {
        link.open(id, handle, &info()).unwrap();
    }
    link
}

fn join(link: &mut Link<u32>, session: u64, policy: Policy, group: &[u8]) {
    let frame = from_server(proto::join(session, policy, group).unwrap());
    assert!(matches!(link.on_frame(frame), Action::None));
}

/// The targets of a fan-out action, sorted, with its group id.
fn fanout_of(action: Action<u32>) -> (Vec<(u32, Policy)>, u32, bool, Bytes) {
    let Action::Fanout(f) = action else {
        panic!("expected a fan-out, got {action:?}");
    };
    let mut t = f.targets;
    t.sort_by_key(|(h, _)| *h);
    (t, f.group, f.text, f.payload)
}

#[test]
fn publish_reaches_the_members_of_the_group_but_the_sender() {
    let mut link = v2_link_with(&[(1, 10), (2, 20), (3, 30)]);
    join(&mut link, 1, Policy::Close, b"red");
    join(&mut link, 2, Policy::Latest, b"red");
    join(&mut link, 3, Policy::Drop, b"blue");
    let publish = from_server(proto::publish(b"red", 0, true, b"hi").unwrap());
    let (targets, group, text, payload) = fanout_of(link.on_frame(publish));
    assert_eq!(targets, vec![(10, Policy::Close), (20, Policy::Latest)]);
    assert_ne!(group, 0);
    assert!(text);
    assert_eq!(&payload[..], b"hi");
    let publish = from_server(proto::publish(b"red", 1, false, b"x").unwrap());
    assert_eq!(
        fanout_of(link.on_frame(publish)).0,
        vec![(20, Policy::Latest)]
    );
    // An unknown group delivers nothing.
    let publish = from_server(proto::publish(b"green", 0, false, b"x").unwrap());
    assert!(matches!(link.on_frame(publish), Action::None));
}

#[test]
fn leave_and_close_take_a_session_out_of_its_groups() {
    let mut link = v2_link_with(&[(1, 10), (2, 20)]);
    join(&mut link, 1, Policy::Close, b"red");
    join(&mut link, 2, Policy::Close, b"red");
    join(&mut link, 1, Policy::Close, b"blue");
    let leave = from_server(proto::leave(2, b"red").unwrap());
    assert!(matches!(link.on_frame(leave), Action::None));
    let publish = || from_server(proto::publish(b"red", 0, false, b"x").unwrap());
    assert_eq!(
        fanout_of(link.on_frame(publish())).0,
        vec![(10, Policy::Close)]
    );
    // The client side closing: session 1 leaves red and blue.
    link.closed(1, 1000, true);
    assert!(matches!(link.on_frame(publish()), Action::None));
    assert_eq!(link.group_count(), 0);
    // The server closing a session does the same.
    join(&mut link, 2, Policy::Close, b"red");
    link.on_frame(close_from_server(2, 1000, ""));
    assert_eq!(link.group_count(), 0);
}

#[test]
fn a_join_for_a_session_the_link_does_not_carry_is_ignored() {
    let mut link = v2_link_with(&[(1, 10)]);
    join(&mut link, 99, Policy::Close, b"red");
    assert_eq!(link.group_count(), 0);
}

#[test]
fn broadcast_and_multicast_reach_their_sessions_under_the_close_rule() {
    let mut link = v2_link_with(&[(1, 10), (2, 20), (3, 30)]);
    let b = from_server(proto::broadcast(2, true, b"all"));
    let (targets, group, ..) = fanout_of(link.on_frame(b));
    assert_eq!(targets, vec![(10, Policy::Close), (30, Policy::Close)]);
    assert_eq!(group, 0);
    let m = from_server(proto::multicast(&[3, 1, 77], false, b"some").unwrap());
    let (targets, ..) = fanout_of(link.on_frame(m));
    assert_eq!(
        targets,
        vec![(10, Policy::Close), (30, Policy::Close)],
        "77 is unknown"
    );
}

#[test]
fn version_2_frames_on_a_version_1_link_fail_it() {
    let mut link = link_with(&[(1, 10)]);
    let frame = from_server(proto::join(1, Policy::Close, b"red").unwrap());
    let action = link.on_frame(frame);
    assert_eq!(link_error_of(&action).0, link_code::MALFORMED);
    let frame = from_server(proto::broadcast(0, true, b"x"));
    assert_eq!(link_error_of(&link.on_frame(frame)).0, link_code::MALFORMED);
}

#[test]
fn a_link_that_ends_forgets_its_groups() {
    let mut link = v2_link_with(&[(1, 10)]);
    join(&mut link, 1, Policy::Close, b"red");
    link.end();
    assert_eq!(link.group_count(), 0);
}
