//! The OPEN body: what a server learns about a new session.
//!
//! Owns the OPEN body layout in both directions and the limits its length prefixes impose. Must
//! never truncate a field silently (a too-long field is an [`EncodeError`]), never read past a
//! length prefix, and never copy header values on decode (they are slices of the frame).

use bytes::{BufMut, Bytes, BytesMut};

use super::decode::DecodeError;
use super::{encode_header, EncodeError, FrameType, HEADER_LEN};

/// The session description to encode, borrowed from the upgrade request.
#[derive(Clone, Copy, Debug)]
pub struct OpenInfo<'a> {
    pub user: &'a str,
    pub client_addr: &'a str,
    pub target: &'a str,
    /// Lowercase names; only the configured `forward_headers` belong here.
    pub headers: &'a [(&'a str, &'a [u8])],
}

/// A decoded OPEN body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub user: String,
    pub client_addr: String,
    pub target: String,
    pub headers: Vec<(String, Bytes)>,
}

const U8_MAX: usize = u8::MAX as usize;
const U16_MAX: usize = u16::MAX as usize;

/// A field's length after checking it fits a prefix that holds at most `max`.
fn fits(field: &'static str, len: usize, max: usize) -> Result<usize, EncodeError> {
    if len > max {
        return Err(EncodeError::FieldTooLong { field, len, max });
    }
    Ok(len)
}

/// The whole OPEN frame for `session`.
pub fn open(session: u64, info: &OpenInfo<'_>) -> Result<Bytes, EncodeError> {
    let user = fits("user", info.user.len(), U16_MAX)?;
    let addr = fits("client address", info.client_addr.len(), U8_MAX)?;
    let target = fits("target", info.target.len(), U16_MAX)?;
    let count = u8::try_from(info.headers.len())
        .map_err(|_| EncodeError::TooManyHeaders(info.headers.len()))?;
    let mut body_len = 2 + user + 1 + addr + 2 + target + 1;
    for (name, value) in info.headers {
        body_len += 1 + fits("header name", name.len(), U8_MAX)?;
        body_len += 2 + fits("header value", value.len(), U16_MAX)?;
    }

    let mut header = [0; HEADER_LEN];
    encode_header(&mut header, FrameType::Open, 0, session, body_len);
    let mut out = BytesMut::with_capacity(HEADER_LEN + body_len);
    out.put_slice(&header);
    // The casts below cannot truncate: every length was checked by `fits` above.
    out.put_u16(user as u16);
    out.put_slice(info.user.as_bytes());
    out.put_u8(addr as u8);
    out.put_slice(info.client_addr.as_bytes());
    out.put_u16(target as u16);
    out.put_slice(info.target.as_bytes());
    out.put_u8(count);
    for (name, value) in info.headers {
        out.put_u8(name.len() as u8);
        out.put_slice(name.as_bytes());
        out.put_u16(value.len() as u16);
        out.put_slice(value);
    }
    Ok(out.freeze())
}

/// Reads OPEN fields front to back; every read checks the bytes are there.
struct Fields {
    rest: Bytes,
}

impl Fields {
    fn take(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.rest.len() < len {
            return Err(DecodeError::Truncated {
                ty: FrameType::Open,
                field,
            });
        }
        Ok(self.rest.split_to(len))
    }

    /// A big-endian length prefix of `width` (1 or 2) bytes.
    fn prefix(&mut self, width: usize, field: &'static str) -> Result<usize, DecodeError> {
        let bytes = self.take(width, field)?;
        Ok(bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b)))
    }

    fn bytes(&mut self, width: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.prefix(width, field)?;
        self.take(len, field)
    }

    fn string(&mut self, width: usize, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.bytes(width, field)?;
        std::str::from_utf8(&bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 {
                ty: FrameType::Open,
                field,
            })
    }
}

