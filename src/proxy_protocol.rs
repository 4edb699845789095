//! PROXY protocol header codec (HAProxy's spec, versions 1 and 2), sans-I/O.
//!
//! Owns the byte layout of PROXY v1 (text) and v2 (binary) headers and turning those bytes into
//! the client address they carry: [`parse`] looks at the front of a connection's first bytes and
//! says whether a header is there, whether more bytes are needed to know, or where the header ends
//! and what it names.
//!
//! Must never do I/O, never decide whom to trust (whether the sender is a trusted proxy, and so
//! whether its header may replace the peer address, is the caller's decision), never allocate by a
//! length the peer declared (nothing here allocates at all), and never panic on any input.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest header accepted, in bytes: a v1 line is at most 107 bytes; a v2 header is 16 bytes
/// plus its declared length, which we cap here (HAProxy's TLVs are small) instead of buffering up
/// to 64 KiB for a peer.
pub const MAX_HEADER: usize = 512;

/// A v1 line, `PROXY` through CRLF, is at most this long (spec section 2.1), so a peer cannot make
/// us wait for a line end forever.
const V1_MAX: usize = 107;

const V1_PREFIX: &[u8] = b"PROXY ";

/// Chosen by the spec so that it cannot start any text protocol (it holds a NUL and starts with an
/// empty line), which is what makes `Absent` decidable from the first byte that differs.
const V2_SIGNATURE: &[u8; 12] = b"\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A";

/// Signature, version/command, family/transport, and the 2-byte length.
const V2_FIXED: usize = 16;

/// Address block sizes: source and destination address, then source and destination port.
const V2_INET_ADDRS: usize = 4 + 4 + 2 + 2;
const V2_INET6_ADDRS: usize = 16 + 16 + 2 + 2;

const V2_CMD_LOCAL: u8 = 0x0;
const V2_CMD_PROXY: u8 = 0x1;

const V2_AF_UNSPEC: u8 = 0x0;
const V2_AF_INET: u8 = 0x1;
const V2_AF_INET6: u8 = 0x2;
const V2_AF_UNIX: u8 = 0x3;

const V2_TRANSPORT_UNSPEC: u8 = 0x0;
const V2_TRANSPORT_STREAM: u8 = 0x1;
const V2_TRANSPORT_DGRAM: u8 = 0x2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A PROXY header naming the original client (v1 TCP4/TCP6, v2 PROXY command with
    /// AF_INET/AF_INET6 over STREAM).
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// A header that names no client: v1 `UNKNOWN`, v2 LOCAL command (health checks), or a v2
    /// PROXY command with AF_UNSPEC / AF_UNIX / a non-STREAM transport. The connection's own peer
    /// address stands.
    Local,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed to decide (a prefix of a possible header, or of the signature).
    Incomplete,
    /// The bytes do not start with a PROXY header (for example `GET /ws HTTP/1.1`): nothing
    /// consumed.
    Absent,
    /// A whole header of `len` bytes, to be removed from the front of the buffer.
    Complete { header: Header, len: usize },
}

