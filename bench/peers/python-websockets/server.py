#!/usr/bin/env python3
"""Fan-out comparison peer for `ringgate-load fanout --peer` (bench/peers/README.md): rooms as
sets and the websockets library's own fan-out, `websockets.asyncio.server.broadcast()`. Owns
nothing but its rooms; it must never drop, merge or reorder a member's messages (the harness checks
that each member receives every message of its room exactly once, in order).

    python3 server.py --port 0     prints "python-websockets listening on ws://127.0.0.1:PORT/"

A client connects with ?room=<n> and is told "joined" (text) once it is in the room. The publisher
connects with ?publish=1 and sends binary messages [room u32 BE][payload]; the payload goes to every
member of that room, or to every client for room 0xFFFFFFFF. Exits on SIGTERM or SIGINT.

Needs websockets 17.x (pip install 'websockets==17.4').
"""

import argparse
import asyncio
import signal
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve

ALL = 0xFFFFFFFF
rooms: dict[int, set] = {}
everyone: set = set()


def publish(message: bytes) -> None:
    if len(message) < 4:
        return
    room = int.from_bytes(message[:4], "big")
    members = everyone if room == ALL else rooms.get(room)
    if members:
        broadcast(members, message[4:])


async def handler(ws) -> None:
    query = parse_qs(urlsplit(ws.request.path).query)
    if query.get("publish") == ["1"]:
        async for message in ws:
            if isinstance(message, bytes):
                publish(message)
        return
    try:
        room = int(query.get("room", [""])[0])
    except ValueError:
        room = -1
    if not 0 <= room < ALL:
        await ws.close(1008, "room=<number> expected")
        return
    members = rooms.setdefault(room, set())
    members.add(ws)
    everyone.add(ws)
    try:
        await ws.send("joined")
        # Members only listen; whatever they send is read and ignored until they leave.
        async for _ in ws:
            pass
    finally:
        members.discard(ws)
        everyone.discard(ws)
        if not members and rooms.get(room) is members:
            del rooms[room]


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    # Compression off: the harness measures the cost of delivering messages, not of deflating them.
    # A listen backlog for thousands of clients arriving at once (asyncio's default is 100, Node's
    # 511): with the default, connects beyond it wait for a SYN retransmit, a second or more.
    async with serve(
        handler, "127.0.0.1", port, compression=None, max_size=16 << 20, backlog=1024
    ) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"python-websockets listening on ws://127.0.0.1:{bound}/", flush=True)
        await stop
        # Bounded: close() gives each connection its close timeout, then drops it.
        server.close()
        await asyncio.wait_for(server.wait_closed(), timeout=5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0 = a free port)")
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0 to 65535")
    try:
        asyncio.run(main(args.port))
    except TimeoutError:
        pass
