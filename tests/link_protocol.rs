//! What ringgate actually puts on an upstream link, checked byte by byte by a game server written
//! here from docs/protocol.md alone (its frames are parsed by hand, not with ringgate's codec):
//! HELLO, OPEN with the session's description, DATA with the text flag, CLOSE when a client leaves
//! (the "player offline" event), link pings, and a version mismatch.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{client::IntoClientRequest, Message};

struct Proxy {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ringgate run` with one upstream and extra config. The proxy announces its address only
/// after its links' first attempt, so the caller plays the game server first and asks for the URL
/// after.
fn proxy(upstream: SocketAddr, extra_toml: &str) -> Proxy {
    let dir = std::env::temp_dir().join(format!(
        "ringgate-link-{}-{}",
        std::process::id(),
        upstream.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("ringgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nworkers = 1\ninstance_id = \"gw-test\"\n{extra_toml}\n[[upstream]]\naddress = \"{upstream}\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["run", "--log-level", "info", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    Proxy {
        child,
        stdout: lines(stdout),
        stderr: lines(stderr),
    }
}

fn lines(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

impl Proxy {
    /// The WebSocket URL from the listening line.
    fn url(&self) -> String {
        let line = self
            .stdout
            .recv_timeout(Duration::from_secs(10))
            .expect("no listening line");
        line.split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string()
    }
    /// Waits for a stderr line containing `needle`.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line containing {needle:?}");
    }
}

/// A frame as the spec lays it out.
#[derive(Debug)]
struct Frame {
    ty: u8,
    flags: u8,
    session: u64,
    body: Vec<u8>,
}

fn read_frame(s: &mut TcpStream) -> Frame {
    let mut head = [0u8; 14];
    s.read_exact(&mut head).unwrap();
    let length = u32::from_be_bytes(head[0..4].try_into().unwrap()) as usize;
    assert!(length >= 10, "length {length} below the minimum");
    let mut body = vec![0u8; length - 10];
    s.read_exact(&mut body).unwrap();
    Frame {
        ty: head[4],
        flags: head[5],
        session: u64::from_be_bytes(head[6..14].try_into().unwrap()),
        body,
    }
}

fn write_frame(s: &mut TcpStream, ty: u8, flags: u8, session: u64, body: &[u8]) {
    let mut f = Vec::with_capacity(14 + body.len());
    f.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&session.to_be_bytes());
    f.extend_from_slice(body);
    s.write_all(&f).unwrap();
}

/// Reads frames until one of type `ty` (answering link pings on the way).
fn expect(s: &mut TcpStream, ty: u8) -> Frame {
    loop {
        let f = read_frame(s);
        if f.ty == ty {
            return f;
        }
        if f.ty == 0x04 {
            write_frame(s, 0x05, 0, 0, &f.body);
            continue;
        }
        panic!("expected frame type {ty:#x}, got {f:?}");
    }
}

/// A length-prefixed field of the OPEN body.
fn field<'a>(body: &'a [u8], at: &mut usize, wide: bool) -> &'a [u8] {
    let len = if wide {
        let l = u16::from_be_bytes([body[*at], body[*at + 1]]) as usize;
        *at += 2;
        l
    } else {
        let l = body[*at] as usize;
        *at += 1;
        l
    };
    let v = &body[*at..*at + len];
    *at += len;
    v
}

fn accept_link(listener: &TcpListener) -> TcpStream {
    let (s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn hello_open_data_close_and_ping_on_the_wire() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = server.local_addr().unwrap();
    let proxy = proxy(up, "link_ping_interval = \"200ms\"\nlink_timeout = \"5s\"");
    let mut link = accept_link(&server);

    // HELLO: version 1, core 0 of 1, our instance id.
    let hello = read_frame(&mut link);
    assert_eq!((hello.ty, hello.session), (0x01, 0));
    assert_eq!(&hello.body[0..2], &[0, 1], "version");
    assert_eq!(&hello.body[2..4], &[0, 0], "core");
    assert_eq!(&hello.body[4..6], &[0, 1], "workers");
    assert_eq!(&hello.body[6..], b"gw-test");
    let mut ack = vec![0, 1];
    ack.extend_from_slice(b"test-server");
    write_frame(&mut link, 0x02, 0, 0, &ack);
    proxy.wait_log("upstream link up");
    let url = proxy.url();

    // A client with a user, a query and forwarded headers.
    let mut req = format!("{url}?user=alice&room=3")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "https://game.example".parse().unwrap());
    req.headers_mut()
        .insert("X-Secret", "not forwarded".parse().unwrap());
    let (mut ws, _) = tungstenite::connect(req).unwrap();
    let local = match ws.get_ref() {
        tungstenite::stream::MaybeTlsStream::Plain(s) => s.local_addr().unwrap(),
        _ => unreachable!(),
    };

    let open = expect(&mut link, 0x10);
    assert_ne!(open.session, 0);
    let mut at = 0;
    assert_eq!(field(&open.body, &mut at, true), b"alice");
    assert_eq!(
        field(&open.body, &mut at, false),
        local.to_string().as_bytes()
    );
    assert_eq!(field(&open.body, &mut at, true), b"/ws?user=alice&room=3");
    let count = open.body[at];
    at += 1;
    let mut headers = Vec::new();
    for _ in 0..count {
        let name = String::from_utf8(field(&open.body, &mut at, false).to_vec()).unwrap();
        let value = field(&open.body, &mut at, true).to_vec();
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
    let d1 = expect(&mut link, 0x12);
    assert_eq!(
        (d1.session, d1.flags & 1, d1.body.as_slice()),
        (open.session, 1, &b"hi"[..])
    );
    let d2 = expect(&mut link, 0x12);
    assert_eq!(
        (d2.session, d2.flags & 1, d2.body.as_slice()),
        (open.session, 0, &[1u8, 2, 3][..])
    );

    // Server → client, both kinds.
    write_frame(&mut link, 0x12, 1, open.session, "héllo".as_bytes());
    write_frame(&mut link, 0x12, 0, open.session, &[9, 8, 7]);
    assert_eq!(ws.read().unwrap(), Message::text("héllo"));
    assert_eq!(ws.read().unwrap(), Message::binary(vec![9u8, 8, 7]));

    // The link is pinged; the PING's 8 bytes come back in our PONG (expect() answers it).
    let ping = expect(&mut link, 0x04);
    assert_eq!(ping.body.len(), 8);
    write_frame(&mut link, 0x05, 0, 0, &ping.body);

    // The player leaves with 4001: the server hears CLOSE 4001 for that session.
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: CloseCode::from(4001),
        reason: "gone".into(),
    }))
    .unwrap();
    let close = expect(&mut link, 0x13);
    assert_eq!(close.session, open.session);
    assert_eq!(&close.body[0..2], &4001u16.to_be_bytes());

    // A second player vanishes without a close frame: 1006.
    let (ws2, _) = tungstenite::connect(format!("{url}?user=bob")).unwrap();
    let open2 = expect(&mut link, 0x10);
    drop(ws2);
    let close2 = expect(&mut link, 0x13);
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
    let mut link = accept_link(&server);
    let hello = read_frame(&mut link);
    assert_eq!(hello.ty, 0x01);
    // We answer with a version ringgate does not speak.
    write_frame(&mut link, 0x02, 0, 0, &[0, 2, b'x']);
    let line = proxy.wait_log("version mismatch");
    assert!(
        line.contains("we speak 1") && line.contains("answered 2"),
        "{line}"
    );

    // ringgate retries (backoff), and this time we refuse its version with LINK_ERROR 1.
    let mut again = accept_link(&server);
    assert_eq!(read_frame(&mut again).ty, 0x01);
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(b"unsupported version");
    write_frame(&mut again, 0x03, 0, 0, &body);
    proxy.wait_log("does not speak protocol version 1");

    // With no link up, a client is turned away before the upgrade.
    let url = proxy.url();
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /ws?user=a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = c.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
}

#[test]
fn silent_link_is_dropped_and_its_sessions_closed_with_1011() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = server.local_addr().unwrap();
    let proxy = proxy(
        up,
        "link_ping_interval = \"100ms\"\nlink_timeout = \"600ms\"",
    );
    let mut link = accept_link(&server);
    assert_eq!(read_frame(&mut link).ty, 0x01);
    write_frame(&mut link, 0x02, 0, 0, &[0, 1]);
    proxy.wait_log("upstream link up");
    let url = proxy.url();
    let (mut ws, _) = tungstenite::connect(format!("{url}?user=carol")).unwrap();
    assert_eq!(expect(&mut link, 0x10).body[2..7], *b"carol");
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
    proxy.wait_log("upstream link silent");
}
