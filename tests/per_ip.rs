//! Limits per client address: `max_connections_per_ip` (sessions held in the whole process, across
//! workers) and `handshake_rate_per_ip` (upgrade requests, per worker), both answered 429 with
//! Retry-After, and neither touching another address.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use support::*;

fn upgrade_from(g: &Gateway, source: &str, user: &str) -> (HttpResponse, std::net::TcpStream) {
    let mut s = tcp_connect_from(source.parse::<IpAddr>().unwrap(), g.addr());
    let (resp, _) = raw_handshake(&mut s, g.addr(), &g.target(user), &[]);
    (resp, s)
}

#[test]
fn an_address_holds_at_most_max_connections_per_ip_sessions_across_workers() {
    let g = Launch::demo()
        .args(&["--workers", "2"])
        .config("max_connections_per_ip = 3\n")
        .start();
    // Users spread over both workers; the limit counts the address in the whole process.
    let mut held = Vec::new();
    for i in 0..3 {
        let (resp, s) = upgrade_from(&g, "127.0.0.1", &format!("u{i}"));
        assert_eq!(resp.status, 101, "{resp:?}");
        held.push(s);
    }
    let (over, _) = upgrade_from(&g, "127.0.0.1", "u3");
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.header("Retry-After"), Some("1"));
    // Another address is not limited by this one.
    let (other, _keep) = upgrade_from(&g, "127.0.0.2", "v0");
    assert_eq!(other.status, 101);
    // A session that ends gives its place back.
    let mut first = held.remove(0);
    send_close(&mut first, 1000, b"");
    drain_to_end(&mut first);
    g.wait_stats("the first session gone", Duration::from_secs(10), |s| {
        s.sessions_total() == 3
    });
    let (again, _s) = upgrade_from(&g, "127.0.0.1", "u4");
    assert_eq!(again.status, 101, "{again:?}");
    assert_eq!(g.stats().counter("ip_rejected"), 1);
    // Reconnecting as the same user replaces the older session and counts only once.
    let (replacing, _r) = upgrade_from(&g, "127.0.0.1", "u1");
    assert_eq!(replacing.status, 101, "{replacing:?}");
}

#[test]
fn an_address_over_its_upgrade_rate_gets_429_with_retry_after() {
    let g = Launch::demo()
        .args(&["--workers", "1"])
        .config(
            "handshake_rate_per_ip = { rate = 1, burst = 3 }\none_session_per_user = \"allow\"\n",
        )
        .start();
    for _ in 0..3 {
        assert_eq!(upgrade_from(&g, "127.0.0.1", "r").0.status, 101);
    }
    let (over, _) = upgrade_from(&g, "127.0.0.1", "r");
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.header("Retry-After"), Some("1"));
    assert_eq!(
        upgrade_from(&g, "127.0.0.3", "r").0.status,
        101,
        "another address"
    );
    assert_eq!(g.stats().counter("rate_rejected_handshakes"), 1);
}
