//! Finding a token in an upgrade request: plain inputs (the header list, the query string), no
//! I/O, and nothing here ever prints what it finds.

use std::borrow::Cow;

use super::{AuthConfig, Found, TokenSource};

/// The prefix of a `Sec-WebSocket-Protocol` entry that carries a token.
const BEARER_PROTOCOL: &str = "bearer.";

/// The first token in `cfg.token_sources` order, and where it was found.
///
/// `headers`: every request header, names lowercased (compared without regard to case anyway),
/// raw values, several headers of one name possible; a value that is not UTF-8 is skipped.
/// `query`: the raw query string without '?', if any.
/// - authorization: `Authorization: Bearer <token>` (the scheme in any case);
/// - subprotocol: an entry `bearer.<token>` among the comma-separated values of every
///   `sec-websocket-protocol` header;
/// - query: the first parameter named `cfg.query_param`, form-decoded (%XX, '+');
/// - cookie: the first cookie named `cfg.cookie` in the `cookie` header(s)
///   (`name=value; name2=value2`), surrounding double quotes removed, %XX decoded.
///
/// An empty value counts as no token there and the search goes on.
pub fn find_token<'a>(
    cfg: &AuthConfig,
    headers: &'a [(String, Vec<u8>)],
    query: Option<&'a str>,
) -> Option<(Cow<'a, str>, Found)> {
    cfg.token_sources.iter().find_map(|source| match source {
        TokenSource::Authorization => {
            from_authorization(headers).map(|t| (Cow::Borrowed(t), Found::Authorization))
        }
        TokenSource::Subprotocol => {
            from_subprotocol(headers).map(|t| (Cow::Borrowed(t), Found::Subprotocol))
        }
        TokenSource::Query => query
            .and_then(|q| from_query(q, &cfg.query_param))
            .map(|t| (t, Found::Query)),
        TokenSource::Cookie => from_cookie(headers, &cfg.cookie).map(|t| (t, Found::Cookie)),
    })
}

/// Whether a `Sec-WebSocket-Protocol` entry carries a token (`bearer.<token>`): such an entry
/// must never be selected or echoed in the 101 answer.
pub fn is_bearer_subprotocol(entry: &str) -> bool {
    entry.trim().starts_with(BEARER_PROTOCOL)
}

/// The UTF-8 values of the headers named `name`.
fn header_values<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'static str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .filter_map(|(_, v)| std::str::from_utf8(v).ok())
}

fn from_authorization(headers: &[(String, Vec<u8>)]) -> Option<&str> {
    header_values(headers, "authorization").find_map(|value| {
        let (scheme, rest) = value.trim().split_once([' ', '\t'])?;
        let token = rest.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    })
}

fn from_subprotocol(headers: &[(String, Vec<u8>)]) -> Option<&str> {
    header_values(headers, "sec-websocket-protocol").find_map(|value| {
        value.split(',').find_map(|entry| {
            let token = entry.trim().strip_prefix(BEARER_PROTOCOL)?;
            (!token.is_empty()).then_some(token)
        })
    })
}

/// The first parameter named `name`, form-decoded; None when it is absent, empty or not UTF-8.
fn from_query<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let (_, value) = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| percent_decode(key, true).as_deref() == Some(name))?;
    percent_decode(value, true).filter(|v| !v.is_empty())
}

/// The first non-empty cookie named `name`.
fn from_cookie<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<Cow<'a, str>> {
    header_values(headers, "cookie").find_map(|value| {
        value.split(';').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            if key.trim() != name {
                return None;
            }
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            percent_decode(value, false).filter(|v| !v.is_empty())
        })
    })
}

/// Decodes %XX (and '+' as a space when `plus_is_space`), leaving a '%' without two hex digits
/// as it is (like the `user` parameter's decoding); borrowed when there is nothing to decode,
/// None when the result is not UTF-8.
fn percent_decode(input: &str, plus_is_space: bool) -> Option<Cow<'_, str>> {
    if !(input.contains('%') || plus_is_space && input.contains('+')) {
        return Some(Cow::Borrowed(input));
    }
    String::from_utf8(crate::ws::percent_decode(input.as_bytes(), plus_is_space))
        .ok()
        .map(Cow::Owned)
}
