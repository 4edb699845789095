//! The demo's chat page (`chat_page`): a static HTML file embedded at build time, answered on the
//! WebSocket listener to a plain `GET /` or `HEAD /`, then the connection is closed.
//!
//! Owns recognising such a request and the bytes of the answer, built once at start with the
//! WebSocket path written into the page's script. Never copies a byte of the request into the
//! answer, never answers a request that offers a WebSocket upgrade (those stay `accept`'s), and
//! never keeps a connection past its answer: the page is not a session.

use std::fmt::Write as _;
use std::io::IoSlice;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use monoio::net::TcpStream;
use sha2::{Digest, Sha256};

use crate::runtime::sys;

const HTML: &str = include_str!("chat.html");

/// Where the page's script expects the WebSocket path, quotes included: the replacement is a whole
/// JavaScript string literal.
const PATH_PLACEHOLDER: &str = "\"__RINGGATE_WS_PATH__\"";

/// As many headers as an upgrade request may carry; a request with more is not one for the page.
const MAX_HEADERS: usize = 64;

/// How the page was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    /// The same head without the body.
    Head,
}

/// The complete `200` answer, shared by every core.
#[derive(Clone, Debug)]
pub struct Page {
    response: Bytes,
    head_len: usize,
}

impl Page {
    /// Renders the page for a WebSocket listener on `ws_path`.
    pub fn new(ws_path: &str) -> Page {
        let body = HTML.replacen(PATH_PLACEHOLDER, &js_string(ws_path), 1);
        let head = format!(
            "HTTP/1.1 200 OK\r\n\
             Content-Type: text/html; charset=utf-8\r\n\
             Content-Length: {}\r\n\
             Cache-Control: no-cache\r\n\
             Connection: close\r\n\
             Content-Security-Policy: {}\r\n\
             X-Content-Type-Options: nosniff\r\n\
             Referrer-Policy: no-referrer\r\n\r\n",
            body.len(),
            content_security_policy(&body),
        );
        let head_len = head.len();
        let mut response = head.into_bytes();
        response.extend_from_slice(body.as_bytes());
        Page {
            response: Bytes::from(response),
            head_len,
        }
    }

    /// The bytes to send for `method`.
    pub fn answer(&self, method: Method) -> Bytes {
        match method {
            Method::Get => self.response.clone(),
            Method::Head => self.response.slice(..self.head_len),
        }
    }
}

/// Whether the complete request head at the front of `buf` asks for the page: HTTP/1.1, `GET` or
/// `HEAD`, the path exactly `/` (any query), and no `Upgrade` header offering `websocket`, so that a
/// broken upgrade request keeps the error that tells its client what is wrong.
pub fn wanted(buf: &[u8], max_head_bytes: usize) -> Option<Method> {
    let window = buf.get(..max_head_bytes).unwrap_or(buf);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    if !matches!(req.parse(window), Ok(httparse::Status::Complete(_))) || req.version != Some(1) {
        return None;
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        _ => return None,
    };
    let target = req.path?;
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/" {
        return None;
    }
    let offers_websocket = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"websocket"));
    (!offers_websocket).then_some(method)
}

/// Sends `answer` and closes politely, all within `limit`: a client that does not read its page
/// in that time loses it rather than holding a descriptor.
pub async fn serve(stream: TcpStream, answer: Bytes, limit: Duration) {
    let sent = monoio::time::timeout(limit, send_all(&stream, &answer)).await;
    if matches!(sent, Ok(true)) {
        super::accept::close_politely(stream).await;
    }
}

/// Unlike an error response, the page can outgrow a fresh socket's send buffer.
async fn send_all(stream: &TcpStream, mut rest: &[u8]) -> bool {
    let fd = sys::fd(stream);
    while !rest.is_empty() {
        match sys::send_vectored(fd, &[IoSlice::new(rest)]) {
            Ok(Some(n)) if n > 0 => rest = rest.get(n..).unwrap_or_default(),
            Ok(None) => {
                if stream.writable(false).await.is_err() {
                    return false;
                }
            }
            Ok(Some(_)) | Err(_) => return false,
        }
    }
    true
}

