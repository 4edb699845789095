//! What ringgate actually puts on an upstream link, checked byte by byte by a game server written
//! here from docs/protocol.md alone (its frames are parsed by hand, not with ringgate's codec):
//! HELLO, OPEN with the session's description, DATA with the text flag, CLOSE when a client leaves
//! (the "player offline" event), link pings, and a version mismatch.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use support::link::{self, CLOSE, DATA, HELLO, HELLO_ACK, LINK_ERROR, OPEN, PING, PONG, TEXT};
use support::*;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

/// Spawns `ringgate run` with one worker, one upstream and extra config. The proxy announces its
/// address only after its links' first attempt, so the caller plays the game server first and
/// waits for the gateway to be ready after.
fn proxy(upstream: SocketAddr, extra_toml: &str) -> Launching {
    Launch::run(&[upstream.to_string()])
        .config(&format!(
            "workers = 1\ninstance_id = \"gw-test\"\n{extra_toml}\n"
        ))
        .args(&["--log-level", "info"])
        .spawn()
}

#[test]
fn hello_open_data_close_and_ping_on_the_wire() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = server.local_addr().unwrap();
    let proxy = proxy(up, "link_ping_interval = \"200ms\"\nlink_timeout = \"5s\"");
    let mut link = link::accept(&server);

    // HELLO: versions 1 (the field) to 2 (the flags), core 0 of 1, our instance id. A version-1
    // server ignores the flags and answers 1, as here.
    let hello = link::read_frame(&mut link);
    assert_eq!((hello.ty, hello.flags, hello.session), (HELLO, 2, 0));
    assert_eq!(&hello.body[0..2], &[0, 1], "version");
    assert_eq!(&hello.body[2..4], &[0, 0], "core");
    assert_eq!(&hello.body[4..6], &[0, 1], "workers");
    assert_eq!(&hello.body[6..], b"gw-test");
    let mut ack = vec![0, 1];
    ack.extend_from_slice(b"test-server");
    link::write_frame(&mut link, HELLO_ACK, 0, 0, &ack);
    proxy.proc.wait_stderr("upstream link up", LINK_TIMEOUT);
    let gw = proxy.ready();

    // A client with a user, a query and forwarded headers.
    let mut req = format!("{}?user=alice&room=3", gw.url())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "https://game.example".parse().unwrap());
    req.headers_mut()
        .insert("X-Secret", "not forwarded".parse().unwrap());
    let (Client { mut ws, .. }, _) = Client::connect_request(gw.addr(), req, "alice");
    let local = ws.get_ref().local_addr().unwrap();

    let open = link::expect(&mut link, OPEN);
    assert_ne!(open.session, 0);
    let mut at = 0;
    assert_eq!(link::field(&open.body, &mut at, true), b"alice");
    assert_eq!(
        link::field(&open.body, &mut at, false),
        local.to_string().as_bytes()
    );
    assert_eq!(
        link::field(&open.body, &mut at, true),
        b"/ws?user=alice&room=3"
    );
    let count = open.body[at];
    at += 1;
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = String::from_utf8(link::field(&open.body, &mut at, false).to_vec()).unwrap();
        let value = link::field(&open.body, &mut at, true).to_vec();
        headers.push((name, value));
    }
    assert_eq!(at, open.body.len(), "trailing bytes in OPEN");
    assert!(
        headers.contains(&("origin".to_string(), b"https://game.example".to_vec())),
        "{headers:?}"
    );
    assert!(!headers.iter().any(|(n, _)| n == "x-secret"), "{headers:?}");

    // Client → server: text keeps the text flag, binary does not, in order.
    ws.send(Message::text("hi")).unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    let d1 = link::expect(&mut link, DATA);
    assert_eq!(
        (d1.session, d1.flags & TEXT, d1.body.as_slice()),
        (open.session, TEXT, &b"hi"[..])
    );
    let d2 = link::expect(&mut link, DATA);
    assert_eq!(
        (d2.session, d2.flags & TEXT, d2.body.as_slice()),
        (open.session, 0, &[1u8, 2, 3][..])
    );

    // Server → client, both kinds.
    link::write_frame(&mut link, DATA, TEXT, open.session, "héllo".as_bytes());
    link::write_frame(&mut link, DATA, 0, open.session, &[9, 8, 7]);
    assert_eq!(ws.read().unwrap(), Message::text("héllo"));
    assert_eq!(ws.read().unwrap(), Message::binary(vec![9u8, 8, 7]));

    // The link is pinged; the PING's 8 bytes come back in our PONG (expect() answers it).
    let ping = link::expect(&mut link, PING);
    assert_eq!(ping.body.len(), 8);
    link::write_frame(&mut link, PONG, 0, 0, &ping.body);

    // The player leaves with 4001: the server hears CLOSE 4001 for that session.
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: CloseCode::from(4001),
        reason: "gone".into(),
    }))
    .unwrap();
    let close = link::expect(&mut link, CLOSE);
    assert_eq!(close.session, open.session);
    assert_eq!(&close.body[0..2], &4001u16.to_be_bytes());

    // A second player vanishes without a close frame: 1006.
    let ws2 = gw.client("bob");
    let open2 = link::expect(&mut link, OPEN);
    drop(ws2);
    let close2 = link::expect(&mut link, CLOSE);
    assert_eq!(close2.session, open2.session);
    assert_eq!(&close2.body[0..2], &1006u16.to_be_bytes());
    assert!(
        open2.session != open.session,
        "session ids are never reused"
    );
}

