//! The opening handshake: every refusal with its status and headers, the accept key, the head-size
//! limit, the handshake timeout, and that none of it hurts the next client.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tungstenite::Message;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// A request head built from a request line and header lines (the blank line is added).
fn head(request_line: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{request_line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Every header of a valid upgrade, minus those whose name is in `skip`, plus `extra`.
fn ws_headers(addr: SocketAddr, skip: &[&str], extra: &[&str]) -> Vec<String> {
    let all = [
        ("Host", addr.to_string()),
        ("Upgrade", "websocket".to_string()),
        ("Connection", "Upgrade".to_string()),
        ("Sec-WebSocket-Key", KEY.to_string()),
        ("Sec-WebSocket-Version", "13".to_string()),
    ];
    let mut out: Vec<String> = all
        .iter()
        .filter(|(k, _)| !skip.iter().any(|s| s.eq_ignore_ascii_case(k)))
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    out.extend(extra.iter().map(|s| s.to_string()));
    out
}

fn request(request_line: &str, addr: SocketAddr, skip: &[&str], extra: &[&str]) -> Vec<u8> {
    let headers = ws_headers(addr, skip, extra);
    let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    head(request_line, &refs)
}

/// Sends `raw`, asserts the status and the rules every refusal follows (`Connection: close`, a
/// Content-Length body, then the server closes the connection). Returns the response.
fn expect_refusal(addr: SocketAddr, raw: &[u8], status: u16) -> HttpResponse {
    let (resp, mut stream) = http_exchange(addr, raw);
    assert_eq!(
        resp.status,
        status,
        "request {:?} got {:?}",
        String::from_utf8_lossy(&raw[..raw.len().min(300)]),
        resp
    );
    assert!(
        resp.status_line.starts_with(&format!("HTTP/1.1 {status} ")),
        "status line {:?}",
        resp.status_line
    );
    assert!(
        resp.has_token("Connection", "close"),
        "no Connection: close in {resp:?}"
    );
    let len = resp
        .header("Content-Length")
        .unwrap_or_else(|| panic!("no Content-Length in {resp:?}"));
    assert_eq!(len.parse::<usize>().unwrap(), resp.body.len());
    assert!(resp.header("Sec-WebSocket-Accept").is_none(), "{resp:?}");
    expect_end(&mut stream);
    resp
}

fn check_still_upgrades(server: &Gateway) {
    let mut ws = server.anonymous_client();
    ws.echo(Message::Text("still upgrading".into()));
    ws.close();
}

#[test]
fn the_rfc_example_key_gets_the_rfc_accept_value() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    let mut s = tcp_connect(addr);
    s.write_all(&request("GET /ws HTTP/1.1", addr, &[], &[]))
        .unwrap();
    let resp = read_http_head(&mut s);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert!(resp.status_line.starts_with("HTTP/1.1 101 "), "{resp:?}");
    assert_eq!(
        resp.header("Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(resp.has_token("Upgrade", "websocket"), "{resp:?}");
    assert!(resp.has_token("Connection", "upgrade"), "{resp:?}");
    // And it is a working WebSocket.
    send_frame(&mut s, true, 0, OP_TEXT, b"hi", true);
    assert_eq!(read_message(&mut s), (OP_TEXT, b"hi".to_vec()));
}

#[test]
fn header_names_and_tokens_are_case_insensitive_and_lists_are_accepted() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    let raw = head(
        "GET /ws?user=casey&x=1 HTTP/1.1",
        &[
            &format!("host: {addr}"),
            "upgrade: WebSocket",
            "connection: keep-alive, Upgrade",
            &format!("sec-websocket-key: {KEY}"),
            "sec-websocket-version: 13",
            "User-Agent: test",
        ],
    );
    let mut s = tcp_connect(addr);
    s.write_all(&raw).unwrap();
    let resp = read_http_head(&mut s);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("Sec-WebSocket-Accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[test]
fn a_head_sent_in_pieces_is_upgraded() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    let key = random_key();
    let raw = upgrade_request(addr, "/ws", &key, &[]);
    let mut s = tcp_connect(addr);
    // Split inside the request line, inside a header and inside the final CRLFCRLF.
    let cuts = [5, 40, raw.len() - 3, raw.len() - 1, raw.len()];
    let mut from = 0;
    for to in cuts {
        s.write_all(&raw[from..to]).unwrap();
        from = to;
    }
    let resp = read_http_head(&mut s);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("Sec-WebSocket-Accept"),
        Some(accept_key(&key).as_str())
    );
}

#[test]
fn non_get_gets_405_with_allow_get() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    // (Not HEAD: its response would have no body whatever Content-Length says.)
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let raw = request(
            &format!("{method} /ws HTTP/1.1"),
            addr,
            &[],
            &["Content-Length: 0"],
        );
        let resp = expect_refusal(addr, &raw, 405);
        assert!(
            resp.has_token("Allow", "GET"),
            "{method}: no Allow: GET in {resp:?}"
        );
    }
    check_still_upgrades(&server);
}

