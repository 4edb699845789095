//! Every way a client frame fails the connection, each checked by the code of the server's close
//! frame, and the echo of a client's own close followed by the end of the TCP connection.

mod support;

use std::io::Write;
use std::time::Duration;

use ringgate::ws::OpCode;
use support::*;

/// A server whose close handshake times out quickly, so that failed connections end fast.
fn server() -> Gateway {
    Gateway::demo(&["--close-timeout", "1s"])
}

/// Opens a session, sends `bytes` in one write, and expects the connection to fail with `code`.
fn fails_with(server: &Gateway, what: &str, bytes: &[u8], code: u16) {
    let mut s = raw_upgrade(server.addr(), &[]);
    s.write_all(bytes)
        .unwrap_or_else(|e| panic!("{what}: write failed: {e}"));
    let f = read_frame_skipping_pings(&mut s);
    assert_eq!(
        f.opcode, OP_CLOSE,
        "{what}: expected a close with {code}, got {f:?}"
    );
    assert_eq!(
        f.close_code(),
        Some(code),
        "{what}: wrong close code in {f:?}"
    );
    answer_close(&mut s, code);
    expect_end(&mut s);
}

/// A valid text message was sent just before a bad frame. Its echo comes back from the game server
/// asynchronously, so the failure may overtake it (and nothing follows a close): the echo is
/// optional, the close with `code` is not.
fn echo_maybe_then_fail(s: &mut std::net::TcpStream, text: &[u8], code: u16) {
    let f = read_frame_skipping_pings(s);
    if f.opcode == OP_TEXT {
        assert_eq!(
            (f.fin, f.payload.as_slice()),
            (true, text),
            "wrong echo {f:?}"
        );
    } else {
        assert_eq!(
            f.opcode, OP_CLOSE,
            "expected the echo or a close, got {f:?}"
        );
        assert_eq!(f.close_code(), Some(code), "{f:?}");
        answer_close(s, code);
        expect_end(s);
        return;
    }
    expect_fail(s, code);
}

fn frames(list: &[(bool, u8, OpCode, &[u8])]) -> Vec<u8> {
    list.iter()
        .flat_map(|&(fin, rsv, op, payload)| frame_bytes(fin, rsv, op, payload, true))
        .collect()
}

#[test]
fn an_unmasked_client_frame_gets_1002() {
    let server = server();
    fails_with(
        &server,
        "unmasked text",
        &frame_bytes(true, 0, OP_TEXT, b"hello", false),
        1002,
    );
    fails_with(
        &server,
        "unmasked empty binary",
        &frame_bytes(true, 0, OP_BINARY, b"", false),
        1002,
    );
    fails_with(
        &server,
        "unmasked ping",
        &frame_bytes(true, 0, OP_PING, b"p", false),
        1002,
    );
    // After a valid masked frame too.
    let mut both = frame_bytes(true, 0, OP_TEXT, b"ok", true);
    both.extend(frame_bytes(true, 0, OP_TEXT, b"bad", false));
    let mut s = raw_upgrade(server.addr(), &[]);
    s.write_all(&both).unwrap();
    echo_maybe_then_fail(&mut s, b"ok", 1002);
    server.wait_stats("protocol_errors counted", Duration::from_secs(5), |s| {
        s.counter("protocol_errors") >= 4
    });
}

#[test]
fn rsv_bits_get_1002() {
    let server = server();
    for rsv in [0b100, 0b010, 0b001, 0b111] {
        fails_with(
            &server,
            &format!("rsv {rsv:#05b}"),
            &frame_bytes(true, rsv, OP_TEXT, b"x", true),
            1002,
        );
    }
    fails_with(
        &server,
        "rsv on a ping",
        &frame_bytes(true, 0b010, OP_PING, b"", true),
        1002,
    );
}

#[test]
fn reserved_opcodes_get_1002() {
    let server = server();
    for op in (3..=7).chain(0xB..=0xF) {
        fails_with(
            &server,
            &format!("opcode {op:#x}"),
            &frame_bytes(true, 0, op, b"", true),
            1002,
        );
    }
}

#[test]
fn a_control_frame_over_125_bytes_gets_1002() {
    let server = server();
    fails_with(
        &server,
        "126-byte ping",
        &frame_bytes(true, 0, OP_PING, &[1; 126], true),
        1002,
    );
    fails_with(
        &server,
        "126-byte pong",
        &frame_bytes(true, 0, OP_PONG, &[1; 126], true),
        1002,
    );
    let mut reason = close_payload(1000, b"");
    reason.extend([b'r'; 124]);
    fails_with(
        &server,
        "126-byte close",
        &frame_bytes(true, 0, OP_CLOSE, &reason, true),
        1002,
    );
    // 125 is fine.
    let mut s = raw_upgrade(server.addr(), &[]);
    send_frame(&mut s, true, 0, OP_PING, &[2; 125], true);
    let f = read_frame(&mut s);
    assert_eq!((f.opcode, f.payload), (OP_PONG, vec![2; 125]));
}

