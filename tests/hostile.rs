//! Hostile input: each attack gets its documented outcome, and afterwards the server still serves new
//! clients, holds no session, and is back to the file descriptors it had before.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// Open descriptors of the server process.
fn fd_count(server: &Gateway) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.proc.pid()))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(server: &Gateway) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.proc.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The server is back where it started: no session, its baseline descriptors, and a new client works.
fn assert_recovered(server: &Gateway, baseline_fds: usize) {
    server.wait_stats("sessions to return to 0", Duration::from_secs(15), |v| {
        v.sessions_total() == 0
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = fd_count(server);
        if now <= baseline_fds {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "descriptors did not return to {baseline_fds}: {now}"
        );
        // The kernel closing a descriptor sends no signal we can wait on: poll /proc with a deadline.
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut ws = server.client("after-the-attack");
    ws.echo(tungstenite::Message::text("still here"));
    ws.close();
}

/// Waits until the peer ends the connection; returns how long that took.
fn time_to_end(s: &mut TcpStream, started: Instant) -> Duration {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

const PARTIAL_HEAD: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";

#[test]
fn slowloris_is_cut_at_the_handshake_timeout_without_leaking() {
    let server = Gateway::demo(&["--workers", "2", "--handshake-timeout", "2s"]);
    let baseline = fd_count(&server);
    let mut round_rss = Vec::new();
    for _round in 0..2 {
        let started = Instant::now();
        let mut stalled: Vec<TcpStream> = (0..2000)
            .map(|_| {
                let mut s = tcp_connect(server.addr());
                s.write_all(PARTIAL_HEAD).unwrap();
                s
            })
            .collect();
        // Meanwhile a normal client is served at once.
        let mut ws = server.client("honest");
        ws.echo(tungstenite::Message::binary(vec![1u8, 2, 3]));
        ws.close();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "honest client had to wait"
        );
        for s in &mut stalled {
            let t = time_to_end(s, started);
            assert!(
                t >= Duration::from_millis(1900),
                "cut before the timeout: {t:?}"
            );
            assert!(t < Duration::from_secs(10), "not cut: {t:?}");
        }
        drop(stalled);
        assert_recovered(&server, baseline);
        round_rss.push(rss_kib(&server));
    }
    let stats = server.stats();
    assert!(stats.counter("handshake_timeouts") >= 4000, "{stats}");
    // Freed memory is reused: a second identical attack must not grow the process like the first.
    let growth = round_rss[1].saturating_sub(round_rss[0]);
    assert!(
        growth < 2048,
        "RSS grew {growth} KiB in the second round: {round_rss:?}"
    );
}

#[test]
fn a_client_trickling_one_byte_at_a_time_is_cut_at_the_timeout() {
    let server = Gateway::demo(&["--handshake-timeout", "2s"]);
    let baseline = fd_count(&server);
    let mut s = tcp_connect(server.addr());
    let started = Instant::now();
    let mut cut = None;
    // The attack itself is the pacing: one byte every 200 ms, forever (bounded by the test).
    for &b in PARTIAL_HEAD.iter().cycle().take(100) {
        if s.write_all(&[b]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut probe = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        let ended = matches!(s.read(&mut probe), Ok(0));
        s.set_nonblocking(false).unwrap();
        if ended {
            cut = Some(started.elapsed());
            break;
        }
    }
    let cut = cut.expect("a trickling client was never cut");
    assert!(
        cut >= Duration::from_millis(1900) && cut < Duration::from_secs(5),
        "{cut:?}"
    );
    assert_recovered(&server, baseline);
}

#[test]
fn malformed_heads_get_their_status_and_nothing_lingers() {
    let server = Gateway::demo(&[]);
    let baseline = fd_count(&server);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let base = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
    );
    // A header bomb: more headers than the parser accepts.
    let bomb: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(
        http_request(server.addr(), format!("{base}{bomb}\r\n").as_bytes()).status,
        431
    );
    // An oversized head (one giant header), sent whole: 431, and the rest is drained, not reset.
    let giant = format!("{base}X-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    assert_eq!(http_request(server.addr(), giant.as_bytes()).status, 431);
    // A body after the upgrade request.
    let body = format!("{base}Content-Length: 11\r\n\r\nhello world");
    assert_eq!(http_request(server.addr(), body.as_bytes()).status, 400);
    // Invalid UTF-8 in a header name is malformed HTTP; in a value it is opaque bytes and harmless.
    let mut bad_name = base.clone().into_bytes();
    bad_name.extend_from_slice(b"X-\xff\xfe: v\r\n\r\n");
    assert_eq!(http_request(server.addr(), &bad_name).status, 400);
    let mut bad_value = base.clone().into_bytes();
    bad_value.extend_from_slice(b"User-Agent: \xff\xfe\xc0\xaf\r\n\r\n");
    let mut upgraded = tcp_connect(server.addr());
    upgraded.write_all(&bad_value).unwrap();
    assert_eq!(read_http_head(&mut upgraded).status, 101);
    drop(upgraded);
    // Binary garbage instead of HTTP.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert_eq!(http_request(server.addr(), &garbage).status, 400);
    assert_recovered(&server, baseline);
}

#[test]
fn garbage_pipelined_after_the_handshake_closes_with_1002() {
    let server = Gateway::demo(&[]);
    let baseline = fd_count(&server);
    let mut req = upgrade_request(server.addr(), "/ws", &random_key(), &[]);
    req.extend_from_slice(b"\x81\x05hello this is not a masked frame");
    let mut s = tcp_connect(server.addr());
    s.write_all(&req).unwrap();
    assert_eq!(read_http_head(&mut s).status, 101);
    expect_fail(&mut s, 1002);
    assert_recovered(&server, baseline);
}

#[test]
fn frames_declaring_absurd_lengths_are_refused_from_the_header() {
    let server = Gateway::demo(&[]);
    let baseline = fd_count(&server);
    for (len, code) in [
        (1u64 << 63, 1002),
        ((1u64 << 63) - 1, 1009),
        (1u64 << 40, 1009),
    ] {
        let mut s = raw_upgrade(server.addr(), &[]);
        let mut head = vec![0x82, 0xFF];
        head.extend_from_slice(&len.to_be_bytes());
        head.extend_from_slice(&[1, 2, 3, 4]);
        s.write_all(&head).unwrap();
        expect_fail(&mut s, code);
    }
    assert_recovered(&server, baseline);
}

#[test]
fn a_stream_of_empty_continuation_frames_costs_nothing() {
    let server = Gateway::demo(&[]);
    let baseline = fd_count(&server);
    let rss_before = rss_kib(&server);
    let mut s = raw_upgrade(server.addr(), &[]);
    let mut burst = frame_bytes(false, 0, OP_TEXT, b"start", true);
    let empty = frame_bytes(false, 0, OP_CONT, b"", true);
    for _ in 0..200_000 {
        burst.extend_from_slice(&empty);
    }
    burst.extend_from_slice(&frame_bytes(true, 0, OP_CONT, b"-end", true));
    s.write_all(&burst).unwrap();
    let echo = read_frame_skipping_pings(&mut s);
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (OP_TEXT, &b"start-end"[..])
    );
    let growth = rss_kib(&server).saturating_sub(rss_before);
    assert!(
        growth < 8 * 1024,
        "1.2 MB of empty frames grew the server by {growth} KiB"
    );
    drop(s);
    assert_recovered(&server, baseline);
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_bounded() {
    let server = Gateway::demo(&["--max-client-backlog", "65536"]);
    let baseline = fd_count(&server);
    let rss_before = rss_kib(&server);
    let mut s = raw_upgrade(server.addr(), &[]);
    // 125-byte pings, never reading the pongs. The writes stop succeeding once the server has
    // closed the connection (or TCP pushes back); either way the server must not buffer them all.
    let ping = frame_bytes(true, 0, OP_PING, &[0x55; 125], true);
    let burst = ping.repeat(1000);
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..200 {
        if s.write_all(&burst).is_err() {
            break;
        }
    }
    let stats = server.wait_stats("the flooder to be closed", Duration::from_secs(15), |v| {
        v.counter("backlog_closes") >= 1
    });
    assert!(stats.counter("backlog_closes") >= 1);
    let growth = rss_kib(&server).saturating_sub(rss_before);
    assert!(
        growth < 16 * 1024,
        "a ping flood grew the server by {growth} KiB"
    );
    drop(s);
    assert_recovered(&server, baseline);
}

#[test]
fn a_client_keeping_its_socket_full_does_not_starve_its_neighbour() {
    // One core, so the flooder and the neighbour share an event loop.
    let server = Gateway::demo(&["--workers", "1"]);
    let baseline = fd_count(&server);
    let mut flooder = raw_upgrade(server.addr(), &[]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (full_tx, full_rx) = std::sync::mpsc::channel();
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Unsolicited pongs: the server reads and drops them, so nothing pushes back but TCP.
            // Bounded, so that the test ends even if the server hangs.
            let pong = frame_bytes(true, 0, OP_PONG, &[0x33; 100], true);
            let burst = pong.repeat(2000);
            let until = Instant::now() + Duration::from_secs(30);
            // A sustained flood before the neighbour starts: once the writer has got well ahead
            // of the server, every read the server makes fills its buffer. A failed write drops
            // `full_tx` unsent, so the test stops there.
            let mut sent = 0;
            while sent < 64 << 20 {
                flooder
                    .write_all(&burst)
                    .map_err(|e| format!("a write before the neighbour started failed: {e}"))?;
                sent += burst.len();
            }
            full_tx.send(()).unwrap();
            // Only `stop` shows the flood was still going when the neighbour was done.
            loop {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return Ok(());
                }
                if Instant::now() >= until {
                    return Err(
                        "the neighbour's 200 echoes only completed once the 30 s flood had ended"
                            .to_string(),
                    );
                }
                flooder
                    .write_all(&burst)
                    .map_err(|e| format!("the flood stopped early, write failed: {e}"))?;
            }
        })
    };
    full_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the flood never got going");
    let mut neighbour = server.client("neighbour");
    for i in 0..200 {
        neighbour.echo(tungstenite::Message::text(format!("turn {i}")));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Err(why) = flood.join().unwrap() {
        panic!("{why}");
    }
    neighbour.close();
    assert_recovered(&server, baseline);
}

#[test]
fn a_client_hanging_up_behind_a_long_burst_is_released() {
    let server = Gateway::demo(&["--workers", "1"]);
    let baseline = fd_count(&server);
    let mut s = raw_upgrade(server.addr(), &[]);
    // Megabytes the server is still working through when the FIN arrives behind them: the end of
    // the connection must be seen even though it came while the socket was already marked readable.
    let pong = frame_bytes(true, 0, OP_PONG, &[0x44; 100], true);
    let burst = pong.repeat(80_000);
    // A server that stopped reading fails the test here rather than hanging it.
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&burst).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let took = time_to_end(&mut s, Instant::now());
    assert!(
        took < Duration::from_secs(15),
        "the server held the connection for {took:?}"
    );
    drop(s);
    assert_recovered(&server, baseline);
}

