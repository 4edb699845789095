//! The upstream side, end to end: real `ringgate run` processes in front of real `ringgate
//! echo-upstream` processes, driven by tungstenite clients and by a raw client written here.
//!
//! Routing, link failure (SIGKILL: 1011) and restart (SIGTERM: GOAWAY 1012), 503 without an
//! upstream, REFUSE and CLOSE from the game server, and both directions of backpressure.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use tungstenite::Message;

/// A lost link closes its sessions within this (docs/protocol.md, "Going away").
const LOSS_BOUND: Duration = Duration::from_secs(1);

/// Message `m` of client `id`: even ones text (with multi-byte characters), odd ones binary (with
/// bytes that are not UTF-8), of varied sizes, each naming its client and number.
fn numbered(id: usize, m: usize) -> Message {
    let size = (id * 37 + m * 911) % 3000;
    if m.is_multiple_of(2) {
        let mut s = format!("u{id} #{m} é€😀 ");
        while s.len() < size {
            s.push(char::from(b'a' + ((s.len() + id) % 26) as u8));
        }
        Message::Text(s)
    } else {
        let mut b = format!("u{id} #{m} ").into_bytes();
        b.extend((0..size).map(|i| (i * 7 + id + m) as u8 | 0x80));
        Message::Binary(b)
    }
}

// ---------------------------------------------------------------------------------------------
// 1

