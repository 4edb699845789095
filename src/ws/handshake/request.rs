//! Parsing and validating the client's upgrade request (RFC 6455 sec. 4.2.1).
//!
//! Owns the decision "is this head a valid WebSocket opening handshake for
//! this endpoint" and the order in which the checks run, which fixes the
//! HTTP status a client sees. Must never look at bytes beyond
//! `max_head_bytes` or beyond the head, never assume header values are
//! UTF-8, and never allocate in proportion to anything but the bounded head.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::accept::accept_key;

/// httparse needs a fixed header array; more headers than this is a 431.
const MAX_HEADERS: usize = 64;

/// Server-side settings for one WebSocket endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// The only request path (without query) accepted.
    pub path: String,
    /// Subprotocols the server speaks; the client's preference order wins.
    pub subprotocols: Vec<String>,
    /// Longest request head accepted, including the final CRLFCRLF.
    pub max_head_bytes: usize,
}

/// A validated upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Bytes of the head, including the final CRLFCRLF; bytes after it
    /// belong to the WebSocket stream.
    pub head_len: usize,
    /// Request-target path, without the query.
    pub path: String,
    /// Raw query string (after '?'), if any.
    pub query: Option<String>,
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The first of the client's offered subprotocols (in its order) that the
    /// server supports; `None` if no match or nothing offered.
    pub subprotocol: Option<String>,
    /// Every header: name lowercased, value raw.
    pub headers: Vec<(String, Vec<u8>)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseOutcome {
    /// The head is not complete yet; read more and call again.
    Partial,
    Complete(UpgradeRequest),
}

/// Why the handshake was refused. `status()` is the HTTP status and
/// `response()` the full response to send before closing.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("request head exceeds the size limit")]
    HeadTooLarge,
    #[error("too many request headers (limit {MAX_HEADERS})")]
    TooManyHeaders,
    #[error("malformed HTTP request: {0}")]
    Malformed(httparse::Error),
    #[error("HTTP version must be HTTP/1.1")]
    UnsupportedHttpVersion,
    #[error("method not allowed, a WebSocket upgrade must use GET")]
    MethodNotAllowed,
    #[error("no WebSocket endpoint at this path")]
    NotFound,
    #[error("missing Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("this endpoint requires a WebSocket upgrade")]
    UpgradeRequired,
    #[error("Upgrade header does not offer websocket")]
    UpgradeNotWebSocket,
    #[error("Connection header does not contain the upgrade token")]
    ConnectionNotUpgrade,
    #[error("unsupported or missing Sec-WebSocket-Version, only 13 is supported")]
    UnsupportedWebSocketVersion,
    #[error("missing Sec-WebSocket-Key header")]
    MissingKey,
    #[error("more than one Sec-WebSocket-Key header")]
    DuplicateKey,
    #[error("Sec-WebSocket-Key is not the base64 encoding of 16 bytes")]
    InvalidKey,
    #[error("an upgrade request must not carry a body")]
    BodyNotAllowed,
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge | Self::TooManyHeaders => 431,
            Self::MethodNotAllowed => 405,
            Self::NotFound => 404,
            Self::UpgradeRequired | Self::UnsupportedWebSocketVersion => 426,
            Self::Malformed(_)
            | Self::UnsupportedHttpVersion
            | Self::MissingHost
            | Self::DuplicateHost
            | Self::UpgradeNotWebSocket
            | Self::ConnectionNotUpgrade
            | Self::MissingKey
            | Self::DuplicateKey
            | Self::InvalidKey
            | Self::BodyNotAllowed => 400,
        }
    }
}

