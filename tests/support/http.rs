//! Raw HTTP: the upgrade request, a response-head parser written here, one request/response
//! exchange, and raw upgrades that leave a [`TcpStream`] positioned just after the 101.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::{random_u64, tcp_connect};

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes.
pub fn random_key() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&random_u64().to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `Sec-WebSocket-Accept` value for a key, computed by tungstenite (independent of the server).
pub fn accept_key(key: &str) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// A valid upgrade request for `target` (path and query) with a given key and extra header lines.
pub fn upgrade_request(
    addr: SocketAddr,
    target: &str,
    key: &str,
    extra_headers: &[(&str, &str)],
) -> Vec<u8> {
    let mut req = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A parsed HTTP response (the body is empty where only the head was read).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of that header, split into comma-separated tokens, trimmed and lower-cased.
    pub fn header_tokens(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_tokens(name)
            .iter()
            .any(|t| t == &token.to_ascii_lowercase())
    }
}

/// Reads a response head byte by byte (so that no byte after it is consumed) and parses it.
pub fn read_http_head(stream: &mut TcpStream) -> HttpResponse {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => panic!(
                "connection closed in the middle of the response head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!(
                "reading the response head failed ({e}); got so far: {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
        assert!(head.len() <= 64 * 1024, "response head too long");
    }
    parse_http_head(&head)
}

fn parse_http_head(head: &[u8]) -> HttpResponse {
    let text = std::str::from_utf8(head).expect("response head is not UTF-8");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    assert_eq!(version, "HTTP/1.1", "bad status line {status_line:?}");
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("bad header line {line:?}"));
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    HttpResponse {
        status_line,
        status,
        headers,
        body: Vec::new(),
    }
}

/// Sends raw bytes to `addr` and reads one response (body by Content-Length, else to EOF).
/// Returns the stream too, to check what happens after the response.
pub fn http_exchange(addr: SocketAddr, raw: &[u8]) -> (HttpResponse, TcpStream) {
    let mut stream = tcp_connect(addr);
    // A server that answers early (431) may close before all is written: keep what we can read.
    let write_result = stream.write_all(raw);
    let mut resp = {
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_http_head(&mut stream)));
        match r {
            Ok(r) => r,
            Err(p) => {
                eprintln!("(writing the request gave {write_result:?})");
                std::panic::resume_unwind(p)
            }
        }
    };
    match resp.header("Content-Length") {
        Some(len) => {
            let len: usize = len.parse().expect("bad Content-Length");
            let mut body = vec![0u8; len];
            stream
                .read_exact(&mut body)
                .unwrap_or_else(|e| panic!("reading a {len}-byte body: {e}"));
            resp.body = body;
        }
        None => {
            let mut body = Vec::new();
            stream
                .read_to_end(&mut body)
                .expect("reading the body to EOF");
            resp.body = body;
        }
    }
    (resp, stream)
}

/// [`http_exchange`] without the stream.
pub fn http_request(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    http_exchange(addr, raw).0
}

/// Sends a valid upgrade request for `target` (plus extra headers) on `stream` and reads the
/// response head, whatever its status. Returns it with the key that was sent.
pub fn raw_handshake(
    stream: &mut TcpStream,
    addr: SocketAddr,
    target: &str,
    extra_headers: &[(&str, &str)],
) -> (HttpResponse, String) {
    let key = random_key();
    stream
        .write_all(&upgrade_request(addr, target, &key, extra_headers))
        .expect("writing the upgrade request");
    (read_http_head(stream), key)
}

/// Upgrades `stream` to a WebSocket on `target`: asserts the 101 and its accept key, returns the
/// response too.
pub fn upgrade(
    mut stream: TcpStream,
    addr: SocketAddr,
    target: &str,
    extra_headers: &[(&str, &str)],
) -> (TcpStream, HttpResponse) {
    let (resp, key) = raw_handshake(&mut stream, addr, target, extra_headers);
    assert_eq!(resp.status, 101, "upgrade of {target} refused: {resp:?}");
    assert_eq!(
        resp.header("Sec-WebSocket-Accept"),
        Some(accept_key(&key).as_str()),
        "wrong accept key: {resp:?}"
    );
    (stream, resp)
}

/// Like [`upgrade`] on a new connection to `addr`.
pub fn raw_upgrade_path(
    addr: SocketAddr,
    target: &str,
    extra_headers: &[(&str, &str)],
) -> (TcpStream, HttpResponse) {
    upgrade(tcp_connect(addr), addr, target, extra_headers)
}

/// Connects, upgrades on `/ws` (with extra headers) and reads through the 101.
pub fn raw_upgrade(addr: SocketAddr, extra_headers: &[(&str, &str)]) -> TcpStream {
    raw_upgrade_path(addr, "/ws", extra_headers).0
}
