#!/usr/bin/env python3
"""A complete game server behind ringgate, written from docs/protocol.md alone (version 1).

It echoes every message back to the player who sent it, kicks a player who sends `kick`, and
refuses users whose id starts with `refuse`. Python 3.11 standard library only.

    python3 examples/game_server.py --listen 127.0.0.1:9100
"""
import argparse
import asyncio
import struct

VERSION = 1
HEADER = struct.Struct(">IBBQ")  # length, type, flags, session: 14 bytes, big-endian
CODE = struct.Struct(">H")
MIN_LENGTH = 10  # `length` counts type + flags + session + body
MAX_FRAME = (16 << 20) + (64 << 10)  # our own limit on `length`, above ringgate's default

HELLO, HELLO_ACK, LINK_ERROR, PING, PONG, GOAWAY = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
OPEN, REFUSE, DATA, CLOSE = 0x10, 0x11, 0x12, 0x13
LINK_TYPES = {HELLO, HELLO_ACK, LINK_ERROR, PING, PONG, GOAWAY}
SESSION_TYPES = {OPEN, REFUSE, DATA, CLOSE}
FLAG_TEXT = 0x01  # DATA flags bit 0: a text message
UNSUPPORTED_VERSION, MALFORMED, BEFORE_HELLO, TOO_LARGE = 1, 2, 3, 4  # LINK_ERROR codes


class LinkError(Exception):
    """A reason to send LINK_ERROR and close the link."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def frame(ty: int, body: bytes = b"", session: int = 0, flags: int = 0) -> bytes:
    return HEADER.pack(MIN_LENGTH + len(body), ty, flags, session) + body


def coded(ty: int, code: int, text: str, session: int = 0) -> bytes:
    """LINK_ERROR, GOAWAY, REFUSE and CLOSE: a u16 code, then UTF-8 text."""
    return frame(ty, CODE.pack(code) + text.encode(), session)


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    # Check `length` before waiting for anything else: a bad one is fatal whatever follows.
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    if length < MIN_LENGTH:
        raise LinkError(MALFORMED, f"frame length {length} below 10")
    if length > MAX_FRAME:
        raise LinkError(TOO_LARGE, f"frame length {length} above {MAX_FRAME}")
    ty, flags, session = struct.unpack(">BBQ", await reader.readexactly(MIN_LENGTH))
    if ty not in LINK_TYPES | SESSION_TYPES:
        raise LinkError(MALFORMED, f"unknown frame type {ty:#04x}")
    if (ty in SESSION_TYPES) != (session != 0):
        raise LinkError(MALFORMED, f"frame type {ty:#04x} with session {session}")
    return ty, flags, session, await reader.readexactly(length - MIN_LENGTH)


def parse_open(body: bytes) -> dict:
    """The OPEN body: user, client address, target, then the forwarded headers."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(body):
            raise LinkError(MALFORMED, "truncated OPEN")
        pos += n
        return body[pos - n:pos]

    def prefixed(width: int) -> bytes:  # a 1- or 2-byte big-endian length, then that many bytes
        return take(int.from_bytes(take(width), "big"))

    try:
        user, addr, target = prefixed(2).decode(), prefixed(1).decode(), prefixed(2).decode()
        # Python evaluates a dict comprehension's key before its value, as the fields are laid out.
        headers = {prefixed(1).decode(): prefixed(2) for _ in range(take(1)[0])}
    except UnicodeDecodeError:
        raise LinkError(MALFORMED, "invalid UTF-8 in OPEN") from None
    if pos != len(body):
        raise LinkError(MALFORMED, "trailing bytes after OPEN")
    return {"user": user, "addr": addr, "target": target, "headers": headers}


async def serve_link(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Session ids are unique per ringgate instance and a link belongs to one instance, so keying
    # by session id within this link is enough.
    sessions: dict[int, dict] = {}
    try:
        # Link setup: the first frame must be HELLO; nothing else is sent before HELLO_ACK.
        ty, _, _, body = await read_frame(reader)
        if ty != HELLO:
            raise LinkError(BEFORE_HELLO, f"frame type {ty:#04x} before HELLO")
        if len(body) < 6:
            raise LinkError(MALFORMED, "truncated HELLO")
        version, _core, _workers = struct.unpack_from(">HHH", body)  # then the instance id
        if version != VERSION:
            raise LinkError(UNSUPPORTED_VERSION, f"version {version}; I speak {VERSION}")
        writer.write(frame(HELLO_ACK, CODE.pack(VERSION) + b"game_server.py"))

        while True:
            await writer.drain()  # backpressure: stop reading while ringgate is not reading
            ty, flags, session, body = await read_frame(reader)
            if ty == PING:
                if len(body) != 8:
                    raise LinkError(MALFORMED, "PING body is not 8 bytes")
                writer.write(frame(PONG, body))
            elif ty == OPEN:
                info = parse_open(body)
                if info["user"].startswith("refuse"):
                    writer.write(coded(REFUSE, 4003, "refused", session))
                else:
                    sessions[session] = info
            elif ty == DATA:
                if session not in sessions:
                    continue  # refused, or a CLOSE crossed it in flight: ignore
                if body == b"kick":
                    writer.write(coded(CLOSE, 4000, "kicked", session))
                    del sessions[session]  # nothing more is sent for it
                else:
                    writer.write(frame(DATA, body, session, flags & FLAG_TEXT))
            elif ty == CLOSE:
                sessions.pop(session, None)  # the player is offline
            elif ty == PONG:  # we never ping, but an answer is harmless
                pass
            elif ty == LINK_ERROR:
                return  # ringgate gave up on this link and closes it
            else:  # HELLO again, or a frame only a server sends
                raise LinkError(MALFORMED, f"unexpected frame type {ty:#04x}")
    except LinkError as err:
        writer.write(coded(LINK_ERROR, err.code, str(err)))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # ringgate closed the link; its sessions are gone with it
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description="Echo game server for ringgate")
    parser.add_argument("--listen", default="127.0.0.1:9100", help="HOST:PORT (port 0: any)")
    host, _, port = parser.parse_args().listen.rpartition(":")
    server = await asyncio.start_server(serve_link, host.strip("[]"), int(port))
    actual = server.sockets[0].getsockname()[1]
    print(f"game_server listening on {host}:{actual}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
