//! Fan-out (protocol version 2) against the real binary, from a game server written here from
//! docs/protocol.md alone: version negotiation, JOIN/LEAVE, PUBLISH (with a sender left out),
//! BROADCAST and MULTICAST reaching exactly their sessions, link order kept per member between DATA
//! and PUBLISH under load, a closed session leaving its groups, and the three slow-member policies
//! tried with clients that really stop reading.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};

use support::link::{
    self, BROADCAST, CLOSE, DATA, HELLO, HELLO_ACK, JOIN, LEAVE, MULTICAST, OPEN, PUBLISH, TEXT,
};
use support::*;
use tungstenite::Message;

/// `ringgate run` with one worker in front of a game server played by the test, which answers
/// HELLO_ACK 2. Returns the gateway and the link.
fn v2_gateway(extra_toml: &str) -> (Gateway, TcpStream) {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let up: SocketAddr = server.local_addr().unwrap();
    let proxy = Launch::run(&[up.to_string()])
        .config(&format!("workers = 1\n{extra_toml}\n"))
        .args(&["--log-level", "info"])
        .spawn();
    let mut link = link::accept(&server);
    let hello = link::read_frame(&mut link);
    assert_eq!((hello.ty, &hello.body[0..2]), (HELLO, &[0u8, 1][..]));
    assert_eq!(hello.flags, 2, "ringgate offers versions up to 2");
    link::write_frame(&mut link, HELLO_ACK, 0, 0, &[0, 2, b'g']);
    let line = proxy.proc.wait_stderr("upstream link up", LINK_TIMEOUT);
    assert!(line.contains("version=2"), "{line}");
    (proxy.ready(), link)
}

/// Connects `user` and returns its client and session id (from the OPEN the server reads).
fn connect(g: &Gateway, link: &mut TcpStream, user: &str) -> (Client, u64) {
    let c = g.client(user);
    let open = link::expect(link, OPEN);
    let mut at = 0;
    assert_eq!(link::field(&open.body, &mut at, true), user.as_bytes());
    (c, open.session)
}

fn join(link: &mut TcpStream, session: u64, policy: u8, group: &[u8]) {
    link::write_frame(link, JOIN, policy, session, group);
}

fn publish(link: &mut TcpStream, group: &[u8], except: u64, text: bool, msg: &[u8]) {
    let mut body = vec![group.len() as u8];
    body.extend_from_slice(group);
    body.extend_from_slice(msg);
    link::write_frame(link, PUBLISH, if text { TEXT } else { 0 }, except, &body);
}

fn data(link: &mut TcpStream, session: u64, msg: &[u8]) {
    link::write_frame(link, DATA, TEXT, session, msg);
}

fn text(c: &mut Client) -> String {
    match c.read_data() {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {}", describe(&other)),
    }
}

#[test]
fn publish_broadcast_and_multicast_reach_exactly_their_sessions() {
    let (g, mut link) = v2_gateway("");
    let (mut alice, a) = connect(&g, &mut link, "alice");
    let (mut bob, b) = connect(&g, &mut link, "bob");
    let (mut carol, c) = connect(&g, &mut link, "carol");
    join(&mut link, a, 0, b"red");
    join(&mut link, b, 0, b"red");
    publish(&mut link, b"red", 0, true, b"r1");
    publish(&mut link, b"red", a, true, b"r2 (not to alice)");
    publish(&mut link, b"red", 0, false, &[1, 2, 3]);
    link::write_frame(&mut link, BROADCAST, TEXT, 0, b"to all");
    let mut body = 2u16.to_be_bytes().to_vec();
    body.extend_from_slice(&a.to_be_bytes());
    body.extend_from_slice(&c.to_be_bytes());
    body.extend_from_slice(b"to alice and carol");
    link::write_frame(&mut link, MULTICAST, TEXT, 0, &body);
    link::write_frame(&mut link, LEAVE, 0, b, b"red");
    publish(&mut link, b"red", 0, true, b"r3 (bob left)");
    data(&mut link, b, b"bob's own");

    assert_eq!(text(&mut alice), "r1");
    assert_eq!(alice.read_data(), Message::binary(vec![1u8, 2, 3]));
    assert_eq!(text(&mut alice), "to all");
    assert_eq!(text(&mut alice), "to alice and carol");
    assert_eq!(text(&mut alice), "r3 (bob left)");
    assert_eq!(text(&mut bob), "r1");
    assert_eq!(text(&mut bob), "r2 (not to alice)");
    assert_eq!(bob.read_data(), Message::binary(vec![1u8, 2, 3]));
    assert_eq!(text(&mut bob), "to all");
    assert_eq!(
        text(&mut bob),
        "bob's own",
        "no multicast, nothing after leaving"
    );
    // Carol is in no group: her first message is the broadcast.
    assert_eq!(text(&mut carol), "to all");
    assert_eq!(text(&mut carol), "to alice and carol");
    assert_eq!(g.stats().counter("fanouts"), 6);
}

