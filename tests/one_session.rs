//! One session per user (`one_session_per_user`): a newer session replaces the older one (4409),
//! or is refused (409), or both live; concurrent logins of one user end with exactly one session;
//! and the game server hears the older session's CLOSE before the newer one's OPEN, and nothing of
//! the older session after it.

mod support;

use std::net::TcpListener;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::link::{self, CLOSE, DATA, HELLO, HELLO_ACK, OPEN};
use support::*;
use tungstenite::Message;

fn gateway(policy: &str) -> Gateway {
    Launch::demo()
        .args(&["--workers", "2"])
        .config(&format!("one_session_per_user = \"{policy}\"\n"))
        .start()
}

#[test]
fn a_newer_session_replaces_the_older_one_with_4409() {
    let g = gateway("replace");
    let mut old = g.client("dup");
    old.check_echo("before");
    let mut new = g.client("dup");
    old.expect_close(4409, "replaced by a newer session");
    new.check_echo("after");
    let stats = g.wait_stats("one session left", Duration::from_secs(10), |s| {
        s.sessions_total() == 1
    });
    assert_eq!(stats.counter("replaced"), 1, "{stats}");
    // Another user is not touched, and sessions without a user are exempt.
    let mut other = g.client("someone-else");
    let mut anon1 = g.anonymous_client();
    let mut anon2 = g.anonymous_client();
    other.check_echo("other");
    anon1.check_echo("anon");
    anon2.check_echo("anon");
    new.check_echo("still");
    assert_eq!(g.stats().counter("replaced"), 1);
}

#[test]
fn reject_answers_409_and_keeps_the_first_session() {
    let g = gateway("reject");
    let mut first = g.client("once");
    first.check_echo("first");
    let resp = http_request(
        g.addr(),
        &upgrade_request(g.addr(), &g.target("once"), &random_key(), &[]),
    );
    assert_eq!(resp.status, 409, "{resp:?}");
    first.check_echo("still there");
    let stats = g.stats();
    assert_eq!(stats.counter("duplicates_rejected"), 1, "{stats}");
    // Once the first is gone, the user may connect again.
    first.close();
    g.wait_stats("the first session gone", Duration::from_secs(10), |s| {
        s.sessions_total() == 0
    });
    g.client("once").check_echo("again");
}

#[test]
fn allow_serves_both() {
    let g = gateway("allow");
    let mut a = g.client("twice");
    let mut b = g.client("twice");
    a.check_echo("a");
    b.check_echo("b");
    assert_eq!(g.stats().sessions_total(), 2);
}

/// Many logins of one user at once: every one is upgraded, and all but one are then replaced
/// (replace), or exactly one is upgraded and the others get 409 (reject).
fn storm(policy: &str) -> (usize, usize) {
    const N: usize = 24;
    let g = gateway(policy);
    let barrier = Arc::new(Barrier::new(N));
    let (addr, target) = (g.addr(), g.target("storm"));
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let (barrier, target) = (barrier.clone(), target.clone());
            std::thread::spawn(move || {
                let mut s = tcp_connect(addr);
                barrier.wait();
                let (resp, _) = raw_handshake(&mut s, addr, &target, &[]);
                (resp.status, s)
            })
        })
        .collect();
    let mut upgraded = Vec::new();
    let mut refused = 0;
    for t in threads {
        match t.join().unwrap() {
            (101, s) => upgraded.push(s),
            (409, _) => refused += 1,
            (status, _) => panic!("{policy}: unexpected status {status}"),
        }
    }
    // Every upgrade has been decided once each client has its answer: the older sessions' 4409
    // frames were queued before the newer ones' 101. A probe then tells them apart without a
    // timeout: a replaced session shows its close first, the one left echoes the probe.
    let mut live = Vec::new();
    let mut replaced = 0;
    for mut s in upgraded {
        send_frame(&mut s, true, 0, OP_TEXT, b"probe", true);
        let f = read_frame_skipping_pings(&mut s);
        if f.opcode == OP_TEXT && f.payload == b"probe" {
            live.push(s);
        } else if f.opcode == OP_CLOSE && f.close_code() == Some(4409) {
            replaced += 1;
        } else {
            panic!("{policy}: unexpected frame {f:?}");
        }
    }
    assert_eq!(live.len(), 1, "{policy}: {} sessions left open", live.len());
    let stats = g.wait_stats("one session", Duration::from_secs(10), |s| {
        s.sessions_total() == 1
    });
    assert_eq!(stats.counter("replaced") as usize, replaced, "{stats}");
    (replaced, refused)
}

#[test]
fn concurrent_logins_of_one_user_end_with_exactly_one_session() {
    let (replaced, refused) = storm("replace");
    assert_eq!((replaced, refused), (23, 0));
    let (replaced, refused) = storm("reject");
    assert_eq!((replaced, refused), (0, 23));
}

#[test]
fn the_game_server_hears_the_older_close_before_the_newer_open_and_nothing_after_it() {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = Launch::run(&[server.local_addr().unwrap().to_string()])
        .config("workers = 1\n")
        .args(&["--log-level", "info"])
        .spawn();
    let mut up = link::accept(&server);
    assert_eq!(link::read_frame(&mut up).ty, HELLO);
    link::write_frame(&mut up, HELLO_ACK, 0, 0, &[0, 1, b's']);
    proxy.proc.wait_stderr("upstream link up", LINK_TIMEOUT);
    let g = proxy.ready();

    let mut old = g.client("player");
    let open_old = link::expect(&mut up, OPEN);
    old.send(Message::text("from the older"));
    let d = link::expect(&mut up, DATA);
    assert_eq!(
        (d.session, d.body.as_slice()),
        (open_old.session, &b"from the older"[..])
    );

    let mut new = g.client("player");
    // The older session keeps sending after it was replaced: none of it may reach the server.
    old.ws.send(Message::text("too late")).ok();
    let close = link::expect(&mut up, CLOSE);
    assert_eq!(close.session, open_old.session);
    assert_eq!(&close.body[..2], &4409u16.to_be_bytes());
    let open_new = link::expect(&mut up, OPEN);
    assert_ne!(open_new.session, open_old.session);
    old.expect_close(4409, "replaced by a newer session");
    new.send(Message::text("from the newer"));
    let d = link::expect(&mut up, DATA);
    assert_eq!(
        (d.session, d.body.as_slice()),
        (open_new.session, &b"from the newer"[..]),
        "a frame of the older session arrived after its CLOSE"
    );
    // The older session's end owes the server nothing more: the next frame is the newer one's.
    new.send(Message::text("again"));
    let d = link::expect(&mut up, DATA);
    assert_eq!(
        (d.session, d.body.as_slice()),
        (open_new.session, &b"again"[..])
    );
}