/// Why the bytes are a broken PROXY header; the connection should be closed, since what follows
/// cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// A v1 line without CRLF within its 107-byte maximum.
    V1TooLong,
    /// A v1 line that ends but does not follow the grammar; the reason says which part.
    V1Malformed(&'static str),
    /// The v2 version nibble is not 2.
    V2Version(u8),
    /// The v2 command nibble is neither LOCAL (0) nor PROXY (1).
    V2Command(u8),
    /// The v2 address family nibble is not UNSPEC, INET, INET6 or UNIX.
    V2Family(u8),
    /// The v2 transport nibble is not UNSPEC, STREAM or DGRAM.
    V2Transport(u8),
    /// The v2 declared length cannot hold the addresses of its family.
    V2TooShort {
        family: &'static str,
        need: usize,
        got: usize,
    },
    /// The v2 header, 16 bytes plus its declared length, would exceed [`MAX_HEADER`].
    V2TooLong(usize),
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::V1TooLong => write!(f, "PROXY v1 line has no CRLF within {V1_MAX} bytes"),
            Self::V1Malformed(why) => write!(f, "malformed PROXY v1 line: {why}"),
            Self::V2Version(v) => write!(f, "PROXY v2 header with version {v}, expected 2"),
            Self::V2Command(c) => write!(f, "PROXY v2 header with unknown command {c:#x}"),
            Self::V2Family(a) => write!(f, "PROXY v2 header with unknown address family {a:#x}"),
            Self::V2Transport(t) => {
                write!(f, "PROXY v2 header with unknown transport protocol {t:#x}")
            }
            Self::V2TooShort { family, need, got } => write!(
                f,
                "PROXY v2 {family} header declares {got} bytes of addresses, needs at least {need}"
            ),
            Self::V2TooLong(total) => write!(
                f,
                "PROXY v2 header of {total} bytes exceeds the limit of {MAX_HEADER} bytes"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Looks for a PROXY header at the start of `buf`.
///
/// Errors are reported as soon as the offending byte is in, so a broken peer is dropped without
/// waiting for the rest; every prefix of a valid header is `Incomplete`, and `Incomplete` is only
/// ever returned for fewer than [`MAX_HEADER`] bytes, so the caller's buffering is bounded.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if starts_with_or_prefix_of(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Ok(Parsed::Incomplete);
        }
        return parse_v1(buf);
    }
    if starts_with_or_prefix_of(buf, V2_SIGNATURE) {
        if buf.len() < V2_SIGNATURE.len() {
            return Ok(Parsed::Incomplete);
        }
        return parse_v2(buf);
    }
    Ok(Parsed::Absent)
}

/// Whether `buf` and `magic` agree on their common length: either `buf` starts with `magic`, or
/// `buf` could still grow into it.
fn starts_with_or_prefix_of(buf: &[u8], magic: &[u8]) -> bool {
    let n = buf.len().min(magic.len());
    buf.get(..n) == magic.get(..n)
}

/// `buf` starts with `PROXY `.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let window = buf.get(..buf.len().min(V1_MAX)).unwrap_or(buf);
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() < V1_MAX {
            Ok(Parsed::Incomplete)
        } else {
            Err(ProxyError::V1TooLong)
        };
    };
    let line = buf
        .get(V1_PREFIX.len()..cr)
        .ok_or(ProxyError::V1Malformed("missing protocol"))?;
    let header = parse_v1_line(line)?;
    Ok(Parsed::Complete {
        header,
        len: cr + 2,
    })
}

