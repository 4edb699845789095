//! Many clients at once on two workers: all open together, each with its echoes in order, and every
//! session released afterwards.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use tungstenite::Message;

const CLIENTS: usize = 1000;
const THREADS: usize = 40;
const PER_THREAD: usize = CLIENTS / THREADS;
const MESSAGES: usize = 5;
/// How long one phase (connect all, exchange, close all) may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);

fn message(id: usize, m: usize) -> Message {
    if m % 2 == 0 {
        Message::Text(format!("client {id} message {m} ✓"))
    } else {
        Message::Binary(format!("client {id} message {m}").into_bytes())
    }
}

/// Waits for one report from every client thread; a thread that failed reports `Err` at once.
fn wait_phase(rx: &mpsc::Receiver<Result<usize, usize>>, phase: &str) {
    for n in 0..THREADS {
        match rx.recv_timeout(PHASE_TIMEOUT) {
            Ok(Ok(_)) => {}
            Ok(Err(t)) => panic!("phase {phase}: client thread {t} failed; see its panic above"),
            Err(e) => {
                panic!("phase {phase}: only {n} of {THREADS} client threads reported ({e:?})")
            }
        }
    }
}

/// One client thread: connects its share of clients, then runs each phase when told to.
fn client_thread(
    t: usize,
    addr: std::net::SocketAddr,
    url: &str,
    ready: &mpsc::Sender<Result<usize, usize>>,
    go_rx: &mpsc::Receiver<()>,
) {
    let wait_go = || {
        go_rx
            .recv_timeout(PHASE_TIMEOUT)
            .expect("the test's main thread gave up")
    };
    let ids: Vec<usize> = (0..PER_THREAD).map(|i| t * PER_THREAD + i).collect();

    // Phase 1: connect, half of them with a user id (so some are handed to the other core).
    let mut conns: Vec<Ws> = ids
        .iter()
        .map(|id| {
            if id % 2 == 0 {
                ws_connect(addr, &format!("{url}?user=c{id}"))
            } else {
                ws_connect(addr, url)
            }
        })
        .collect();
    ready.send(Ok(t)).unwrap();
    wait_go();

    // Phase 2: every client sends all its messages, then reads the echoes in order.
    for (ws, id) in conns.iter_mut().zip(&ids) {
        for m in 0..MESSAGES {
            ws.send(message(*id, m)).unwrap();
        }
    }
    for (ws, id) in conns.iter_mut().zip(&ids) {
        for m in 0..MESSAGES {
            let got = ws_read_data(ws);
            let want = message(*id, m);
            assert!(got == want, "client {id}: expected {want:?}, got {got:?}");
        }
    }
    ready.send(Ok(t)).unwrap();
    wait_go();

    // Phase 3: close handshakes.
    for ws in conns {
        ws_close(ws);
    }
    ready.send(Ok(t)).unwrap();
}

#[test]
fn a_thousand_concurrent_clients_on_two_workers() {
    let server = Server::start(&["--workers", "2"]);
    assert_eq!(server.workers(), 2);
    let addr = server.addr();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, usize>>();
    let mut go = Vec::new();
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        go.push(go_tx);
        let ready = ready_tx.clone();
        let url = server.url();
        handles.push(thread::spawn(move || {
            let failed = ready.clone();
            let body =
                std::panic::AssertUnwindSafe(move || client_thread(t, addr, &url, &ready, &go_rx));
            if std::panic::catch_unwind(body).is_err() {
                let _ = failed.send(Err(t));
            }
        }));
    }
    drop(ready_tx);

    wait_phase(&ready_rx, "connect");
    let stats = server.wait_stats("1000 sessions open", Duration::from_secs(20), |s| {
        sessions_sum(s) >= CLIENTS as u64
    });
    assert_eq!(sessions_sum(&stats), CLIENTS as u64, "{stats}");
    assert_eq!(counter_sum(&stats, "upgraded"), CLIENTS as u64, "{stats}");
    for core in stats.as_array().unwrap() {
        assert!(
            core["sessions"].as_u64().unwrap() > 0,
            "a core holds no session: {stats}"
        );
    }

    for g in &go {
        g.send(()).unwrap();
    }
    wait_phase(&ready_rx, "exchange");
    let stats = server.stats();
    let sent = (CLIENTS * MESSAGES) as u64;
    assert!(counter_sum(&stats, "messages_in") >= sent, "{stats}");
    assert!(counter_sum(&stats, "messages_out") >= sent, "{stats}");
    assert_eq!(sessions_sum(&stats), CLIENTS as u64, "{stats}");

    for g in &go {
        g.send(()).unwrap();
    }
    wait_phase(&ready_rx, "close");
    for h in handles {
        h.join().expect("a client thread panicked");
    }
    let stats = server.wait_stats("all sessions released", Duration::from_secs(20), |s| {
        sessions_sum(s) == 0
    });
    assert_eq!(counter_sum(&stats, "protocol_errors"), 0, "{stats}");
}

#[test]
fn sessions_of_clients_that_vanish_without_a_close_are_released() {
    let server = Server::start(&["--workers", "2"]);
    let addr = server.addr();
    let mut conns: Vec<Ws> = (0..200)
        .map(|i| ws_connect(addr, &server.user_url(&format!("vanish{i}"))))
        .collect();
    for (i, ws) in conns.iter_mut().enumerate() {
        ws_echo(ws, Message::Text(format!("hello {i}")));
    }
    server.wait_stats("200 sessions", Duration::from_secs(10), |s| {
        sessions_sum(s) == 200
    });
    // Half leave with a close handshake, half just drop the TCP connection (EOF to the server).
    for (n, ws) in conns.into_iter().enumerate() {
        if n % 2 == 0 {
            ws_close(ws);
        } else {
            drop(ws);
        }
    }
    server.wait_stats("all sessions released", Duration::from_secs(20), |s| {
        sessions_sum(s) == 0
    });
    // And the server still serves.
    let mut ws = server.ws();
    ws_echo(&mut ws, Message::Text("after".into()));
}
