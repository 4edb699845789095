//! `allowed_origins` and `origin_required`: a browser's Origin is checked before the upgrade (403),
//! exact origins and `*.` subdomain wildcards; non-browser clients without Origin pass unless
//! Origin is required.

mod support;

use std::time::Duration;

use support::*;

fn status(g: &Gateway, origin: Option<&str>) -> u16 {
    let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
    let mut stream = tcp_connect(g.addr());
    let (resp, _) = raw_handshake(&mut stream, g.addr(), &g.target("o"), &headers);
    if resp.status == 403 {
        assert_eq!(resp.header("Connection"), Some("close"), "{resp:?}");
    }
    resp.status
}

#[test]
fn only_allowed_origins_are_upgraded() {
    let g = Launch::demo()
        .config(
            "allowed_origins = [\"https://game.example.com\", \"https://*.example.org\"]\n\
             one_session_per_user = \"allow\"\n",
        )
        .start();
    assert_eq!(status(&g, Some("https://game.example.com")), 101);
    assert_eq!(status(&g, Some("https://eu.play.example.org")), 101);
    assert_eq!(
        status(&g, None),
        101,
        "a client without Origin (not a browser)"
    );
    for refused in [
        "https://evil.example.com",
        "https://example.org",
        "http://game.example.com",
        "null",
    ] {
        assert_eq!(status(&g, Some(refused)), 403, "{refused}");
    }
    let stats = g.wait_stats("four refusals", Duration::from_secs(10), |s| {
        s.counter("origin_rejected") == 4
    });
    assert_eq!(stats.counter("upgraded"), 3, "{stats}");
}

#[test]
fn origin_required_refuses_clients_without_one() {
    let g = Launch::demo().config("origin_required = true\n").start();
    assert_eq!(status(&g, None), 403);
    assert_eq!(status(&g, Some("https://anything.example")), 101);
}
