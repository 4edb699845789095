//! Echo through `ringgate demo`: sizes at every length-encoding boundary, text and binary,
//! fragmentation with interleaved pings, frames pipelined with the handshake, subprotocols, and the
//! epoll driver.

mod support;

use std::io::Write;

use ringgate::ws::OpCode;
use support::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

/// 0, the 7-bit limit and the first 16-bit length, the 16-bit limit and the first 64-bit length.
/// (Exactly the default max-message-size, 1 MiB, has a test of its own below.)
const SIZES: [usize; 6] = [0, 1, 125, 126, 65535, 65536];

/// The default max-message-size.
const MAX: usize = 1 << 20;

#[test]
fn binary_messages_of_every_boundary_size_are_echoed_as_binary() {
    let server = Gateway::demo(&[]);
    let mut ws = server.anonymous_client();
    for n in SIZES {
        ws.echo(Message::Binary(binary_of_len(n)));
    }
    ws.close();
}

#[test]
fn text_messages_of_every_boundary_size_are_echoed_as_text() {
    let server = Gateway::demo(&[]);
    let mut ws = server.anonymous_client();
    for n in SIZES {
        let t = text_of_len(n);
        assert_eq!(t.len(), n);
        ws.echo(Message::Text(t));
    }
    ws.close();
}

#[test]
fn text_and_binary_interleaved_keep_their_type_and_order() {
    let server = Gateway::demo(&[]);
    let mut ws = server.anonymous_client();
    let sent: Vec<Message> = (0..20)
        .map(|i| {
            if i % 2 == 0 {
                Message::Text(format!("text {i} ✓"))
            } else {
                Message::Binary(vec![i as u8; i])
            }
        })
        .collect();
    for m in &sent {
        ws.send(m.clone());
    }
    for m in &sent {
        let got = ws.read_data();
        assert!(
            &got == m,
            "expected {}, got {}",
            describe(m),
            describe(&got)
        );
    }
    ws.close();
}

#[test]
fn messages_of_exactly_the_default_max_message_size_are_echoed() {
    let server = Gateway::demo(&[]);
    let mut ws = server.anonymous_client();
    ws.echo(Message::Binary(binary_of_len(MAX)));
    ws.echo(Message::Text(text_of_len(MAX)));
    ws.close();
}

#[test]
fn a_fragmented_message_of_exactly_the_default_max_message_size_is_echoed() {
    let server = Gateway::demo(&[]);
    let mut s = raw_upgrade(server.addr(), &[]);
    let whole = binary_of_len(MAX);
    let (a, rest) = whole.split_at(MAX / 2);
    let (b, c) = rest.split_at(MAX / 4);
    send_frame(&mut s, false, 0, OP_BINARY, a, true);
    send_frame(&mut s, false, 0, OP_CONT, b, true);
    send_frame(&mut s, true, 0, OP_CONT, c, true);
    let (op, got) = read_message(&mut s);
    assert_eq!(op, OP_BINARY);
    assert!(
        got == whole,
        "1 MiB fragmented message echoed wrongly ({} bytes)",
        got.len()
    );
}

#[test]
fn one_byte_over_the_default_max_message_size_gets_1009() {
    let server = Gateway::demo(&[]);

    // 1 MiB + 1 in one frame: the header alone must be enough to refuse it.
    let mut s = raw_upgrade(server.addr(), &[]);
    s.write_all(&frame_header(
        true,
        0,
        OP_BINARY,
        MAX as u64 + 1,
        Some(random_mask()),
    ))
    .unwrap();
    expect_close(&mut s, 1009);

    // 1 MiB + 1 over two text fragments: refused at the second fragment's header.
    let mut s = raw_upgrade(server.addr(), &[]);
    send_frame(
        &mut s,
        false,
        0,
        OP_TEXT,
        text_of_len(MAX / 2).as_bytes(),
        true,
    );
    s.write_all(&frame_header(
        true,
        0,
        OP_CONT,
        (MAX / 2) as u64 + 1,
        Some(random_mask()),
    ))
    .unwrap();
    expect_close(&mut s, 1009);

    // The server still serves.
    let mut ws = server.anonymous_client();
    ws.echo(Message::Text("still there".into()));
}