/// Nothing but the page's own inline style and script (by hash, so an injected one would not run),
/// WebSocket connections, and no framing, forms, base URL or plugins.
fn content_security_policy(body: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src ws: wss:; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hash(body, "<script>", "</script>"),
        inline_hash(body, "<style>", "</style>"),
    )
}

/// `'sha256-…'` of the text between the first `open` tag and the `close` after it; `'none'` if
/// there is none (an edited page without that element needs no permission for it).
fn inline_hash(body: &str, open: &str, close: &str) -> String {
    let inner = body
        .split_once(open)
        .and_then(|(_, rest)| rest.split_once(close));
    match inner {
        Some((text, _)) => format!(
            "'sha256-{}'",
            STANDARD.encode(Sha256::digest(text.as_bytes()))
        ),
        None => "'none'".to_string(),
    }
}

/// `text` as a JavaScript string literal that is also safe inside an HTML `<script>` element: no
/// `<`, `>` or `&` (so no `</script>` or `<!--`), no quote, backslash, control or line-separator
/// character left as it is.
fn js_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' | '>' | '&' | '\'' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn the_path_is_injected_as_an_escaped_string() {
        let page = Page::new("/game</script><b>\"\\'&\u{2028}\n");
        let body = text(&page.answer(Method::Get));
        assert!(!body.contains("__RINGGATE_WS_PATH__"));
        assert!(body.contains(
            r#"const WS_PATH = "/game\u003c/script\u003e\u003cb\u003e\"\\\u0027\u0026\u2028\u000a";"#
        ));
        assert_eq!(body.matches("</script>").count(), 1);
        assert!(text(&Page::new("/ws").answer(Method::Get)).contains(r#"const WS_PATH = "/ws";"#));
    }

    #[test]
    fn head_is_the_get_answer_without_its_body() {
        let page = Page::new("/ws");
        let get = text(&page.answer(Method::Get));
        let head = text(&page.answer(Method::Head));
        let (get_head, body) = get.split_once("\r\n\r\n").unwrap();
        assert_eq!(head, format!("{get_head}\r\n\r\n"));
        assert!(get_head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(body.contains("<title>ringgate chat</title>"));
    }

    #[test]
    fn the_policy_allows_exactly_the_page_s_own_script_and_style() {
        let page = Page::new("/ws");
        let get = text(&page.answer(Method::Get));
        let (head, body) = get.split_once("\r\n\r\n").unwrap();
        let script = body
            .split_once("<script>")
            .and_then(|(_, r)| r.split_once("</script>"))
            .unwrap()
            .0;
        let digest = STANDARD.encode(Sha256::digest(script.as_bytes()));
        let csp = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
            .unwrap();
        assert!(csp.starts_with("default-src 'none'; "), "{csp}");
        assert!(
            csp.contains(&format!("script-src 'sha256-{digest}';")),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert!(!csp.contains("'none'; style-src"), "no style hash: {csp}");
        assert_eq!(inline_hash("no script", "<script>", "</script>"), "'none'");
    }

    #[test]
    fn only_a_plain_get_or_head_of_the_root_is_wanted() {
        let wanted = |raw: &str| super::wanted(raw.as_bytes(), 8192);
        assert_eq!(
            wanted("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Method::Get)
        );
        assert_eq!(
            wanted("GET /?user=a&room=b HTTP/1.1\r\n\r\n"),
            Some(Method::Get)
        );
        assert_eq!(
            wanted("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Method::Head)
        );
        assert_eq!(
            wanted("GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"),
            Some(Method::Get)
        );
        for refused in [
            "GET /ws HTTP/1.1\r\n\r\n",
            "GET /index.html HTTP/1.1\r\n\r\n",
            "GET // HTTP/1.1\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "get / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nupgrade: foo, WebSocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "\0\0\0\0",
            "",
        ] {
            assert_eq!(wanted(refused), None, "{refused:?}");
        }
        // A head longer than the limit is not parsed past it.
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
        assert_eq!(super::wanted(long.as_bytes(), 256), None);
        let many: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(wanted(&format!("GET / HTTP/1.1\r\n{many}\r\n")), None);
    }
}
