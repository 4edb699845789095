//! The WebSocket client side: TCP connections, a frame builder and a server-frame parser written
//! here (so that tests control every byte), and [`Client`], a tungstenite client (an independent
//! WebSocket implementation).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use ringgate::ws::OpCode;
use tungstenite::Message;

use super::IO_TIMEOUT;

pub const OP_CONT: OpCode = OpCode::Continuation;
pub const OP_TEXT: OpCode = OpCode::Text;
pub const OP_BINARY: OpCode = OpCode::Binary;
pub const OP_CLOSE: OpCode = OpCode::Close;
pub const OP_PING: OpCode = OpCode::Ping;
pub const OP_PONG: OpCode = OpCode::Pong;

// ---------------------------------------------------------------------------------------------
// sockets and randomness

/// Connects with read/write timeouts set and no Nagle, with optional socket buffer sizes (set
/// before connecting, so that a small window is small from the start).
pub fn tcp_connect_with(
    addr: SocketAddr,
    rcvbuf: Option<usize>,
    sndbuf: Option<usize>,
) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    if let Some(n) = sndbuf {
        s.set_send_buffer_size(n).expect("SO_SNDBUF");
    }
    s.connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// [`tcp_connect_with`] with the system's buffer sizes.
pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    tcp_connect_with(addr, None, None)
}

/// Connects from a given source address of the loopback range (127.0.0.2, ...), with the same
/// timeouts as [`tcp_connect`].
pub fn tcp_connect_from(source: std::net::IpAddr, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    s.connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"));
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A random-ish u64: splitmix64 over a counter started from the time and pid. Varied across calls,
/// threads and runs; good enough for keys and masks, not secret.
pub fn random_u64() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        t ^ (u64::from(std::process::id()) << 32)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut z = seed.wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random masking key.
pub fn random_mask() -> [u8; 4] {
    (random_u64() as u32).to_be_bytes()
}

// ---------------------------------------------------------------------------------------------
// payloads

/// Exactly `n` bytes of valid UTF-8 mixing 1- to 4-byte characters.
pub fn text_of_len(n: usize) -> String {
    let pattern = ['a', 'é', '€', '😀', 'z', ' '];
    let mut s = String::with_capacity(n);
    for c in pattern.iter().cycle() {
        if s.len() + c.len_utf8() > n {
            break;
        }
        s.push(*c);
    }
    while s.len() < n {
        s.push('x');
    }
    s
}

/// `n` bytes of a non-repeating-looking binary pattern (includes bytes invalid in UTF-8).
pub fn binary_of_len(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// raw frames

/// An opcode as written on the wire: one of ringgate's [`OpCode`]s, or a raw 4-bit value for the
/// reserved opcodes that tests send on purpose.
pub trait WireOpcode: Copy {
    fn bits(self) -> u8;
}

impl WireOpcode for OpCode {
    fn bits(self) -> u8 {
        self.as_u8()
    }
}

impl WireOpcode for u8 {
    fn bits(self) -> u8 {
        self
    }
}

/// Only the header of a frame (with the masking key if any), declaring `len` payload bytes.
/// `rsv` is the 3 RSV bits (0..=7).
pub fn frame_header(
    fin: bool,
    rsv: u8,
    opcode: impl WireOpcode,
    len: u64,
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let opcode = opcode.bits();
    assert!(rsv < 8 && opcode < 16);
    let mut out = Vec::with_capacity(14);
    out.push((u8::from(fin) << 7) | (rsv << 4) | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
    out
}

/// Bytes of one client frame, masked with a fresh random key if asked.
pub fn frame_bytes(
    fin: bool,
    rsv: u8,
    opcode: impl WireOpcode,
    payload: &[u8],
    masked: bool,
) -> Vec<u8> {
    let mask = masked.then(random_mask);
    let mut out = frame_header(fin, rsv, opcode, payload.len() as u64, mask);
    match mask {
        Some(m) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4])),
        None => out.extend_from_slice(payload),
    }
    out
}

/// Writes one frame (see [`frame_bytes`]).
pub fn send_frame(
    stream: &mut TcpStream,
    fin: bool,
    rsv: u8,
    opcode: impl WireOpcode,
    payload: &[u8],
    masked: bool,
) {
    stream
        .write_all(&frame_bytes(fin, rsv, opcode, payload, masked))
        .unwrap_or_else(|e| panic!("writing a frame (opcode {:#x}): {e}", opcode.bits()));
}

/// A close payload: code then reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Writes a masked close frame with a code and reason.
pub fn send_close(stream: &mut TcpStream, code: u16, reason: &[u8]) {
    send_frame(
        stream,
        true,
        0,
        OP_CLOSE,
        &close_payload(code, reason),
        true,
    );
}

/// One frame as the server sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Code and reason of a close frame that carries a code; `None` for any other frame.
    pub fn close(&self) -> Option<(u16, String)> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2).then(|| {
            (
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                String::from_utf8_lossy(&self.payload[2..]).to_string(),
            )
        })
    }

    /// The status code of a close frame, if it carries one; fails on any other frame.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        self.close().map(|(code, _)| code)
    }
}

