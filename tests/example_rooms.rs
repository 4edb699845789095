//! `examples/rooms_server.py`, a version-2 game server written from docs/protocol.md alone,
//! behind the real proxy with two workers, so that its rooms span two links: join/say reach the
//! room's members on both workers and nobody else, all reaches everyone, who lists a room (and
//! forgets a client that closed), dm reaches every session of one user only, leave stops delivery,
//! anything else is echoed; a version-1-only HELLO and malformed frames fail only their own link;
//! SIGTERM ends it cleanly.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use support::link::{self, HELLO, HELLO_ACK, JOIN, LINK_ERROR, OPEN};
use support::*;
use tungstenite::Message;

fn text(c: &mut Client) -> String {
    match c.read_data() {
        Message::Text(t) => t.to_string(),
        other => panic!("{}: expected text, got {}", c.user, describe(&other)),
    }
}

/// Sends a text command and returns the text answer.
fn ask(c: &mut Client, command: &str) -> String {
    c.send(Message::text(command));
    text(c)
}

/// The first `{prefix}{i}` owned by worker `core` of two.
fn user_on(core: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| ringgate::shard::owner_core(u.as_bytes(), 2) == core)
        .unwrap()
}

/// Connects `user` and checks that its session landed on worker `core`.
fn connect_on(gw: &Gateway, user: &str, core: usize) -> Client {
    let (c, at) = gw.locate(user);
    assert_eq!(at.core, core, "{user}");
    c
}

/// A link opened by the test itself, straight to the rooms server: HELLO offering `lowest` to
/// `highest`, as ringgate does.
fn hello(addr: SocketAddr, lowest: u16, highest: u8) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut body = lowest.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 2]); // core 0 of 2
    body.extend_from_slice(b"test");
    link::write_frame(&mut s, HELLO, highest, 0, &body);
    s
}

/// The next frame is LINK_ERROR `code`, then the server closes the link.
fn expect_link_error(s: &mut TcpStream, code: u16) -> String {
    let f = link::read_frame(s);
    assert_eq!(f.ty, LINK_ERROR, "{f:?}");
    assert_eq!(f.body[..2], code.to_be_bytes(), "{f:?}");
    expect_end(s);
    String::from_utf8(f.body[2..].to_vec()).unwrap()
}