#[test]
fn a_member_gets_data_and_publishes_in_link_order_exactly_once_under_load() {
    link_order_under_load("");
}

/// The same through one `sendmsg` per socket instead of the flusher's io_uring batches.
#[test]
fn link_order_holds_with_batched_sends_off() {
    link_order_under_load("batched_sends = false");
}

fn link_order_under_load(extra_toml: &str) {
    const ROUNDS: usize = 3000;
    let (g, mut link) = v2_gateway(extra_toml);
    let mut members: Vec<(Client, u64)> = (0..4)
        .map(|i| connect(&g, &mut link, &format!("m{i}")))
        .collect();
    for (_, s) in &members {
        join(&mut link, *s, 0, b"room");
    }
    let ids: Vec<u64> = members.iter().map(|(_, s)| *s).collect();
    let writer = std::thread::spawn(move || {
        // One buffered stream of frames: DATA to each member and PUBLISH to all, interleaved.
        let mut out = std::io::BufWriter::new(link.try_clone().unwrap());
        for i in 0..ROUNDS {
            if i % 3 == 0 {
                let mut body = vec![4u8];
                body.extend_from_slice(b"room");
                body.extend_from_slice(format!("p{i}").as_bytes());
                frame_to(&mut out, PUBLISH, TEXT, 0, &body);
            } else {
                for s in &ids {
                    frame_to(&mut out, DATA, TEXT, *s, format!("d{i}").as_bytes());
                }
            }
        }
        out.flush().unwrap();
        link
    });
    for (c, _) in &mut members {
        for i in 0..ROUNDS {
            let want = if i % 3 == 0 { "p" } else { "d" };
            assert_eq!(text(c), format!("{want}{i}"));
        }
    }
    let _link = writer.join().unwrap();
}

fn frame_to(out: &mut impl Write, ty: u8, flags: u8, session: u64, body: &[u8]) {
    out.write_all(&((10 + body.len()) as u32).to_be_bytes())
        .unwrap();
    out.write_all(&[ty, flags]).unwrap();
    out.write_all(&session.to_be_bytes()).unwrap();
    out.write_all(body).unwrap();
}

#[test]
fn a_closed_session_leaves_its_groups_and_a_join_for_a_gone_one_is_ignored() {
    let (g, mut link) = v2_gateway("");
    let (stays, s) = connect(&g, &mut link, "stays");
    let (leaves, l) = connect(&g, &mut link, "leaves");
    let mut stays = stays;
    join(&mut link, s, 0, b"g");
    join(&mut link, l, 0, b"g");
    leaves.close();
    let close = link::expect(&mut link, CLOSE);
    assert_eq!(close.session, l);
    // Crossing the CLOSE: a JOIN for the session that is gone.
    join(&mut link, l, 0, b"other");
    publish(&mut link, b"g", 0, true, b"after");
    publish(&mut link, b"other", 0, true, b"nobody");
    assert_eq!(text(&mut stays), "after");
    data(&mut link, s, b"still up");
    assert_eq!(text(&mut stays), "still up");
    assert_eq!(g.stats().core_counter(0, "panics"), 0);
}

