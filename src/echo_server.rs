//! The echo game server: speaks docs/protocol.md and sends every DATA frame back to its session
//! (text stays text). `ringgate echo-upstream` runs it as a process; `ringgate demo` runs it
//! in-process behind the proxy; tests and load tests use both.
//!
//! Owns its own worker threads and links; shares nothing with the proxy's cores even in-process.
//! The echo is zero-copy: a reply is the received body, sent with a new 14-byte header beside it.
//!
//! Commands, sent as a session's DATA payload: the text `whoami` (the answer is a JSON object of
//! exactly what the session's OPEN carried: `session`, `user`, `address`, `target`, `headers`,
//! `claims`), `kick` (the server closes the session with 4000 "kicked"), `stall` (the server stops
//! reading that link for good). A session whose user id starts
//! with `refuse` is refused with 4003. On SIGINT/SIGTERM (process mode) every link gets GOAWAY 1012
//! "restarting" before the server exits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::thread::JoinHandle;

use bytes::BytesMut;
use monoio::net::{TcpListener, TcpStream};

use crate::protocol::{self as proto, Frame, FrameType, Open};
use crate::runtime::event::Event;
use crate::runtime::{sys, Flush, OutQueue, ReadOutcome};

/// A running echo server.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Vec<flume::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Sends GOAWAY 1012 on every link, closes them, and waits for the threads.
    pub fn shutdown(self) {
        for s in &self.stop {
            let _ = s.send(());
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts `workers` threads, each with its own SO_REUSEPORT listener on `listen` (port 0 picks one).
/// Frames longer than `max_frame` are refused with LINK_ERROR 4: match it to the proxy's
/// `max_message_size + 64 KiB` (docs/protocol.md), or large messages kill the link.
pub fn start(listen: SocketAddr, workers: usize, max_frame: usize) -> std::io::Result<EchoServer> {
    let mut addr = listen;
    let mut stop = Vec::new();
    let mut threads = Vec::new();
    for i in 0..workers.max(1) {
        let l = crate::runtime::bind_reuseport(addr, 1024)?;
        addr = l.local_addr()?;
        let (tx, rx) = flume::bounded::<()>(1);
        stop.push(tx);
        threads.push(
            std::thread::Builder::new()
                .name(format!("echo-upstream-{i}"))
                .spawn(move || run_worker(l, rx, max_frame))?,
        );
    }
    Ok(EchoServer {
        addr,
        stop,
        threads,
    })
}

fn run_worker(listener: std::net::TcpListener, stop: flume::Receiver<()>, max_frame: usize) {
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let Ok(mut rt) = rt else {
        tracing::error!("echo-upstream: cannot build runtime");
        return;
    };
    rt.block_on(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        let shutdown = Rc::new(Event::default());
        let links = Rc::new(Links::default());
        let s = shutdown.clone();
        monoio::spawn(async move {
            let _ = stop.recv_async().await;
            s.set();
        });
        loop {
            let accepted = monoio::select! {
                _ = shutdown.wait() => break,
                r = listener.accept() => r,
            };
            if let Ok((stream, _)) = accepted {
                let guard = LinkGuard::new(links.clone());
                let shutdown = shutdown.clone();
                monoio::spawn(async move {
                    serve_link(stream, &shutdown, max_frame).await;
                    drop(guard);
                });
            }
        }
        // Let the links send their GOAWAY before the runtime goes away.
        links.stopping.set(true);
        if links.live.get() > 0 {
            links.gone.wait().await;
        }
    });
}

/// Counts the live links so shutdown can wait for their GOAWAY to go out.
#[derive(Default)]
struct Links {
    live: std::cell::Cell<usize>,
    stopping: std::cell::Cell<bool>,
    gone: Event,
}

struct LinkGuard(Rc<Links>);

impl LinkGuard {
    fn new(links: Rc<Links>) -> LinkGuard {
        links.live.set(links.live.get() + 1);
        LinkGuard(links)
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let l = &self.0;
        l.live.set(l.live.get() - 1);
        if l.live.get() == 0 && l.stopping.get() {
            l.gone.set();
        }
    }
}

/// The answer to `whoami`: exactly what the session's OPEN carried, as JSON. Header values that are
/// not UTF-8 are shown lossily; the `:claims` pseudo-header, when present, is the verified token's
/// forwarded claims (a JSON object) and appears as `claims`, not among the headers.
fn whoami(session: u64, open: &Open) -> String {
    let mut headers = serde_json::Map::new();
    let mut claims = serde_json::Value::Object(serde_json::Map::new());
    for (name, value) in &open.headers {
        if name == ":claims" {
            if let Ok(v) = serde_json::from_slice(value) {
                claims = v;
            }
            continue;
        }
        headers.insert(
            name.clone(),
            String::from_utf8_lossy(value).into_owned().into(),
        );
    }
    serde_json::json!({
        "session": session,
        "user": open.user,
        "address": open.client_addr,
        "target": open.target,
        "headers": headers,
        "claims": claims,
    })
    .to_string()
}

/// What the link loop should do after a batch of frames.
enum Next {
    Continue,
    Stall,
    Close,
}

async fn serve_link(stream: TcpStream, shutdown: &Event, max_frame: usize) {
    let fd = sys::fd(&stream);
    if sys::prepare_client_socket(fd).is_err() {
        return;
    }
    let mut link = EchoLink {
        max_frame,
        ..EchoLink::default()
    };
    let mut buf = BytesMut::new();
    loop {
        let readable = monoio::select! {
            _ = shutdown.wait() => {
                link.out.push(&[], proto::goaway(1012, "restarting"));
                let _ = flush_all(&stream, &mut link.out).await;
                return;
            }
            r = stream.readable(false) => r,
        };
        if readable.is_err() {
            return;
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match sys::read_into(fd, &mut buf) {
            Ok(ReadOutcome::Data(_)) => {}
            Ok(ReadOutcome::WouldBlock) => continue,
            _ => return,
        }
        let next = link.on_bytes(&mut buf);
        if flush_all(&stream, &mut link.out).await.is_err() {
            return;
        }
        match next {
            Next::Continue => {}
            Next::Close => return,
            Next::Stall => {
                // Never read again: the proxy's link fills up and its backpressure must engage.
                shutdown.wait().await;
                return;
            }
        }
    }
}

/// Writes the whole queue, waiting for writability; while it waits, nothing is read, so a proxy
/// that floods us is slowed by TCP rather than by our memory.
async fn flush_all(stream: &TcpStream, out: &mut OutQueue) -> std::io::Result<()> {
    loop {
        match out.flush(sys::fd(stream))? {
            Flush::Done => return Ok(()),
            Flush::Blocked => stream.writable(false).await?,
        }
    }
}

#[derive(Default)]
struct EchoLink {
    max_frame: usize,
    hello: bool,
    /// What each open session's OPEN carried, for `whoami`.
    sessions: HashMap<u64, Open>,
    out: OutQueue,
}

impl EchoLink {
    fn on_bytes(&mut self, buf: &mut BytesMut) -> Next {
        loop {
            let frame = match proto::decode(buf, self.max_frame) {
                Ok(Some(f)) => f,
                Ok(None) => return Next::Continue,
                Err(e) => {
                    self.out
                        .push(&[], proto::link_error(e.link_error_code(), &e.to_string()));
                    return Next::Close;
                }
            };
            match self.on_frame(frame) {
                Next::Continue => {}
                other => return other,
            }
        }
    }

    fn on_frame(&mut self, frame: Frame) -> Next {
        if !self.hello {
            return match frame {
                Frame::Hello { version, .. } if version == proto::VERSION => {
                    self.hello = true;
                    self.out.push(
                        &[],
                        proto::hello_ack(proto::VERSION, "ringgate echo-upstream"),
                    );
                    Next::Continue
                }
                Frame::Hello { version, .. } => {
                    self.out.push(
                        &[],
                        proto::link_error(1, &format!("unsupported version {version}")),
                    );
                    Next::Close
                }
                _ => {
                    self.out.push(&[], proto::link_error(3, "expected HELLO"));
                    Next::Close
                }
            };
        }
        match frame {
            Frame::Open { session, open } => {
                if open.user.starts_with("refuse") {
                    self.out.push(&[], proto::refuse(session, 4003, "refused"));
                } else {
                    self.sessions.insert(session, open);
                }
            }
            Frame::Data {
                session,
                text,
                payload,
            } => {
                let Some(open) = self.sessions.get(&session) else {
                    return Next::Continue;
                };
                match &payload[..] {
                    b"whoami" if text => {
                        let me = whoami(session, open);
                        self.out
                            .push(&[], proto::data_frame(session, true, me.as_bytes()));
                    }
                    b"kick" => {
                        self.sessions.remove(&session);
                        self.out.push(&[], proto::close(session, 4000, "kicked"));
                    }
                    b"stall" => return Next::Stall,
                    _ => {
                        let mut head = [0u8; proto::HEADER_LEN];
                        let flags = if text { proto::FLAG_TEXT } else { 0 };
                        proto::encode_header(
                            &mut head,
                            FrameType::Data,
                            flags,
                            session,
                            payload.len(),
                        );
                        self.out.push(&head, payload);
                    }
                }
            }
            Frame::Close { session, .. } => {
                self.sessions.remove(&session);
            }
            Frame::Ping(token) => self.out.push(&[], proto::pong(token)),
            Frame::Pong(_) => {}
            Frame::LinkError { .. } => return Next::Close,
            _ => {
                self.out.push(&[], proto::link_error(2, "unexpected frame"));
                return Next::Close;
            }
        }
        Next::Continue
    }
}