/// The line between `PROXY ` and CRLF.
fn parse_v1_line(line: &[u8]) -> Result<Header, ProxyError> {
    let mut fields = line.split(|&b| b == b' ');
    let proto = fields.next().unwrap_or_default();
    let v6 = match proto {
        // The spec lets a sender put anything after UNKNOWN, and the receiver must ignore it.
        b"UNKNOWN" => return Ok(Header::Local),
        b"TCP4" => false,
        b"TCP6" => true,
        b"" => return Err(ProxyError::V1Malformed("missing protocol or double space")),
        _ => {
            return Err(ProxyError::V1Malformed(
                "protocol is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    let mut next = || match fields.next() {
        None => Err(ProxyError::V1Malformed("missing field")),
        // An empty field comes from two adjacent spaces (or a trailing one): the spec requires
        // exactly one, and a lenient reader would accept lines HAProxy itself rejects.
        Some(b"") => Err(ProxyError::V1Malformed(
            "empty field: fields are separated by exactly one space",
        )),
        Some(field) => Ok(field),
    };
    let src = next()?;
    let dst = next()?;
    let src_port = next()?;
    let dst_port = next()?;
    if fields.next().is_some() {
        return Err(ProxyError::V1Malformed("extra field after the ports"));
    }
    let (src, dst) = if v6 {
        (
            IpAddr::V6(parse_text::<Ipv6Addr>(
                src,
                "source is not an IPv6 address",
            )?),
            IpAddr::V6(parse_text::<Ipv6Addr>(
                dst,
                "destination is not an IPv6 address",
            )?),
        )
    } else {
        (
            IpAddr::V4(parse_text::<Ipv4Addr>(
                src,
                "source is not an IPv4 address",
            )?),
            IpAddr::V4(parse_text::<Ipv4Addr>(
                dst,
                "destination is not an IPv4 address",
            )?),
        )
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(src, parse_port(src_port)?),
        destination: SocketAddr::new(dst, parse_port(dst_port)?),
    })
}

fn parse_text<T: std::str::FromStr>(field: &[u8], why: &'static str) -> Result<T, ProxyError> {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ProxyError::V1Malformed(why))
}

/// Done by hand because `u16::from_str` accepts a leading `+` and leading zeros, which the spec
/// forbids.
fn parse_port(field: &[u8]) -> Result<u16, ProxyError> {
    if !field.iter().all(u8::is_ascii_digit) {
        return Err(ProxyError::V1Malformed("port is not a decimal number"));
    }
    if field.len() > 1 && field.first() == Some(&b'0') {
        return Err(ProxyError::V1Malformed("port has a leading zero"));
    }
    // Five digits cannot overflow a u32, and rejecting longer fields first keeps it that way.
    if field.len() > 5 {
        return Err(ProxyError::V1Malformed("port over 65535"));
    }
    let value = field
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(value).map_err(|_| ProxyError::V1Malformed("port over 65535"))
}

/// `buf` starts with the 12-byte v2 signature.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(Parsed::Incomplete);
    };
    let (version, command) = (ver_cmd >> 4, ver_cmd & 0x0F);
    if version != 2 {
        return Err(ProxyError::V2Version(version));
    }
    if command != V2_CMD_LOCAL && command != V2_CMD_PROXY {
        return Err(ProxyError::V2Command(command));
    }
    let Some(&fam_proto) = buf.get(13) else {
        return Ok(Parsed::Incomplete);
    };
    let (family, transport) = (fam_proto >> 4, fam_proto & 0x0F);
    // The spec has LOCAL's receiver ignore the family and address block entirely, so they are
    // only checked for PROXY.
    let proxy = command == V2_CMD_PROXY;
    if proxy {
        if !matches!(family, V2_AF_UNSPEC | V2_AF_INET | V2_AF_INET6 | V2_AF_UNIX) {
            return Err(ProxyError::V2Family(family));
        }
        if !matches!(
            transport,
            V2_TRANSPORT_UNSPEC | V2_TRANSPORT_STREAM | V2_TRANSPORT_DGRAM
        ) {
            return Err(ProxyError::V2Transport(transport));
        }
    }
    let Some(&[hi, lo]) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let declared = usize::from(u16::from_be_bytes([hi, lo]));
    let total = V2_FIXED + declared;
    if total > MAX_HEADER {
        return Err(ProxyError::V2TooLong(total));
    }
    if proxy {
        let need = match family {
            V2_AF_INET => Some(("AF_INET", V2_INET_ADDRS)),
            V2_AF_INET6 => Some(("AF_INET6", V2_INET6_ADDRS)),
            _ => None,
        };
        if let Some((name, need)) = need.filter(|&(_, need)| declared < need) {
            return Err(ProxyError::V2TooShort {
                family: name,
                need,
                got: declared,
            });
        }
    }
    let Some(body) = buf.get(V2_FIXED..total) else {
        return Ok(Parsed::Incomplete);
    };
    let header = if proxy && transport == V2_TRANSPORT_STREAM {
        match family {
            V2_AF_INET => v2_inet(body)?,
            V2_AF_INET6 => v2_inet6(body)?,
            // AF_UNSPEC and AF_UNIX carry no IP client to report.
            _ => Header::Local,
        }
    } else {
        // LOCAL is a health check or the proxy's own connection; UNSPEC and DGRAM transports
        // describe no TCP client. Either way the socket's peer stands.
        Header::Local
    };
    // Whatever follows the addresses is TLVs: bounded by MAX_HEADER above and of no use to us.
    Ok(Parsed::Complete { header, len: total })
}

fn v2_inet(body: &[u8]) -> Result<Header, ProxyError> {
    let short = ProxyError::V2TooShort {
        family: "AF_INET",
        need: V2_INET_ADDRS,
        got: body.len(),
    };
    let (src, rest) = body.split_first_chunk::<4>().ok_or(short.clone())?;
    let (dst, rest) = rest.split_first_chunk::<4>().ok_or(short.clone())?;
    let (src_port, rest) = rest.split_first_chunk::<2>().ok_or(short.clone())?;
    let (dst_port, _tlvs) = rest.split_first_chunk::<2>().ok_or(short)?;
    Ok(Header::Proxied {
        source: SocketAddr::new(Ipv4Addr::from(*src).into(), u16::from_be_bytes(*src_port)),
        destination: SocketAddr::new(Ipv4Addr::from(*dst).into(), u16::from_be_bytes(*dst_port)),
    })
}