#[test]
fn a_fragmented_control_frame_gets_1002() {
    let server = server();
    fails_with(
        &server,
        "ping with FIN=0",
        &frame_bytes(false, 0, OP_PING, b"p", true),
        1002,
    );
    fails_with(
        &server,
        "pong with FIN=0",
        &frame_bytes(false, 0, OP_PONG, b"p", true),
        1002,
    );
    fails_with(
        &server,
        "close with FIN=0",
        &frame_bytes(false, 0, OP_CLOSE, &close_payload(1000, b""), true),
        1002,
    );
}

#[test]
fn a_continuation_with_nothing_to_continue_gets_1002() {
    let server = server();
    fails_with(
        &server,
        "first frame is a continuation",
        &frames(&[(true, 0, OP_CONT, b"x")]),
        1002,
    );
    fails_with(
        &server,
        "non-final lone continuation",
        &frames(&[(false, 0, OP_CONT, b"x")]),
        1002,
    );
    // After a complete message, there is nothing to continue either.
    let mut s = raw_upgrade(server.addr(), &[]);
    s.write_all(&frames(&[
        (true, 0, OP_TEXT, b"done"),
        (true, 0, OP_CONT, b"more"),
    ]))
    .unwrap();
    echo_maybe_then_fail(&mut s, b"done", 1002);
}

#[test]
fn a_new_data_frame_inside_a_fragmented_message_gets_1002() {
    let server = server();
    fails_with(
        &server,
        "text inside text",
        &frames(&[(false, 0, OP_TEXT, b"a"), (true, 0, OP_TEXT, b"b")]),
        1002,
    );
    fails_with(
        &server,
        "binary inside text",
        &frames(&[(false, 0, OP_TEXT, b"a"), (true, 0, OP_BINARY, b"b")]),
        1002,
    );
    fails_with(
        &server,
        "text inside binary, after a continuation",
        &frames(&[
            (false, 0, OP_BINARY, b"a"),
            (false, 0, OP_CONT, b"b"),
            (false, 0, OP_TEXT, b"c"),
        ]),
        1002,
    );
}

#[test]
fn invalid_utf8_in_a_text_message_gets_1007() {
    let server = server();
    let cases: [(&str, &[u8]); 8] = [
        ("0xFF", b"abc\xff"),
        ("lone continuation byte", b"\x80"),
        ("overlong '/'", b"\xc0\xaf"),
        ("overlong NUL (3 bytes)", b"\xe0\x80\x80"),
        ("UTF-16 surrogate", b"\xed\xa0\x80"),
        ("above U+10FFFF", b"\xf4\x90\x80\x80"),
        ("truncated at the end of the message", b"ok\xe2\x82"),
        ("0xF5", b"\xf5\x80\x80\x80"),
    ];
    for (what, bytes) in cases {
        fails_with(
            &server,
            what,
            &frame_bytes(true, 0, OP_TEXT, bytes, true),
            1007,
        );
    }
    // Binary messages are not checked.
    let mut s = raw_upgrade(server.addr(), &[]);
    send_frame(&mut s, true, 0, OP_BINARY, b"\xff\xc0", true);
    assert_eq!(read_message(&mut s), (OP_BINARY, b"\xff\xc0".to_vec()));
}

#[test]
fn invalid_utf8_split_across_fragments_gets_1007() {
    let server = server();
    fails_with(
        &server,
        "valid prefix, then a bad continuation byte",
        &frames(&[(false, 0, OP_TEXT, b"ab\xe2\x82"), (true, 0, OP_CONT, b"(")]),
        1007,
    );
    fails_with(
        &server,
        "sequence cut by the end of the message",
        &frames(&[(false, 0, OP_TEXT, b"a\xe2"), (true, 0, OP_CONT, b"")]),
        1007,
    );
    fails_with(
        &server,
        "surrogate split over three fragments",
        &frames(&[
            (false, 0, OP_TEXT, b"\xed"),
            (false, 0, OP_CONT, b"\xa0"),
            (true, 0, OP_CONT, b"\x80"),
        ]),
        1007,
    );
    // Valid characters split across fragments are fine.
    let mut s = raw_upgrade(server.addr(), &[]);
    s.write_all(&frames(&[
        (false, 0, OP_TEXT, b"\xf0\x9f"),
        (false, 0, OP_CONT, b"\x98"),
        (true, 0, OP_CONT, b"\x80!"),
    ]))
    .unwrap();
    assert_eq!(read_message(&mut s), (OP_TEXT, "😀!".as_bytes().to_vec()));
}

#[test]
fn invalid_utf8_in_the_first_fragment_fails_without_waiting_for_the_rest() {
    let server = server();
    for (what, first) in [
        ("0xFF", &b"ab\xffcd"[..]),
        ("0xC0", b"\xc0"),
        ("0xF5", b"x\xf5"),
        ("surrogate prefix", b"\xed\xa0"),
    ] {
        // Only a non-final first fragment is sent; the message is never finished.
        fails_with(
            &server,
            &format!("first fragment with {what}"),
            &frame_bytes(false, 0, OP_TEXT, first, true),
            1007,
        );
    }
}