fn fragmented_with_pings_between(opcode: OpCode, parts: [&[u8]; 3]) {
    let server = Gateway::demo(&[]);
    let mut s = raw_upgrade(server.addr(), &[]);

    send_frame(&mut s, false, 0, opcode, parts[0], true);
    send_frame(&mut s, true, 0, OP_PING, b"p1", true);
    // Answered while the message is still incomplete.
    let f = read_frame(&mut s);
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_PONG, &b"p1"[..]),
        "{f:?}"
    );

    send_frame(&mut s, false, 0, OP_CONT, parts[1], true);
    let p2 = binary_of_len(125);
    send_frame(&mut s, true, 0, OP_PING, &p2, true);
    let f = read_frame(&mut s);
    assert_eq!(f.opcode, OP_PONG, "{f:?}");
    assert_eq!(
        f.payload, p2,
        "pong payload differs from the 125-byte ping's"
    );

    // An empty continuation and an empty ping are legal too.
    send_frame(&mut s, false, 0, OP_CONT, b"", true);
    send_frame(&mut s, true, 0, OP_PING, b"", true);
    let f = read_frame(&mut s);
    assert_eq!((f.opcode, f.payload.len()), (OP_PONG, 0), "{f:?}");

    send_frame(&mut s, true, 0, OP_CONT, parts[2], true);
    let (op, got) = read_message(&mut s);
    assert_eq!(op, opcode, "echo has the wrong type");
    assert_eq!(got, parts.concat(), "reassembled echo differs");

    // The connection is still healthy.
    send_frame(&mut s, true, 0, OP_BINARY, b"after", true);
    assert_eq!(read_message(&mut s), (OP_BINARY, b"after".to_vec()));
    send_close(&mut s, 1000, b"");
    expect_close(&mut s, 1000);
}

#[test]
fn fragmented_text_with_pings_between_fragments() {
    // "Hello, été!" with both "é" split across fragment boundaries.
    fragmented_with_pings_between(OP_TEXT, [b"Hello, \xc3", b"\xa9t\xc3", b"\xa9!"]);
}

#[test]
fn fragmented_binary_with_pings_between_fragments() {
    fragmented_with_pings_between(
        OP_BINARY,
        [&[0xff, 0x00, 0xc3], &binary_of_len(300), &[0xfe; 70000]],
    );
}

#[test]
fn ping_is_answered_with_pong_carrying_the_same_payload() {
    let server = Gateway::demo(&[]);
    let mut s = raw_upgrade(server.addr(), &[]);
    for payload in [Vec::new(), b"x".to_vec(), binary_of_len(125)] {
        send_frame(&mut s, true, 0, OP_PING, &payload, true);
        let f = read_frame(&mut s);
        assert!(f.fin);
        assert_eq!(f.opcode, OP_PONG, "{f:?}");
        assert_eq!(f.payload, payload);
    }
    // An unsolicited pong is ignored: the next frame back is the echo.
    send_frame(&mut s, true, 0, OP_PONG, b"unsolicited", true);
    send_frame(&mut s, true, 0, OP_TEXT, b"next", true);
    let f = read_frame(&mut s);
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OP_TEXT, &b"next"[..]),
        "{f:?}"
    );
}