/// Parses the head at the front of `buf` and validates it as an upgrade to
/// `cfg.path`. Call again with more bytes on `Ok(Partial)`.
pub fn parse_request(buf: &[u8], cfg: &HandshakeConfig) -> Result<ParseOutcome, HandshakeError> {
    // Parsing only the first max_head_bytes bounds the work per call and
    // makes "complete but too long" and "incomplete and too long" the same
    // case: no head ends inside the window.
    let window = buf.get(..cfg.max_head_bytes).unwrap_or(buf);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > cfg.max_head_bytes => {
            return Err(HandshakeError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(ParseOutcome::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(err) => return Err(HandshakeError::Malformed(err)),
    };

    if req.version != Some(1) {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    // Methods are case-sensitive (RFC 9110 sec. 9.1).
    if req.method != Some("GET") {
        return Err(HandshakeError::MethodNotAllowed);
    }
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path != cfg.path {
        return Err(HandshakeError::NotFound);
    }

    let headers: &[httparse::Header<'_>] = req.headers;
    match values(headers, "host").count() {
        0 => return Err(HandshakeError::MissingHost),
        1 => {}
        _ => return Err(HandshakeError::DuplicateHost),
    }

    let mut upgrades = values(headers, "upgrade").peekable();
    if upgrades.peek().is_none() {
        return Err(HandshakeError::UpgradeRequired);
    }
    if !upgrades
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case(b"websocket"))
    {
        return Err(HandshakeError::UpgradeNotWebSocket);
    }
    if !values(headers, "connection")
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"))
    {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }

    let mut versions = values(headers, "sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(version), None) if version.trim_ascii() == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedWebSocketVersion),
    }

    let mut keys = values(headers, "sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(key), None) => key.trim_ascii(),
        (None, _) => return Err(HandshakeError::MissingKey),
        (Some(_), Some(_)) => return Err(HandshakeError::DuplicateKey),
    };
    if !is_valid_key(key) {
        return Err(HandshakeError::InvalidKey);
    }

    // The bytes after the head are WebSocket frames; a body there would be read as frames.
    let has_body = values(headers, "transfer-encoding").next().is_some()
        || values(headers, "content-length").any(|v| v.trim_ascii() != b"0");
    if has_body {
        return Err(HandshakeError::BodyNotAllowed);
    }

    let subprotocol = values(headers, "sec-websocket-protocol")
        .flat_map(tokens)
        .find_map(|offered| {
            cfg.subprotocols
                .iter()
                .find(|supported| supported.as_bytes() == offered)
        })
        .cloned();

    Ok(ParseOutcome::Complete(UpgradeRequest {
        head_len,
        path: path.to_owned(),
        query: query.map(str::to_owned),
        accept: accept_key(key),
        subprotocol,
        headers: headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    }))
}

/// Values of every header named `name` (ASCII case-insensitive), in order.
fn values<'h>(
    headers: &'h [httparse::Header<'_>],
    name: &'static str,
) -> impl Iterator<Item = &'h [u8]> + 'h {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The non-empty, whitespace-trimmed elements of a comma-separated list.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// RFC 6455 sec. 4.2.1 item 5: base64 of 16 bytes, which is always 24
/// characters; checking the length first bounds the decode allocation.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24 && STANDARD.decode(key).is_ok_and(|raw| raw.len() == 16)
}

/// The first value of `name` in an `application/x-www-form-urlencoded`
/// query, percent-decoded with '+' as space. `None` if absent, or if that
/// value is not UTF-8 once decoded. Malformed escapes are kept literally, as
/// the WHATWG URL standard does.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| percent_decode(key.as_bytes(), true) == name.as_bytes())
        .and_then(|(_, value)| String::from_utf8(percent_decode(value.as_bytes(), true)).ok())
}