#[test]
fn a_message_over_max_message_size_gets_1009_from_the_header_alone() {
    let server = Gateway::demo(&["--close-timeout", "1s", "--max-message-size", "1000"]);
    let header =
        |fin: bool, op: OpCode, len: u64| frame_header(fin, 0, op, len, Some(random_mask()));
    fails_with(
        &server,
        "16-bit length 1001",
        &header(true, OP_BINARY, 1001),
        1009,
    );
    fails_with(&server, "text of 1001", &header(true, OP_TEXT, 1001), 1009);
    fails_with(
        &server,
        "64-bit length 2^40",
        &header(true, OP_BINARY, 1 << 40),
        1009,
    );
    let mut two = frame_bytes(false, 0, OP_BINARY, &[0; 600], true);
    two.extend(header(true, OP_CONT, 401));
    fails_with(&server, "fragments totalling 1001", &two, 1009);
    // Exactly the limit is echoed, also in fragments.
    let mut s = raw_upgrade(server.addr(), &[]);
    send_frame(&mut s, true, 0, OP_BINARY, &[9; 1000], true);
    assert_eq!(read_message(&mut s), (OP_BINARY, vec![9; 1000]));
    send_frame(&mut s, false, 0, OP_BINARY, &[8; 600], true);
    send_frame(&mut s, true, 0, OP_CONT, &[8; 400], true);
    assert_eq!(read_message(&mut s), (OP_BINARY, vec![8; 1000]));
}

#[test]
fn a_close_with_a_one_byte_payload_gets_1002() {
    let server = server();
    fails_with(
        &server,
        "1-byte close",
        &frame_bytes(true, 0, OP_CLOSE, &[0x03], true),
        1002,
    );
}

#[test]
fn a_close_with_an_invalid_code_gets_1002() {
    let server = server();
    // Codes no endpoint may send (RFC 6455 7.4): never used (0-999), reserved (1004), reserved for
    // local use only (1005, 1006, 1015), unassigned (1016-2999) and beyond 4999.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        fails_with(
            &server,
            &format!("close code {code}"),
            &frame_bytes(true, 0, OP_CLOSE, &close_payload(code, b""), true),
            1002,
        );
    }
}

#[test]
fn a_close_reason_that_is_not_utf8_gets_1007() {
    let server = server();
    fails_with(
        &server,
        "close reason 0xFF 0xFE",
        &frame_bytes(true, 0, OP_CLOSE, &close_payload(1000, b"\xff\xfe"), true),
        1007,
    );
    fails_with(
        &server,
        "close reason with a surrogate",
        &frame_bytes(
            true,
            0,
            OP_CLOSE,
            &close_payload(1000, b"ok \xed\xa0\x80"),
            true,
        ),
        1007,
    );
}

/// Sends a close with `code` and `reason`; the answer carries the same code, then TCP ends with EOF.
fn close_is_echoed(server: &Gateway, code: u16, reason: &[u8]) {
    let mut s = raw_upgrade(server.addr(), &[]);
    // A message first, so the session is in full use.
    send_frame(&mut s, true, 0, OP_TEXT, b"before", true);
    assert_eq!(read_message(&mut s), (OP_TEXT, b"before".to_vec()));
    send_close(&mut s, code, reason);
    let f = read_frame_skipping_pings(&mut s);
    assert_eq!(f.opcode, OP_CLOSE, "close {code}: answer {f:?}");
    assert_eq!(f.close_code(), Some(code), "close {code}: answer {f:?}");
    let mut buf = [0u8; 64];
    match std::io::Read::read(&mut s, &mut buf) {
        Ok(0) => {}
        other => panic!("close {code}: expected EOF after the close handshake, got {other:?}"),
    }
}

#[test]
fn a_client_close_is_echoed_with_its_code_and_then_tcp_is_closed() {
    let server = server();
    close_is_echoed(&server, 1000, b"");
    close_is_echoed(&server, 4000, "bye for now ✓".as_bytes());
    for code in [
        1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4999,
    ] {
        close_is_echoed(&server, code, b"reason");
    }
    // A close without a payload is answered with a close too.
    let mut s = raw_upgrade(server.addr(), &[]);
    send_frame(&mut s, true, 0, OP_CLOSE, b"", true);
    let f = read_frame_skipping_pings(&mut s);
    assert_eq!(f.opcode, OP_CLOSE, "{f:?}");
    assert_ne!(f.payload.len(), 1, "{f:?}");
    expect_end(&mut s);
    // Nothing is echoed after a close: a frame sent after it is ignored.
    let mut s = raw_upgrade(server.addr(), &[]);
    let mut bytes = frame_bytes(true, 0, OP_CLOSE, &close_payload(1000, b""), true);
    bytes.extend(frame_bytes(true, 0, OP_TEXT, b"after close", true));
    s.write_all(&bytes).unwrap();
    expect_close(&mut s, 1000);
    expect_end(&mut s);
    server.wait_stats("sessions back to 0", Duration::from_secs(5), |s| {
        s.sessions_total() == 0
    });
}