#[test]
fn a_frame_dribbled_one_byte_per_write_is_echoed() {
    let server = Gateway::demo(&[]);
    let mut s = raw_upgrade(server.addr(), &[]);
    let payload = text_of_len(300);
    let bytes = frame_bytes(true, 0, OP_TEXT, payload.as_bytes(), true);
    for b in &bytes {
        s.write_all(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(read_message(&mut s), (OP_TEXT, payload.into_bytes()));
}

/// Frames written together with the request head: the server must not lose the bytes that
/// followed the head, even when the session moves to another core.
fn pipelined(server: &Gateway, path: &str) {
    let addr = server.addr();
    let key = random_key();
    let mut bytes = upgrade_request(addr, path, &key, &[]);
    bytes.extend(frame_bytes(true, 0, OP_TEXT, b"first", true));
    bytes.extend(frame_bytes(true, 0, OP_BINARY, &[0, 1, 2, 255], true));
    bytes.extend(frame_bytes(false, 0, OP_TEXT, b"frag", true));
    bytes.extend(frame_bytes(true, 0, OP_CONT, b"mented", true));
    bytes.extend(frame_bytes(true, 0, OP_PING, b"pp", true));
    let mut s = tcp_connect(addr);
    s.write_all(&bytes).unwrap();
    let resp = read_http_head(&mut s);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("Sec-WebSocket-Accept"),
        Some(accept_key(&key).as_str())
    );

    // The pong may overtake the echoes (they pass through the game server); the echoes keep order.
    let mut data = Vec::new();
    let mut pongs = Vec::new();
    while data.len() < 3 || pongs.is_empty() {
        let f = read_frame_skipping_pings(&mut s);
        match f.opcode {
            OP_PONG => pongs.push(f.payload),
            OP_TEXT | OP_BINARY => {
                assert!(f.fin, "unexpected fragmented echo {f:?}");
                data.push((f.opcode, f.payload));
            }
            _ => panic!("unexpected frame {f:?}"),
        }
        assert!(
            data.len() <= 3 && pongs.len() <= 1,
            "too many frames: {data:?} {pongs:?}"
        );
    }
    assert_eq!(
        data,
        vec![
            (OP_TEXT, b"first".to_vec()),
            (OP_BINARY, vec![0, 1, 2, 255]),
            (OP_TEXT, b"fragmented".to_vec())
        ],
        "path {path}"
    );
    assert_eq!(pongs, vec![b"pp".to_vec()]);
    send_close(&mut s, 1000, b"");
    expect_close(&mut s, 1000);
}

#[test]
fn frames_pipelined_with_the_handshake_are_echoed() {
    let server = Gateway::demo(&["--workers", "2"]);
    pipelined(&server, "/ws");
    // With users, about half of these are accepted by the core that does not own them.
    for i in 0..16 {
        pipelined(&server, &format!("/ws?user=pipelined{i}"));
    }
}

#[test]
fn subprotocol_is_the_first_offered_by_the_client_that_the_server_accepts() {
    let server = Gateway::demo(&["--subprotocol", "chat", "--subprotocol", "game.v2"]);
    let addr = server.addr();
    for (offer, expect) in [
        // (tungstenite matches the answer against the offer split at ',' without trimming, so
        // these offers have no spaces; the raw client below checks spaced lists.)
        ("foo,game.v2,chat", "game.v2"),
        ("chat,game.v2", "chat"),
        ("chat", "chat"),
        ("bar,game.v2", "game.v2"),
    ] {
        let mut req = server.url().into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", offer.parse().unwrap());
        let (mut ws, resp) = Client::connect_request(addr, req, "(no user)");
        let got = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref(), Some(expect), "offer {offer:?}");
        ws.echo(Message::Text(format!("with {expect}")));
        ws.close();
    }

    let (_s, resp) = raw_upgrade_path(
        addr,
        "/ws",
        &[("Sec-WebSocket-Protocol", "foo, game.v2, chat")],
    );
    assert_eq!(
        resp.header("Sec-WebSocket-Protocol"),
        Some("game.v2"),
        "{resp:?}"
    );

    // Offers spread over several header lines count as one list, in order.
    let (_s, resp) = raw_upgrade_path(
        addr,
        "/ws",
        &[
            ("Sec-WebSocket-Protocol", "foo"),
            ("Sec-WebSocket-Protocol", "game.v2, chat"),
        ],
    );
    assert_eq!(
        resp.header("Sec-WebSocket-Protocol"),
        Some("game.v2"),
        "{resp:?}"
    );

    // Nothing acceptable offered, or nothing offered: upgraded without a subprotocol (RFC 6455 4.2.2).
    let (mut s, resp) = raw_upgrade_path(addr, "/ws", &[("Sec-WebSocket-Protocol", "foo, bar")]);
    assert_eq!(resp.header("Sec-WebSocket-Protocol"), None, "{resp:?}");
    send_frame(&mut s, true, 0, OP_TEXT, b"no subprotocol", true);
    assert_eq!(read_message(&mut s), (OP_TEXT, b"no subprotocol".to_vec()));
    let (_s, resp) = raw_upgrade_path(addr, "/ws", &[]);
    assert_eq!(resp.header("Sec-WebSocket-Protocol"), None, "{resp:?}");
}

#[test]
fn echo_works_on_the_forced_epoll_driver() {
    let server = Gateway::demo_on_epoll(&["--workers", "2"]);
    let mut ws = server.anonymous_client();
    for n in SIZES {
        ws.echo(Message::Binary(binary_of_len(n)));
        ws.echo(Message::Text(text_of_len(n)));
    }
    ws.close();
    ws_pair_on(&server);
    for i in 0..8 {
        let mut ws = server.client(&format!("epoll{i}"));
        ws.echo(Message::Text(format!("user epoll{i}")));
        ws.close();
    }
    fragmented_on(&server);
    pipelined(&server, "/ws?user=epoll-pipelined");

    let stats = server.stats();
    for core in stats.cores() {
        assert_eq!(core["driver"], "epoll", "{stats}");
    }
}

fn ws_pair_on(server: &Gateway) {
    // Two clients at once, so that one core's event loop serves several sockets.
    let mut a = server.anonymous_client();
    let mut b = server.anonymous_client();
    a.send(Message::Text("a".into()));
    b.send(Message::Text("b".into()));
    assert_eq!(b.read_data(), Message::Text("b".into()));
    assert_eq!(a.read_data(), Message::Text("a".into()));
    a.close();
    b.close();
}

fn fragmented_on(server: &Gateway) {
    let mut s = raw_upgrade(server.addr(), &[]);
    send_frame(&mut s, false, 0, OP_TEXT, b"ab", true);
    send_frame(&mut s, true, 0, OP_PING, b"p", true);
    let f = read_frame(&mut s);
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_PONG, &b"p"[..]));
    send_frame(&mut s, true, 0, OP_CONT, b"cd", true);
    assert_eq!(read_message(&mut s), (OP_TEXT, b"abcd".to_vec()));
}