// ---------------------------------------------------------------------------------------------
// Slow members

const MSG: usize = 16 << 10;
/// Far more than the kernel's socket buffers take (a few MiB at most), so that ringgate's queue
/// for the slow member fills.
const MESSAGES: u32 = 600;
const BACKLOG: usize = 256 << 10;

/// A member that stops reading: a raw client with a small receive buffer.
fn slow_member(g: &Gateway, link: &mut TcpStream, user: &str) -> (TcpStream, u64) {
    let mut s = tcp_connect_with(g.addr(), Some(4096), None);
    let (resp, _) = raw_handshake(&mut s, g.addr(), &g.target(user), &[]);
    assert_eq!(resp.status, 101, "{resp:?}");
    let open = link::expect(link, OPEN);
    (s, open.session)
}

/// Publishes `MESSAGES` numbered binary messages of `MSG` bytes to `g`, then "end" to the slow
/// member's own `latest` group `end` (queued behind whatever it holds, whatever its policy in `g`)
/// and to the fast member as DATA, and waits until the fast member, reading all along, has all of
/// them: by then ringgate has queued every one for the slow member too. The publisher stays at
/// most `LAG` messages ahead of the fast member, so that it is never behind by its backlog however
/// busy the machine is.
fn publish_burst(link: &mut TcpStream, fast: (Client, u64)) {
    const LAG: u32 = 8;
    let (mut fast, f) = fast;
    let (read, reads) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            match fast.read_data() {
                Message::Binary(b) => {
                    assert_eq!(b[..4], i.to_be_bytes(), "fast member, message {i}")
                }
                other => panic!("fast member: {}", describe(&other)),
            }
            let _ = read.send(i);
        }
        assert_eq!(text(&mut fast), "end");
    });
    for i in 0..MESSAGES {
        if i >= LAG {
            reads
                .recv()
                .expect("the fast member stopped reading (see its panic)");
        }
        let mut m = i.to_be_bytes().to_vec();
        m.resize(MSG, 0x42);
        publish(link, b"g", 0, false, &m);
    }
    publish(link, b"end", 0, true, b"end");
    data(link, f, b"end");
    reader
        .join()
        .expect("the fast member got everything, in order");
}

