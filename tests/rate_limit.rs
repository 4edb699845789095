//! Per-session rate limits (`message_rate`, `byte_rate`, `rate_limit_action`) against the real
//! binary: a flooding client is closed with 1008 or has its excess dropped, and a neighbour on the
//! same gateway is untouched.

mod support;

use std::time::Duration;

use support::*;

const FLOOD: usize = 200;

fn flood(ws: &mut std::net::TcpStream) {
    let mut burst = Vec::new();
    for i in 0..FLOOD {
        burst.extend(frame_bytes(
            true,
            0,
            OP_TEXT,
            format!("m{i}").as_bytes(),
            true,
        ));
    }
    std::io::Write::write_all(ws, &burst).unwrap();
}

#[test]
fn a_client_over_its_message_rate_is_closed_with_1008() {
    let g = Launch::demo()
        .config("message_rate = { rate = 5, burst = 10 }\nrate_limit_action = \"close\"\n")
        .start();
    let mut neighbour = g.client("neighbour");
    let mut flooder = raw_upgrade_path(g.addr(), &g.target("flooder"), &[]).0;
    flood(&mut flooder);
    // Our close comes at once (echoes of what passed may not follow it: nothing does).
    let close = loop {
        let f = read_frame_skipping_pings(&mut flooder);
        if f.opcode == OP_CLOSE {
            break f;
        }
    };
    assert_eq!(
        close.close(),
        Some((1008, "rate limit exceeded".to_string()))
    );
    neighbour.check_echo("beside the flood");
    let stats = g.wait_stats("the close counted", Duration::from_secs(10), |s| {
        s.counter("rate_limit_closes") == 1
    });
    // What passed reached the game server: at least the burst, far from the whole flood (the
    // neighbour's two messages aside).
    let passed = stats.counter("messages_in") as usize - 2;
    assert!((10..FLOOD).contains(&passed), "{passed} passed: {stats}");
    assert_eq!(stats.counter("rate_limit_drops"), 0, "{stats}");
}

#[test]
fn with_drop_the_excess_is_dropped_counted_and_the_session_goes_on() {
    let g = Launch::demo()
        .config("message_rate = { rate = 5, burst = 10 }\nrate_limit_action = \"drop\"\n")
        .start();
    let mut flooder = raw_upgrade_path(g.addr(), &g.target("dropper"), &[]).0;
    flood(&mut flooder);
    // Every message is either echoed or dropped: the two counts add up to the flood.
    let stats = g.wait_stats("the flood metered", Duration::from_secs(10), |s| {
        s.counter("messages_in") + s.counter("rate_limit_drops") == FLOOD as u64
    });
    let passed = stats.counter("messages_in") as usize;
    assert!((10..FLOOD).contains(&passed), "{passed} passed: {stats}");
    for _ in 0..passed {
        let (op, _) = read_message(&mut flooder);
        assert_eq!(op, OP_TEXT);
    }
    assert_eq!(stats.counter("rate_limit_closes"), 0);
    assert!(
        stats.counter("rate_limit_pauses") > 0,
        "the flooder was read on instead of paused: {stats}"
    );
    // The session is still open.
    send_close(&mut flooder, 1000, b"");
    assert_eq!(expect_close(&mut flooder, 1000).close_code(), Some(1000));
}
