//! Many clients at once on two workers: all open together, each with its echoes in order, and every
//! session released afterwards.

mod support;

use std::time::Duration;

use support::*;
use tungstenite::Message;

const CLIENTS: usize = 1000;
const THREADS: usize = 40;
const PER_THREAD: usize = CLIENTS / THREADS;
const MESSAGES: usize = 5;

fn message(id: usize, m: usize) -> Message {
    if m.is_multiple_of(2) {
        Message::Text(format!("client {id} message {m} ✓"))
    } else {
        Message::Binary(format!("client {id} message {m}").into_bytes())
    }
}

/// One client thread: connects its share of clients, then runs each phase when told to.
fn client_thread(t: usize, addr: std::net::SocketAddr, url: &str, step: &Step) {
    let ids: Vec<usize> = (0..PER_THREAD).map(|i| t * PER_THREAD + i).collect();

    // Phase 1: connect, half of them with a user id (so some are handed to the other core).
    let mut conns: Vec<Client> = ids
        .iter()
        .map(|id| {
            if id % 2 == 0 {
                Client::connect(addr, &format!("{url}?user=c{id}"), &format!("c{id}"))
            } else {
                Client::connect(addr, url, "(no user)")
            }
        })
        .collect();
    step.next();

    // Phase 2: every client sends all its messages, then reads the echoes in order.
    for (ws, id) in conns.iter_mut().zip(&ids) {
        for m in 0..MESSAGES {
            ws.send(message(*id, m));
        }
    }
    for (ws, id) in conns.iter_mut().zip(&ids) {
        for m in 0..MESSAGES {
            let got = ws.read_data();
            let want = message(*id, m);
            assert!(got == want, "client {id}: expected {want:?}, got {got:?}");
        }
    }
    step.next();

    // Phase 3: close handshakes.
    for ws in conns {
        ws.close();
    }
    step.done();
}

#[test]
fn a_thousand_concurrent_clients_on_two_workers() {
    let server = Gateway::demo(&["--workers", "2"]);
    assert_eq!(server.workers(), 2);
    let addr = server.addr();
    let url = server.url();
    let phases = Phases::spawn(THREADS, move |t, step| client_thread(t, addr, &url, step));

    phases.wait("connect");
    let stats = server.wait_stats("1000 sessions open", Duration::from_secs(20), |s| {
        s.sessions_total() >= CLIENTS as u64
    });
    assert_eq!(stats.sessions_total(), CLIENTS as u64, "{stats}");
    assert_eq!(stats.counter("upgraded"), CLIENTS as u64, "{stats}");
    for core in stats.cores() {
        assert!(
            core["sessions"].as_u64().unwrap() > 0,
            "a core holds no session: {stats}"
        );
    }

    phases.go();
    phases.wait("exchange");
    let stats = server.stats();
    let sent = (CLIENTS * MESSAGES) as u64;
    assert!(stats.counter("messages_in") >= sent, "{stats}");
    assert!(stats.counter("messages_out") >= sent, "{stats}");
    assert_eq!(stats.sessions_total(), CLIENTS as u64, "{stats}");

    phases.go();
    phases.finish("close");
    let stats = server.wait_stats("all sessions released", Duration::from_secs(20), |s| {
        s.sessions_total() == 0
    });
    assert_eq!(stats.counter("protocol_errors"), 0, "{stats}");
}

#[test]
fn sessions_of_clients_that_vanish_without_a_close_are_released() {
    let server = Gateway::demo(&["--workers", "2"]);
    let mut conns: Vec<Client> = (0..200)
        .map(|i| server.client(&format!("vanish{i}")))
        .collect();
    for (i, ws) in conns.iter_mut().enumerate() {
        ws.echo(Message::Text(format!("hello {i}")));
    }
    server.wait_stats("200 sessions", Duration::from_secs(10), |s| {
        s.sessions_total() == 200
    });
    // Half leave with a close handshake, half just drop the TCP connection (EOF to the server).
    for (n, ws) in conns.into_iter().enumerate() {
        if n % 2 == 0 {
            ws.close();
        } else {
            drop(ws);
        }
    }
    server.wait_stats("all sessions released", Duration::from_secs(20), |s| {
        s.sessions_total() == 0
    });
    // And the server still serves.
    let mut ws = server.anonymous_client();
    ws.echo(Message::Text("after".into()));
}