/// What the slow member reads once it reads again: the numbers of the binary messages, up to the
/// text "end", or the close frame that ended it.
fn drain_slow(s: &mut TcpStream) -> (Vec<u32>, Option<(u16, String)>) {
    let mut seen = Vec::new();
    loop {
        let f = read_frame_skipping_pings(s);
        match f.opcode {
            OP_BINARY => {
                assert_eq!(f.payload.len(), MSG);
                seen.push(u32::from_be_bytes(f.payload[..4].try_into().unwrap()));
            }
            OP_TEXT => {
                assert_eq!(f.payload, b"end");
                return (seen, None);
            }
            OP_CLOSE => return (seen, f.close()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn strictly_increasing(v: &[u32]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

/// What the slow member saw (see [`drain_slow`]) and the fan-out counters after the burst.
type PolicyRun = (Vec<u32>, Option<(u16, String)>, HashMap<&'static str, u64>);

fn policy_run(policy: u8) -> PolicyRun {
    let (g, mut link) = v2_gateway(&format!("max_client_backlog = {BACKLOG}"));
    let (fast, f) = connect(&g, &mut link, "fast");
    let (mut slow, s) = slow_member(&g, &mut link, "slow");
    join(&mut link, f, 0, b"g");
    join(&mut link, s, policy, b"g");
    join(&mut link, s, 2, b"end");
    publish_burst(&mut link, (fast, f));
    let stats = g.stats();
    let counters = ["fanout_dropped", "fanout_replaced", "backlog_closes"]
        .into_iter()
        .map(|k| (k, stats.counter(k)))
        .collect();
    let (seen, close) = drain_slow(&mut slow);
    (seen, close, counters)
}

#[test]
fn close_policy_a_slow_member_is_closed_with_1008_and_the_others_get_everything() {
    let (seen, close, counters) = policy_run(0);
    assert_eq!(
        close.map(|c| c.0),
        Some(1008),
        "after {} messages",
        seen.len()
    );
    assert!(seen.len() < MESSAGES as usize);
    assert_eq!(seen, (0..seen.len() as u32).collect::<Vec<_>>(), "a prefix");
    assert_eq!(counters["backlog_closes"], 1);
}

#[test]
fn drop_policy_a_slow_member_misses_messages_but_stays_and_sees_them_in_order() {
    let (seen, close, counters) = policy_run(1);
    assert_eq!(
        close, None,
        "a drop member is never closed for its group's messages"
    );
    assert!(counters["fanout_dropped"] > 0, "{counters:?}");
    assert!(strictly_increasing(&seen), "{seen:?}");
    assert_eq!(
        seen.len() as u64 + counters["fanout_dropped"],
        u64::from(MESSAGES),
        "every message is either delivered or counted as dropped"
    );
}

#[test]
fn latest_policy_a_slow_member_keeps_only_the_newest_unsent_message() {
    let (seen, close, counters) = policy_run(2);
    assert_eq!(close, None);
    assert!(counters["fanout_replaced"] > 0, "{counters:?}");
    assert!(strictly_increasing(&seen), "{seen:?}");
    assert_eq!(seen.last(), Some(&(MESSAGES - 1)), "the newest arrives");
    assert_eq!(
        seen.len() as u64 + counters["fanout_replaced"],
        u64::from(MESSAGES),
        "every message is either delivered or replaced by a newer one"
    );
}

// ---------------------------------------------------------------------------------------------
// The demo's chat (the echo game server speaks version 2)

/// Users of the demo owned by worker 0 and by worker 1, so that a room spans both links.
fn users_on_each_worker() -> (String, String) {
    let on = |core| {
        (0..)
            .map(|i| format!("player{i}"))
            .find(|u| ringgate::shard::owner_core(u.as_bytes(), 2) == core)
            .unwrap()
    };
    (on(0), on(1))
}

#[test]
fn the_demo_chat_reaches_room_members_on_every_worker() {
    let g = Launch::demo().args(&["--workers", "2"]).start();
    let (u0, u1) = users_on_each_worker();
    let mut a = g.client(&u0);
    let mut b = g.client(&u1);
    let mut c = g.client("outsider");
    a.send(Message::text("join red"));
    assert_eq!(text(&mut a), "joined red");
    b.send(Message::text("join red latest"));
    assert_eq!(text(&mut b), "joined red");
    c.send(Message::text("join blue"));
    assert_eq!(text(&mut c), "joined blue");
    a.send(Message::text("say red hello there"));
    let line = format!("{u0}@red: hello there");
    assert_eq!(text(&mut a), line, "the sender too");
    assert_eq!(text(&mut b), line, "across workers");
    b.send(Message::text("all hi everyone"));
    let line = format!("{u1}@all: hi everyone");
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(text(client), line);
    }
    b.send(Message::text("leave red"));
    assert_eq!(text(&mut b), "left red");
    a.send(Message::text("say red anyone?"));
    assert_eq!(text(&mut a), format!("{u0}@red: anyone?"));
    // Not a command: echoed, and the outsider got nothing from red meanwhile.
    c.send(Message::text("say"));
    assert_eq!(text(&mut c), "say");
    b.send(Message::text("still echoing"));
    assert_eq!(text(&mut b), "still echoing");
}