/// Parses one server frame. Server frames must be unmasked, carry no RSV bits, a defined opcode
/// and minimal lengths, and control frames must be final and short.
pub fn try_read_frame(stream: &mut impl Read) -> io::Result<Frame> {
    let mut h = [0u8; 2];
    stream.read_exact(&mut h)?;
    let fin = h[0] & 0x80 != 0;
    let rsv = (h[0] >> 4) & 0x7;
    assert_eq!(
        rsv, 0,
        "server frame with RSV bits {rsv:#b} (no extension was negotiated)"
    );
    let opcode = OpCode::from_u8(h[0] & 0x0F)
        .unwrap_or_else(|| panic!("server frame with reserved opcode {:#x}", h[0] & 0x0F));
    assert_eq!(
        h[1] & 0x80,
        0,
        "server frame is masked (RFC 6455 5.1 forbids it)"
    );
    let len = match h[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b)?;
            let l = u64::from(u16::from_be_bytes(b));
            assert!(l >= 126, "non-minimal 16-bit length {l}");
            l
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b)?;
            let l = u64::from_be_bytes(b);
            assert!(l > 0xFFFF && l >> 63 == 0, "bad 64-bit length {l}");
            l
        }
        l => u64::from(l),
    };
    assert!(len <= 64 << 20, "server frame of {len} bytes: implausible");
    if opcode.is_control() {
        assert!(fin, "fragmented control frame from the server");
        assert!(len <= 125, "control frame of {len} bytes from the server");
    }
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload)?;
    Ok(Frame {
        fin,
        opcode,
        payload,
    })
}

/// Reads one frame; fails the test on EOF, reset or timeout.
pub fn read_frame(stream: &mut impl Read) -> Frame {
    try_read_frame(stream).unwrap_or_else(|e| panic!("reading a frame from the server: {e}"))
}

/// Reads frames until one that is not a server ping.
pub fn read_frame_skipping_pings(stream: &mut impl Read) -> Frame {
    loop {
        let f = read_frame(stream);
        if f.opcode != OP_PING {
            return f;
        }
    }
}

/// Reads a whole data message (reassembling continuation frames), skipping server pings.
/// Returns (opcode of the first frame, payload). Fails on any other control frame.
pub fn read_message(stream: &mut impl Read) -> (OpCode, Vec<u8>) {
    let first = read_frame_skipping_pings(stream);
    assert!(
        first.opcode == OP_TEXT || first.opcode == OP_BINARY,
        "expected a data frame, got {:?} (payload {:?})",
        first.opcode,
        String::from_utf8_lossy(&first.payload)
    );
    let mut payload = first.payload;
    let mut fin = first.fin;
    while !fin {
        let f = read_frame_skipping_pings(stream);
        assert_eq!(
            f.opcode, OP_CONT,
            "expected a continuation frame, got {f:?}"
        );
        payload.extend_from_slice(&f.payload);
        fin = f.fin;
    }
    (first.opcode, payload)
}

/// Reads the server's next non-ping frame and asserts it is a close with `code`.
pub fn expect_close(stream: &mut impl Read, code: u16) -> Frame {
    let f = read_frame_skipping_pings(stream);
    assert_eq!(
        f.opcode,
        OP_CLOSE,
        "expected a close frame with {code}, got {:?} with {} bytes",
        f.opcode,
        f.payload.len()
    );
    assert_eq!(f.close_code(), Some(code), "wrong close code; frame: {f:?}");
    if f.payload.len() > 2 {
        assert!(
            std::str::from_utf8(&f.payload[2..]).is_ok(),
            "close reason is not UTF-8: {f:?}"
        );
    }
    f
}

/// Answers the server's close with the same code. The server may already have closed after a
/// failure, so the answer is a courtesy: a failed write is ignored.
pub fn answer_close(stream: &mut TcpStream, code: u16) {
    let _ = stream.write_all(&frame_bytes(
        true,
        0,
        OP_CLOSE,
        &close_payload(code, b""),
        true,
    ));
}

/// After a failure close: answer it, then the server must end the TCP connection.
pub fn expect_fail(stream: &mut TcpStream, code: u16) {
    expect_close(stream, code);
    answer_close(stream, code);
    expect_end(stream);
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Eof,
    Reset,
}

/// Reads until the server ends the connection; nothing may arrive. Fails on data or timeout.
pub fn expect_end(stream: &mut TcpStream) -> End {
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(0) => End::Eof,
        Ok(n) => panic!(
            "expected the server to end the connection, got {n} more bytes: {:?}",
            &buf[..n]
        ),
        Err(e) if is_reset(&e) => End::Reset,
        Err(e) => panic!(
            "expected the server to end the connection, got {e} ({:?})",
            e.kind()
        ),
    }
}

/// Reads (and discards) everything until EOF or reset. Fails on timeout.
pub fn drain_to_end(stream: &mut TcpStream) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return End::Eof,
            Ok(_) => continue,
            Err(e) if is_reset(&e) => return End::Reset,
            Err(e) => panic!("waiting for the connection to end: {e} ({:?})", e.kind()),
        }
    }
}