/// Opens `n` connections one after the other, each asking for an upgrade, and keeps them all open.
/// Every one must be answered at once: 101, or 503 when the server cannot take it.
fn open_and_hold(server: &Gateway, n: usize) -> (Vec<TcpStream>, usize, usize) {
    let mut clients = Vec::new();
    let (mut upgraded, mut refused) = (0, 0);
    for _ in 0..n {
        let req = upgrade_request(server.addr(), "/ws", &random_key(), &[]);
        let mut s = tcp_connect(server.addr());
        s.write_all(&req).unwrap();
        match read_http_head(&mut s).status {
            101 => upgraded += 1,
            503 => refused += 1,
            other => panic!("unexpected status {other} when out of room"),
        }
        clients.push(s);
    }
    (clients, upgraded, refused)
}

#[test]
fn a_client_opening_connections_up_to_the_fd_limit_is_shed_cleanly() {
    // 300 descriptors: the default cap leaves room for the runtime and splits the rest over the
    // 2 workers, so about 200 clients fit and the rest must be answered 503 at once, not hang.
    let server = Launch::demo().args(&["--workers", "2"]).nofile(300).start();
    let baseline = fd_count(&server);
    let (clients, upgraded, refused) = open_and_hold(&server, 400);
    assert!(
        upgraded >= 150 && refused >= 100,
        "upgraded {upgraded}, refused {refused}"
    );
    let warnings = server
        .proc
        .stderr_text()
        .lines()
        .filter(|l| l.contains("connection limit reached") || l.contains("out of resources"))
        .count();
    assert!(
        (1..=4).contains(&warnings),
        "expected one warning per worker per interval, got {warnings}"
    );
    let stats = server.stats();
    assert!(stats.counter("shed") >= refused as u64, "{stats}");
    drop(clients);
    assert_recovered(&server, baseline);
}

