//! Handshake responses: the 101 that opens the WebSocket and the HTTP error
//! responses that refuse it.
//!
//! Owns the exact bytes the server writes before the WebSocket stream starts.
//! Must never put peer-supplied bytes into a header (the only dynamic header
//! values are the derived accept key and a subprotocol chosen from the
//! server's own list) and never send an error without `Connection: close`.

use super::request::{HandshakeError, UpgradeRequest};

/// Appends the `101 Switching Protocols` response for `req` to `out`.
pub fn write_accept_response(req: &UpgradeRequest, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\n\
          Upgrade: websocket\r\n\
          Connection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(req.accept.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(protocol) = &req.subprotocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(protocol.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

impl HandshakeError {
    /// A complete HTTP/1.1 error response naming the cause in a one-line
    /// plain-text body. The connection is to be closed after sending it.
    pub fn response(&self) -> Vec<u8> {
        let status = self.status();
        let body = format!("{self}\n");
        let extra = match self {
            Self::MethodNotAllowed => "Allow: GET\r\n",
            Self::UpgradeRequired => "Upgrade: websocket\r\n",
            Self::UnsupportedWebSocketVersion => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        format!(
            "HTTP/1.1 {status} {reason}\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: {len}\r\n\
             Connection: close\r\n\
             {extra}\r\n\
             {body}",
            reason = reason_phrase(status),
            len = body.len(),
        )
        .into_bytes()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(subprotocol: Option<&str>) -> UpgradeRequest {
        UpgradeRequest {
            head_len: 0,
            path: "/".into(),
            query: None,
            accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
            subprotocol: subprotocol.map(Into::into),
            headers: Vec::new(),
        }
    }

    #[test]
    fn accept_response_without_subprotocol() {
        let mut out = b"prefix|".to_vec();
        write_accept_response(&request(None), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "prefix|HTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn accept_response_with_subprotocol() {
        let mut out = Vec::new();
        write_accept_response(&request(Some("chat")), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"));
    }

    /// Splits a response into (status line, headers, body) and checks the
    /// Content-Length.
    fn dissect(resp: &[u8]) -> (String, Vec<String>, String) {
        let text = String::from_utf8(resp.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_string();
        let headers: Vec<String> = lines.map(String::from).collect();
        let len = format!("Content-Length: {}", body.len());
        assert!(headers.contains(&len), "{headers:?}");
        assert!(headers.contains(&"Connection: close".to_string()));
        assert!(headers.contains(&"Content-Type: text/plain".to_string()));
        assert!(body.ends_with('\n') && body.matches('\n').count() == 1);
        (status, headers, body.to_string())
    }

    #[test]
    fn error_responses_carry_status_and_extra_headers() {
        let cases = [
            (
                HandshakeError::HeadTooLarge,
                "HTTP/1.1 431 Request Header Fields Too Large",
                None,
            ),
            (
                HandshakeError::MethodNotAllowed,
                "HTTP/1.1 405 Method Not Allowed",
                Some("Allow: GET"),
            ),
            (HandshakeError::NotFound, "HTTP/1.1 404 Not Found", None),
            (
                HandshakeError::UpgradeRequired,
                "HTTP/1.1 426 Upgrade Required",
                Some("Upgrade: websocket"),
            ),
            (
                HandshakeError::UnsupportedWebSocketVersion,
                "HTTP/1.1 426 Upgrade Required",
                Some("Sec-WebSocket-Version: 13"),
            ),
            (HandshakeError::InvalidKey, "HTTP/1.1 400 Bad Request", None),
        ];
        for (err, status_line, extra) in cases {
            let (status, headers, body) = dissect(&err.response());
            assert_eq!(status, status_line);
            assert_eq!(
                headers.len(),
                3 + usize::from(extra.is_some()),
                "{headers:?}"
            );
            if let Some(extra) = extra {
                assert!(headers.contains(&extra.to_string()));
            }
            assert_eq!(body, format!("{err}\n"));
        }
    }
}
