//! A session's life after the handshake: heartbeat pings, the idle timeout, the close timeout,
//! backpressure on clients that do not read, and graceful shutdown on SIGTERM/SIGINT.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn the_server_pings_every_ping_interval() {
    let server = Gateway::demo(&["--ping-interval", "1s", "--idle-timeout", "3s"]);
    let mut s = raw_upgrade(server.addr(), &[]);
    let upgraded = Instant::now();
    let mut times = Vec::new();
    while times.len() < 3 {
        let f = read_frame(&mut s);
        assert_eq!(f.opcode, OP_PING, "expected a server ping, got {f:?}");
        assert!(f.payload.len() <= 125);
        times.push(upgraded.elapsed());
        // Answer like a browser would.
        send_frame(&mut s, true, 0, OP_PONG, &f.payload, true);
    }
    assert!(
        times[0] <= Duration::from_millis(2500),
        "first ping after {:?}",
        times[0]
    );
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(500) && gap <= Duration::from_millis(2500),
            "pings {gap:?} apart with --ping-interval 1s: {times:?}"
        );
    }
}

#[test]
fn a_client_that_answers_pings_is_not_closed_for_idleness() {
    let server = Gateway::demo(&["--ping-interval", "1s", "--idle-timeout", "2s"]);
    let mut s = raw_upgrade(server.addr(), &[]);
    let started = Instant::now();
    let mut pings = 0;
    // Only pongs go out for more than twice the idle timeout.
    while started.elapsed() < Duration::from_millis(4500) {
        let f = read_frame(&mut s);
        assert_eq!(
            f.opcode,
            OP_PING,
            "expected only pings, got {f:?} after {:?}",
            started.elapsed()
        );
        pings += 1;
        send_frame(&mut s, true, 0, OP_PONG, &f.payload, true);
    }
    assert!(pings >= 3, "only {pings} pings in {:?}", started.elapsed());
    send_frame(&mut s, true, 0, OP_TEXT, b"still here", true);
    assert_eq!(read_message(&mut s), (OP_TEXT, b"still here".to_vec()));
    assert_eq!(server.stats().counter("idle_timeouts"), 0);
}

#[test]
fn a_silent_client_gets_1001_and_is_reset_after_the_close_timeout() {
    let server = Gateway::demo(&[
        "--ping-interval",
        "1s",
        "--idle-timeout",
        "3s",
        "--close-timeout",
        "2s",
    ]);
    let addr = server.addr();
    let key = random_key();
    let mut s = tcp_connect(addr);
    let silent_since = Instant::now();
    s.write_all(&upgrade_request(addr, "/ws", &key, &[]))
        .unwrap();
    assert_eq!(read_http_head(&mut s).status, 101);

    // Never answer anything: pings pile up unanswered, then the close comes.
    let mut pings = 0;
    let close = loop {
        let f = read_frame(&mut s);
        match f.opcode {
            OP_PING => pings += 1,
            OP_CLOSE => break f,
            _ => panic!("unexpected frame {f:?}"),
        }
    };
    let closed_after = silent_since.elapsed();
    let closed_at = Instant::now();
    assert_eq!(close.close_code(), Some(1001), "{close:?}");
    assert!(pings >= 1, "no ping before the idle close");
    assert!(
        closed_after >= Duration::from_secs(2),
        "closed after {closed_after:?} of silence with --idle-timeout 3s"
    );
    assert!(
        closed_after <= Duration::from_secs(6),
        "closed only after {closed_after:?}"
    );

    // Nothing may follow the close frame; the server ends the connection.
    expect_end(&mut s);
    let stats = server.wait_stats(
        "the close timeout to reset the client",
        Duration::from_secs(8),
        |st| st.counter("close_timeouts") >= 1,
    );
    let reset_after = closed_at.elapsed();
    assert!(
        reset_after >= Duration::from_secs(1),
        "reset {reset_after:?} after the close frame with --close-timeout 2s"
    );
    assert_eq!(stats.counter("idle_timeouts"), 1, "{stats}");
    server.wait_stats("the session released", Duration::from_secs(5), |st| {
        st.sessions_total() == 0
    });
}

#[test]
fn an_idle_client_that_answers_the_close_is_released_without_a_close_timeout() {
    let server = Gateway::demo(&[
        "--ping-interval",
        "1s",
        "--idle-timeout",
        "2s",
        "--close-timeout",
        "5s",
    ]);
    let mut s = raw_upgrade(server.addr(), &[]);
    let close = read_frame_skipping_pings(&mut s);
    assert_eq!(close.opcode, OP_CLOSE, "{close:?}");
    assert_eq!(close.close_code(), Some(1001), "{close:?}");
    let answered = Instant::now();
    send_close(&mut s, 1001, b"");
    assert_eq!(expect_end(&mut s), End::Eof);
    let stats = server.wait_stats("the session released", Duration::from_secs(10), |st| {
        st.sessions_total() == 0
    });
    assert!(
        answered.elapsed() < Duration::from_secs(4),
        "released {:?} after the client's close, as if by the 5 s close timeout",
        answered.elapsed()
    );
    assert_eq!(stats.counter("idle_timeouts"), 1, "{stats}");
    assert_eq!(stats.counter("close_timeouts"), 0, "{stats}");
}

/// A TCP connection with a small receive buffer, so that echoes pile up in the server quickly.
fn small_window_upgrade(addr: SocketAddr) -> TcpStream {
    upgrade(tcp_connect_with(addr, Some(4096), None), addr, "/ws", &[]).0
}