#[test]
fn thousand_sessions_two_workers_two_upstreams() {
    const CLIENTS: usize = 1000;
    const THREADS: usize = 25;
    const PER_THREAD: usize = CLIENTS / THREADS;
    const MESSAGES: usize = 5;

    let a = EchoUpstream::start();
    let b = EchoUpstream::start();
    let names = vec![a.name(), b.name()];
    let gw = Gateway::run(&names, &[]);
    gw.wait_links_up(&names);

    let addr = gw.addr();
    let url = gw.url();
    let phases = Phases::spawn(THREADS, move |t, step| {
        // Phase 1: every connection open at once.
        let mut conns: Vec<(usize, Client)> = (0..PER_THREAD)
            .map(|i| {
                let id = t * PER_THREAD + i;
                let user = format!("u{id}");
                (
                    id,
                    Client::connect(addr, &format!("{url}?user={user}"), &user),
                )
            })
            .collect();
        step.next();
        // Phase 2: each client sends all its messages, then reads the echoes in order.
        for (id, c) in &mut conns {
            for m in 0..MESSAGES {
                c.send(numbered(*id, m));
            }
        }
        for (id, c) in &mut conns {
            for m in 0..MESSAGES {
                let want = numbered(*id, m);
                let got = c.read_data();
                assert!(
                    got == want,
                    "u{id}: echo {m} differs (order or content): want {}, got {}",
                    describe(&want),
                    describe(&got)
                );
            }
        }
        step.next();
        // Phase 3: every client closes.
        for (_, c) in conns {
            c.close();
        }
        step.done();
    });

    phases.wait("connect");
    let s = gw.stats();
    assert_eq!(
        s.sessions_total(),
        CLIENTS as u64,
        "sessions while all are open: {s}"
    );
    let (on_a, on_b) = (s.link_sessions(&a.name()), s.link_sessions(&b.name()));
    assert!(
        on_a > 0 && on_b > 0,
        "both upstreams must get sessions: A {on_a}, B {on_b}: {s}"
    );
    assert_eq!(
        on_a + on_b,
        CLIENTS as u64,
        "every session on exactly one link: {s}"
    );
    for core in 0..gw.workers() {
        assert_eq!(
            s.core_link_sessions(core),
            s.sessions(core),
            "core {core}: sessions on its links differ from its sessions: {s}"
        );
    }

    phases.go();
    phases.wait("exchange");
    phases.go();
    phases.finish("close");

    let s = gw.wait_idle(Duration::from_secs(10));
    assert!(
        s.link_up_everywhere(&a.name()) && s.link_up_everywhere(&b.name()),
        "{s}"
    );
    assert!(
        s.counter("messages_in") >= (CLIENTS * MESSAGES) as u64,
        "{s}"
    );
    assert!(
        s.counter("messages_out") >= (CLIENTS * MESSAGES) as u64,
        "{s}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2

/// How a traffic client of `upstream_killed_mid_traffic` ended.
#[derive(Debug, Default)]
struct Outcome {
    exchanges: usize,
    after_kill: usize,
    closed: Option<(Instant, Option<(u16, String)>)>,
    error: Option<String>,
}

enum Report {
    /// Done a few exchanges: traffic is flowing.
    Warm,
    /// Done a few exchanges after the kill.
    Progress(usize),
    Finished(usize, Outcome),
}

/// Echo exchanges until told to stop or closed by the server.
fn traffic_client(
    idx: usize,
    mut c: Client,
    killed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Report>,
) {
    let mut o = Outcome::default();
    let mut seq = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let after_kill = killed.load(Ordering::SeqCst);
        let msg = numbered(idx * 1000 + seq % 1000, seq);
        // A send can only fail if the server already closed; the close is then read below.
        let _ = c.ws.send(msg.clone());
        match c.next() {
            Event::Data(m) if m == msg => {
                o.exchanges += 1;
                if o.exchanges == 3 {
                    let _ = tx.send(Report::Warm);
                }
                if after_kill {
                    o.after_kill += 1;
                    if o.after_kill == 5 {
                        let _ = tx.send(Report::Progress(idx));
                    }
                }
            }
            Event::Data(m) => {
                o.error = Some(format!(
                    "echo differs: sent {}, got {}",
                    describe(&msg),
                    describe(&m)
                ));
                break;
            }
            Event::Close(f) => {
                o.closed = Some((Instant::now(), f));
                c.finish_close();
                break;
            }
            Event::Failed(e) => {
                o.error = Some(format!("read failed after {} exchanges: {e}", o.exchanges));
                break;
            }
        }
        seq += 1;
        // Pacing: a game client sends at a modest rate; this keeps 50 of them from saturating
        // the two cores the whole test runs on (it is not a wait for anything).
        thread::sleep(Duration::from_millis(5));
    }
    if o.closed.is_none() && o.error.is_none() {
        c.close();
    }
    let _ = tx.send(Report::Finished(idx, o));
}

#[test]
fn upstream_killed_mid_traffic() {
    const CLIENTS: usize = 50;
    let mut a = EchoUpstream::start();
    let b = EchoUpstream::start();
    let names = vec![a.name(), b.name()];
    let gw = Gateway::run(&names, &[]);
    gw.wait_links_up(&names);

    // Connect one at a time, learning where each session lives.
    let mut clients = Vec::new();
    let mut on_a = HashSet::new();
    for i in 0..CLIENTS {
        let (c, p) = gw.locate(&format!("k{i}"));
        if p.link == a.name() {
            on_a.insert(i);
        }
        clients.push(c);
    }
    let n_a = on_a.len();
    assert!(
        n_a > 0 && n_a < CLIENTS,
        "both upstreams must hold sessions: {n_a} of {CLIENTS} on A"
    );

    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (killed, stop, tx) = (killed.clone(), stop.clone(), tx.clone());
            thread::spawn(move || traffic_client(i, c, killed, stop, tx))
        })
        .collect();
    drop(tx);

    let mut outcomes: HashMap<usize, Outcome> = HashMap::new();
    let mut progressed = HashSet::new();
    let mut warm = 0;
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while warm < CLIENTS {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Report::Warm) => warm += 1,
            Ok(Report::Progress(i)) => {
                progressed.insert(i);
            }
            Ok(Report::Finished(i, o)) => panic!("client k{i} ended before the kill: {o:?}"),
            Err(e) => panic!("only {warm} of {CLIENTS} clients got traffic going ({e:?})"),
        }
    }

    let killed_at = a.kill();
    killed.store(true, Ordering::SeqCst);

    // Every client on A is closed; every client on B makes progress after the kill.
    let deadline = Instant::now() + Duration::from_secs(15);
    while outcomes.len() < n_a || progressed.len() < CLIENTS - n_a {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Report::Warm) => {}
            Ok(Report::Progress(i)) => {
                progressed.insert(i);
            }
            Ok(Report::Finished(i, o)) => {
                assert!(on_a.contains(&i), "client k{i} on the surviving upstream ended: {o:?}");
                outcomes.insert(i, o);
            }
            Err(e) => panic!(
                "after the kill: {} of {n_a} clients of A ended, {} of {} clients of B progressed ({e:?})\noutcomes: {outcomes:?}\nstderr:\n{}",
                outcomes.len(),
                progressed.len(),
                CLIENTS - n_a,
                gw.proc.stderr_text()
            ),
        }
    }
    stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().expect("client thread panicked");
    }
    while let Ok(r) = rx.try_recv() {
        if let Report::Finished(i, o) = r {
            outcomes.insert(i, o);
        }
    }
    assert_eq!(outcomes.len(), CLIENTS, "every client reports how it ended");
    let slowest = outcomes
        .values()
        .filter_map(|o| o.closed.as_ref())
        .map(|(at, _)| at.saturating_duration_since(killed_at))
        .max();
    eprintln!(
        "{n_a} sessions of the killed upstream closed, the slowest {slowest:?} after the kill"
    );
    for (i, o) in &outcomes {
        if on_a.contains(i) {
            let Some((at, frame)) = &o.closed else {
                panic!("client k{i} of the killed upstream was not closed: {o:?}")
            };
            assert_eq!(
                frame.as_ref().map(|(c, r)| (*c, r.as_str())),
                Some((1011, "upstream lost")),
                "client k{i}: wrong close"
            );
            assert!(*at > killed_at, "client k{i} closed before the kill");
            let took = at.duration_since(killed_at);
            assert!(
                took <= LOSS_BOUND,
                "client k{i}: 1011 took {took:?} after the kill (bound {LOSS_BOUND:?})"
            );
        } else {
            assert!(
                o.closed.is_none() && o.error.is_none() && o.after_kill >= 5,
                "client k{i} of the surviving upstream was disturbed: {o:?}"
            );
        }
    }

    // Nothing of A's sessions is left, A is down on both cores and the proxy keeps retrying.
    let s = gw.wait_stats(
        "A's sessions gone, A retried",
        Duration::from_secs(10),
        |s| {
            s.is_idle()
                && s.link_down_everywhere(&names[0])
                && (0..2).all(|c| s.link_u64(c, &names[0], "connect_failures") >= 1)
        },
    );
    assert!(s.link_up_everywhere(&names[1]), "{s}");

    // New sessions all go to the survivor and work.
    let mut late = Vec::new();
    for i in 0..20 {
        let (mut c, p) = gw.locate(&format!("late{i}"));
        assert_eq!(p.link, names[1], "late{i} routed to the dead upstream");
        c.check_echo("late");
        late.push(c);
    }
    // Including users that were on A before.
    for &i in on_a.iter().take(5) {
        let (mut c, p) = gw.locate(&format!("k{i}"));
        assert_eq!(p.link, names[1], "k{i} routed to the dead upstream");
        c.check_echo("rerouted");
        late.push(c);
    }
    let s = gw.stats();
    assert_eq!(s.link_sessions(&names[0]), 0, "{s}");
    assert_eq!(s.link_sessions(&names[1]), late.len() as u64, "{s}");
    for c in late {
        c.close();
    }
    gw.wait_idle(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// 3

/// Connects `users` one by one and returns them with where they landed.
fn connect_located(gw: &Gateway, users: &[String]) -> Vec<(Client, Placement)> {
    users.iter().map(|u| gw.locate(u)).collect()
}

fn times_up(s: &Stats, name: &str) -> Vec<u64> {
    (0..s.cores().len())
        .map(|c| s.link_u64(c, name, "times_up"))
        .collect()
}

#[test]
fn upstream_restarted() {
    let mut a = EchoUpstream::start();
    let b = EchoUpstream::start();
    let names = vec![a.name(), b.name()];
    let gw = Gateway::run(&names, &[]);
    let s = gw.wait_links_up(&names);
    let up_before = times_up(&s, &names[0]);
    assert!(up_before.iter().all(|&n| n >= 1), "{s}");

    let users: Vec<String> = (0..40).map(|i| format!("r{i}")).collect();
    // Where each user goes while both are up.
    let mut home = HashMap::new();
    for (mut c, p) in connect_located(&gw, &users) {
        c.check_echo("first");
        home.insert(c.user.clone(), p.link.clone());
        c.close();
    }
    let n_a = home.values().filter(|l| **l == names[0]).count();
    assert!(
        n_a > 0 && n_a < users.len(),
        "{n_a} of {} users on A",
        users.len()
    );
    gw.wait_idle(Duration::from_secs(10));

    let addr_a = a.addr();
    a.kill();
    gw.wait_stats("A down on every core", LINK_TIMEOUT, |s| {
        s.link_down_everywhere(&names[0])
    });

    // During the outage every user goes to B.
    for (mut c, p) in connect_located(&gw, &users) {
        assert_eq!(p.link, names[1], "{} routed to the dead upstream", c.user);
        c.check_echo("outage");
        c.close();
    }
    gw.wait_idle(Duration::from_secs(10));

    // Restarted on the same port: the link comes back on every core.
    let _a2 = EchoUpstream::start_on(addr_a);
    let s = gw.wait_stats("A up again on every core", LINK_TIMEOUT, |s| {
        s.link_up_everywhere(&names[0])
            && times_up(s, &names[0])
                .iter()
                .zip(&up_before)
                .all(|(now, was)| now > was)
    });
    assert!(s.link_up_everywhere(&names[1]), "{s}");

    // The same users land where they were before (rendezvous routing), and the restarted server
    // serves them.
    let mut back = Vec::new();
    for (mut c, p) in connect_located(&gw, &users) {
        assert_eq!(
            Some(&p.link),
            home.get(&c.user),
            "{} did not return to its upstream after the restart",
            c.user
        );
        c.check_echo("restarted");
        back.push(c);
    }
    let s = gw.stats();
    assert_eq!(s.link_sessions(&names[0]), n_a as u64, "{s}");
    for c in back {
        c.close();
    }
    gw.wait_idle(Duration::from_secs(10));
}

#[test]
fn upstream_goaway_closes_with_1012_and_returns() {
    let mut a = EchoUpstream::start();
    let b = EchoUpstream::start();
    let names = vec![a.name(), b.name()];
    let gw = Gateway::run(&names, &[]);
    let s = gw.wait_links_up(&names);
    let up_before = times_up(&s, &names[0]);

    let users: Vec<String> = (0..30).map(|i| format!("g{i}")).collect();
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    for (mut c, p) in connect_located(&gw, &users) {
        c.check_echo("before");
        if p.link == names[0] {
            on_a.push(c);
        } else {
            on_b.push(c);
        }
    }
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "{} on A, {} on B",
        on_a.len(),
        on_b.len()
    );

    // SIGTERM: the game server sends GOAWAY 1012 on every link and exits.
    let addr_a = a.addr();
    let sent_at = Instant::now();
    a.proc.signal(libc::SIGTERM);
    for c in &mut on_a {
        c.expect_close(1012, "restarting");
        let took = sent_at.elapsed();
        assert!(
            took <= LOSS_BOUND,
            "{}: 1012 took {took:?} after SIGTERM",
            c.user
        );
    }
    let status = a.proc.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "echo-upstream exited with {status} after SIGTERM"
    );
    for c in &mut on_b {
        c.check_echo("during");
    }
    gw.wait_stats("A down, its sessions gone", LINK_TIMEOUT, |s| {
        s.link_down_everywhere(&names[0])
            && s.link_sessions(&names[0]) == 0
            && s.sessions_total() == on_b.len() as u64
    });

    // Back on the same port: the link returns and the users of A are served by it again.
    let _a2 = EchoUpstream::start_on(addr_a);
    gw.wait_stats("A up again on every core", LINK_TIMEOUT, |s| {
        s.link_up_everywhere(&names[0])
            && times_up(s, &names[0])
                .iter()
                .zip(&up_before)
                .all(|(now, was)| now > was)
    });
    let mut again = Vec::new();
    for c in &on_a {
        let (mut c2, p) = gw.locate(&c.user);
        assert_eq!(p.link, names[0], "{} not back on A", c.user);
        c2.check_echo("after");
        again.push(c2);
    }
    for c in again.into_iter().chain(on_b) {
        c.close();
    }
    gw.wait_idle(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// 4

#[test]
fn no_upstream_gives_503() {
    let (_reserved, port) = reserve_closed_port();
    let names = vec![port.to_string()];
    let gw = Gateway::run(&names, &[]);
    // The proxy is trying (and failing) to reach it on every core.
    gw.wait_stats("connect failures on every core", LINK_TIMEOUT, |s| {
        (0..2).all(|c| s.link_u64(c, &names[0], "connect_failures") >= 1)
    });
    let rejected_before = gw.stats().counter("handshake_rejected");
    // Several users, so both cores are asked.
    for i in 0..8 {
        let user = format!("nobody{i}");
        let mut s = tcp_connect(gw.addr());
        let (head, _) = raw_handshake(&mut s, gw.addr(), &gw.target(&user), &[]);
        assert_eq!(
            head.status, 503,
            "{user}: expected 503 without an upstream, got {head:?}"
        );
        assert!(head.status_line.starts_with("HTTP/1.1 503"), "{head:?}");
        assert_eq!(
            head.header("Sec-WebSocket-Accept"),
            None,
            "{user}: 503 with an accept key"
        );
        // No upgrade happened: the connection ends after the response body.
        let mut rest = Vec::new();
        if let Err(e) = s.read_to_end(&mut rest) {
            assert!(is_reset(&e), "{user}: after the 503: {e}");
        }
    }
    let s = gw.stats();
    assert_eq!(s.sessions_total(), 0, "{s}");
    assert!(
        s.counter("handshake_rejected") >= rejected_before + 8,
        "{s}"
    );
    assert_eq!(s.counter("upgraded"), 0, "{s}");

    // The game server appears on that port: the links come up and clients are served.
    let _up = EchoUpstream::start_on(port);
    gw.wait_links_up(&names);
    for i in 0..8 {
        let mut c = gw.client(&format!("nobody{i}"));
        c.check_echo("now");
        c.close();
    }
    gw.wait_idle(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// 5

/// Connects users `prefix0, prefix1, ...` until one lands on `core`; returns it.
fn client_on_core(gw: &Gateway, prefix: &str, core: usize) -> Client {
    for i in 0..200 {
        let (c, p) = gw.locate(&format!("{prefix}{i}"));
        if p.core == core {
            return c;
        }
        c.close();
    }
    panic!("no user {prefix}N landed on core {core}");
}

#[test]
fn upstream_refuses_session() {
    let up = EchoUpstream::start();
    let names = vec![up.name()];
    let gw = Gateway::run(&names, &[]);
    let s0 = gw.wait_links_up(&names);

    // Upgraded (101), then closed with the game server's REFUSE code and reason. A message sent
    // right after the upgrade is not echoed: the server ignores data of a refused session.
    let (mut s, _) = raw_upgrade_path(gw.addr(), &gw.target("refuse-me"), &[]);
    send_frame(&mut s, true, 0, OP_TEXT, b"hello?", true);
    let f = read_frame(&mut s);
    assert_eq!(
        f.close(),
        Some((4003, "refused".to_string())),
        "refused session got {f:?}"
    );
    send_close(&mut s, 4003, b"");
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "bytes after the close: {rest:?}"),
        Err(e) => assert!(is_reset(&e), "after the refusal: {e}"),
    }

    // Which core had it: the one whose `upgraded` counter moved.
    let s1 = gw.wait_stats(
        "the refused session released",
        Duration::from_secs(5),
        Stats::is_idle,
    );
    let cores: Vec<usize> = (0..2)
        .filter(|&c| s1.core_counter(c, "upgraded") > s0.core_counter(c, "upgraded"))
        .collect();
    assert_eq!(cores.len(), 1, "exactly one core upgraded refuse-me: {s1}");
    let core = cores[0];

    // A normal user on the same core (so on the same link) works; the link stayed up.
    let mut c = client_on_core(&gw, "normal", core);
    c.check_echo("after refusal");
    let s2 = gw.stats();
    assert!(s2.link_up_everywhere(&names[0]), "{s2}");
    assert_eq!(
        times_up(&s2, &names[0]),
        times_up(&s0, &names[0]),
        "the link was re-established: {s2}"
    );
    // Another refusal on a tungstenite client, with the normal client still fine afterwards.
    let mut r = gw.client("refuse-again");
    r.expect_close(4003, "refused");
    c.check_echo("after second refusal");
    c.close();
    gw.wait_idle(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// 6

#[test]
fn server_kicks_session() {
    let up = EchoUpstream::start();
    let names = vec![up.name()];
    let gw = Gateway::run(&names, &[]);
    let s0 = gw.wait_links_up(&names);

    let (mut victim, p) = gw.locate("victim");
    let mut bystander = client_on_core(&gw, "bystander", p.core);
    let mut other = client_on_core(&gw, "other", 1 - p.core);
    victim.check_echo("before");

    victim.send(Message::Text("kick".into()));
    victim.expect_close(4000, "kicked");

    // The link keeps serving: the session on the same link, one on the other core, a new one.
    bystander.check_echo("after kick");
    other.check_echo("after kick");
    let mut newcomer = client_on_core(&gw, "newcomer", p.core);
    newcomer.check_echo("after kick");
    let s = gw.wait_stats("the kicked session released", Duration::from_secs(5), |s| {
        s.sessions_total() == 3 && s.link_sessions(&names[0]) == 3
    });
    assert!(s.link_up_everywhere(&names[0]), "{s}");
    assert_eq!(
        times_up(&s, &names[0]),
        times_up(&s0, &names[0]),
        "the link was re-established: {s}"
    );
    // "kick" as binary from the bystander kicks it too (the payload decides, not the type).
    bystander.send(Message::Binary(b"kick".to_vec()));
    bystander.expect_close(4000, "kicked");
    newcomer.check_echo("after second kick");
    for c in [other, newcomer] {
        c.close();
    }
    gw.wait_idle(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// 7

/// A client that echoes continuously until told to stop; returns its slowest round trip.
fn background_echoes(
    mut c: Client,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(Client, Duration, usize)> {
    thread::spawn(move || {
        let mut worst = Duration::ZERO;
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            c.echo(numbered(n, n));
            worst = worst.max(t.elapsed());
            n += 1;
        }
        (c, worst, n)
    })
}

#[test]
fn client_stops_reading() {
    const MESSAGES: usize = 2000;
    const SIZE: usize = 32 * 1024;
    let a = EchoUpstream::start();
    let b = EchoUpstream::start();
    let names = vec![a.name(), b.name()];
    let gw = Gateway::run(
        &names,
        &["--max-client-backlog", "65536", "--close-timeout", "2s"],
    );
    gw.wait_links_up(&names);

    // Bystanders on both cores and both upstreams keep echoing throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let mut placements = HashSet::new();
    let bystanders: Vec<_> = (0..8)
        .map(|i| {
            let (c, p) = gw.locate(&format!("calm{i}"));
            placements.insert((p.core, p.link));
            background_echoes(c, stop.clone())
        })
        .collect();

    // The flooder: a small receive buffer, so that its echoes pile up in the proxy quickly.
    let small_window = tcp_connect_with(gw.addr(), Some(16 * 1024), None);
    let (mut s, _) = upgrade(small_window, gw.addr(), &gw.target("flooder"), &[]);
    let mut payload = vec![0u8; SIZE];
    for (i, b) in payload.iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    // One masked frame sent again and again (masking 64 MiB in a debug build would dominate).
    let frame = frame_bytes(true, 0, OP_BINARY, &payload, true);
    let mut written = 0usize;
    let mut write_error = None;
    for _ in 0..MESSAGES {
        match s.write_all(&frame) {
            Ok(()) => written += 1,
            Err(e) => {
                write_error = Some(e);
                break;
            }
        }
    }
    if let Some(e) = &write_error {
        assert!(
            is_reset(e),
            "writing the flood failed with {e} ({:?}) after {written} messages",
            e.kind()
        );
    }

    // Now read: echoes that made it, then the close 1008 (or a reset, if the close deadline passed).
    let mut echoes = 0usize;
    let end = loop {
        match try_read_frame(&mut s) {
            Ok(f) if f.opcode == OP_BINARY => {
                assert_eq!(f.payload.len(), SIZE, "echo {echoes} has the wrong size");
                assert!(f.payload == payload, "echo {echoes} differs");
                echoes += 1;
            }
            Ok(f) if f.opcode == OP_PING => {}
            Ok(f) if f.opcode == OP_CLOSE => break Ok(f.close()),
            Ok(f) => panic!(
                "unexpected frame {:?} ({:?})",
                &f.payload[..f.payload.len().min(16)],
                f.opcode
            ),
            Err(e) => break Err(e),
        }
    };
    match &end {
        Ok(close) => {
            let code = close.as_ref().map(|c| c.0);
            assert_eq!(code, Some(1008), "the flooder was closed with {close:?}");
        }
        // The reset is reported once: to the write if it came while writing (the read then
        // finds the end of the stream), else to the read.
        Err(e) => assert!(
            is_reset(e) || (write_error.is_some() && e.kind() == io::ErrorKind::UnexpectedEof),
            "the flooder's connection ended without close 1008 or a reset: {e} ({:?}); {echoes} echoes read; write error {write_error:?}",
            e.kind()
        ),
    }
    assert!(
        echoes < MESSAGES,
        "all {MESSAGES} echoes arrived although the client did not read: no backlog limit"
    );
    eprintln!(
        "flooder: wrote {written} messages ({write_error:?}), read {echoes} echoes, then {end:?}"
    );

    let st = gw.wait_stats("backlog_closes counted", Duration::from_secs(5), |s| {
        s.counter("backlog_closes") >= 1
    });
    assert_eq!(
        st.counter("backlog_closes"),
        1,
        "only the flooder was closed for not reading: {st}"
    );

    stop.store(true, Ordering::SeqCst);
    let mut calm = Vec::new();
    for h in bystanders {
        let (mut c, worst, n) = h.join().expect("a bystander's echo failed");
        eprintln!("{}: {n} echoes during the flood, slowest {worst:?}", c.user);
        assert!(n > 0, "{}: no echo completed during the flood", c.user);
        assert!(
            worst < Duration::from_secs(5),
            "{}: an echo took {worst:?} during the flood",
            c.user
        );
        c.check_echo("after the flood");
        calm.push(c);
    }
    drop(s);
    gw.wait_stats("only the bystanders left", Duration::from_secs(10), |s| {
        s.sessions_total() == calm.len() as u64
    });
    for c in calm {
        c.close();
    }
    gw.wait_idle(Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// 8

#[test]
fn server_stops_reading() {
    const LINK_BACKLOG: u64 = 65536;
    const MSG: usize = 16 * 1024;
    /// A pressure client counts as blocked when its socket stays unwritable this long.
    const BLOCKED_FOR: Duration = Duration::from_millis(500);
    /// Far more than the kernel buffers on the way can hold: a client that gets this much through
    /// was never pushed back.
    const NO_BACKPRESSURE: usize = 48 << 20;

    let a = EchoUpstream::start();
    let b = EchoUpstream::start();
    let names = vec![a.name(), b.name()];
    let toml = format!("link_backlog = {LINK_BACKLOG}\n{FAST_RECONNECT}");
    let gw = Gateway::run_with_config(&names, &[], &toml);
    gw.wait_links_up(&names);

    // The staller decides which link stalls: (its core, its upstream).
    let (mut staller, stalled) = gw.locate("staller");
    let other_name = names.iter().find(|n| **n != stalled.link).unwrap().clone();
    // Clients for the same link, one on the same core but the other upstream, and one on the
    // other core with the same upstream (its own link, not stalled).
    let mut pressure_users = Vec::new();
    let mut same_core_other_link = None;
    let mut other_core_same_upstream = None;
    for i in 0..400 {
        if pressure_users.len() >= 3
            && same_core_other_link.is_some()
            && other_core_same_upstream.is_some()
        {
            break;
        }
        let user = format!("p{i}");
        let (c, p) = gw.locate(&user);
        if p == stalled && pressure_users.len() < 3 {
            // Reconnected below as a raw client with a small send buffer.
            c.close();
            pressure_users.push(user);
        } else if p.core == stalled.core && p.link == other_name && same_core_other_link.is_none() {
            same_core_other_link = Some(c);
        } else if p.core != stalled.core
            && p.link == stalled.link
            && other_core_same_upstream.is_none()
        {
            other_core_same_upstream = Some(c);
        } else {
            c.close();
        }
    }
    assert_eq!(
        pressure_users.len(),
        3,
        "not enough users on the stalled link"
    );
    let mut same_core_other_link =
        same_core_other_link.expect("no user on the same core, other upstream");
    let mut other_core_same_upstream =
        other_core_same_upstream.expect("no user on the other core, same upstream");
    gw.wait_stats("probes released", Duration::from_secs(5), |s| {
        s.sessions_total() == 3
    });

    let mut pressure: Vec<TcpStream> = pressure_users
        .iter()
        .map(|u| {
            let small_buffer = tcp_connect_with(gw.addr(), None, Some(32 * 1024));
            upgrade(small_buffer, gw.addr(), &gw.target(u), &[]).0
        })
        .collect();
    let s = gw.stats();
    assert_eq!(
        s.link_u64(stalled.core, &stalled.link, "sessions"),
        1 + pressure.len() as u64,
        "the pressure clients must share the staller's link: {s}"
    );

    // The game server stops reading this link for good.
    staller.send(Message::Text("stall".into()));

    // Each pressure client sends 16 KiB messages from a nonblocking socket until it cannot.
    let frame = frame_bytes(true, 0, OP_BINARY, &vec![0x5a; MSG], true);
    let mut sent = vec![0usize; pressure.len()];
    for (i, p) in pressure.iter_mut().enumerate() {
        p.set_nonblocking(true).unwrap();
        let mut off = 0usize;
        loop {
            match p.write(&frame[off..]) {
                Ok(n) => {
                    sent[i] += n;
                    off = (off + n) % frame.len();
                    assert!(
                        sent[i] < NO_BACKPRESSURE,
                        "pressure client {i} wrote {} bytes: the proxy never stopped reading it\n{}",
                        sent[i],
                        gw.stats()
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Blocked: either for a moment (the proxy is still draining) or for good.
                    if !poll_writable(p, BLOCKED_FOR) {
                        break;
                    }
                }
                Err(e) => panic!(
                    "pressure client {i}: write failed after {} bytes: {e}",
                    sent[i]
                ),
            }
        }
    }
    eprintln!("pressure clients wrote {sent:?} bytes before blocking");

    let s = gw.wait_stats("the stalled link paused", Duration::from_secs(5), |s| {
        s.link_bool(stalled.core, &stalled.link, "paused")
    });
    let link = s.link(stalled.core, &stalled.link).clone();
    let sessions = link["sessions"].as_u64().unwrap();
    let queued = link["queued_bytes"].as_u64().unwrap();
    // Twice the backlog (past it, light senders wait too: `link::senders`), plus one read each.
    let bound = 2 * LINK_BACKLOG + sessions * 64 * 1024;
    eprintln!("stalled link: {queued} bytes queued, {sessions} sessions, bound {bound}");
    assert!(
        queued > LINK_BACKLOG / 2,
        "the stalled link holds only {queued} bytes: {s}"
    );
    assert!(
        queued <= bound,
        "the stalled link holds {queued} bytes, above {bound}: {s}"
    );
    assert!(
        s.core_counter(stalled.core, "paused") >= 1,
        "no driver waited at the gate: {s}"
    );
    assert!(
        !s.link_bool(stalled.core, &other_name, "paused"),
        "the other upstream's link paused too: {s}"
    );
    assert!(s.link_up_everywhere(&stalled.link), "{s}");

    // The same core still serves the other upstream, and the other core the same upstream.
    same_core_other_link.check_echo("while stalled");
    other_core_same_upstream.check_echo("while stalled");

    // Still blocked, still bounded a moment later.
    for (i, p) in pressure.iter().enumerate() {
        assert!(
            !poll_writable(p, Duration::from_millis(200)),
            "pressure client {i} became writable again"
        );
    }
    let s = gw.stats();
    let queued = s.link_u64(stalled.core, &stalled.link, "queued_bytes");
    assert!(
        queued <= bound,
        "the stalled link grew to {queued} bytes: {s}"
    );
    assert!(s.link_bool(stalled.core, &stalled.link, "paused"), "{s}");
}

#[test]
fn a_congested_link_holds_back_its_heaviest_sender_and_reads_a_light_one() {
    const LINK_BACKLOG: u64 = 65536;
    let up = EchoUpstream::start();
    let names = vec![up.name()];
    // One worker: the staller, the flooder and the light client share its one link.
    let toml = format!("link_backlog = {LINK_BACKLOG}\n");
    let gw = Launch::run(&names)
        .config(&toml)
        .args(&["--workers", "1"])
        .start();
    gw.wait_links_up(&names);
    let mut staller = gw.client("staller");
    let mut light = gw.client("light");
    light.check_echo("before");
    let small_buffer = tcp_connect_with(gw.addr(), None, Some(32 * 1024));
    let mut flooder = upgrade(small_buffer, gw.addr(), &gw.target("flooder"), &[]).0;
    // The game server stops reading the link for good.
    staller.send(Message::Text("stall".into()));

    // The flooder sends 16 KiB messages until ringgate stops reading it.
    let frame = frame_bytes(true, 0, OP_BINARY, &vec![0x5a; 16 * 1024], true);
    flooder.set_nonblocking(true).unwrap();
    let (mut off, mut sent) = (0usize, 0usize);
    loop {
        match flooder.write(&frame[off..]) {
            Ok(n) => {
                sent += n;
                off = (off + n) % frame.len();
                assert!(
                    sent < 48 << 20,
                    "the flooder was never held back: {}",
                    gw.stats()
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !poll_writable(&flooder, Duration::from_millis(500)) {
                    break;
                }
            }
            Err(e) => panic!("flooder: {e}"),
        }
    }
    let s = gw.wait_stats("the link paused", Duration::from_secs(5), |s| {
        s.link_bool(0, &names[0], "paused") && s.counter("paused") >= 1
    });
    // The light client is still read: its message reaches the link's queue, although the link is
    // congested (it queues behind the flood; the stalled server never answers).
    let before = s.counter("messages_in");
    light.send(Message::Text("a light message".into()));
    let s = gw.wait_stats("the light client read", Duration::from_secs(5), |s| {
        s.counter("messages_in") == before + 1
    });
    assert!(s.link_bool(0, &names[0], "paused"), "{s}");
    assert!(
        !poll_writable(&flooder, Duration::from_millis(200)),
        "the flooder was read on"
    );
}

#[test]
fn a_flood_toward_a_slow_game_server_waits_at_its_share_while_light_clients_are_served() {
    const HONEST: usize = 100;
    const ROUNDS: usize = 5;
    // What may wait on the link ahead of a light client's message: the heavy senders' share
    // (`link::senders::HEAVY_SHARE`), the one read that crossed it, and the light clients' own
    // messages. The backlog (4 MiB by default) is far above it: a FIFO filled to the backlog fails.
    const AHEAD: u64 = 3 * 64 * 1024;
    // A game server that reads 1 MB a second of its link, far less than one client can send.
    let up = EchoUpstream::start_slow(1_000_000, 64 * 1024);
    let names = vec![up.name()];
    // One worker: the flooder and the light clients share its one link.
    let gw = Launch::run(&names).args(&["--workers", "1"]).start();
    gw.wait_links_up(&names);
    let mut honest: Vec<Client> = (0..HONEST).map(|i| gw.client(&format!("h{i}"))).collect();
    for c in &mut honest {
        c.check_echo("before the flood");
    }

    // The flooder writes 16 KiB messages for as long as the test runs and reads what comes back,
    // so that it is held back by the link and not closed for a full queue of its own.
    let flooder = upgrade(
        tcp_connect(gw.addr()),
        gw.addr(),
        &gw.target("flooder"),
        &[],
    )
    .0;
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let mut reader = flooder.try_clone().unwrap();
    reader.set_read_timeout(None).unwrap();
    let drain = thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let writer = {
        let (stop, failed) = (stop.clone(), failed.clone());
        let mut w = flooder.try_clone().unwrap();
        let frame = frame_bytes(true, 0, OP_BINARY, &vec![0x5a; 16 * 1024], true);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if w.write_all(&frame).is_err() {
                    failed.store(!stop.load(Ordering::Relaxed), Ordering::Relaxed);
                    return;
                }
            }
        })
    };
    let s = gw.wait_stats("the flooder held back", IO_TIMEOUT, |s| {
        s.link_bool(0, &names[0], "heavy_paused") && s.counter("paused") >= 1
    });
    let held_before = s.counter("paused");

    for round in 0..ROUNDS {
        for (i, c) in honest.iter_mut().enumerate() {
            c.send(Message::Binary(format!("h{i} round {round}").into_bytes()));
        }
        // While they travel: the flood's share of the link is all that is ahead of them.
        let s = gw.stats();
        let queued = s.link_u64(0, &names[0], "queued_bytes");
        assert!(
            queued <= AHEAD,
            "round {round}: {queued} bytes queued on the link ahead of the light clients: {s}"
        );
        assert!(
            !s.link_bool(0, &names[0], "paused"),
            "round {round}: the link went past its backlog: {s}"
        );
        for (i, c) in honest.iter_mut().enumerate() {
            let want = Message::Binary(format!("h{i} round {round}").into_bytes());
            assert_eq!(c.read_data(), want, "round {round}: client h{i}");
        }
    }
    let s = gw.stats();
    assert!(
        s.counter("paused") > held_before,
        "the flooder was not held back while the light clients were served: {s}"
    );
    assert!(
        !failed.load(Ordering::Relaxed),
        "the flooder was closed rather than held back"
    );
    stop.store(true, Ordering::Relaxed);
    flooder.shutdown(std::net::Shutdown::Both).unwrap();
    writer.join().unwrap();
    drain.join().unwrap();
}
