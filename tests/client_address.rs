//! The real client address (PROXY protocol v1 and v2, trusted proxies, X-Forwarded-For) as the game
//! server sees it in OPEN, read back through the echo game server's `whoami`; and behind a real
//! HAProxy (`send-proxy` and `send-proxy-v2`).

mod support;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const PROXY_PEER: &str = "127.0.0.2";

fn gateway(toml: &str) -> Gateway {
    Launch::demo()
        .args(&["--workers", "2"])
        .config(toml)
        .start()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Sends `preamble` (a PROXY header, or nothing), upgrades as `user`, and asks `whoami`.
fn whoami_after(
    g: &Gateway,
    mut stream: TcpStream,
    preamble: &[u8],
    user: &str,
    headers: &[(&str, &str)],
) -> Value {
    stream.write_all(preamble).unwrap();
    let (mut ws, _) = upgrade(stream, g.addr(), &g.target(user), headers);
    send_frame(&mut ws, true, 0, OP_TEXT, b"whoami", true);
    let (op, body) = read_message(&mut ws);
    assert_eq!(op, OP_TEXT);
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("whoami is not JSON ({e}): {body:?}"))
}

/// The connection is closed without an HTTP answer: what a refused PROXY header gets.
fn expect_closed_silently(mut stream: TcpStream, preamble: &[u8], g: &Gateway) {
    stream.write_all(preamble).unwrap();
    let _ = stream.write_all(&upgrade_request(g.addr(), "/ws", &random_key(), &[]));
    // Nothing but the end may arrive (expect_end fails on data or a timeout).
    expect_end(&mut stream);
}

fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    h.extend_from_slice(addresses);
    h
}

fn v2_tcp6(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    let mut a = src.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    a.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&dport.to_be_bytes());
    v2(1, 0x21, &a)
}

fn v2_tcp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&dst);
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&dport.to_be_bytes());
    v2(1, 0x11, &a)
}

#[test]
fn whoami_reports_exactly_what_the_open_carried() {
    let g = gateway("");
    let stream = tcp_connect(g.addr());
    let local = stream.local_addr().unwrap();
    let me = whoami_after(&g, stream, b"", "alice", &[("User-Agent", "test-agent/1")]);
    assert_eq!(me["user"], "alice");
    assert_eq!(me["address"], local.to_string(), "{me}");
    assert_eq!(me["target"], g.target("alice"));
    assert_eq!(me["headers"]["user-agent"], "test-agent/1", "{me}");
    assert_eq!(me["claims"], serde_json::json!({}));
    assert!(me["session"].as_u64().is_some_and(|s| s > 0), "{me}");
}

#[test]
fn proxy_headers_from_a_trusted_peer_name_the_client() {
    let g = gateway(&format!(
        "proxy_protocol = \"optional\"\ntrusted_proxies = [\"{PROXY_PEER}/32\"]\n"
    ));
    let from_proxy = || tcp_connect_from(ip(PROXY_PEER), g.addr());

    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\n";
    let me = whoami_after(&g, from_proxy(), v1, "v1", &[]);
    assert_eq!(me["address"], "203.0.113.7:51234", "{me}");

    let me = whoami_after(
        &g,
        from_proxy(),
        b"PROXY TCP6 2001:db8::7 ::1 443 8080\r\n",
        "v1-6",
        &[],
    );
    assert_eq!(me["address"], "[2001:db8::7]:443", "{me}");

    let me = whoami_after(
        &g,
        from_proxy(),
        &v2_tcp4([198, 51, 100, 9], 40000, [127, 0, 0, 1], 8080),
        "v2",
        &[],
    );
    assert_eq!(me["address"], "198.51.100.9:40000", "{me}");

    let me = whoami_after(
        &g,
        from_proxy(),
        &v2_tcp6("2001:db8::9", 5555, "::1", 8080),
        "v2-6",
        &[],
    );
    assert_eq!(me["address"], "[2001:db8::9]:5555", "{me}");

    // LOCAL (a balancer's health check) and UNKNOWN name nobody: the proxy's own address stands.
    let stream = from_proxy();
    let local = stream.local_addr().unwrap();
    let me = whoami_after(&g, stream, &v2(0, 0, &[]), "local", &[]);
    assert_eq!(me["address"], local.to_string(), "{me}");
    let stream = from_proxy();
    let local = stream.local_addr().unwrap();
    let me = whoami_after(&g, stream, b"PROXY UNKNOWN\r\n", "unknown", &[]);
    assert_eq!(me["address"], local.to_string(), "{me}");

    // Optional: a trusted peer may also speak without a header, and so may anyone else.
    let stream = from_proxy();
    let local = stream.local_addr().unwrap();
    assert_eq!(
        whoami_after(&g, stream, b"", "plain", &[])["address"],
        local.to_string()
    );
    let stream = tcp_connect(g.addr());
    let local = stream.local_addr().unwrap();
    assert_eq!(
        whoami_after(&g, stream, b"", "direct", &[])["address"],
        local.to_string()
    );
    assert_eq!(g.stats().counter("proxy_refused"), 0);
}