#[test]
fn a_client_that_does_not_read_is_closed_with_1008() {
    let server = Gateway::demo(&["--max-client-backlog", "65536", "--close-timeout", "1s"]);
    let mut s = small_window_upgrade(server.addr());
    // A healthy exchange first.
    send_frame(&mut s, true, 0, OP_BINARY, b"warm-up", true);
    assert_eq!(read_message(&mut s), (OP_BINARY, b"warm-up".to_vec()));

    // Then 16 KiB messages, up to 64 MiB, never reading the echoes.
    let mut writer = s.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let frame = frame_bytes(true, 0, OP_BINARY, &binary_of_len(16 * 1024), true);
        let mut sent = 0usize;
        for _ in 0..4096 {
            if writer.write_all(&frame).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let stats = server.wait_stats("backlog_closes >= 1", Duration::from_secs(30), |st| {
        st.counter("backlog_closes") >= 1
    });
    assert_eq!(stats.counter("backlog_closes"), 1, "{stats}");

    // The connection ends. Whatever echoes were already on their way may arrive first; if the close
    // frame gets through, it carries 1008.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut close_code = None;
    loop {
        assert!(Instant::now() < deadline, "the connection did not end");
        match try_read_frame(&mut s) {
            Ok(f) if f.opcode == OP_CLOSE => {
                close_code = f.close_code();
                assert_eq!(close_code, Some(1008), "{f:?}");
                answer_close(&mut s, 1008);
                drain_to_end(&mut s);
                break;
            }
            Ok(f) => assert!(
                matches!(f.opcode, OP_BINARY | OP_CONT | OP_PING),
                "unexpected frame {f:?}"
            ),
            Err(e) if is_reset(&e) || e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("waiting for the connection to end: {e}"),
        }
    }
    // (The server may go on reading and discarding until the close handshake ends.)
    let sent = sender.join().unwrap();
    eprintln!("sent {sent} messages; close frame seen: {close_code:?}");
    server.wait_stats("the session released", Duration::from_secs(10), |st| {
        st.sessions_total() == 0
    });

    // Other clients are unaffected.
    let mut ws = server.anonymous_client();
    ws.echo(tungstenite::Message::Binary(binary_of_len(1000)));
}

/// Opens a session that has echoed one message.
fn open_session(server: &Gateway, i: usize) -> TcpStream {
    let mut s = if i.is_multiple_of(2) {
        raw_upgrade_path(server.addr(), &format!("/ws?user=shutdown{i}"), &[]).0
    } else {
        raw_upgrade(server.addr(), &[])
    };
    let msg = format!("hello {i}");
    send_frame(&mut s, true, 0, OP_TEXT, msg.as_bytes(), true);
    assert_eq!(read_message(&mut s), (OP_TEXT, msg.into_bytes()));
    s
}

#[test]
fn sigterm_closes_every_session_with_1001_and_exits_0() {
    let mut server = Gateway::demo(&["--workers", "2", "--shutdown-timeout", "10s"]);
    let addr = server.addr();
    let mut clients: Vec<TcpStream> = (0..5).map(|i| open_session(&server, i)).collect();
    server.wait_stats("5 sessions", Duration::from_secs(5), |st| {
        st.sessions_total() == 5
    });

    let signalled = Instant::now();
    server.proc.signal(libc::SIGTERM);
    for c in clients.iter_mut() {
        expect_close(c, 1001);
    }

    // The server has stopped accepting: a new client is not upgraded.
    let late = TcpStream::connect(addr).ok().map(|mut l| {
        l.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let _ = l.write_all(&upgrade_request(addr, "/ws", &random_key(), &[]));
        l
    });

    // Clients answer the close; then TCP ends and the process exits 0.
    for c in clients.iter_mut() {
        send_close(c, 1001, b"");
        assert_eq!(expect_end(c), End::Eof);
    }
    let status = server.proc.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "exit took {:?} although every client answered its close",
        signalled.elapsed()
    );

    if let Some(mut l) = late {
        let mut got = Vec::new();
        let _ = l.read_to_end(&mut got);
        assert!(
            !got.starts_with(b"HTTP/1.1 101"),
            "a client was upgraded after SIGTERM: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    assert!(refused.is_err(), "the listener still accepts after exit");
}

#[test]
fn sigint_exits_0_after_the_shutdown_timeout_when_clients_do_not_answer() {
    let mut server = Gateway::demo(&["--shutdown-timeout", "2s", "--close-timeout", "1s"]);
    let mut clients: Vec<TcpStream> = (0..3).map(|i| open_session(&server, i)).collect();
    let signalled = Instant::now();
    server.proc.signal(libc::SIGINT);
    for c in clients.iter_mut() {
        expect_close(c, 1001);
    }
    // Nobody answers.
    let status = server.proc.wait_exit(Duration::from_secs(15));
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(status.code(), Some(0));
    assert!(
        took < Duration::from_secs(7),
        "exit took {took:?} with --shutdown-timeout 2s"
    );
    for c in clients.iter_mut() {
        expect_end(c);
    }
}

#[test]
fn an_idle_server_exits_0_on_sigterm_and_on_sigint() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut server = Gateway::demo(&[]);
        // Serve one client first, closed before the signal.
        let mut ws = server.anonymous_client();
        ws.echo(tungstenite::Message::Text("x".into()));
        ws.close();
        let status = server.proc.stop(sig);
        assert_eq!(status.code(), Some(0), "signal {sig}: {status:?}");
    }
}

#[test]
fn sigterm_on_the_epoll_driver_closes_every_session_with_1001_and_exits_0() {
    let mut server = Gateway::demo_on_epoll(&["--workers", "2"]);
    let mut clients: Vec<TcpStream> = (0..4).map(|i| open_session(&server, i)).collect();
    server.proc.signal(libc::SIGTERM);
    for c in clients.iter_mut() {
        expect_close(c, 1001);
        send_close(c, 1001, b"");
        assert_eq!(expect_end(c), End::Eof);
    }
    let status = server.proc.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{status:?}");
}