#[test]
fn another_path_gets_404() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    for path in ["/", "/other", "/wsx", "/w", "/other?user=alice"] {
        expect_refusal(
            addr,
            &request(&format!("GET {path} HTTP/1.1"), addr, &[], &[]),
            404,
        );
    }
    check_still_upgrades(&server);
}

#[test]
fn missing_host_gets_400() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    expect_refusal(
        addr,
        &request("GET /ws HTTP/1.1", addr, &["Host"], &[]),
        400,
    );
    check_still_upgrades(&server);
}

#[test]
fn a_plain_get_gets_426_with_upgrade_websocket() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    let raw = head(
        "GET /ws HTTP/1.1",
        &[&format!("Host: {addr}"), "Accept: */*"],
    );
    let resp = expect_refusal(addr, &raw, 426);
    assert!(
        resp.has_token("Upgrade", "websocket"),
        "no Upgrade: websocket in {resp:?}"
    );
    // Also with every WebSocket header but Upgrade.
    let resp = expect_refusal(
        addr,
        &request("GET /ws HTTP/1.1", addr, &["Upgrade"], &[]),
        426,
    );
    assert!(resp.has_token("Upgrade", "websocket"), "{resp:?}");
    check_still_upgrades(&server);
}

#[test]
fn upgrade_without_the_websocket_token_gets_400() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    for value in ["h2c", "websockets", "web socket"] {
        let h = format!("Upgrade: {value}");
        expect_refusal(
            addr,
            &request("GET /ws HTTP/1.1", addr, &["Upgrade"], &[&h]),
            400,
        );
    }
    check_still_upgrades(&server);
}

#[test]
fn connection_without_the_upgrade_token_gets_400() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    for value in ["keep-alive", "close", "upgraded"] {
        let h = format!("Connection: {value}");
        expect_refusal(
            addr,
            &request("GET /ws HTTP/1.1", addr, &["Connection"], &[&h]),
            400,
        );
    }
    // No Connection header at all.
    expect_refusal(
        addr,
        &request("GET /ws HTTP/1.1", addr, &["Connection"], &[]),
        400,
    );
    check_still_upgrades(&server);
}

#[test]
fn missing_or_wrong_version_gets_426_with_version_13() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    let resp = expect_refusal(
        addr,
        &request("GET /ws HTTP/1.1", addr, &["Sec-WebSocket-Version"], &[]),
        426,
    );
    assert_eq!(resp.header("Sec-WebSocket-Version"), Some("13"), "{resp:?}");
    for v in ["8", "12", "14", "abc"] {
        let h = format!("Sec-WebSocket-Version: {v}");
        let resp = expect_refusal(
            addr,
            &request("GET /ws HTTP/1.1", addr, &["Sec-WebSocket-Version"], &[&h]),
            426,
        );
        assert_eq!(
            resp.header("Sec-WebSocket-Version"),
            Some("13"),
            "version {v}: {resp:?}"
        );
    }
    check_still_upgrades(&server);
}

#[test]
fn a_key_that_is_not_base64_of_16_bytes_gets_400() {
    use base64::Engine;
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
    let bad = [
        "abc".to_string(),
        "not base64 at all!!!!!!!".to_string(), // 24 characters, but not base64
        b64(15),
        b64(17),
        b64(32),
    ];
    for key in &bad {
        let h = format!("Sec-WebSocket-Key: {key}");
        expect_refusal(
            addr,
            &request("GET /ws HTTP/1.1", addr, &["Sec-WebSocket-Key"], &[&h]),
            400,
        );
    }
    // Missing key.
    expect_refusal(
        addr,
        &request("GET /ws HTTP/1.1", addr, &["Sec-WebSocket-Key"], &[]),
        400,
    );
    // 16 bytes is fine.
    let good = b64(16);
    let h = format!("Sec-WebSocket-Key: {good}");
    let mut s = tcp_connect(addr);
    s.write_all(&request(
        "GET /ws HTTP/1.1",
        addr,
        &["Sec-WebSocket-Key"],
        &[&h],
    ))
    .unwrap();
    let resp = read_http_head(&mut s);
    assert_eq!(resp.status, 101, "{resp:?}");
    assert_eq!(
        resp.header("Sec-WebSocket-Accept"),
        Some(accept_key(&good).as_str())
    );
}

/// A valid upgrade request whose head is exactly `size` bytes long (padded with a header).
fn request_of_size(addr: SocketAddr, key: &str, size: usize) -> Vec<u8> {
    let base = upgrade_request(addr, "/ws", key, &[("X-Pad", "")]);
    assert!(size >= base.len());
    let pad = "p".repeat(size - base.len());
    let raw = upgrade_request(addr, "/ws", key, &[("X-Pad", &pad)]);
    assert_eq!(raw.len(), size);
    raw
}

