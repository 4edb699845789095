#!/usr/bin/env python3
"""A stand-in for ringgate's fan-out side (docs/protocol.md, version 2), for the harness's own
tests of `ringgate-load fanout` in ringgate mode until ringgate itself speaks version 2. Not a
gateway: no limits, no slow-member policies (every member gets every message), no reconnects.

    python3 stand_in_gateway.py --upstream HOST:PORT [--workers 2] [--max-version 2]

Opens one link per worker to the game server at --upstream, offering versions 1 to --max-version
in HELLO (flags = the highest), and prints "stand-in listening on ws://127.0.0.1:PORT/ws" once
every link is up, as ringgate prints its URL. Each client (`/ws?user=NAME&...`) goes to the link of
worker hash(user) % workers, which says OPEN; what the game server sends back (DATA, CLOSE, JOIN,
LEAVE, PUBLISH, BROADCAST, MULTICAST) reaches the clients of that link in link order. Exits on
SIGTERM, or when a link fails (with the reason on stderr).
"""

import argparse
import asyncio
import signal
import struct
import sys
import zlib
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve

HELLO, HELLO_ACK, LINK_ERROR, PING, PONG = 1, 2, 3, 4, 5
OPEN, REFUSE, DATA, CLOSE = 0x10, 0x11, 0x12, 0x13
JOIN, LEAVE, PUBLISH, BROADCAST, MULTICAST = 0x20, 0x21, 0x22, 0x23, 0x24


def frame(ty, session, body, flags=0):
    return struct.pack(">IBBQ", 10 + len(body), ty, flags, session) + body


class Link:
    def __init__(self, core, reader, writer):
        self.core = core
        self.reader = reader
        self.writer = writer
        self.sessions = {}  # id -> websocket
        self.groups = {}  # name -> set of ids
        self.next_id = 1

    def send(self, data):
        self.writer.write(data)

    def deliver(self, ids, flags, payload):
        message = payload.decode() if flags & 1 else payload
        broadcast([self.sessions[i] for i in ids if i in self.sessions], message)

    async def serve(self):
        while True:
            head = await self.reader.readexactly(14)
            length, ty, flags, session = struct.unpack(">IBBQ", head)
            body = await self.reader.readexactly(length - 10)
            if ty == DATA:
                self.deliver([session], flags, body)
            elif ty == JOIN:
                self.groups.setdefault(body, set()).add(session)
            elif ty == LEAVE:
                self.groups.get(body, set()).discard(session)
            elif ty == PUBLISH:
                name = body[1 : 1 + body[0]]
                members = self.groups.get(name, set()) - {session}
                self.deliver(sorted(members), flags, body[1 + body[0] :])
            elif ty == BROADCAST:
                self.deliver([i for i in self.sessions if i != session], flags, body)
            elif ty == MULTICAST:
                (count,) = struct.unpack(">H", body[:2])
                ids = struct.unpack(f">{count}Q", body[2 : 2 + 8 * count])
                self.deliver(ids, flags, body[2 + 8 * count :])
            elif ty == PING:
                self.send(frame(PONG, 0, body))
            elif ty in (CLOSE, REFUSE):
                ws = self.sessions.pop(session, None)
                if ws is not None:
                    (code,) = struct.unpack(">H", body[:2])
                    asyncio.ensure_future(ws.close(code, body[2:].decode()))
            elif ty == LINK_ERROR:
                raise RuntimeError(f"the game server sent LINK_ERROR {body[:2].hex()}: {body[2:]!r}")
            else:
                self.send(frame(LINK_ERROR, 0, struct.pack(">H", 2) + b"unknown type"))
                raise RuntimeError(f"unknown frame type {ty:#x} on core {self.core}")

    def leave(self, session):
        if self.sessions.pop(session, None) is not None:
            for members in self.groups.values():
                members.discard(session)
            self.send(frame(CLOSE, session, struct.pack(">H", 1000)))


async def open_link(host, port, core, workers, max_version):
    reader, writer = await asyncio.open_connection(host, port)
    instance = b"stand-in"
    # A version-1 sender says flags 0 (version alone).
    flags = max_version if max_version > 1 else 0
    writer.write(frame(HELLO, 0, struct.pack(">HHH", 1, core, workers) + instance, flags))
    head = await reader.readexactly(14)
    length, ty, _, _ = struct.unpack(">IBBQ", head)
    body = await reader.readexactly(length - 10)
    if ty != HELLO_ACK:
        raise RuntimeError(f"core {core}: answered type {ty:#x} to HELLO: {body!r}")
    (version,) = struct.unpack(">H", body[:2])
    if not 1 <= version <= max_version:
        raise RuntimeError(f"core {core}: HELLO_ACK {version}, outside 1 to {max_version}")
    return Link(core, reader, writer)


async def main(args):
    host, port = args.upstream.rsplit(":", 1)
    links = [
        await open_link(host, int(port), core, args.workers, args.max_version)
        for core in range(args.workers)
    ]

    async def client(ws):
        query = parse_qs(urlsplit(ws.request.path).query)
        user = query.get("user", [""])[0]
        link = links[zlib.crc32(user.encode()) % len(links)]
        session = (link.core << 48) | link.next_id
        link.next_id += 1
        link.sessions[session] = ws
        addr = "127.0.0.1:0".encode()
        target = ws.request.path.encode()
        body = (
            struct.pack(">H", len(user.encode())) + user.encode()
            + bytes([len(addr)]) + addr
            + struct.pack(">H", len(target)) + target
            + b"\x00"
        )
        link.send(frame(OPEN, session, body))
        try:
            async for message in ws:
                text = isinstance(message, str)
                payload = message.encode() if text else message
                link.send(frame(DATA, session, payload, 1 if text else 0))
        finally:
            link.leave(session)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    async with serve(client, "127.0.0.1", 0, compression=None, backlog=1024) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"stand-in listening on ws://127.0.0.1:{bound}/ws", flush=True)
        tasks = [asyncio.ensure_future(link.serve()) for link in links]
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            # A link the game server closed is the end of a run, not a failure.
            e = None if t is stop else t.exception()
            if e is not None and not isinstance(e, (asyncio.IncompleteReadError, ConnectionError)):
                print(f"stand-in: link failed: {e!r}", file=sys.stderr, flush=True)
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-version", type=int, default=2)
    try:
        asyncio.run(main(parser.parse_args()))
    except (RuntimeError, OSError, asyncio.IncompleteReadError) as e:
        print(f"stand-in: {e!r}", file=sys.stderr, flush=True)
        sys.exit(1)