#[test]
fn past_a_cap_set_above_the_fd_limit_the_reserve_descriptor_still_sheds() {
    // The operator set a cap the process cannot hold: accept(2) itself fails with EMFILE.
    let server = Launch::demo()
        .args(&["--workers", "1", "--max-connections", "100000"])
        .nofile(200)
        .start();
    let baseline = fd_count(&server);
    let (clients, upgraded, refused) = open_and_hold(&server, 250);
    assert!(
        upgraded > 100 && refused > 0,
        "upgraded {upgraded}, refused {refused}"
    );
    server
        .proc
        .wait_stderr("out of resources", Duration::from_secs(5));
    drop(clients);
    assert_recovered(&server, baseline);
}

#[test]
fn invalid_close_payloads_fail_with_their_code_and_nothing_lingers() {
    let server = Gateway::demo(&[]);
    let baseline = fd_count(&server);
    let cases: [(Vec<u8>, u16); 5] = [
        (vec![0x03], 1002),                       // one byte: no room for a code
        (close_payload(999, b""), 1002),          // below the valid range
        (close_payload(1005, b""), 1002),         // reserved: never on the wire
        (close_payload(5000, b""), 1002),         // above the valid range
        (close_payload(1000, b"\xff\xfe"), 1007), // reason not UTF-8
    ];
    for (payload, code) in cases {
        let mut s = raw_upgrade(server.addr(), &[]);
        send_frame(&mut s, true, 0, OP_CLOSE, &payload, true);
        expect_fail(&mut s, code);
    }
    assert_recovered(&server, baseline);
}