#[test]
fn a_head_over_the_default_8192_bytes_gets_431() {
    let server = Gateway::demo(&[]);
    let addr = server.addr();
    expect_refusal(addr, &request_of_size(addr, KEY, 9000), 431);
    // A head that has already passed the limit is refused without waiting for its end.
    let mut raw = request_of_size(addr, KEY, 9000);
    raw.truncate(8500);
    expect_refusal(addr, &raw, 431);
    // Well under the limit: fine.
    let mut s = tcp_connect(addr);
    s.write_all(&request_of_size(addr, KEY, 6000)).unwrap();
    let resp = read_http_head(&mut s);
    assert_eq!(resp.status, 101, "{resp:?}");
    check_still_upgrades(&server);
}

#[test]
fn max_handshake_size_is_inclusive() {
    let server = Gateway::demo(&["--max-handshake-size", "1024"]);
    let addr = server.addr();
    let key = random_key();
    let mut s = tcp_connect(addr);
    s.write_all(&request_of_size(addr, &key, 1024)).unwrap();
    let resp = read_http_head(&mut s);
    assert_eq!(
        resp.status, 101,
        "a 1024-byte head with --max-handshake-size 1024: {resp:?}"
    );
    expect_refusal(addr, &request_of_size(addr, &key, 1025), 431);
}

#[test]
fn a_client_that_does_not_finish_its_head_is_disconnected_after_the_handshake_timeout() {
    let server = Gateway::demo(&["--handshake-timeout", "1s"]);
    let addr = server.addr();
    let raw = request("GET /ws HTTP/1.1", addr, &[], &[]);
    let mut s = tcp_connect(addr);
    let started = Instant::now();
    s.write_all(&raw[..raw.len() / 2]).unwrap();
    let mut buf = [0u8; 256];
    let how = match s.read(&mut buf) {
        Ok(0) => "EOF",
        Ok(n) => panic!(
            "expected a disconnect, got {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if is_reset(&e) => "reset",
        Err(e) => panic!("expected a disconnect within 5 s, got {e}"),
    };
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "disconnected ({how}) after {waited:?}, before the 1 s handshake timeout"
    );
    assert!(
        waited <= Duration::from_secs(5),
        "disconnected ({how}) only after {waited:?}"
    );
    server.wait_stats("handshake_timeouts >= 1", Duration::from_secs(5), |s| {
        s.counter("handshake_timeouts") >= 1
    });

    // A connection that sends nothing at all is dropped too.
    let mut s = tcp_connect(addr);
    let started = Instant::now();
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if is_reset(&e) => {}
        other => panic!("expected a disconnect, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    check_still_upgrades(&server);
}

#[test]
fn the_server_still_upgrades_after_every_kind_of_refusal() {
    let server = Gateway::demo(&["--handshake-timeout", "1s"]);
    let addr = server.addr();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            request("POST /ws HTTP/1.1", addr, &[], &["Content-Length: 0"]),
            405,
        ),
        (request("GET /nope HTTP/1.1", addr, &[], &[]), 404),
        (request("GET /ws HTTP/1.1", addr, &["Host"], &[]), 400),
        (head("GET /ws HTTP/1.1", &[&format!("Host: {addr}")]), 426),
        (
            request("GET /ws HTTP/1.1", addr, &["Upgrade"], &["Upgrade: h2c"]),
            400,
        ),
        (
            request(
                "GET /ws HTTP/1.1",
                addr,
                &["Connection"],
                &["Connection: keep-alive"],
            ),
            400,
        ),
        (
            request("GET /ws HTTP/1.1", addr, &["Sec-WebSocket-Version"], &[]),
            426,
        ),
        (
            request(
                "GET /ws HTTP/1.1",
                addr,
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: abc"],
            ),
            400,
        ),
        (request_of_size(addr, KEY, 10_000), 431),
    ];
    for (raw, status) in &cases {
        expect_refusal(addr, raw, *status);
    }
    // Not HTTP at all: whatever the answer, the connection is closed.
    let mut junk = tcp_connect(addr);
    junk.write_all(b"\x16\x03\x01\x02\x00GARBAGE\r\n\r\n")
        .unwrap();
    drain_to_end(&mut junk);
    // A half request left to time out, and one closed half-way by the client.
    let mut slow = tcp_connect(addr);
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    {
        let mut gone = tcp_connect(addr);
        gone.write_all(b"GET /ws HTTP/1.1\r\nHo").unwrap();
    }
    expect_end(&mut slow);

    let stats = server.wait_stats("every refusal counted", Duration::from_secs(5), |s| {
        s.counter("handshake_rejected") >= cases.len() as u64
    });
    assert_eq!(stats.counter("upgraded"), 0, "{stats}");
    assert!(stats.counter("handshake_timeouts") >= 1, "{stats}");
    assert_eq!(stats.sessions_total(), 0, "{stats}");

    check_still_upgrades(&server);
    let stats = server.stats();
    assert_eq!(stats.counter("upgraded"), 1, "{stats}");
}
