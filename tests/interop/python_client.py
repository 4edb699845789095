#!/usr/bin/env python3
"""Interop checks of ringgate against the Python `websockets` library (asyncio client).

Usage: python_client.py ws://127.0.0.1:PORT/ws [--max-message-size BYTES] [--idle-timeout SECONDS]

Expects ringgate in front of an echo game server (`ringgate demo`): every message comes back as
sent, a client close with code C is answered with close C, and a message `kick` is answered with
close 4000 "kicked". Prints one line per check and `N passed, N failed` last; exits 1 on any failure.
"""

import argparse
import asyncio
import logging
import os
import sys
import time
import traceback

import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

CHECK_TIMEOUT = 30.0  # seconds, per check
MiB = 1 << 20
WINDOW = 256 * 1024  # bytes in flight at most when pipelining

RESULTS = []  # (name, ok, detail)


def report(name, ok, detail=""):
    RESULTS.append((name, ok, detail))
    line = f"{'PASS' if ok else 'FAIL'} python-websockets: {name}"
    if detail:
        line += f" ({detail})"
    print(line, flush=True)


class CheckFailed(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def size_of(data):
    return len(data.encode()) if isinstance(data, str) else len(data)


def describe(data):
    kind = "text" if isinstance(data, str) else "binary"
    n = len(data.encode()) if isinstance(data, str) else len(data)
    return f"{kind} {n} B"


def text_of_size(n, seed=0):
    """A str whose UTF-8 encoding is exactly n bytes, mixing 1-, 2-, 3- and 4-byte characters."""
    alphabet = ["a", "Z", "0", " ", "é", "ß", "Ж", "€", "日", "本", "😀", "🎮"]
    k = seed % len(alphabet)
    unit = "".join(alphabet[k:] + alphabet[:k])  # 27 bytes of UTF-8
    s = unit * (n // len(unit.encode()))
    s += "x" * (n - len(s.encode()))
    assert len(s.encode()) == n
    return s


def binary_of_size(n, seed=0):
    # Random bytes: exercises every byte value and defeats any accidental pattern match.
    return os.urandom(n)


class Suite:
    def __init__(self, url, max_size, idle_timeout):
        self.url = url
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.user_n = 0

    def connect(self, user=None, **kw):
        self.user_n += 1
        user = user or f"py{self.user_n}"
        sep = "&" if "?" in self.url else "?"
        kw.setdefault("max_size", 4 * MiB)  # our receive limit; the server's limit is what we test
        kw.setdefault("proxy", None)
        kw.setdefault("open_timeout", 10)
        kw.setdefault("close_timeout", 10)
        return connect(f"{self.url}{sep}user={user}", **kw)

    async def echo(self, ws, data):
        await ws.send(data)
        try:
            got = await ws.recv()
        except ConnectionClosed as e:
            raise CheckFailed(f"sent {describe(data)}, connection closed instead of echo: {e}")
        expect(type(got) is type(data), f"sent {describe(data)}, got {describe(got)}")
        expect(got == data, f"sent {describe(data)}, echo differs ({describe(got)})")

    # ---------------------------------------------------------------- checks

    async def check_handshake(self):
        async with self.connect() as ws:
            resp = ws.response
            expect(resp.status_code == 101, f"status {resp.status_code}")
            ext = resp.headers.get("Sec-WebSocket-Extensions")
            # websockets offers permessage-deflate by default; ringgate does not implement it and
            # must not accept it (RFC 6455 9.1: the server may decline an offered extension).
            expect(ext is None, f"server accepted extension {ext!r}")
            expect(ws.subprotocol is None, f"unexpected subprotocol {ws.subprotocol!r}")
            await self.echo(ws, "hello")
        return "101, no extension negotiated (client offered permessage-deflate)"

    async def check_echo_sizes(self, kind, sizes):
        # 125/126/127 and 65535/65536 straddle the 7-bit, 16-bit and 64-bit length encodings.
        # Made before connecting: the event loop must stay free to answer the server's pings.
        msgs = [text_of_size(n, i) if kind == "text" else binary_of_size(n, i) for i, n in enumerate(sizes)]
        async with self.connect() as ws:
            for data in msgs:
                await self.echo(ws, data)
        return "sizes " + ",".join(str(n) for n in sizes)

    async def check_pipelined_order(self):
        # Many messages of mixed type and size written back to back before reading any echo.
        msgs = []
        for i in range(300):
            n = [0, 3, 125, 126, 1000, 70_000][i % 6]
            msgs.append(text_of_size(n, i) if i % 2 else binary_of_size(n, i))
        # Sent in windows of at most WINDOW bytes in flight: ringgate closes a client whose
        # queue passes max_client_backlog (1 MiB) with 1008 "client not reading", and an echo
        # burst larger than that can pass it whenever this process is not scheduled for a moment.
        async with self.connect(max_queue=None) as ws:
            i = 0
            while i < len(msgs):
                j, inflight = i, 0
                while j < len(msgs) and (j == i or inflight + size_of(msgs[j]) <= WINDOW):
                    await ws.send(msgs[j])
                    inflight += size_of(msgs[j])
                    j += 1
                for k in range(i, j):
                    got = await ws.recv()
                    expect(got == msgs[k], f"message {k}: sent {describe(msgs[k])}, got {describe(got)}")
                i = j
        return f"{len(msgs)} messages ({sum(map(size_of, msgs))} B) in order, <= {WINDOW} B in flight"

    async def check_fragmented(self):
        async with self.connect() as ws:
            # A list of fragments: one message sent as a first frame and continuation frames.
            parts = ["héllo ", "wörld ", "日本", "", "!"]
            await ws.send(parts)
            got = await ws.recv()
            expect(got == "".join(parts), f"text fragments: got {got!r}")

            bparts = [binary_of_size(n) for n in (1, 125, 0, 65536, 7)]
            await ws.send(bparts)
            got = await ws.recv()
            expect(got == b"".join(bparts), f"binary fragments differ ({describe(got)})")

            # An async iterator of fragments, with a UTF-8 character split across two fragments
            # is not possible through str, so split the encoded bytes and send them as text.
            s = "€uro 😀 " * 1000
            enc = s.encode()

            async def gen():
                for i in range(0, len(enc), 997):  # 997 splits multi-byte characters
                    yield enc[i : i + 997]
                    await asyncio.sleep(0)

            await ws.send(gen(), text=True)
            got = await ws.recv()
            expect(got == s, "text split mid-character across fragments differs")

            big = binary_of_size(500_000)
            await ws.send([big[i : i + 65536] for i in range(0, len(big), 65536)])
            got = await ws.recv()
            expect(got == big, f"fragmented {len(big)} B binary differs")
        return "lists of text/binary fragments, async iterator splitting UTF-8, 500 kB in 8 fragments"

    async def check_fragmented_at_limit(self):
        # A fragmented message whose total is exactly the limit is accepted and echoed whole.
        async with self.connect() as ws:
            big = binary_of_size(self.max_size)
            await ws.send([big[i : i + 100_000] for i in range(0, len(big), 100_000)])
            try:
                got = await ws.recv()
            except ConnectionClosed as e:
                raise CheckFailed(f"{len(big)} B in 11 fragments: closed instead of echo: {e}")
            expect(got == big, f"fragmented {len(big)} B binary differs")
        return f"{self.max_size} B in 11 fragments"

    async def check_ping(self):
        async with self.connect() as ws:
            latency = await asyncio.wait_for(await ws.ping(b"x"), 10)
            # Empty and maximal (125 bytes) control payloads.
            await asyncio.wait_for(await ws.ping(b""), 10)
            await asyncio.wait_for(await ws.ping(bytes(range(125))), 10)
            # A ping between data messages does not disturb them.
            await ws.send("before")
            pong = await ws.ping(b"mid")
            await ws.send(b"after")
            expect(await ws.recv() == "before", "message before ping")
            await asyncio.wait_for(pong, 10)
            expect(await ws.recv() == b"after", "message after ping")
        return f"pong for b'x' in {latency * 1000:.1f} ms; empty and 125-byte pings"

    async def check_ping_inside_fragmented(self):
        # RFC 6455 5.4: control frames may be injected in the middle of a fragmented message.
        # websockets lets a ping go out while an async-iterator message is being sent.
        async with self.connect() as ws:
            pongs = []

            async def gen():
                for i in range(4):
                    yield f"part{i}-"
                    pongs.append(await ws.ping(f"p{i}".encode()))

            await ws.send(gen())
            got = await ws.recv()
            expect(got == "part0-part1-part2-part3-", f"got {got!r}")
            for p in pongs:
                await asyncio.wait_for(p, 10)
        return "4 pings between fragments answered, message intact"

    async def check_close(self, code, reason):
        ws = await self.connect()
        await self.echo(ws, "before close")
        await ws.close(code, reason)
        rcvd = ws.protocol.close_rcvd
        expect(rcvd is not None, f"no close frame received (close_code {ws.close_code})")
        expect(rcvd.code == code, f"server answered close {rcvd.code} {rcvd.reason!r}, expected {code}")
        expect(ws.close_code == code, f"close_code {ws.close_code}")
        # The closing handshake completed: we sent first, the server answered.
        expect(ws.protocol.close_rcvd_then_sent is False, "server closed first")
        try:
            await ws.recv()
            raise CheckFailed("recv after close returned data")
        except ConnectionClosedOK:
            kind = "ConnectionClosedOK"
            expect(code in (1000, 1001), f"ConnectionClosedOK for {code}")
        except ConnectionClosedError as e:
            # websockets reports any code other than 1000/1001 as ConnectionClosedError even when
            # the closing handshake completed; the code is what matters.
            kind = "ConnectionClosedError"
            expect(code not in (1000, 1001), f"{e!r}")
        await asyncio.wait_for(ws.wait_closed(), 10)
        return f"sent {code} {reason!r}, got {rcvd.code} {rcvd.reason!r}, recv raises {kind}"

    async def check_too_large(self, kind, fragmented=False):
        n = self.max_size + 1
        data = text_of_size(n) if kind == "text" else binary_of_size(n)
        # Not `async with`: its close() on exit can hit a race in websockets 17.4 and CPython's
        # asyncio when the server closes while part of our message is still in the transport's
        # write buffer (close() calls transport.abort() after the write path already reported the
        # connection lost: AttributeError: 'NoneType' object has no attribute 'call_soon').
        # Waiting for the closing handshake and the TCP close is all that is needed here.
        ws = await self.connect()
        try:
            return await self._too_large(ws, kind, data, n, fragmented)
        finally:
            await asyncio.wait_for(ws.wait_closed(), 15)

    async def _too_large(self, ws, kind, data, n, fragmented):
        await self.echo(ws, "ok")
        if fragmented:
            enc = data.encode() if kind == "text" else data
            await ws.send([enc[i : i + 65536] for i in range(0, len(enc), 65536)], text=kind == "text")
        else:
            await ws.send(data)
        try:
            got = await asyncio.wait_for(ws.recv(), 15)
            raise CheckFailed(f"got an echo ({describe(got)}) of an over-limit message")
        except ConnectionClosed as e:
            rcvd = e.rcvd
        expect(rcvd is not None, "no close frame from server")
        expect(rcvd.code == 1009, f"server closed with {rcvd.code} {rcvd.reason!r}")
        how = "fragmented " if fragmented else ""
        return f"{n} B {how}{kind} -> close {rcvd.code} {rcvd.reason!r}"

    async def check_invalid_utf8(self):
        # RFC 6455 8.1: a text message that is not valid UTF-8 fails the connection with 1007.
        async with self.connect() as ws:
            await self.echo(ws, "ok")
            await ws.send(b"valid then \xff\xfe invalid", text=True)
            try:
                got = await asyncio.wait_for(ws.recv(), 15)
                raise CheckFailed(f"got an echo ({describe(got)}) of invalid UTF-8")
            except ConnectionClosed as e:
                expect(e.rcvd is not None, f"no close frame from server: {e!r}")
                expect(e.rcvd.code == 1007, f"server closed with {e.rcvd.code} {e.rcvd.reason!r}")
                return f"close {e.rcvd.code} {e.rcvd.reason!r}"

    async def check_kick(self):
        async with self.connect() as ws:
            await self.echo(ws, "hi")
            await ws.send("kick")
            try:
                got = await asyncio.wait_for(ws.recv(), 15)
                raise CheckFailed(f"got a message ({describe(got)}) instead of close 4000")
            except ConnectionClosed as e:
                expect(e.rcvd is not None, f"no close frame from server: {e!r}")
                expect(e.rcvd.code == 4000, f"close {e.rcvd.code} {e.rcvd.reason!r}")
                expect(e.rcvd.reason == "kicked", f"reason {e.rcvd.reason!r}")
                # We answered the server's close; the handshake completed cleanly.
                expect(e.sent is not None and e.sent.code == 4000, f"client's answer {e.sent}")
                expect(e.rcvd_then_sent is True, "close order")
                rcvd = e.rcvd
            await asyncio.wait_for(ws.wait_closed(), 10)
        return f"close {rcvd.code} {rcvd.reason!r}, answered with {rcvd.code}"

    async def check_keepalive(self):
        # The server pings every ping_interval and closes a session that sent nothing, not even a
        # pong, for idle_timeout. websockets answers pings by itself; its own pings are turned off
        # here, so only the server's pings and our automatic pongs keep the connection alive.
        pings = []

        class Count(logging.Handler):
            def emit(self, record):
                if record.getMessage().startswith("< PING"):
                    pings.append(time.monotonic())

        logger = logging.getLogger("interop.keepalive")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(Count())
        idle = self.idle_timeout + 2
        async with self.connect(ping_interval=None, logger=logger) as ws:
            await self.echo(ws, "before idling")
            try:
                got = await asyncio.wait_for(ws.recv(), idle)
                raise CheckFailed(f"unexpected message while idle: {describe(got)}")
            except asyncio.TimeoutError:
                pass
            except ConnectionClosed as e:
                raise CheckFailed(f"closed while idle, answering {len(pings)} server pings: {e}")
            await self.echo(ws, "after idling")
        expect(len(pings) >= 2, f"only {len(pings)} server pings in {idle}s")
        return f"idle {idle}s > idle timeout {self.idle_timeout}s; {len(pings)} server pings answered"

    async def check_concurrent(self):
        # Several clients at once, with users that hash to different cores.
        async def one(i):
            async with self.connect(user=f"conc-{i}") as ws:
                for j in range(20):
                    msg = f"{i}:{j}:" + "x" * (j * 50)
                    await self.echo(ws, msg)
                    await self.echo(ws, msg.encode())

        await asyncio.gather(*(one(i) for i in range(16)))
        return "16 clients x 40 echoes"

    async def run(self):
        small = [0, 1, 125, 126, 127, 65535, 65536, 65537, 200_000, self.max_size - 1000]
        checks = [
            ("handshake", self.check_handshake()),
            ("text echo sizes", self.check_echo_sizes("text", small)),
            ("binary echo sizes", self.check_echo_sizes("binary", small)),
            ("text echo at the size limit", self.check_echo_sizes("text", [self.max_size])),
            ("binary echo at the size limit", self.check_echo_sizes("binary", [self.max_size])),
            ("pipelined mixed messages keep order", self.check_pipelined_order()),
            ("fragmented send", self.check_fragmented()),
            ("fragmented message at the size limit", self.check_fragmented_at_limit()),
            ("ping/pong", self.check_ping()),
            ("ping between fragments", self.check_ping_inside_fragmented()),
            ("close 1000", self.check_close(1000, "bye")),
            ("close 4001", self.check_close(4001, "custom")),
            ("too-large binary -> 1009", self.check_too_large("binary")),
            ("too-large text -> 1009", self.check_too_large("text")),
            ("too-large fragmented binary -> 1009", self.check_too_large("binary", fragmented=True)),
            ("invalid UTF-8 text -> 1007", self.check_invalid_utf8()),
            ("kick -> close 4000", self.check_kick()),
            ("concurrent clients", self.check_concurrent()),
        ]
        if self.idle_timeout:
            checks.append(("server pings keep an idle client alive", self.check_keepalive()))
        for name, coro in checks:
            t0 = time.monotonic()
            try:
                detail = await asyncio.wait_for(coro, CHECK_TIMEOUT)
                report(name, True, f"{detail}; {time.monotonic() - t0:.2f}s")
            except asyncio.TimeoutError:
                report(name, False, f"timed out after {CHECK_TIMEOUT:.0f}s")
            except CheckFailed as e:
                report(name, False, str(e))
            except Exception as e:  # an unexpected error is a failure, with its type
                report(name, False, f"{type(e).__name__}: {e}")
                traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--max-message-size", type=int, default=MiB)
    ap.add_argument("--idle-timeout", type=float, default=0,
                    help="the server's idle timeout (seconds); with a short --ping-interval on the "
                         "server, checks that its pings keep an idle client alive (0: skip)")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, websockets {websockets.__version__}", flush=True)
    asyncio.run(Suite(args.url, args.max_message_size, args.idle_timeout).run())
    passed = sum(1 for _, ok, _ in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
