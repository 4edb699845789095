//! The game server's side of the upstream link protocol, written from docs/protocol.md alone: its
//! frames are laid out and parsed by hand here, not with ringgate's codec, so that a test using it
//! checks what ringgate actually puts on the wire.
//!
//! A frame is `length u32` (of what follows it), `type u8`, `flags u8`, `session u64`, then the
//! body; all integers big-endian.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use super::IO_TIMEOUT;

/// Frame types (docs/protocol.md, "Frames").
pub const HELLO: u8 = 0x01;
pub const HELLO_ACK: u8 = 0x02;
pub const LINK_ERROR: u8 = 0x03;
pub const PING: u8 = 0x04;
pub const PONG: u8 = 0x05;
pub const OPEN: u8 = 0x10;
pub const DATA: u8 = 0x12;
pub const CLOSE: u8 = 0x13;
/// Version 2 (docs/protocol.md, "Fan-out").
pub const JOIN: u8 = 0x20;
pub const LEAVE: u8 = 0x21;
pub const PUBLISH: u8 = 0x22;
pub const BROADCAST: u8 = 0x23;
pub const MULTICAST: u8 = 0x24;

/// `flags` bit 0 of DATA: the message is text.
pub const TEXT: u8 = 0x01;

/// A frame as the spec lays it out.
#[derive(Debug)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub session: u64,
    pub body: Vec<u8>,
}

/// Accepts the proxy's next link connection, with a read timeout.
pub fn accept(listener: &TcpListener) -> TcpStream {
    let (s, _) = listener.accept().expect("accepting a link");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Reads one frame; fails the test on EOF, reset or timeout.
pub fn read_frame(s: &mut TcpStream) -> Frame {
    let mut head = [0u8; 14];
    s.read_exact(&mut head)
        .expect("reading a link frame header");
    let length = u32::from_be_bytes(head[0..4].try_into().unwrap()) as usize;
    assert!(length >= 10, "length {length} below the minimum");
    let mut body = vec![0u8; length - 10];
    s.read_exact(&mut body).expect("reading a link frame body");
    Frame {
        ty: head[4],
        flags: head[5],
        session: u64::from_be_bytes(head[6..14].try_into().unwrap()),
        body,
    }
}

/// Writes one frame.
pub fn write_frame(s: &mut TcpStream, ty: u8, flags: u8, session: u64, body: &[u8]) {
    let mut f = Vec::with_capacity(14 + body.len());
    f.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&session.to_be_bytes());
    f.extend_from_slice(body);
    s.write_all(&f).expect("writing a link frame");
}

/// Reads frames until one of type `ty` (answering link pings on the way); fails on any other.
pub fn expect(s: &mut TcpStream, ty: u8) -> Frame {
    loop {
        let f = read_frame(s);
        if f.ty == ty {
            return f;
        }
        if f.ty == PING {
            write_frame(s, PONG, 0, 0, &f.body);
            continue;
        }
        panic!("expected frame type {ty:#x}, got {f:?}");
    }
}

/// The next length-prefixed field of an OPEN body at `*at` (a u16 length if `wide`, else a u8).
pub fn field<'a>(body: &'a [u8], at: &mut usize, wide: bool) -> &'a [u8] {
    let len = if wide {
        let l = u16::from_be_bytes([body[*at], body[*at + 1]]) as usize;
        *at += 2;
        l
    } else {
        let l = body[*at] as usize;
        *at += 1;
        l
    };
    let v = &body[*at..*at + len];
    *at += len;
    v
}