#[test]
fn python_example_rooms_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rooms_server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(["--listen", "127.0.0.1:0"]);
    let mut py = Proc::spawn("python3 examples/rooms_server.py", cmd);
    let rest = py.wait_line("rooms_server listening on ", START_TIMEOUT);
    let addr = parse_addr("rooms_server.py", &rest);

    // Two workers, so two links; "allow" lets a user have two sessions at once.
    let names = vec![addr.to_string()];
    let toml = format!("{FAST_RECONNECT}one_session_per_user = \"allow\"\n");
    let gw = Gateway::run_with_config(&names, &["--log-level", "info"], &toml);
    gw.wait_links_up(&names);
    for core in 0..2 {
        let line = gw
            .proc
            .wait_stderr(&format!("upstream link up core={core}"), LINK_TIMEOUT);
        assert!(line.contains("version=2"), "{line}");
    }

    // Two users on each worker, and a second session of bob's.
    let (a, b, c, d) = (
        user_on(0, "alice"),
        user_on(1, "bob"),
        user_on(0, "carol"),
        user_on(1, "dave"),
    );
    let mut alice = connect_on(&gw, &a, 0);
    let mut bob = connect_on(&gw, &b, 1);
    let mut carol = connect_on(&gw, &c, 0);
    let mut dave = connect_on(&gw, &d, 1);
    let mut bob2 = connect_on(&gw, &b, 1);
    for client in [&mut alice, &mut bob, &mut carol, &mut dave, &mut bob2] {
        client.check_echo("hello"); // not a command: echoed, text and binary
    }

    assert_eq!(ask(&mut alice, "join red"), "joined red");
    assert_eq!(ask(&mut bob, "join red"), "joined red");
    assert_eq!(ask(&mut carol, "join blue"), "joined blue");

    // say: every member of red on both workers, the sender included. Once alice has her copy, the
    // server has sent every copy: a copy to carol, dave or bob2 would come before their next answer.
    alice.send(Message::text("say red hello there"));
    let line = format!("{a}@red: hello there");
    assert_eq!(text(&mut alice), line, "the sender too");
    assert_eq!(text(&mut bob), line, "across workers");
    let mut red = [a.clone(), b.clone()];
    red.sort();
    assert_eq!(ask(&mut carol, "who red"), red.join(","), "not to carol");
    assert_eq!(ask(&mut dave, "who blue"), c, "not to dave");
    assert_eq!(
        ask(&mut bob2, "who nowhere"),
        "",
        "not to bob's other session"
    );

    // all: everyone, on both workers.
    dave.send(Message::text("all hi everyone"));
    let line = format!("{d}@all: hi everyone");
    for client in [&mut alice, &mut bob, &mut carol, &mut dave, &mut bob2] {
        assert_eq!(text(client), line, "{}", client.user);
    }

    // dm: both sessions of bob, from a user on the other worker; nobody else (checked below).
    carol.send(Message::text("dm bob-nobody psst"));
    assert_eq!(text(&mut carol), "no user bob-nobody");
    carol.send(Message::text(format!("dm {b} psst")));
    let line = format!("{c} -> {b}: psst");
    assert_eq!(text(&mut bob), line);
    assert_eq!(text(&mut bob2), line);

    // leave: bob no longer gets red's messages; alice still does.
    assert_eq!(ask(&mut bob, "leave red"), "left red");
    alice.send(Message::text("say red anyone?"));
    assert_eq!(text(&mut alice), format!("{a}@red: anyone?"));
    bob.check_echo("after leaving");
    assert_eq!(ask(&mut carol, "who red"), a);

    // A client that closes is no longer listed: the server learns it from ringgate's CLOSE.
    assert_eq!(ask(&mut dave, "join red"), "joined red");
    let mut red = [a.clone(), d.clone()];
    red.sort();
    assert_eq!(ask(&mut carol, "who red"), red.join(","));
    dave.close();
    // Once ringgate has let dave's session go, its CLOSE is on worker 1's link, ahead of anything
    // bob2 (same worker, same link) sends next: link order makes the server read it first.
    gw.wait_stats("dave's session released", Duration::from_secs(5), |s| {
        s.sessions(1) == 2
    });
    assert_eq!(ask(&mut bob2, "who red"), a, "dave still listed in red");

    // Nothing leaked meanwhile: each client's next message is this broadcast.
    bob2.send(Message::text("all the end"));
    let line = format!("{b}@all: the end");
    for client in [&mut alice, &mut bob, &mut carol, &mut bob2] {
        assert_eq!(text(client), line, "{}", client.user);
    }

    // Links the test opens itself: a version-1-only HELLO is refused, malformed frames fail
    // their own link, and the server goes on serving ringgate's.
    let mut v1 = hello(addr, 1, 0);
    assert_eq!(expect_link_error(&mut v1, 1), "version 2 required");
    let mut not_hello = TcpStream::connect(addr).unwrap();
    not_hello.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    link::write_frame(&mut not_hello, OPEN, 0, 7, b"");
    expect_link_error(&mut not_hello, 3);
    let bad_frames: [(u8, u64, &[u8]); 4] = [
        (JOIN, 7, b"red"),           // a server-to-ringgate type
        (0x14, 7, b""),              // MOVED: reserved
        (OPEN, 7, &[0, 9, b'x']),    // truncated OPEN
        (OPEN, 0, &[0, 0, 0, 0, 0]), // a session frame with session 0
    ];
    for (ty, session, body) in bad_frames {
        let mut s = hello(addr, 1, 2);
        let ack = link::read_frame(&mut s);
        assert_eq!((ack.ty, &ack.body[..2]), (HELLO_ACK, &[0u8, 2][..]));
        link::write_frame(&mut s, ty, 0, session, body);
        expect_link_error(&mut s, 2);
    }
    let mut short = hello(addr, 1, 2);
    link::read_frame(&mut short);
    std::io::Write::write_all(&mut short, &[0, 0, 0, 3, 1, 2, 3]).unwrap(); // length 3 < 10
    expect_link_error(&mut short, 2);
    for client in [&mut alice, &mut bob, &mut carol] {
        client.check_echo("after the bad links");
    }
    assert!(gw.stats().link_up_everywhere(&names[0]));

    for client in [alice, bob, carol, bob2] {
        client.close();
    }
    gw.wait_idle(Duration::from_secs(10));

    // SIGTERM: a clean exit, without a traceback.
    let status = py.stop(libc::SIGTERM);
    assert!(status.success(), "{status:?}\n{}", py.stderr_text());
    assert_eq!(py.stderr_text(), "", "rooms_server.py stderr");
}