#[test]
fn a_proxy_header_from_an_untrusted_or_broken_peer_closes_the_connection() {
    let g = gateway(&format!(
        "proxy_protocol = \"optional\"\ntrusted_proxies = [\"{PROXY_PEER}\"]\n"
    ));
    let header = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 8080\r\n";
    // 127.0.0.1 is not trusted: it may not claim to speak for anyone.
    expect_closed_silently(tcp_connect(g.addr()), header, &g);
    expect_closed_silently(
        tcp_connect(g.addr()),
        &v2_tcp4([1, 2, 3, 4], 1, [5, 6, 7, 8], 2),
        &g,
    );
    // A trusted peer's malformed headers.
    for bad in [
        &b"PROXY TCP4 999.0.113.7 127.0.0.1 51234 8080\r\n"[..],
        b"PROXY TCP4 203.0.113.7 127.0.0.1 051234 8080\r\n",
        b"PROXY TCP9 203.0.113.7 127.0.0.1 1 2\r\n",
        &v2(2, 0x11, &[0; 12]),
        &v2(1, 0x11, &[0; 8]),
    ] {
        expect_closed_silently(tcp_connect_from(ip(PROXY_PEER), g.addr()), bad, &g);
    }
    let stats = g.wait_stats("seven refusals", Duration::from_secs(10), |s| {
        s.counter("proxy_refused") == 7
    });
    assert_eq!(stats.counter("upgraded"), 0, "{stats}");
    // Nothing leaked and the gateway still serves.
    let stream = tcp_connect(g.addr());
    let local = stream.local_addr().unwrap();
    assert_eq!(
        whoami_after(&g, stream, b"", "after", &[])["address"],
        local.to_string()
    );
}

#[test]
fn required_refuses_a_missing_header_and_untrusted_peers() {
    let g = gateway(&format!(
        "proxy_protocol = \"required\"\ntrusted_proxies = [\"{PROXY_PEER}\"]\n"
    ));
    expect_closed_silently(tcp_connect_from(ip(PROXY_PEER), g.addr()), b"", &g);
    expect_closed_silently(tcp_connect(g.addr()), b"PROXY UNKNOWN\r\n", &g);
    expect_closed_silently(tcp_connect(g.addr()), b"", &g);
    g.wait_stats("three refusals", Duration::from_secs(10), |s| {
        s.counter("proxy_refused") == 3
    });
    let v1 = b"PROXY TCP4 203.0.113.8 127.0.0.1 1000 8080\r\n";
    let me = whoami_after(
        &g,
        tcp_connect_from(ip(PROXY_PEER), g.addr()),
        v1,
        "ok",
        &[],
    );
    assert_eq!(me["address"], "203.0.113.8:1000", "{me}");
}

#[test]
fn x_forwarded_for_is_believed_only_from_trusted_peers() {
    let g = gateway(&format!(
        "real_ip_header = \"x-forwarded-for\"\ntrusted_proxies = [\"{PROXY_PEER}\", \"10.0.0.0/8\"]\n"
    ));
    let xff = [("X-Forwarded-For", "6.6.6.6, 198.51.100.4, 10.1.2.3")];
    // From a trusted proxy: the right-most hop that is not itself a trusted proxy.
    let me = whoami_after(
        &g,
        tcp_connect_from(ip(PROXY_PEER), g.addr()),
        b"",
        "xff",
        &xff,
    );
    assert_eq!(me["address"], "198.51.100.4:0", "{me}");
    // From anyone else the header is the client's own word: ignored.
    let stream = tcp_connect(g.addr());
    let local = stream.local_addr().unwrap();
    let me = whoami_after(&g, stream, b"", "forged", &xff);
    assert_eq!(me["address"], local.to_string(), "{me}");
}

/// A free port on 127.0.0.1 (bound and released; HAProxy binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn behind_haproxy_the_client_address_reaches_the_game_server() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        assert!(
            std::env::var_os("RINGGATE_REQUIRE_PEERS").is_none(),
            "haproxy is not installed (apt-get install haproxy)"
        );
        eprintln!("skipped: haproxy is not installed (apt-get install haproxy); CI installs it");
        return;
    }
    // HAProxy connects from 127.0.0.1, which is the trusted proxy here; the clients connect to it
    // from 127.0.0.3, the address the game server must see.
    let g = gateway("proxy_protocol = \"required\"\ntrusted_proxies = [\"127.0.0.1\"]\n");
    let (v2_port, v1_port) = (free_port(), free_port());
    let cfg = format!(
        "global\n  maxconn 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         listen v2\n  bind 127.0.0.1:{v2_port}\n  server rg {rg} send-proxy-v2\n\
         listen v1\n  bind 127.0.0.1:{v1_port}\n  server rg {rg} send-proxy\n",
        rg = g.addr()
    );
    let file = TempFile::new("haproxy.cfg", &cfg);
    let haproxy = Proc::spawn("haproxy", {
        let mut c = Command::new("haproxy");
        c.arg("-db").arg("-f").arg(file.path());
        c
    });
    for port in [v2_port, v1_port] {
        let front = SocketAddr::from(([127, 0, 0, 1], port));
        // HAProxy prints nothing when it is ready: its listener accepting is the event.
        let deadline = Instant::now() + START_TIMEOUT;
        let stream = loop {
            match std::net::TcpStream::connect_timeout(&front, IO_TIMEOUT) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    assert!(
                        haproxy.is_running(),
                        "haproxy exited: {e}\n{}",
                        haproxy.stderr_text()
                    );
                    std::thread::sleep(POLL_INTERVAL);
                }
                Err(e) => panic!("haproxy on {front} never accepted: {e}"),
            }
        };
        drop(stream);
        let client = tcp_connect_from(ip("127.0.0.3"), front);
        let local = client.local_addr().unwrap();
        client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        // The upgrade goes through HAProxy; its Host is HAProxy's address, which ringgate ignores.
        let (mut ws, _) = upgrade(client, front, &g.target("behind-haproxy"), &[]);
        send_frame(&mut ws, true, 0, OP_TEXT, b"whoami", true);
        let (_, body) = read_message(&mut ws);
        let me: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(me["address"], local.to_string(), "port {port}: {me}");
    }
    assert_eq!(g.stats().counter("proxy_refused"), 0);
}
