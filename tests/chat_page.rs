//! The chat page (`chat_page`, on in `ringgate demo`): a plain `GET /` or `HEAD /` on the WebSocket
//! listener gets the page with its headers and is closed; everything else is answered as before,
//! upgrades on the WebSocket path go on beside it, and a page load holds no place in the
//! connection budget.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;

use base64::Engine;
use sha2::{Digest, Sha256};
use support::*;
use tungstenite::Message;

fn get(addr: SocketAddr, target: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/html\r\nConnection: keep-alive\r\n\r\n"
    )
    .into_bytes()
}

/// The text between the first `open` tag of `body` and the `close` after it.
fn element<'a>(body: &'a str, open: &str, close: &str) -> &'a str {
    body.split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .unwrap_or_else(|| panic!("no {open} element in the page"))
        .0
}

fn csp_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// GETs `target`, asserts the page's answer with `ws_path` written into its script, that the
/// server then closes, and returns the headers.
fn expect_page(addr: SocketAddr, target: &str, ws_path: &str) -> HttpResponse {
    let (resp, mut stream) = http_exchange(addr, &get(addr, target));
    assert_eq!(
        resp.status_line, "HTTP/1.1 200 OK",
        "GET {target}: {resp:?}"
    );
    assert_eq!(
        resp.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(resp.header("Cache-Control"), Some("no-cache"));
    assert!(resp.has_token("Connection", "close"), "{resp:?}");
    assert!(resp.header("Sec-WebSocket-Accept").is_none());
    let body = std::str::from_utf8(&resp.body).expect("the page is UTF-8");
    assert!(body.starts_with("<!doctype html>"), "{body:.80}");
    assert!(body.contains("<title>ringgate chat</title>"));
    let literal = serde_json::to_string(ws_path).unwrap();
    assert!(
        body.contains(&format!("const WS_PATH = {literal};")),
        "WebSocket path {ws_path} not injected"
    );
    assert!(!body.contains("__RINGGATE_WS_PATH__"));
    for id in [
        "name", "room", "connect", "join", "text", "all", "send", "messages", "status",
    ] {
        assert!(
            body.contains(&format!("id=\"{id}\"")),
            "no #{id} in the page"
        );
    }
    // Exactly the page's own script and style may run, and it may open WebSockets.
    let csp = resp
        .header("Content-Security-Policy")
        .unwrap_or_else(|| panic!("no Content-Security-Policy: {resp:?}"));
    let script = csp_hash(element(body, "<script>", "</script>"));
    let style = csp_hash(element(body, "<style>", "</style>"));
    for directive in [
        "default-src 'none'".to_string(),
        format!("script-src {script}"),
        format!("style-src {style}"),
        "connect-src ws: wss:".to_string(),
        "frame-ancestors 'none'".to_string(),
    ] {
        assert!(
            csp.split(';').any(|d| d.trim() == directive),
            "{directive:?} not in {csp:?}"
        );
    }
    assert!(!csp.contains("unsafe-"), "{csp}");
    expect_end(&mut stream);
    resp
}

/// Sends `raw` and returns the answer's status line, after checking that the server then closes.
fn status_of(addr: SocketAddr, raw: &[u8]) -> String {
    let (resp, mut stream) = http_exchange(addr, raw);
    expect_end(&mut stream);
    resp.status_line
}

#[test]
fn the_demo_serves_the_page_on_get_and_head_and_nothing_else_changes() {
    let mut g = Gateway::demo(&["--workers", "2"]);
    let addr = g.addr();
    let announced = g.proc.wait_line("Chat page: ", START_TIMEOUT);
    assert_eq!(announced, format!("http://{addr}/"));
    // A session open before, during and after the page loads.
    let mut alice = g.client("alice");
    alice.echo(Message::Text("before".into()));

    let page = expect_page(addr, "/", "/ws");
    let again = expect_page(addr, "/?user=ann&room=red", "/ws");
    assert_eq!(page.body, again.body);
    assert_eq!(page.headers, again.headers);

    // HEAD: the same head, no body, then the end.
    let mut s = tcp_connect(addr);
    s.write_all(format!("HEAD / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let head = read_http_head(&mut s);
    assert_eq!(head.headers, page.headers);
    expect_end(&mut s);

    // What every other request got before the page existed.
    let other = [
        (get(addr, "/other"), "HTTP/1.1 404 Not Found"),
        (get(addr, "/index.html"), "HTTP/1.1 404 Not Found"),
        (get(addr, "//"), "HTTP/1.1 404 Not Found"),
        (
            format!("POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n").into_bytes(),
            "HTTP/1.1 405 Method Not Allowed",
        ),
        (
            format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").into_bytes(),
            "HTTP/1.1 400 Bad Request",
        ),
        // A plain GET of the WebSocket path is still told to upgrade.
        (get(addr, "/ws"), "HTTP/1.1 426 Upgrade Required"),
        // An upgrade of / is refused for its path, not answered with the page.
        (
            upgrade_request(addr, "/", &random_key(), &[]),
            "HTTP/1.1 404 Not Found",
        ),
    ];
    for (raw, want) in &other {
        assert_eq!(
            status_of(addr, raw),
            *want,
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }

    alice.echo(Message::Text("after".into()));
    let mut bob = g.client("bob");
    bob.check_echo("beside the page");
    let stats = g.stats();
    assert_eq!(stats.counter("pages_served"), 3, "{stats}");
    assert_eq!(stats.counter("handshake_rejected"), other.len() as u64);
    assert_eq!(stats.counter("upgraded"), 2);
    assert_eq!(stats.counter("panics"), 0);
    alice.close();
    bob.close();
}

#[test]
fn without_chat_page_get_root_is_refused_as_before() {
    let up = EchoUpstream::start();
    let g = Gateway::run(&[up.name()], &[]);
    let addr = g.addr();
    assert_eq!(status_of(addr, &get(addr, "/")), "HTTP/1.1 404 Not Found");
    let head = format!("HEAD / HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(
        status_of(addr, head.as_bytes()),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(g.stats().counter("pages_served"), 0);
}

#[test]
fn the_key_turns_it_on_for_any_path_even_the_websocket_one() {
    let up = EchoUpstream::start();
    let toml = format!("chat_page = true\n{FAST_RECONNECT}");
    let g = Gateway::run_with_config(&[up.name()], &["--path", "/play"], &toml);
    g.wait_links_up(&[up.name()]);
    expect_page(g.addr(), "/", "/play");
    g.client("carol").check_echo("on /play");

    // With the WebSocket on / itself, a plain GET gets the page and an upgrade is upgraded.
    let g = Gateway::run_with_config(&[up.name()], &["--path", "/"], &toml);
    g.wait_links_up(&[up.name()]);
    expect_page(g.addr(), "/", "/");
    let mut dave = g.client("dave");
    assert_eq!(g.target("dave"), "/?user=dave");
    dave.check_echo("on /");
    dave.close();
}

#[test]
fn a_page_load_holds_no_place_in_the_connection_budget() {
    let g = Gateway::demo(&["--workers", "2", "--max-connections", "1"]);
    let addr = g.addr();
    for _ in 0..3 {
        expect_page(addr, "/", "/ws");
    }
    // The server has sent the page and its FIN, and waits (up to a second) for this client to
    // close: the connection is still open, but it is no session and must not keep one out.
    let mut lingering = tcp_connect(addr);
    lingering.write_all(&get(addr, "/")).unwrap();
    let head = read_http_head(&mut lingering);
    assert_eq!(head.status, 200);
    let len: usize = head.header("Content-Length").unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    lingering.read_exact(&mut body).unwrap();
    assert_eq!(expect_end(&mut lingering), End::Eof);
    let mut erin = g.client("erin");
    erin.check_echo("while a page connection lingers");
    erin.close();
    drop(lingering);
    let stats = g.stats();
    assert_eq!(stats.counter("pages_served"), 4, "{stats}");
    assert_eq!(stats.counter("shed"), 0, "{stats}");
}

#[test]
fn hostile_requests_for_the_page_are_answered_or_dropped_never_fatal() {
    let g = Gateway::demo(&["--workers", "2", "--handshake-timeout", "1s"]);
    let addr = g.addr();
    let many: String = (0..70).map(|i| format!("X-{i}: v\r\n")).collect();
    let long = format!(
        "GET /?{} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
        "a".repeat(9000)
    );
    let cases: [(Vec<u8>, &str); 4] = [
        (
            format!("GET / HTTP/1.1\r\n{many}\r\n").into_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            long.into_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: \x01\r\n\r\n".to_vec(),
            "HTTP/1.1 400 Bad Request",
        ),
        // A body after the head is read and dropped; the page is still answered.
        (
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\n\r\nhello")
                .into_bytes(),
            "HTTP/1.1 200 OK",
        ),
    ];
    for (raw, want) in &cases {
        assert_eq!(
            status_of(addr, raw),
            *want,
            "{:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(80)])
        );
    }
    // Pipelined requests after the page's: only one answer, then the end.
    let mut s = tcp_connect(addr);
    let mut two = get(addr, "/");
    two.extend_from_slice(&get(addr, "/"));
    s.write_all(&two).unwrap();
    let head = read_http_head(&mut s);
    assert_eq!(head.status, 200);
    let len: usize = head.header("Content-Length").unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    expect_end(&mut s);
    // A request cut off half-way is dropped at the handshake timeout.
    let mut cut = tcp_connect(addr);
    cut.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    expect_end(&mut cut);
    g.client("frank")
        .check_echo("after the hostile page requests");
    assert_eq!(g.stats().counter("panics"), 0);
}
