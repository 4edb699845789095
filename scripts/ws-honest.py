#!/usr/bin/env python3
"""Well-behaved clients written with the Python `websockets` library, not with our harness: N
clients (default 100), each sending a 64-byte binary message RATE times a second (default 20) in
an open loop and timing its echo; prints the round trips' p50 and p99 in microseconds.

    python3 scripts/ws-honest.py ws://127.0.0.1:PORT/ws SECONDS [N] [RATE]

A cross-check of scripts/bench-flood.sh congested's figures with a load generator we did not write.
Bounded by SECONDS plus 10 s for the last echoes.
"""
import asyncio
import struct
import sys
import time

import websockets


async def client(url, i, secs, rate, out):
    async with websockets.connect(f"{url}?user=h{i}", max_queue=None) as ws:
        sent = {}

        async def reader():
            async for m in ws:
                (seq,) = struct.unpack_from(">Q", m)
                t = sent.pop(seq, None)
                if t is not None:
                    out.append((time.monotonic() - t) * 1e6)

        task = asyncio.create_task(reader())
        start = time.monotonic() + i / (rate * 100.0)
        for seq in range(int(secs * rate)):
            due = start + seq / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            # Timed from when it was due, so a late send counts against latency.
            sent[seq] = due
            await ws.send(struct.pack(">Q", seq) + bytes(56))
        deadline = time.monotonic() + 10
        while sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        return len(sent)


async def main():
    url, secs = sys.argv[1], float(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
    out = []
    lost = sum(await asyncio.gather(*(client(url, i, secs, rate, out) for i in range(n))))
    out.sort()
    if not out:
        print("no round trips")
        return 1
    p = lambda q: int(out[min(len(out) - 1, int(q * len(out)))])
    print(f"websockets clients: {len(out)} round trips, p50 {p(0.5)} us, p99 {p(0.99)} us, "
          f"{lost} unanswered")
    return 0


sys.exit(asyncio.run(main()))