fn v2_inet6(body: &[u8]) -> Result<Header, ProxyError> {
    let short = ProxyError::V2TooShort {
        family: "AF_INET6",
        need: V2_INET6_ADDRS,
        got: body.len(),
    };
    let (src, rest) = body.split_first_chunk::<16>().ok_or(short.clone())?;
    let (dst, rest) = rest.split_first_chunk::<16>().ok_or(short.clone())?;
    let (src_port, rest) = rest.split_first_chunk::<2>().ok_or(short.clone())?;
    let (dst_port, _tlvs) = rest.split_first_chunk::<2>().ok_or(short)?;
    Ok(Header::Proxied {
        source: SocketAddr::new(Ipv6Addr::from(*src).into(), u16::from_be_bytes(*src_port)),
        destination: SocketAddr::new(Ipv6Addr::from(*dst).into(), u16::from_be_bytes(*dst_port)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(Ipv4Addr::from(a).into(), port)
    }

    fn v6(s: &str, port: u16) -> SocketAddr {
        SocketAddr::new(s.parse::<Ipv6Addr>().unwrap().into(), port)
    }

    /// A v2 header: signature, version/command byte, family/transport byte, length, then `body`.
    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn v2_inet_body() -> Vec<u8> {
        let mut body = vec![192, 0, 2, 1, 198, 51, 100, 2];
        body.extend_from_slice(&56260u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body
    }

    fn v2_inet6_body() -> Vec<u8> {
        let mut body = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        body.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&4124u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body
    }

    fn complete(header: Header, len: usize) -> Result<Parsed, ProxyError> {
        Ok(Parsed::Complete { header, len })
    }

    fn malformed(buf: &[u8]) -> &'static str {
        match parse(buf) {
            Err(ProxyError::V1Malformed(why)) => why,
            other => panic!(
                "{:?}: expected V1Malformed, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    /// Every valid header the tests know, with what it parses to.
    fn valid_headers() -> Vec<(Vec<u8>, Header)> {
        let inet = Header::Proxied {
            source: v4([192, 0, 2, 1], 56260),
            destination: v4([198, 51, 100, 2], 443),
        };
        let inet6 = Header::Proxied {
            source: v6("2001:db8::1", 4124),
            destination: v6("2001:db8::2", 443),
        };
        let mut with_tlvs = v2_inet_body();
        with_tlvs.extend_from_slice(&[0x04, 0x00, 0x03, 1, 2, 3, 0x01, 0x00, 0x02, b'h', b'2']);
        let max_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        vec![
            (
                b"PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\n".to_vec(),
                Header::Proxied {
                    source: v4([192, 168, 0, 1], 56324),
                    destination: v4([10, 0, 0, 2], 443),
                },
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:db8::2 4124 443\r\n".to_vec(),
                inet6,
            ),
            (
                format!("PROXY TCP6 {max_v6} {max_v6} 65535 65535\r\n").into_bytes(),
                Header::Proxied {
                    source: v6(max_v6, 65535),
                    destination: v6(max_v6, 65535),
                },
            ),
            (
                b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n".to_vec(),
                Header::Proxied {
                    source: v4([0, 0, 0, 0], 0),
                    destination: v4([255, 255, 255, 255], 65535),
                },
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), Header::Local),
            (
                b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n".to_vec(),
                Header::Local,
            ),
            (v2(0x21, 0x11, &v2_inet_body()), inet),
            (v2(0x21, 0x21, &v2_inet6_body()), inet6),
            (v2(0x21, 0x11, &with_tlvs), inet),
            (v2(0x20, 0x00, &[]), Header::Local),
            (v2(0x20, 0x11, &v2_inet_body()), Header::Local),
            (v2(0x21, 0x12, &v2_inet_body()), Header::Local),
            (v2(0x21, 0x00, &[]), Header::Local),
            (v2(0x21, 0x31, &[0; 216]), Header::Local),
            (
                v2(0x21, 0x11, &[0; MAX_HEADER - V2_FIXED]),
                Header::Proxied {
                    source: v4([0, 0, 0, 0], 0),
                    destination: v4([0, 0, 0, 0], 0),
                },
            ),
        ]
    }

    #[test]
    fn v1_tcp4_stops_at_the_crlf() {
        let line = b"PROXY TCP4 192.168.0.1 10.0.0.2 56324 443\r\n";
        let buf = [&line[..], b"GET /ws HTTP/1.1\r\n"].concat();
        let header = Header::Proxied {
            source: v4([192, 168, 0, 1], 56324),
            destination: v4([10, 0, 0, 2], 443),
        };
        assert_eq!(parse(&buf), complete(header, line.len()));
    }

    #[test]
    fn v1_tcp6_stops_at_the_crlf() {
        let line = b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.2 4124 443\r\n";
        let buf = [&line[..], b"GET /ws HTTP/1.1\r\n"].concat();
        let header = Header::Proxied {
            source: v6("2001:db8::1", 4124),
            destination: v6("::ffff:10.0.0.2", 443),
        };
        assert_eq!(parse(&buf), complete(header, line.len()));
    }

    #[test]
    fn v1_unknown_is_local_whatever_follows_it() {
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), complete(Header::Local, 15));
        let line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nGET /";
        assert_eq!(parse(line), complete(Header::Local, line.len() - 5));
        assert_eq!(
            parse(b"PROXY UNKNOWN  junk \r\n"),
            complete(Header::Local, 22)
        );
    }

    #[test]
    fn v1_line_of_exactly_107_bytes_is_accepted() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX - 2, b'x');
        line.extend_from_slice(b"\r\n");
        assert_eq!(line.len(), V1_MAX);
        assert_eq!(parse(&line), complete(Header::Local, V1_MAX));
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_incomplete() {
        for (header_bytes, header) in valid_headers() {
            for k in 0..header_bytes.len() {
                assert_eq!(
                    parse(&header_bytes[..k]),
                    Ok(Parsed::Incomplete),
                    "prefix of {k} bytes of {header_bytes:?}"
                );
            }
            let len = header_bytes.len();
            assert!(len <= MAX_HEADER);
            assert_eq!(parse(&header_bytes), complete(header, len));
            for tail in [&b"GET /ws HTTP/1.1\r\n"[..], b"\r\n", b"\x00", b"PROXY "] {
                let buf = [&header_bytes[..], tail].concat();
                assert_eq!(parse(&buf), complete(header, len), "{buf:?}");
            }
        }
    }

    #[test]
    fn empty_buffer_is_incomplete() {
        assert_eq!(parse(b""), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v2_tcp4() {
        let mut buf = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 bytes follow
            203, 0, 113, 7, // source 203.0.113.7
            10, 1, 2, 3, // destination 10.1.2.3
            0xC3, 0x50, // source port 50000
            0x01, 0xBB, // destination port 443
        ];
        let len = buf.len();
        buf.extend_from_slice(b"GET /ws HTTP/1.1\r\n");
        let header = Header::Proxied {
            source: v4([203, 0, 113, 7], 50000),
            destination: v4([10, 1, 2, 3], 443),
        };
        assert_eq!(len, 28);
        assert_eq!(parse(&buf), complete(header, len));
    }

    #[test]
    fn v2_tcp6() {
        let mut buf = V2_SIGNATURE.to_vec();
        buf.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]); // PROXY, AF_INET6 STREAM, 36 bytes
        buf.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        ]);
        buf.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34]);
        buf.extend_from_slice(&[0xFF, 0xFF, 0x00, 0x50]); // ports 65535 and 80
        let len = buf.len();
        buf.extend_from_slice(b"GET /ws HTTP/1.1\r\n");
        let header = Header::Proxied {
            source: v6("2001:db8::1", 65535),
            destination: v6("fe80::1234", 80),
        };
        assert_eq!(len, 52);
        assert_eq!(parse(&buf), complete(header, len));
    }

    #[test]
    fn v2_local_health_check() {
        let mut buf = V2_SIGNATURE.to_vec();
        buf.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&buf), complete(Header::Local, 16));
        buf.extend_from_slice(b"GET /health HTTP/1.1\r\n");
        assert_eq!(parse(&buf), complete(Header::Local, 16));
    }

    #[test]
    fn v2_local_ignores_family_and_addresses() {
        let buf = v2(0x20, 0x11, &v2_inet_body());
        assert_eq!(parse(&buf), complete(Header::Local, 28));
        // The spec has the receiver of LOCAL ignore the family, so even an undefined one passes.
        assert_eq!(
            parse(&v2(0x20, 0xFF, &[1, 2, 3])),
            complete(Header::Local, 19)
        );
        assert_eq!(parse(&v2(0x20, 0x11, &[])), complete(Header::Local, 16));
    }

    #[test]
    fn v2_tlvs_are_skipped_and_counted() {
        let mut body = v2_inet_body();
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // PP2_TYPE_ALPN
        body.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]); // PP2_TYPE_NOOP
        let mut buf = v2(0x21, 0x11, &body);
        let len = buf.len();
        buf.extend_from_slice(b"GET /");
        let header = Header::Proxied {
            source: v4([192, 0, 2, 1], 56260),
            destination: v4([198, 51, 100, 2], 443),
        };
        assert_eq!(len, 16 + 12 + 11);
        assert_eq!(parse(&buf), complete(header, len));
    }

    #[test]
    fn v2_without_a_tcp_client_is_local() {
        // UDP (DGRAM) over IPv4 and IPv6, and an unspecified transport.
        assert_eq!(
            parse(&v2(0x21, 0x12, &v2_inet_body())),
            complete(Header::Local, 28)
        );
        assert_eq!(
            parse(&v2(0x21, 0x22, &v2_inet6_body())),
            complete(Header::Local, 52)
        );
        assert_eq!(
            parse(&v2(0x21, 0x10, &v2_inet_body())),
            complete(Header::Local, 28)
        );
        // AF_UNSPEC and AF_UNIX.
        assert_eq!(parse(&v2(0x21, 0x00, &[])), complete(Header::Local, 16));
        assert_eq!(
            parse(&v2(0x21, 0x31, &[0; 216])),
            complete(Header::Local, 232)
        );
    }

    #[test]
    fn other_protocols_are_absent() {
        for buf in [
            &b"GET /"[..],
            b"GET /ws HTTP/1.1\r\n",
            b"\x16\x03\x01",
            b"PRXY",
            b"proxy ",
            b"PROXY\t",
            b"\r\n\r\nQUIT",
            b"\r\n\r\n\x00\r\nQUIX",
            b"\x00",
        ] {
            assert_eq!(parse(buf), Ok(Parsed::Absent), "{buf:?}");
        }
    }

    #[test]
    fn v1_bad_addresses() {
        assert_eq!(
            malformed(b"PROXY TCP4 192.168.0 10.0.0.2 1 2\r\n"),
            "source is not an IPv4 address"
        );
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 10.0.0.256 1 2\r\n"),
            "destination is not an IPv4 address"
        );
        assert_eq!(
            malformed(b"PROXY TCP4 ::1 10.0.0.2 1 2\r\n"),
            "source is not an IPv4 address"
        );
        assert_eq!(
            malformed(b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
            "source is not an IPv6 address"
        );
        assert_eq!(
            malformed(b"PROXY TCP6 ::1 ::g 1 2\r\n"),
            "destination is not an IPv6 address"
        );
        assert_eq!(
            malformed(b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n"),
            "source is not an IPv4 address"
        );
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.\xff 1.2.3.4 1 2\r\n"),
            "source is not an IPv4 address"
        );
    }

    #[test]
    fn v1_bad_ports() {
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 80\r\n"),
            "port over 65535"
        );
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 100000\r\n"),
            "port over 65535"
        );
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 80 0000000000000000080\r\n"),
            "port has a leading zero"
        );
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n"),
            "port has a leading zero"
        );
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 00 80\r\n"),
            "port has a leading zero"
        );
        for port in ["+80", "-1", "8a", "0x50", "8 0"] {
            let line = format!("PROXY TCP4 1.2.3.4 5.6.7.8 1 {port}\r\n");
            assert!(parse(line.as_bytes()).is_err(), "{line:?}");
        }
    }

    #[test]
    fn v1_spacing_and_fields() {
        let empty = "empty field: fields are separated by exactly one space";
        assert_eq!(malformed(b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"), empty);
        assert_eq!(malformed(b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"), empty);
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"),
            "extra field after the ports"
        );
        assert_eq!(malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n"), empty);
        assert_eq!(
            malformed(b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            "missing protocol or double space"
        );
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
            "missing field"
        );
        assert_eq!(malformed(b"PROXY TCP4 1.2.3.4\r\n"), "missing field");
        assert_eq!(malformed(b"PROXY TCP4\r\n"), "missing field");
        assert_eq!(malformed(b"PROXY \r\n"), "missing protocol or double space");
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
            "extra field after the ports"
        );
        assert_eq!(
            malformed(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"),
            "protocol is not TCP4, TCP6 or UNKNOWN"
        );
        assert_eq!(
            malformed(b"PROXY UNKNOWNX\r\n"),
            "protocol is not TCP4, TCP6 or UNKNOWN"
        );
        assert_eq!(
            malformed(b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"),
            "protocol is not TCP4, TCP6 or UNKNOWN"
        );
        // A bare LF is not a line end: the LF lands in the last field.
        assert_eq!(
            malformed(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r\n"),
            "port is not a decimal number"
        );
    }

    #[test]
    fn v1_without_crlf_within_107_bytes() {
        let mut buf = b"PROXY UNKNOWN ".to_vec();
        buf.resize(V1_MAX - 1, b'x');
        assert_eq!(parse(&buf), Ok(Parsed::Incomplete));
        buf.push(b'\r');
        assert_eq!(buf.len(), V1_MAX);
        assert_eq!(parse(&buf), Err(ProxyError::V1TooLong));
        buf.extend_from_slice(b"\n");
        assert_eq!(parse(&buf), Err(ProxyError::V1TooLong));
        let mut long = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 ".to_vec();
        long.resize(400, b'1');
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn v2_bad_version_nibble_fails_at_byte_13() {
        let buf = v2(0x11, 0x11, &v2_inet_body());
        assert_eq!(parse(&buf), Err(ProxyError::V2Version(1)));
        assert_eq!(parse(&buf[..13]), Err(ProxyError::V2Version(1)));
        assert_eq!(parse(&v2(0x01, 0x11, &[])), Err(ProxyError::V2Version(0)));
        assert_eq!(parse(&v2(0xF1, 0x11, &[])), Err(ProxyError::V2Version(15)));
    }

    #[test]
    fn v2_bad_command() {
        let buf = v2(0x22, 0x11, &v2_inet_body());
        assert_eq!(parse(&buf), Err(ProxyError::V2Command(2)));
        assert_eq!(parse(&buf[..13]), Err(ProxyError::V2Command(2)));
        assert_eq!(parse(&v2(0x2F, 0x11, &[])), Err(ProxyError::V2Command(15)));
    }

    #[test]
    fn v2_bad_family_and_transport() {
        let buf = v2(0x21, 0x41, &v2_inet_body());
        assert_eq!(parse(&buf), Err(ProxyError::V2Family(4)));
        assert_eq!(parse(&buf[..14]), Err(ProxyError::V2Family(4)));
        assert_eq!(parse(&v2(0x21, 0xF1, &[])), Err(ProxyError::V2Family(15)));
        assert_eq!(
            parse(&v2(0x21, 0x13, &v2_inet_body())),
            Err(ProxyError::V2Transport(3))
        );
        assert_eq!(
            parse(&v2(0x21, 0x1F, &[])[..14]),
            Err(ProxyError::V2Transport(15))
        );
    }

    #[test]
    fn v2_addresses_too_short_for_the_family() {
        let inet = v2(0x21, 0x11, &[0; 8]);
        let short = ProxyError::V2TooShort {
            family: "AF_INET",
            need: 12,
            got: 8,
        };
        assert_eq!(parse(&inet), Err(short.clone()));
        // Decided from the length field, before the addresses arrive.
        assert_eq!(parse(&inet[..16]), Err(short));
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 12])),
            Err(ProxyError::V2TooShort {
                family: "AF_INET6",
                need: 36,
                got: 12,
            })
        );
        assert_eq!(
            parse(&v2(0x21, 0x12, &[0; 11])),
            Err(ProxyError::V2TooShort {
                family: "AF_INET",
                need: 12,
                got: 11,
            })
        );
    }

    #[test]
    fn v2_over_max_header_fails_on_the_first_16_bytes() {
        let mut fixed = V2_SIGNATURE.to_vec();
        fixed.extend_from_slice(&[0x21, 0x11]);
        let at = |declared: u16| [&fixed[..], &declared.to_be_bytes()].concat();
        let over = u16::try_from(MAX_HEADER - V2_FIXED + 1).unwrap();
        assert_eq!(parse(&at(over)), Err(ProxyError::V2TooLong(MAX_HEADER + 1)));
        assert_eq!(parse(&at(u16::MAX)), Err(ProxyError::V2TooLong(16 + 65535)));
        // LOCAL is bounded too, although its addresses are never read.
        let mut local = at(u16::MAX);
        local[12] = 0x20;
        assert_eq!(parse(&local), Err(ProxyError::V2TooLong(16 + 65535)));
        // Exactly MAX_HEADER is allowed, and is waited for.
        assert_eq!(parse(&at(over - 1)), Ok(Parsed::Incomplete));
    }

    #[test]
    fn errors_display_their_cause() {
        let shown = ProxyError::V2TooShort {
            family: "AF_INET",
            need: 12,
            got: 8,
        }
        .to_string();
        assert_eq!(
            shown,
            "PROXY v2 AF_INET header declares 8 bytes of addresses, needs at least 12"
        );
        assert_eq!(
            ProxyError::V1Malformed("port over 65535").to_string(),
            "malformed PROXY v1 line: port over 65535"
        );
        let boxed: Box<dyn std::error::Error> = Box::new(ProxyError::V2TooLong(600));
        assert!(boxed.to_string().contains("600"));
    }

    /// Fixed-seed xorshift, so a failure reproduces; kept here rather than using the crate's test
    /// generator so that this file builds on its own.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn byte(&mut self) -> u8 {
            self.next() as u8
        }
    }

    /// The invariants any input must satisfy.
    fn check(buf: &[u8], rng: &mut Rng) {
        let result = parse(buf);
        match &result {
            Ok(Parsed::Complete { len, .. }) => {
                assert!(
                    *len > 0 && *len <= buf.len() && *len <= MAX_HEADER,
                    "{buf:?}"
                );
                // The header alone parses the same, and every strict prefix of it waits.
                assert_eq!(parse(&buf[..*len]), result, "{buf:?}");
                for k in 0..*len {
                    assert_eq!(parse(&buf[..k]), Ok(Parsed::Incomplete), "{buf:?} at {k}");
                }
            }
            // Bounded buffering: the caller never holds MAX_HEADER bytes waiting for us.
            Ok(Parsed::Incomplete) => assert!(buf.len() < MAX_HEADER, "{buf:?}"),
            Ok(Parsed::Absent) => assert!(!buf.is_empty()),
            Err(_) => {}
        }
        // A decision, once made, is not changed by later bytes.
        if result != Ok(Parsed::Incomplete) {
            let mut longer = buf.to_vec();
            for _ in 0..rng.below(8) + 1 {
                longer.push(rng.byte());
            }
            assert_eq!(parse(&longer), result, "{buf:?} + more");
        }
    }

    #[test]
    fn fuzz_never_panics_and_keeps_invariants() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let valid = valid_headers();
        for _ in 0..4000 {
            let mut buf: Vec<u8> = match rng.below(4) {
                0 => Vec::new(),
                1 => V1_PREFIX.to_vec(),
                2 => V2_SIGNATURE.to_vec(),
                _ => V2_SIGNATURE[..rng.below(12)].to_vec(),
            };
            let len = rng.below(MAX_HEADER + 100);
            // Printable text makes v1 lines likelier to get deep into the parser.
            let text = rng.below(2) == 0;
            while buf.len() < len {
                let b = if text {
                    b" 0123456789.:abcdefTCP46UNKOW\r\n"[rng.below(31)]
                } else {
                    rng.byte()
                };
                buf.push(b);
            }
            check(&buf, &mut rng);
        }
        for _ in 0..6000 {
            let (header, _) = &valid[rng.below(valid.len())];
            let mut buf = header.clone();
            for _ in 0..rng.below(4) + 1 {
                let at = rng.below(buf.len() + 1);
                match rng.below(5) {
                    0 if at < buf.len() => buf[at] ^= 1 << rng.below(8),
                    1 if at < buf.len() => buf[at] = rng.byte(),
                    2 if at < buf.len() => {
                        buf.remove(at);
                    }
                    3 => buf.insert(at, rng.byte()),
                    _ => buf.truncate(at),
                }
            }
            for _ in 0..rng.below(4) {
                buf.push(rng.byte());
            }
            check(&buf, &mut rng);
        }
    }
}