#[test]
fn version_mismatch_is_an_error_and_the_link_retries() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = server.local_addr().unwrap();
    let proxy = proxy(up, "reconnect_min = \"50ms\"\nreconnect_max = \"200ms\"");
    let mut link = link::accept(&server);
    let hello = link::read_frame(&mut link);
    assert_eq!(hello.ty, HELLO);
    // We answer with a version ringgate did not offer.
    link::write_frame(&mut link, HELLO_ACK, 0, 0, &[0, 3, b'x']);
    let line = proxy.proc.wait_stderr("version mismatch", LINK_TIMEOUT);
    assert!(
        line.contains("we speak 1..=2") && line.contains("answered 3"),
        "{line}"
    );

    // ringgate retries (backoff), and this time we refuse its version with LINK_ERROR 1.
    let mut again = link::accept(&server);
    assert_eq!(link::read_frame(&mut again).ty, HELLO);
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(b"unsupported version");
    link::write_frame(&mut again, LINK_ERROR, 0, 0, &body);
    proxy
        .proc
        .wait_stderr("speaks none of protocol versions 1..=2", LINK_TIMEOUT);

    // With no link up, a client is turned away before the upgrade.
    let gw = proxy.ready();
    let mut c = tcp_connect(gw.addr());
    let (resp, _) = raw_handshake(&mut c, gw.addr(), &gw.target("a"), &[]);
    assert!(resp.status_line.starts_with("HTTP/1.1 503"), "{resp:?}");
}

#[test]
fn silent_link_is_dropped_and_its_sessions_closed_with_1011() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = server.local_addr().unwrap();
    let proxy = proxy(
        up,
        "link_ping_interval = \"100ms\"\nlink_timeout = \"600ms\"",
    );
    let mut link = link::accept(&server);
    assert_eq!(link::read_frame(&mut link).ty, HELLO);
    link::write_frame(&mut link, HELLO_ACK, 0, 0, &[0, 1]);
    proxy.proc.wait_stderr("upstream link up", LINK_TIMEOUT);
    let gw = proxy.ready();
    let Client { mut ws, .. } = gw.client("carol");
    assert_eq!(link::expect(&mut link, OPEN).body[2..7], *b"carol");
    // From now on the server neither reads nor answers: the proxy must give up on the link.
    let started = Instant::now();
    match ws.read() {
        Ok(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1011);
            assert_eq!(f.reason, "upstream lost");
        }
        other => panic!("expected close 1011, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    gw.proc.wait_stderr("upstream link silent", LINK_TIMEOUT);
}
