#!/usr/bin/env python3
"""Resident memory of ringgate per idle WebSocket connection.

Starts the echo game server (`ringgate echo-upstream`) and, in front of it, the proxy
(`ringgate run`, release build) on free ports, opens N WebSocket connections that then stay silent,
and reports the growth of the proxy's VmRSS divided by N (the game server is a separate process and
not counted). Connections are spread over
source addresses 127.0.0.2.. so more than one port range fits. Loopback only; stops by itself.

usage: scripts/idle-memory.py [--conns 9000] [--binary target/release/ringgate] [--workers 2]
"""
import argparse
import base64
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))


def tcp_mem_pages():
    """Pages the kernel holds for all TCP sockets (/proc/net/sockstat, "TCP: ... mem N")."""
    with open("/proc/net/sockstat") as f:
        return int(re.search(r"TCP:.* mem (\d+)", f.read()).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--conns", type=int, default=9000)
    ap.add_argument("--binary", default="target/release/ringgate")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    # SIGTERM (from scripts/ab.sh, or a timeout) ends the run through the `finally` below, so that
    # the processes it started stop with it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("idle-memory: terminated"))
    upstream = subprocess.Popen([args.binary, "echo-upstream", "--listen", "127.0.0.1:0"],
                                stdout=subprocess.PIPE, text=True)
    server = None
    try:
        up_addr = re.search(r"listening on (\S+)", upstream.stdout.readline()).group(1)
        server = subprocess.Popen(
            [args.binary, "run", "--listen", "127.0.0.1:0", "--workers", str(args.workers),
             "--upstream", up_addr, "--admin", "127.0.0.1:0",
             "--ping-interval", "1h", "--idle-timeout", "2h"],
            stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)/", line).group(1))
        admin = re.search(r"(http://\S+)/stats", server.stdout.readline()).group(1)
        wait_links_up(admin)
        # Warm up: one connection, so the runtime's own start-up allocations are in the baseline.
        warm = connect(port, "127.0.0.1", 0)
        finish_handshakes([warm])
        base = rss_kib(server.pid)
        kbase = tcp_mem_pages()
        t0 = time.monotonic()
        socks = []
        for i in range(args.conns):
            socks.append(connect(port, f"127.0.0.{2 + i // 5000}", i))
            if len(socks) % 500 == 0:
                finish_handshakes(socks[-500:])
        finish_handshakes(socks[len(socks) - len(socks) % 500:])
        elapsed = time.monotonic() - t0
        # Let the runtime settle (no traffic is in flight; this only lets the allocator return pages).
        time.sleep(1)
        after = rss_kib(server.pid)
        kafter = tcp_mem_pages()
        per = (after - base) * 1024 / args.conns
        print(f"connections: {args.conns}  workers: {args.workers}")
        print(f"server VmRSS: {base} KiB before, {after} KiB after")
        print(f"resident memory per idle connection: {per:.0f} bytes")
        # Both ends of each connection are on this machine: halve for the server's share.
        kper = (kafter - kbase) * 4096 / args.conns / 2
        print(f"kernel TCP memory per connection (server side, from sockstat): {kper:.0f} bytes")
        print(f"connect+upgrade rate: {args.conns / elapsed:.0f}/s (single-threaded Python client)")
        for s in socks:
            s.close()
        warm.close()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        upstream.terminate()
        upstream.wait(timeout=30)


def wait_links_up(admin):
    """The links connect right after start; clients arriving before get 503."""
    import json
    import urllib.request
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cores = json.load(urllib.request.urlopen(admin + "/stats", timeout=5))
        if all(u["up"] for c in cores for u in c["upstreams"]):
            return
        time.sleep(0.05)
    sys.exit("upstream links did not come up")


def connect(port, src, i):
    s = socket.socket()
    # Let connect() pick the port per 4-tuple, so TIME_WAIT ports of earlier runs don't block bind().
    s.setsockopt(socket.IPPROTO_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?user=u{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n").encode())
    return s


def finish_handshakes(socks):
    for s in socks:
        s.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("server closed a connection during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            sys.exit(f"unexpected response: {head[:60]!r}")


if __name__ == "__main__":
    main()
