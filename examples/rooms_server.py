#!/usr/bin/env python3
"""Chat rooms behind ringgate: a version-2 game server written from docs/protocol.md alone.

Version 2 adds fan-out: ringgate keeps groups of sessions (rooms, here) and turns one frame from
the server into a message for each member. Groups are kept per link, and ringgate opens one link
per worker core, so one room's members may be spread over several links. This server remembers,
per link, who is in which room: that tells it on which links to send a room's message, once per
link. Players type text commands:

    join <room>          join a room (answered `joined <room>`)
    leave <room>         leave it (answered `left <room>`)
    say <room> <text>    `<user>@<room>: <text>` to every member of the room, the sender included
    all <text>           `<user>@all: <text>` to every session
    who <room>           the room's users, sorted, comma-separated (empty if nobody is there)
    dm <user> <text>     `<from> -> <user>: <text>` to every session of that user

Anything else, binary messages included, is echoed. Python 3.11 standard library only.

    python3 examples/rooms_server.py --listen 127.0.0.1:9100
"""
import argparse
import asyncio
import signal
import struct
import sys

VERSION = 2  # the only version this server speaks: without fan-out there are no rooms
HEADER = struct.Struct(">IBBQ")  # length, type, flags, session: 14 bytes, big-endian
CODE = struct.Struct(">H")
MIN_LENGTH = 10  # `length` counts type + flags + session + body
MAX_FRAME = (16 << 20) + (64 << 10)  # our own limit on `length`, above ringgate's default

HELLO, HELLO_ACK, LINK_ERROR, PING, PONG, GOAWAY = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
OPEN, REFUSE, DATA, CLOSE = 0x10, 0x11, 0x12, 0x13
JOIN, LEAVE, PUBLISH, BROADCAST, MULTICAST = 0x20, 0x21, 0x22, 0x23, 0x24  # version 2
LINK_TYPES = {HELLO, LINK_ERROR, PING, PONG}  # link frames ringgate sends (session 0)
SESSION_TYPES = {OPEN, DATA, CLOSE}  # session frames ringgate sends (session != 0)
# The other types only go from a server to ringgate: receiving one is a protocol error.
FLAG_TEXT = 0x01  # DATA, PUBLISH, BROADCAST, MULTICAST flags bit 0: a text message
POLICY_CLOSE = 0  # JOIN flags: a member too slow for the room's messages is closed with 1008
UNSUPPORTED_VERSION, MALFORMED, BEFORE_HELLO, TOO_LARGE, INTERNAL = 1, 2, 3, 4, 5  # LINK_ERROR


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
        raise LinkError(MALFORMED, f"unexpected frame type {ty:#04x}")
    if (ty in SESSION_TYPES) != (session != 0):
        raise LinkError(MALFORMED, f"frame type {ty:#04x} with session {session}")
    return ty, flags, session, await reader.readexactly(length - MIN_LENGTH)


def open_user(body: bytes) -> str:
    """The user of an OPEN body (u16 length + UTF-8), after checking the whole body's layout:
    client address (u8 length), target (u16 length), then the forwarded headers."""
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
        user, _addr, _target = prefixed(2).decode(), prefixed(1).decode(), prefixed(2).decode()
        for _ in range(take(1)[0]):  # headers: a name (u8 length), a raw value (u16 length)
            prefixed(1).decode(), prefixed(2)
    except UnicodeDecodeError:
        raise LinkError(MALFORMED, "invalid UTF-8 in OPEN") from None
    if pos != len(body):
        raise LinkError(MALFORMED, "trailing bytes after OPEN")
    return user


