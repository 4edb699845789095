//! `--query` and `--header` templates reach the server as written, per connection and per
//! process: a plain TCP server records every upgrade request the real `ringgate-load` sends.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// Answers each upgrade with 101, reports the request head, and answers the harness's close.
fn serve(listener: TcpListener, expected: usize, heads: mpsc::Sender<String>) {
    let mut threads = Vec::new();
    for stream in listener.incoming().take(expected) {
        let Ok(mut s) = stream else { continue };
        let heads = heads.clone();
        threads.push(std::thread::spawn(move || {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut byte).unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let key = header(&head, "sec-websocket-key").unwrap();
            let accept = ringgate::ws::accept_key(key.as_bytes());
            // Recorded before the 101, so it is in the channel by the time the harness is done.
            heads.send(head.clone()).unwrap();
            write!(
                s,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .unwrap();
            // The next thing the harness sends is its close frame: answer with an empty close.
            let mut buf = [0u8; 64];
            if s.read(&mut buf).unwrap_or(0) > 0 {
                let _ = s.write_all(&[0x88, 0x00]);
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            while s.read(&mut buf).unwrap_or(0) > 0 {}
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn run(conns: usize, procs: usize) -> Vec<String> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || serve(listener, conns, tx));
    let out = Command::new(env!("CARGO_BIN_EXE_ringgate-load"))
        .args(["idle", "--url", &url, "--conns", &conns.to_string()])
        .args([
            "--procs",
            &procs.to_string(),
            "--hold",
            "0",
            "--warmup",
            "0",
            "--quiet",
        ])
        .args(["--query", "user={i}"])
        .args(["--header", "X-User: u{i}", "--header", "X-Proc: {p}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ringgate-load failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let heads: Vec<String> = rx.try_iter().collect();
    // Joined only when every expected connection came: otherwise the accept loop never ends.
    assert_eq!(heads.len(), conns, "upgrade requests received");
    server.join().unwrap();
    heads
}

#[test]
fn every_connection_carries_its_own_expanded_headers() {
    let heads = run(20, 1);
    let mut users: Vec<u64> = heads
        .iter()
        .map(|h| {
            let line = h.lines().next().unwrap();
            let user = line
                .split("user=")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or_else(|| panic!("no user in {line:?}"));
            assert_eq!(
                header(h, "x-user"),
                Some(format!("u{user}").as_str()),
                "{h}"
            );
            assert_eq!(header(h, "x-proc"), Some("0"), "{h}");
            user.parse().unwrap()
        })
        .collect();
    users.sort_unstable();
    assert_eq!(users, (0..20).collect::<Vec<u64>>());
}

#[test]
fn the_process_index_differs_between_worker_processes() {
    let heads = run(10, 2);
    let mut procs: Vec<&str> = heads.iter().filter_map(|h| header(h, "x-proc")).collect();
    procs.sort_unstable();
    procs.dedup();
    assert_eq!(procs, ["0", "1"]);
}
