//! The target URL: parsing `ws://host[:port]/path[?query]`, the loopback-only rule, and the
//! per-connection query template (`{i}` = connection index, `{p}` = process index).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// The `Host` header value: the URL's authority.
    pub host_header: String,
    pub addr: SocketAddr,
    /// The path, starting with `/`, without the query.
    pub path: String,
    /// The URL's own query, if any (without `?`).
    pub query: Option<String>,
}

impl Target {
    pub fn parse(url: &str, allow_remote: bool) -> Result<Target, String> {
        let rest = if let Some(r) = url.strip_prefix("ws://") {
            r
        } else if url.starts_with("wss://") {
            return Err("wss:// is not supported (no TLS in the harness)".into());
        } else {
            return Err(format!("{url}: the URL must start with ws://"));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(split);
        if authority.is_empty() {
            return Err(format!("{url}: no host"));
        }
        let (host, port) =
            split_host_port(authority).ok_or_else(|| format!("{url}: bad host or port"))?;
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (tail, None),
        };
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        };
        let addr = resolve(host, port, allow_remote).map_err(|e| format!("{url}: {e}"))?;
        Ok(Target {
            url: url.to_string(),
            host_header: authority.to_string(),
            addr,
            path,
            query: query.filter(|q| !q.is_empty()),
        })
    }

    /// The request target (path and query) for connection `i` of process `p`.
    pub fn request_target(&self, template: Option<&str>, i: u64, p: usize) -> String {
        let extra = template.map(|t| expand(t, i, p)).filter(|q| !q.is_empty());
        match (&self.query, extra) {
            (None, None) => self.path.clone(),
            (Some(q), None) => format!("{}?{q}", self.path),
            (None, Some(e)) => format!("{}?{e}", self.path),
            (Some(q), Some(e)) => format!("{}?{q}&{e}", self.path),
        }
    }
}

/// The header lines (each ending in CRLF) for connection `i` of process `p`.
pub fn expand_headers(templates: &[String], i: u64, p: usize) -> String {
    templates.iter().map(|t| expand(t, i, p) + "\r\n").collect()
}

/// Headers the harness writes itself: a template may not repeat or override them.
const OWN_HEADERS: [&str; 5] = [
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
];

/// Checks a `--header` template: `NAME: VALUE` with an HTTP token for a name, no line breaks, and
/// none of the headers of the upgrade itself.
pub fn check_header_template(t: &str) -> Result<(), String> {
    let Some((name, _value)) = t.split_once(':') else {
        return Err(format!("--header {t:?}: expected 'NAME: VALUE'"));
    };
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("--header {t:?}: {name:?} is not a header name"));
    }
    if t.contains(['\r', '\n']) {
        return Err(format!("--header {t:?}: no line breaks allowed"));
    }
    if OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("--header {t:?}: the harness sends {name} itself"));
    }
    Ok(())
}

/// Substitutes `{i}` and `{p}` in a query template.
pub fn expand(template: &str, i: u64, p: usize) -> String {
    template
        .replace("{i}", &i.to_string())
        .replace("{p}", &p.to_string())
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => 80,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, p.parse().ok()?)),
        Some(_) => None,
        None => Some((authority, 80)),
    }
}

fn resolve(host: &str, port: u16, allow_remote: bool) -> Result<SocketAddr, String> {
    let addr = if host.eq_ignore_ascii_case("localhost") {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        SocketAddr::new(ip, port)
    } else if allow_remote {
        (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?
    } else {
        return Err(format!(
            "{host} is not a loopback address (127.0.0.0/8, ::1, localhost); pass --allow-remote to target it anyway"
        ));
    };
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(format!(
            "{} is not a loopback address (127.0.0.0/8, ::1, localhost); pass --allow-remote to target it anyway",
            addr.ip()
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback_urls() {
        let t = Target::parse("ws://127.0.0.1:8080/ws", false).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws");
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(t.query, None);

        let t = Target::parse("ws://localhost:9101", false).unwrap();
        assert_eq!(t.addr, "127.0.0.1:9101".parse().unwrap());
        assert_eq!(t.path, "/");

        let t = Target::parse("ws://[::1]:9000/a/b?x=1", false).unwrap();
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(t.path, "/a/b");
        assert_eq!(t.query.as_deref(), Some("x=1"));

        let t = Target::parse("ws://127.5.6.7", false).unwrap();
        assert_eq!(t.addr.port(), 80);
    }

    #[test]
    fn refuses_non_loopback_targets() {
        assert!(Target::parse("ws://10.0.0.5:9000/ws", false).is_err());
        assert!(Target::parse("ws://192.168.1.1/", false).is_err());
        assert!(Target::parse("ws://example.com/", false).is_err());
        assert!(Target::parse("wss://127.0.0.1/", false).is_err());
        assert!(Target::parse("http://127.0.0.1/", false).is_err());
        assert!(Target::parse("ws://127.0.0.1:notaport/", false).is_err());
        // Allowed only when asked for explicitly (not resolved: no network needed for an IP).
        assert!(Target::parse("ws://10.0.0.5:9000/ws", true).is_ok());
    }

    #[test]
    fn header_templates() {
        for ok in [
            "X-User: u{i}",
            "Authorization: Bearer t-{p}-{i}",
            "x-empty:",
        ] {
            assert_eq!(check_header_template(ok), Ok(()), "{ok}");
        }
        for bad in [
            "no colon",
            ": no name",
            "Bad Name: x",
            "X-A: one\r\nX-B: two",
            "Host: elsewhere",
            "sec-websocket-key: AAAA",
        ] {
            assert!(check_header_template(bad).is_err(), "{bad}");
        }
        let h = vec!["X-User: u{i}".to_string(), "X-Proc: {p}".to_string()];
        assert_eq!(expand_headers(&h, 7, 2), "X-User: u7\r\nX-Proc: 2\r\n");
        assert_eq!(expand_headers(&[], 7, 2), "");
    }

    #[test]
    fn query_template() {
        assert_eq!(expand("user={i}", 42, 0), "user=42");
        assert_eq!(expand("user=p{p}-{i}&room={p}", 7, 3), "user=p3-7&room=3");
        assert_eq!(expand("plain", 1, 1), "plain");

        let t = Target::parse("ws://127.0.0.1:1/ws", false).unwrap();
        assert_eq!(t.request_target(None, 5, 0), "/ws");
        assert_eq!(t.request_target(Some("user={i}"), 5, 0), "/ws?user=5");
        let t = Target::parse("ws://127.0.0.1:1/ws?token=abc", false).unwrap();
        assert_eq!(t.request_target(None, 5, 0), "/ws?token=abc");
        assert_eq!(
            t.request_target(Some("user={i}"), 5, 1),
            "/ws?token=abc&user=5"
        );
    }
}