class Link:
    """One link from a ringgate worker: its sessions, and the rooms they are in on this link."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.users: dict[int, str] = {}  # session id -> user
        self.joined: dict[int, set[str]] = {}  # session id -> the rooms it joined
        self.rooms: dict[str, set[int]] = {}  # room -> its members on this link

    def send(self, ty: int, body: bytes = b"", session: int = 0, flags: int = 0) -> None:
        self.writer.write(frame(ty, body, session, flags))

    def text(self, session: int, text: str) -> None:
        self.send(DATA, text.encode(), session, FLAG_TEXT)

    def join(self, session: int, room: str) -> None:
        self.send(JOIN, room.encode(), session, POLICY_CLOSE)  # the body is the group name
        self.rooms.setdefault(room, set()).add(session)
        self.joined[session].add(room)

    def leave(self, session: int, room: str) -> None:
        self.send(LEAVE, room.encode(), session)
        self.forget_member(session, room)

    def forget_member(self, session: int, room: str) -> None:
        self.joined[session].discard(room)
        members = self.rooms.get(room, set())
        members.discard(session)
        if not members:  # like ringgate's group, the room is gone with its last member
            self.rooms.pop(room, None)

    def forget(self, session: int) -> None:
        """A closed session: ringgate has already taken it out of its groups (no LEAVE)."""
        for room in list(self.joined.get(session, ())):
            self.forget_member(session, room)
        self.joined.pop(session, None)
        self.users.pop(session, None)


# Every link that agreed on version 2, whichever worker opened it. A message for other links is
# written to them without waiting (only a link's own reader waits for its writer to drain): a real
# server would bound what it buffers for a link that ringgate stops reading.
LINKS: set[Link] = set()


def publish(room: str, message: str) -> None:
    """One PUBLISH per link where the room has members; session 0 = leave nobody out."""
    group = room.encode()
    for link in LINKS:
        if room in link.rooms:
            link.send(PUBLISH, bytes([len(group)]) + group + message.encode(), 0, FLAG_TEXT)


def direct(user: str, message: str) -> bool:
    """MULTICAST to every session of `user`, on each link where it has some. False if none."""
    found = False
    for link in LINKS:
        ids = [s for s, u in link.users.items() if u == user]
        for i in range(0, len(ids), 0xFFFF):  # a MULTICAST lists at most 65535 sessions
            chunk = ids[i:i + 0xFFFF]
            body = CODE.pack(len(chunk)) + b"".join(s.to_bytes(8, "big") for s in chunk)
            link.send(MULTICAST, body + message.encode(), 0, FLAG_TEXT)
            found = True
    return found


def command(link: Link, session: int, text: str) -> str | None:
    """Runs a chat command of `session`; returns the answer to send it (None for none)."""
    verb, _, rest = text.partition(" ")
    word, space, tail = rest.partition(" ")  # a room or user name, then the text
    me = link.users[session]
    if verb in ("join", "leave", "say", "who") and word:
        if len(word.encode()) > 255:  # a group name is 1 to 255 bytes, else ringgate fails the link
            return "error: a room name is 1 to 255 bytes"
        if verb == "join" and not space:
            link.join(session, word)
            return f"joined {word}"
        if verb == "leave" and not space:
            link.leave(session, word)
            return f"left {word}"
        if verb == "say" and space:
            publish(word, f"{me}@{word}: {tail}")  # the sender too, if a member
            return None
        if verb == "who" and not space:
            users = {other.users[s] for other in LINKS for s in other.rooms.get(word, ())}
            return ",".join(sorted(users))
    if verb == "all" and rest:
        for other in LINKS:  # BROADCAST: every session of the link; session 0 = leave none out
            other.send(BROADCAST, f"{me}@all: {rest}".encode(), 0, FLAG_TEXT)
        return None
    if verb == "dm" and word and space:
        return None if direct(word, f"{me} -> {word}: {tail}") else f"no user {word}"
    return text  # not a command: echo


async def serve_link(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Session ids are unique per ringgate instance and a link belongs to one instance, so keying
    # by session id within this link is enough.
    link = Link(writer)
    try:
        # Link setup: the first frame must be HELLO; nothing else is sent before HELLO_ACK.
        ty, flags, _, body = await read_frame(reader)
        if ty != HELLO:
            raise LinkError(BEFORE_HELLO, f"frame type {ty:#04x} before HELLO")
        if len(body) < 6:
            raise LinkError(MALFORMED, "truncated HELLO")
        lowest, _core, _workers = struct.unpack_from(">HHH", body)
        body[6:].decode()  # the instance id: checked, not needed here
        highest = max(lowest, flags)  # the flags byte offers up to this version (0: `lowest` only)
        if not lowest <= VERSION <= highest:
            raise LinkError(UNSUPPORTED_VERSION, "version 2 required")
        writer.write(frame(HELLO_ACK, CODE.pack(VERSION) + b"rooms_server.py"))
        LINKS.add(link)  # from now on, other links' messages may be sent on this one

        while True:
            await writer.drain()  # backpressure: stop reading while ringgate is not reading
            ty, flags, session, body = await read_frame(reader)
            if ty == PING:
                if len(body) != 8:
                    raise LinkError(MALFORMED, "PING body is not 8 bytes")
                link.send(PONG, body)
            elif ty == OPEN:
                link.users[session] = open_user(body)
                link.joined[session] = set()
            elif ty == DATA:
                if session not in link.users:
                    continue  # a CLOSE crossed it in flight: ignore
                if not flags & FLAG_TEXT:
                    link.send(DATA, body, session)  # binary: echoed
                    continue
                answer = command(link, session, body.decode())  # ringgate checked the UTF-8
                if answer is not None:
                    link.text(session, answer)
            elif ty == CLOSE:
                if len(body) < 2:
                    raise LinkError(MALFORMED, "truncated CLOSE")
                link.forget(session)  # the player is offline: out of every room
            elif ty == PONG:  # we never ping, but an answer is harmless
                pass
            elif ty == LINK_ERROR:
                return  # ringgate gave up on this link and closes it
            else:  # HELLO again
                raise LinkError(MALFORMED, f"unexpected frame type {ty:#04x}")
    except LinkError as err:
        writer.write(coded(LINK_ERROR, err.code, str(err)))
    except UnicodeDecodeError:
        writer.write(coded(LINK_ERROR, MALFORMED, "invalid UTF-8"))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # ringgate closed the link; its sessions are gone with it
    except asyncio.CancelledError:
        pass  # the server is stopping (asyncio.run cancels what is left): end quietly
    except Exception as err:  # a bug of ours: fail this link, keep serving the others
        print(f"rooms_server: link failed: {err!r}", file=sys.stderr, flush=True)
        writer.write(coded(LINK_ERROR, INTERNAL, "internal error"))
    finally:
        LINKS.discard(link)  # its sessions and their rooms go with it
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description="Chat rooms game server for ringgate (v2)")
    parser.add_argument("--listen", default="127.0.0.1:9100", help="HOST:PORT (port 0: any)")
    host, _, port = parser.parse_args().listen.rpartition(":")
    server = await asyncio.start_server(serve_link, host.strip("[]"), int(port))
    actual = server.sockets[0].getsockname()[1]
    print(f"rooms_server listening on {host}:{actual}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    # Closing the links makes ringgate close their sessions (1011) and reconnect with backoff.
    for link in list(LINKS):
        link.writer.close()


if __name__ == "__main__":
    asyncio.run(main())