/// Parses a complete OPEN body; header values stay slices of `body`.
pub(super) fn decode_body(body: Bytes) -> Result<Open, DecodeError> {
    let mut fields = Fields { rest: body };
    let user = fields.string(2, "user")?;
    let client_addr = fields.string(1, "client address")?;
    let target = fields.string(2, "target")?;
    let count = fields.prefix(1, "header count")?;
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = fields.string(1, "header name")?;
        let value = fields.bytes(2, "header value")?;
        headers.push((name, value));
    }
    if !fields.rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            ty: FrameType::Open,
            extra: fields.rest.len(),
        });
    }
    Ok(Open {
        user,
        client_addr,
        target,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info<'a>(headers: &'a [(&'a str, &'a [u8])]) -> OpenInfo<'a> {
        OpenInfo {
            user: "alice",
            client_addr: "[2001:db8::1]:443",
            target: "/ws?user=alice&room=3",
            headers,
        }
    }

    #[test]
    fn round_trip_with_headers() {
        let headers: &[(&str, &[u8])] = &[
            ("user-agent", b"test/1.0"),
            ("origin", b"https://example.com"),
            ("x-raw", b"\xff\x00"),
        ];
        let frame = open(42, &info(headers)).unwrap();
        let decoded = decode_body(frame.slice(HEADER_LEN..)).unwrap();
        assert_eq!(decoded.user, "alice");
        assert_eq!(decoded.client_addr, "[2001:db8::1]:443");
        assert_eq!(decoded.target, "/ws?user=alice&room=3");
        let got: Vec<(&str, &[u8])> = decoded
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_ref()))
            .collect();
        assert_eq!(got, headers);
    }

    #[test]
    fn header_values_are_slices_of_the_body() {
        let headers: &[(&str, &[u8])] = &[("origin", b"https://example.com")];
        let frame = open(1, &info(headers)).unwrap();
        let body = frame.slice(HEADER_LEN..);
        let range = body.as_ptr_range();
        let decoded = decode_body(body.clone()).unwrap();
        let value = decoded.headers[0].1.as_ptr_range();
        assert!(range.start <= value.start && value.end <= range.end);
    }

    #[test]
    fn every_limit_is_enforced_at_its_boundary() {
        let long = "u".repeat(U16_MAX + 1);
        let ok16 = &long[..U16_MAX];
        let ok8 = &long[..U8_MAX];
        let over8 = &long[..=U8_MAX];
        let base = info(&[]);

        assert!(open(1, &OpenInfo { user: ok16, ..base }).is_ok());
        assert_eq!(
            open(
                1,
                &OpenInfo {
                    user: &long,
                    ..base
                }
            ),
            Err(EncodeError::FieldTooLong {
                field: "user",
                len: U16_MAX + 1,
                max: U16_MAX
            })
        );
        assert!(open(
            1,
            &OpenInfo {
                client_addr: ok8,
                ..base
            }
        )
        .is_ok());
        assert!(matches!(
            open(
                1,
                &OpenInfo {
                    client_addr: over8,
                    ..base
                }
            ),
            Err(EncodeError::FieldTooLong {
                field: "client address",
                ..
            })
        ));
        assert!(open(
            1,
            &OpenInfo {
                target: ok16,
                ..base
            }
        )
        .is_ok());
        assert!(matches!(
            open(
                1,
                &OpenInfo {
                    target: &long,
                    ..base
                }
            ),
            Err(EncodeError::FieldTooLong {
                field: "target",
                ..
            })
        ));

        let value = vec![0u8; U16_MAX + 1];
        let ok: &[(&str, &[u8])] = &[(ok8, &value[..U16_MAX])];
        assert!(open(1, &info(ok)).is_ok());
        let name: &[(&str, &[u8])] = &[(over8, b"")];
        assert!(matches!(
            open(1, &info(name)),
            Err(EncodeError::FieldTooLong {
                field: "header name",
                ..
            })
        ));
        let val: &[(&str, &[u8])] = &[("a", &value)];
        assert!(matches!(
            open(1, &info(val)),
            Err(EncodeError::FieldTooLong {
                field: "header value",
                ..
            })
        ));

        let many: Vec<(&str, &[u8])> = vec![("a", b"b"); 256];
        assert!(open(1, &info(&many[..255])).is_ok());
        assert_eq!(open(1, &info(&many)), Err(EncodeError::TooManyHeaders(256)));
    }

    #[test]
    fn the_largest_open_still_decodes() {
        let long = "u".repeat(U16_MAX);
        let value = vec![7u8; U16_MAX];
        let headers: Vec<(&str, &[u8])> = vec![(&long[..U8_MAX], &value); 255];
        let frame = open(
            1,
            &OpenInfo {
                user: &long,
                client_addr: &long[..U8_MAX],
                target: &long,
                headers: &headers,
            },
        )
        .unwrap();
        let decoded = decode_body(frame.slice(HEADER_LEN..)).unwrap();
        assert_eq!(decoded.headers.len(), 255);
        assert_eq!(decoded.user.len(), U16_MAX);
    }

    #[test]
    fn every_truncation_names_its_field() {
        let headers: &[(&str, &[u8])] = &[("origin", b"o")];
        let frame = open(1, &info(headers)).unwrap();
        let body = frame.slice(HEADER_LEN..);
        // Cutting the body at each length must fail in the field that was cut.
        let user_end = 2 + 5;
        let addr_end = user_end + 1 + 17;
        let target_end = addr_end + 2 + 21;
        let count_end = target_end + 1;
        let name_end = count_end + 1 + 6;
        for cut in 0..body.len() {
            let field = match cut {
                c if c < user_end => "user",
                c if c < addr_end => "client address",
                c if c < target_end => "target",
                c if c < count_end => "header count",
                c if c < name_end => "header name",
                _ => "header value",
            };
            assert_eq!(
                decode_body(body.slice(..cut)),
                Err(DecodeError::Truncated {
                    ty: FrameType::Open,
                    field
                }),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let frame = open(1, &info(&[])).unwrap();
        let mut body = frame[HEADER_LEN..].to_vec();
        body.extend_from_slice(b"junk");
        assert_eq!(
            decode_body(Bytes::from(body)),
            Err(DecodeError::TrailingBytes {
                ty: FrameType::Open,
                extra: 4
            })
        );
    }

    #[test]
    fn invalid_utf8_in_each_string_field() {
        // user "\xff", address "a", target "/", one header "\xfe" = "v".
        let cases: [(&[u8], &str); 4] = [
            (b"\x00\x01\xff\x01a\x00\x01/\x00", "user"),
            (b"\x00\x01u\x01\xff\x00\x01/\x00", "client address"),
            (b"\x00\x01u\x01a\x00\x01\xff\x00", "target"),
            (
                b"\x00\x01u\x01a\x00\x01/\x01\x01\xfe\x00\x01v",
                "header name",
            ),
        ];
        for (body, field) in cases {
            assert_eq!(
                decode_body(Bytes::from_static(body)),
                Err(DecodeError::InvalidUtf8 {
                    ty: FrameType::Open,
                    field
                })
            );
        }
    }
}
