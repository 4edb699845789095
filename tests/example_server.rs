//! `examples/game_server.py`, the protocol written from docs/protocol.md alone, behind the real
//! proxy: echo of text and binary, a kick, a refusal.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;
use tungstenite::Message;

#[test]
fn python_example_game_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/game_server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(["--listen", "127.0.0.1:0"]);
    let mut py = Proc::spawn("python3 examples/game_server.py", cmd);
    let rest = py.wait_line("game_server listening on ", START_TIMEOUT);
    let addr = parse_addr("game_server.py", &rest);

    let names = vec![addr.to_string()];
    let gw = Gateway::run(&names, &[]);
    gw.wait_links_up(&names);

    // Echo, text stays text and binary stays binary, several sizes, on both cores.
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut c = gw.client(&format!("player{i}"));
        c.check_echo("hello");
        for size in [0usize, 1, 125, 126, 65535, 65536, 200_000] {
            let text: String = "é€😀ab".chars().cycle().take(size).collect();
            c.echo(Message::Text(text));
            let bin: Vec<u8> = (0..size).map(|j| (j * 13 + i) as u8).collect();
            c.echo(Message::Binary(bin));
        }
        clients.push(c);
    }
    let s = gw.stats();
    assert_eq!(s.link_sessions(&names[0]), clients.len() as u64, "{s}");

    // Pipelined messages come back in order.
    let c = &mut clients[0];
    for n in 0..50 {
        c.send(Message::Text(format!("seq {n}")));
    }
    for n in 0..50 {
        let got = c.read_data();
        assert_eq!(got, Message::Text(format!("seq {n}")), "out of order");
    }

    // kick: the game server closes the session with 4000 "kicked"; the others go on.
    let mut kicked = clients.remove(1);
    kicked.send(Message::Text("kick".into()));
    kicked.expect_close(4000, "kicked");
    for c in &mut clients {
        c.check_echo("after kick");
    }

    // A user id starting with "refuse": upgraded, then closed with 4003 "refused".
    let mut refused = gw.client("refuse-this-one");
    refused.expect_close(4003, "refused");
    for c in &mut clients {
        c.check_echo("after refusal");
    }

    let s = gw.wait_stats(
        "kicked and refused sessions released",
        Duration::from_secs(5),
        |s| {
            s.sessions_total() == clients.len() as u64
                && s.link_sessions(&names[0]) == clients.len() as u64
        },
    );
    assert!(s.link_up_everywhere(&names[0]), "{s}");
    for c in clients {
        c.close();
    }
    gw.wait_idle(Duration::from_secs(10));
    assert!(
        py.is_running(),
        "game_server.py exited:\n{}",
        py.stderr_text()
    );
}