/// Is this error a reset / broken connection?
pub fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Waits up to `timeout` for the socket to become writable. True if it did.
pub fn poll_writable(s: &TcpStream, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    assert!(r >= 0, "poll: {}", io::Error::last_os_error());
    r == 1 && p.revents & libc::POLLOUT != 0
}

// ---------------------------------------------------------------------------------------------
// tungstenite client

pub type Ws = tungstenite::WebSocket<TcpStream>;

/// What a client read next (pings and pongs are skipped; tungstenite answers pings itself).
#[derive(Debug)]
pub enum Event {
    Data(Message),
    /// A close frame: its code and reason (`None` for a close without a code).
    Close(Option<(u16, String)>),
    /// The read failed (reset, EOF without a close frame, timeout, protocol error).
    Failed(String),
}

/// A tungstenite client over a [`tcp_connect`] stream.
pub struct Client {
    /// Its user id (what failure messages call it).
    pub user: String,
    pub ws: Ws,
}

impl Client {
    /// Connects to `url` at `addr`; `user` names the client in failure messages.
    pub fn connect(addr: SocketAddr, url: &str, user: &str) -> Client {
        Client::connect_request(addr, url, user).0
    }

    /// Like [`Client::connect`], for any request tungstenite accepts; returns the handshake
    /// response too.
    pub fn connect_request<R: tungstenite::client::IntoClientRequest>(
        addr: SocketAddr,
        request: R,
        user: &str,
    ) -> (Client, tungstenite::handshake::client::Response) {
        match tungstenite::client(request, tcp_connect(addr)) {
            Ok((ws, resp)) => (
                Client {
                    user: user.to_string(),
                    ws,
                },
                resp,
            ),
            Err(e) => panic!("websocket handshake of {user} with {addr} failed: {e}"),
        }
    }

    /// The next event; see [`Event`].
    pub fn next(&mut self) -> Event {
        loop {
            match self.ws.read() {
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(Message::Close(f)) => {
                    return Event::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Ok(m) => return Event::Data(m),
                Err(e) => return Event::Failed(e.to_string()),
            }
        }
    }

    pub fn send(&mut self, m: Message) {
        let user = self.user.clone();
        self.ws
            .send(m)
            .unwrap_or_else(|e| panic!("{user}: send failed: {e}"));
    }

    /// Reads the next data message; fails the test on anything else.
    pub fn read_data(&mut self) -> Message {
        match self.next() {
            Event::Data(m) => m,
            other => panic!("{}: expected a data message, got {other:?}", self.user),
        }
    }

    /// Sends a message and checks that the same message comes back.
    pub fn echo(&mut self, m: Message) {
        self.send(m.clone());
        let got = self.read_data();
        assert!(
            got == m,
            "{}: echo differs: sent {}, got {}",
            self.user,
            describe(&m),
            describe(&got)
        );
    }

    /// A text and a binary echo.
    pub fn check_echo(&mut self, tag: &str) {
        let user = self.user.clone();
        self.echo(Message::Text(format!("{user} {tag} text é€😀")));
        self.echo(Message::Binary(
            format!("{user} {tag} binary")
                .into_bytes()
                .into_iter()
                .chain([0u8, 0xff, 0xfe, 0x80])
                .collect(),
        ));
    }

    /// The next event must be a close frame with `code` and `reason`; then the close handshake is
    /// finished.
    pub fn expect_close(&mut self, code: u16, reason: &str) {
        match self.next() {
            Event::Close(Some((c, r))) if c == code && r == reason => {}
            other => panic!(
                "{}: expected close {code} {reason:?}, got {other:?}",
                self.user
            ),
        }
        self.finish_close();
    }

    /// After a close frame from the server: send our answer and read to the end.
    pub fn finish_close(&mut self) {
        while self.ws.read().is_ok() {}
    }

    /// A client-initiated close with 1000, read through to the end of the connection.
    pub fn close(mut self) {
        let user = self.user.clone();
        self.ws
            .close(None)
            .unwrap_or_else(|e| panic!("{user}: sending close: {e}"));
        loop {
            match self.ws.read() {
                // Echoes still in flight when we closed are allowed before the close.
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed) => return,
                Err(e) => panic!("{user}: closing: {e}"),
            }
        }
    }
}

/// A message in a few words, for failure messages.
pub fn describe(m: &Message) -> String {
    match m {
        Message::Text(t) => format!(
            "text of {} bytes ({:?}...)",
            t.len(),
            t.chars().take(24).collect::<String>()
        ),
        Message::Binary(b) => format!(
            "binary of {} bytes ({:?}...)",
            b.len(),
            &b[..b.len().min(24)]
        ),
        Message::Ping(p) => format!("ping of {} bytes", p.len()),
        Message::Pong(p) => format!("pong of {} bytes", p.len()),
        Message::Close(c) => format!("close {c:?}"),
        Message::Frame(_) => "raw frame".to_string(),
    }
}
