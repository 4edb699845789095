//! `ws::parse_request` on arbitrary bytes with a fixed endpoint configuration.
//!
//! Checks, besides "never panics":
//! - Streaming consistency: feeding any prefix of the input gives `Partial` until the outcome is
//!   decided, and from then on the same outcome (the same `UpgradeRequest`, or an error of the
//!   same kind and status) for every longer prefix and the whole input. So a request split across
//!   reads is judged as if it came in one read.
//! - A `Complete` request is sane (head within the limit and ending in LF, the configured path, a
//!   28-character accept key, a subprotocol from the server's list) and `write_accept_response`
//!   builds a complete HTTP/1.1 101 response that carries the accept key.
//! - An error's `response()` is a complete HTTP/1.1 response with its status and a matching
//!   Content-Length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringgate::ws::{
    parse_request, query_param, write_accept_response, HandshakeConfig, HandshakeError,
    ParseOutcome,
};
use std::mem::discriminant;
use std::sync::OnceLock;

/// Small enough that checking every prefix up to the limit stays cheap.
const MAX_HEAD: usize = 512;

fn config() -> &'static HandshakeConfig {
    static CFG: OnceLock<HandshakeConfig> = OnceLock::new();
    CFG.get_or_init(|| HandshakeConfig {
        path: "/ws".into(),
        subprotocols: vec!["game.v2".into(), "game.v1".into()],
        max_head_bytes: MAX_HEAD,
    })
}

fn same_class(
    a: &Result<ParseOutcome, HandshakeError>,
    b: &Result<ParseOutcome, HandshakeError>,
) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => discriminant(a) == discriminant(b) && a.status() == b.status(),
        _ => false,
    }
}

fn check_response(bytes: &[u8], status: u16) -> usize {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!("response head does not parse: {other:?}"),
    };
    assert_eq!(resp.version, Some(1));
    assert_eq!(resp.code, Some(status));
    len
}

fuzz_target!(|data: &[u8]| {
    let cfg = config();
    let full = parse_request(data, cfg);

    // Results for prefixes longer than MAX_HEAD + 1 equal the one for MAX_HEAD + 1: the parser
    // only looks at the first MAX_HEAD bytes and at whether there are more.
    let mut decided: Option<Result<ParseOutcome, HandshakeError>> = None;
    for n in 0..data.len().min(MAX_HEAD + 1) {
        let outcome = parse_request(&data[..n], cfg);
        if matches!(outcome, Ok(ParseOutcome::Partial)) {
            assert!(
                decided.is_none(),
                "Partial after a decided outcome at {n} bytes"
            );
            continue;
        }
        match &decided {
            Some(first) => assert!(
                same_class(first, &outcome),
                "prefix of {n} bytes: {outcome:?}, shorter prefix: {first:?}"
            ),
            None => decided = Some(outcome),
        }
    }
    if let Some(first) = &decided {
        assert!(
            same_class(first, &full),
            "whole input: {full:?}, prefix: {first:?}"
        );
    }

    match full {
        Ok(ParseOutcome::Partial) => assert!(data.len() <= MAX_HEAD),
        Ok(ParseOutcome::Complete(req)) => {
            assert!(req.head_len <= data.len() && req.head_len <= MAX_HEAD);
            assert_eq!(data[req.head_len - 1], b'\n');
            assert_eq!(req.path, cfg.path);
            assert_eq!(req.accept.len(), 28);
            if let Some(protocol) = &req.subprotocol {
                assert!(cfg.subprotocols.contains(protocol));
            }
            if let Some(query) = &req.query {
                let _ = query_param(query, "user");
            }
            let mut out = Vec::new();
            write_accept_response(&req, &mut out);
            assert_eq!(check_response(&out, 101), out.len(), "101 has no body");
            let needle = format!("Sec-WebSocket-Accept: {}\r\n", req.accept);
            assert!(out.windows(needle.len()).any(|w| w == needle.as_bytes()));
        }
        Err(err) => {
            let status = err.status();
            assert!(matches!(status, 400 | 404 | 405 | 426 | 431), "{status}");
            let out = err.response();
            let head = check_response(&out, status);
            let body = &out[head..];
            let declared = format!("Content-Length: {}\r\n", body.len());
            assert!(out[..head]
                .windows(declared.len())
                .any(|w| w == declared.as_bytes()));
        }
    }
});