/// Decodes `%XX` (and `+` as a space when `plus_is_space`, as in a query string), leaving a `%`
/// without two hex digits as it is.
pub fn percent_decode(input: &[u8], plus_is_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => match tail {
                [hi, lo, after @ ..] => match (hex_value(*hi), hex_value(*lo)) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi << 4) | lo);
                        rest = after;
                    }
                    _ => out.push(b'%'),
                },
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
    }
    out
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn cfg() -> HandshakeConfig {
        HandshakeConfig {
            path: "/ws".into(),
            subprotocols: vec!["game.v2".into(), "game.v1".into()],
            max_head_bytes: 4096,
        }
    }

    /// A valid request with `extra` header lines appended.
    fn request_with(request_line: &str, headers: &[&str]) -> Vec<u8> {
        let mut out = format!("{request_line}\r\n");
        for h in headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn standard_headers() -> Vec<&'static str> {
        vec![
            "Host: game.example",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ]
    }

    /// The standard request with the header starting with `drop` removed
    /// and `add` appended.
    fn variant(drop: &[&str], add: &[&str]) -> Vec<u8> {
        let mut headers: Vec<&str> = standard_headers()
            .into_iter()
            .filter(|h| !drop.iter().any(|d| h.starts_with(d)))
            .collect();
        headers.extend_from_slice(add);
        request_with("GET /ws HTTP/1.1", &headers)
    }

    fn complete(buf: &[u8]) -> UpgradeRequest {
        match parse_request(buf, &cfg()) {
            Ok(ParseOutcome::Complete(req)) => req,
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    fn error(buf: &[u8]) -> HandshakeError {
        parse_request(buf, &cfg()).expect_err("expected a handshake error")
    }

    #[test]
    fn valid_request() {
        let mut buf = variant(&[], &[]);
        let head = buf.len();
        buf.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let req = complete(&buf);
        assert_eq!(req.head_len, head);
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query, None);
        assert_eq!(req.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(req.subprotocol, None);
        assert_eq!(req.headers.len(), 5);
        assert_eq!(
            req.headers[0],
            ("host".to_string(), b"game.example".to_vec())
        );
        assert_eq!(req.headers[4].0, "sec-websocket-key");
    }

    #[test]
    fn valid_request_case_and_token_variations() {
        let buf = request_with(
            "GET /ws?room=7&name=a%20b HTTP/1.1",
            &[
                "hOsT: game.example",
                "UPGRADE: WebSocket",
                "connection: keep-alive, Upgrade",
                "sec-websocket-version:  13 ",
                "SEC-WEBSOCKET-KEY: dGhlIHNhbXBsZSBub25jZQ==",
                "X-Forwarded-For: 10.0.0.1",
            ],
        );
        let req = complete(&buf);
        assert_eq!(req.query.as_deref(), Some("room=7&name=a%20b"));
        assert_eq!(req.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            req.headers[5],
            ("x-forwarded-for".to_string(), b"10.0.0.1".to_vec())
        );
    }

    #[test]
    fn connection_and_upgrade_tokens_across_headers() {
        let buf = variant(
            &["Upgrade", "Connection"],
            &[
                "Connection: keep-alive",
                "Connection: ,upgrade ,",
                "Upgrade: h2c, websocket",
            ],
        );
        complete(&buf);
    }

    #[test]
    fn subprotocol_client_order_wins() {
        let buf = variant(
            &[],
            &[
                "Sec-WebSocket-Protocol: chat, game.v1",
                "Sec-WebSocket-Protocol: game.v2",
            ],
        );
        assert_eq!(complete(&buf).subprotocol.as_deref(), Some("game.v1"));
        let buf = variant(&[], &["Sec-WebSocket-Protocol: game.v2,game.v1"]);
        assert_eq!(complete(&buf).subprotocol.as_deref(), Some("game.v2"));
        let buf = variant(&[], &["Sec-WebSocket-Protocol: chat, GAME.V1"]);
        assert_eq!(complete(&buf).subprotocol, None);
        let buf = variant(&[], &["Sec-WebSocket-Protocol: "]);
        assert_eq!(complete(&buf).subprotocol, None);
    }

    #[test]
    fn non_utf8_header_values_are_kept_raw() {
        let mut buf = variant(&[], &[]);
        buf.truncate(buf.len() - 2);
        buf.extend_from_slice(b"X-Name: caf\xE9\r\nSec-WebSocket-Protocol: \xFF, game.v1\r\n\r\n");
        let req = complete(&buf);
        assert_eq!(req.headers[5], ("x-name".to_string(), b"caf\xE9".to_vec()));
        assert_eq!(req.subprotocol.as_deref(), Some("game.v1"));
    }

    #[test]
    fn partial_until_limit_then_431() {
        let full = variant(&[], &[]);
        for cut in 0..full.len() {
            assert_eq!(
                parse_request(&full[..cut], &cfg()),
                Ok(ParseOutcome::Partial),
                "cut {cut}"
            );
        }
        let small = HandshakeConfig {
            max_head_bytes: 40,
            ..cfg()
        };
        assert_eq!(
            parse_request(&full[..40], &small),
            Ok(ParseOutcome::Partial)
        );
        let e = parse_request(&full[..41], &small).unwrap_err();
        assert_eq!((e.clone(), e.status()), (HandshakeError::HeadTooLarge, 431));
    }

    #[test]
    fn complete_head_over_limit_is_431() {
        let full = variant(&[], &[]);
        let exact = HandshakeConfig {
            max_head_bytes: full.len(),
            ..cfg()
        };
        assert!(matches!(
            parse_request(&full, &exact),
            Ok(ParseOutcome::Complete(_))
        ));
        let short = HandshakeConfig {
            max_head_bytes: full.len() - 1,
            ..cfg()
        };
        assert_eq!(parse_request(&full, &short).unwrap_err().status(), 431);
    }

    #[test]
    fn too_many_headers_is_431() {
        let filler: Vec<String> = (0..60).map(|i| format!("X-H{i}: v")).collect();
        let mut headers = standard_headers();
        headers.extend(filler.iter().map(String::as_str));
        let buf = request_with("GET /ws HTTP/1.1", &headers);
        let e = error(&buf);
        assert_eq!(
            (e.clone(), e.status()),
            (HandshakeError::TooManyHeaders, 431)
        );
        // 64 in total is fine.
        let mut headers = standard_headers();
        headers.extend(filler.iter().take(59).map(String::as_str));
        complete(&request_with("GET /ws HTTP/1.1", &headers));
    }

    #[test]
    fn malformed_is_400() {
        for bad in [
            &b"GET /ws HTTP/1.1\r\nHo st: x\r\n\r\n"[..],
            b"GET /ws HTTP/1.1\r\nHost: a\x01b\r\n\r\n",
            b"GET /ws HTTP/2.0\r\nHost: x\r\n\r\n",
            b"\x00GET /ws HTTP/1.1\r\n\r\n",
            b"GET  /ws HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            let e = error(bad);
            assert!(
                matches!(e, HandshakeError::Malformed(_)),
                "{bad:?} -> {e:?}"
            );
            assert_eq!(e.status(), 400);
        }
    }

    #[test]
    fn http_1_0_is_400() {
        let buf = request_with("GET /ws HTTP/1.0", &standard_headers());
        let e = error(&buf);
        assert_eq!(
            (e.clone(), e.status()),
            (HandshakeError::UnsupportedHttpVersion, 400)
        );
    }

    #[test]
    fn non_get_is_405_with_allow() {
        for line in ["POST /ws HTTP/1.1", "get /ws HTTP/1.1", "HEAD /ws HTTP/1.1"] {
            let e = error(&request_with(line, &standard_headers()));
            assert_eq!(
                (e.clone(), e.status()),
                (HandshakeError::MethodNotAllowed, 405)
            );
            let text = String::from_utf8(e.response()).unwrap();
            assert!(text.contains("\r\nAllow: GET\r\n"));
        }
    }

    #[test]
    fn wrong_path_is_404() {
        for line in [
            "GET / HTTP/1.1",
            "GET /ws/ HTTP/1.1",
            "GET /WS HTTP/1.1",
            "GET http://h/ws HTTP/1.1",
        ] {
            let e = error(&request_with(line, &standard_headers()));
            assert_eq!(
                (e.clone(), e.status()),
                (HandshakeError::NotFound, 404),
                "{line}"
            );
        }
        complete(&request_with("GET /ws? HTTP/1.1", &standard_headers()));
    }

    #[test]
    fn host_rules_are_400() {
        let e = error(&variant(&["Host"], &[]));
        assert_eq!((e.clone(), e.status()), (HandshakeError::MissingHost, 400));
        let e = error(&variant(&[], &["host: other"]));
        assert_eq!(
            (e.clone(), e.status()),
            (HandshakeError::DuplicateHost, 400)
        );
    }

    #[test]
    fn plain_http_is_426_with_upgrade_header() {
        let e = error(&variant(&["Upgrade"], &[]));
        assert_eq!(
            (e.clone(), e.status()),
            (HandshakeError::UpgradeRequired, 426)
        );
        let text = String::from_utf8(e.response()).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nUpgrade: websocket\r\n"));
    }

    #[test]
    fn upgrade_without_websocket_is_400() {
        for value in [
            "Upgrade: h2c",
            "Upgrade: websocket2",
            "Upgrade: ",
            "Upgrade: web socket",
        ] {
            let e = error(&variant(&["Upgrade"], &[value]));
            assert_eq!(
                (e.clone(), e.status()),
                (HandshakeError::UpgradeNotWebSocket, 400),
                "{value}"
            );
        }
    }

    #[test]
    fn connection_without_upgrade_is_400() {
        for add in [
            &[][..],
            &["Connection: keep-alive"],
            &["Connection: upgrades, close"],
        ] {
            let e = error(&variant(&["Connection"], add));
            assert_eq!(
                (e.clone(), e.status()),
                (HandshakeError::ConnectionNotUpgrade, 400)
            );
        }
    }

    #[test]
    fn websocket_version_must_be_13() {
        let cases: [&[&str]; 5] = [
            &[],
            &["Sec-WebSocket-Version: 8"],
            &["Sec-WebSocket-Version: 13, 8"],
            &["Sec-WebSocket-Version: 130"],
            &["Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13"],
        ];
        for add in cases {
            let e = error(&variant(&["Sec-WebSocket-Version"], add));
            assert_eq!(
                (e.clone(), e.status()),
                (HandshakeError::UnsupportedWebSocketVersion, 426)
            );
            let text = String::from_utf8(e.response()).unwrap();
            assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        }
    }

    #[test]
    fn key_rules_are_400() {
        let e = error(&variant(&["Sec-WebSocket-Key"], &[]));
        assert_eq!((e.clone(), e.status()), (HandshakeError::MissingKey, 400));
        let e = error(&variant(
            &[],
            &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="],
        ));
        assert_eq!((e.clone(), e.status()), (HandshakeError::DuplicateKey, 400));
        for key in [
            "",
            "not base64 at all!!!!!!!",
            "AAAAAAAAAAAAAAAAAAAA",             // 15 bytes
            "AAAAAAAAAAAAAAAAAAAAAAAA",         // 18 bytes, no padding
            "AAAAAAAAAAAAAAAAAAAAAB==",         // non-canonical trailing bits
            "AAAAAAAAAAAAAAAAAAAAAA",           // missing padding
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==", // 22 bytes
        ] {
            let header = format!("Sec-WebSocket-Key: {key}");
            let e = error(&variant(&["Sec-WebSocket-Key"], &[&header]));
            assert_eq!(
                (e.clone(), e.status()),
                (HandshakeError::InvalidKey, 400),
                "{key:?}"
            );
        }
        let header = format!("Sec-WebSocket-Key:  {KEY}  ");
        complete(&variant(&["Sec-WebSocket-Key"], &[&header]));
    }

    #[test]
    fn checks_run_in_documented_order() {
        // POST to the wrong path without any WebSocket headers: method first.
        let e = error(&request_with("POST /nope HTTP/1.1", &[]));
        assert_eq!(e.status(), 405);
        // Wrong path beats missing Host.
        assert_eq!(
            error(&request_with("GET /nope HTTP/1.1", &[])).status(),
            404
        );
        // Missing Host beats missing Upgrade.
        assert_eq!(
            error(&request_with("GET /ws HTTP/1.1", &[])),
            HandshakeError::MissingHost
        );
        // Missing version (426) beats a bad key (400).
        let buf = variant(&["Sec-WebSocket-Version", "Sec-WebSocket-Key"], &[]);
        assert_eq!(error(&buf).status(), 426);
    }

    #[test]
    fn query_param_decoding() {
        let q = "room=7&name=J%C3%B6rg+M&empty=&flag&room=8&bad=%FF&pct=100%&x%20y=z";
        assert_eq!(query_param(q, "room").as_deref(), Some("7"));
        assert_eq!(query_param(q, "name").as_deref(), Some("Jörg M"));
        assert_eq!(query_param(q, "empty").as_deref(), Some(""));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param(q, "bad"), None);
        assert_eq!(query_param(q, "pct").as_deref(), Some("100%"));
        assert_eq!(query_param(q, "x y").as_deref(), Some("z"));
        assert_eq!(query_param("", "a"), None);
        assert_eq!(query_param("a=%4", "a").as_deref(), Some("%4"));
        assert_eq!(query_param("a=%zz%41", "a").as_deref(), Some("%zzA"));
        assert_eq!(query_param("&&a=1", "a").as_deref(), Some("1"));
        assert_eq!(query_param("a=1=2", "a").as_deref(), Some("1=2"));
    }

    #[test]
    fn a_body_is_refused() {
        let cfg = cfg();
        for extra in ["Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n"] {
            let req = format!(
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\nhello"
            );
            let e = parse_request(req.as_bytes(), &cfg).unwrap_err();
            assert_eq!(
                (e.clone(), e.status()),
                (HandshakeError::BodyNotAllowed, 400)
            );
        }
        let ok = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            parse_request(ok.as_bytes(), &cfg),
            Ok(ParseOutcome::Complete(_))
        ));
    }
}
