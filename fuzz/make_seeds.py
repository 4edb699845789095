#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (small, hand-made, committed).

Run from anywhere: python3 fuzz/make_seeds.py. Frame-decoder and upstream seeds start with the
3 control bytes the targets expect (max size / 8, then two bytes seeding the read sizes).
Standard library only; the frames are built here from RFC 6455 and docs/protocol.md, not with
ringgate's encoders.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- handshake -------------------------------------------------------------------------------

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
STD = [
    "Host: game.example",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: " + KEY,
]


def request(line="GET /ws HTTP/1.1", headers=STD, eol="\r\n", after=b""):
    return (eol.join([line] + headers) + eol + eol).encode() + after


def without(prefix):
    return [h for h in STD if not h.startswith(prefix)]


hs = {
    "valid": request(),
    "valid_then_frame": request(after=bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])),
    "subprotocol_query": request(
        "GET /ws?user=alice%20b&room=3 HTTP/1.1",
        STD + ["Sec-WebSocket-Protocol: chat, game.v1 , game.v2", "Origin: https://example.com"],
    ),
    "lowercase_tokens_lf_only": request(
        "GET /ws HTTP/1.1",
        ["host: x", "upgrade: WebSocket, h2c", "connection: keep-alive, upgrade",
         "sec-websocket-version:13", "sec-websocket-key:  " + KEY + "  "],
        eol="\n",
    ),
    "wrong_path": request("GET /other HTTP/1.1"),
    "post": request("POST /ws HTTP/1.1"),
    "http10": request("GET /ws HTTP/1.0"),
    "no_upgrade": request(headers=without("Upgrade")),
    "no_key": request(headers=without("Sec-WebSocket-Key")),
    "bad_key": request(headers=without("Sec-WebSocket-Key") + ["Sec-WebSocket-Key: short=="]),
    "two_hosts": request(headers=STD + ["Host: b"]),
    "version_8": request(headers=without("Sec-WebSocket-Version") + ["Sec-WebSocket-Version: 8"]),
    "body": request(headers=STD + ["Content-Length: 5"], after=b"hello"),
    "partial": request()[:40],
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "huge_header": request(headers=STD + ["X-Pad: " + "a" * 600]),
}
for name, data in hs.items():
    write("handshake", name, data)


# --- frame_decoder ---------------------------------------------------------------------------

def mask_bytes(payload, mask):
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_frame(opcode, payload, fin=True, mask=(0x37, 0xFA, 0x21, 0x3D), rsv=0, masked=True, long16=False):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if masked else 0
    if n <= 125 and not long16:
        head = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        head = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + bytes(mask) + mask_bytes(payload, mask)


def ctl(max_div8, s0=0x12, s1=0x34):
    return bytes([max_div8, s0, s1])


EURO = "€".encode()  # 3 bytes: split across fragments below
fd = {
    "rfc_hello": ctl(255) + ws_frame(1, b"Hello"),
    "fragmented_text_with_ping": ctl(255)
    + ws_frame(1, b"Hel" + EURO[:1], fin=False)
    + ws_frame(9, b"ping")
    + ws_frame(0, EURO[1:] + b"lo", fin=False)
    + ws_frame(10, b"")
    + ws_frame(0, b"!", fin=True),
    "binary_256_len16": ctl(255, 1, 2) + ws_frame(2, bytes(range(256))),
    "binary_short_in_len16_form": ctl(255) + ws_frame(2, b"abc", long16=True),
    "binary_64bit_len": ctl(255) + bytes([0x82, 0xFF]) + struct.pack(">Q", 3) + bytes(4) + b"xyz",
    "close_with_reason": ctl(255) + ws_frame(8, struct.pack(">H", 1000) + b"bye"),
    "close_empty": ctl(255) + ws_frame(8, b""),
    "close_bad_code": ctl(255) + ws_frame(8, struct.pack(">H", 1005)),
    "close_one_byte": ctl(255) + ws_frame(8, b"\x03"),
    "invalid_utf8": ctl(255) + ws_frame(1, b"ok\xed\xa0\x80"),
    "truncated_utf8_end": ctl(255) + ws_frame(1, b"ab\xe2\x82"),
    "unmasked": ctl(255) + ws_frame(1, b"Hello", masked=False),
    "rsv1": ctl(255) + ws_frame(1, b"x", rsv=4),
    "reserved_opcode": ctl(255) + ws_frame(3, b"x"),
    "ping_126": ctl(255) + ws_frame(9, bytes(126)),
    "fragmented_ping": ctl(255) + ws_frame(9, b"p", fin=False),
    "unexpected_continuation": ctl(255) + ws_frame(0, b"x"),
    "expected_continuation": ctl(255) + ws_frame(1, b"a", fin=False) + ws_frame(1, b"b"),
    "too_large_small_max": ctl(2) + ws_frame(2, bytes(17)),
    "too_large_fragments": ctl(2) + ws_frame(2, bytes(10), fin=False) + ws_frame(0, bytes(10)),
    "huge_declared_len": ctl(255) + bytes([0x82, 0xFF, 0x7F] + [0xFF] * 7),
    "msb_len": ctl(255) + bytes([0x82, 0xFF, 0x80] + [0] * 7),
}
for name, data in fd.items():
    write("frame_decoder", name, data)


# --- upstream_decoder ------------------------------------------------------------------------

def up_frame(ty, body, session=0, flags=0, length=None):
    if length is None:
        length = 10 + len(body)
    return struct.pack(">IBBQ", length, ty, flags, session) + body


def lp8(b):
    return bytes([len(b)]) + b


def lp16(b):
    return struct.pack(">H", len(b)) + b


# The byte-by-byte example of docs/protocol.md: a HELLO offering versions 1 (`version`) to 2 (`flags`).
HELLO = bytes.fromhex("00000013 01 02 0000000000000000 0001 0000 0002 677731".replace(" ", ""))
HELLO_V1 = HELLO[:5] + b"\x00" + HELLO[6:]  # flags 0: version 1 alone, as version 1 sent it
HELLO_ACK = bytes.fromhex("00000010 02 00 0000000000000000 0001 6563686f".replace(" ", ""))
OPEN = bytes.fromhex(
    ("00000032 10 00 0000000000000007"
     "0005616c696365"
     "0f3132372e302e302e313a3430303030"
     "000e2f77733f757365723d616c696365"
     "00").replace(" ", "")
)
DATA = bytes.fromhex("0000000c 12 01 0000000000000007 6869".replace(" ", ""))
CLOSE = bytes.fromhex("0000000f 13 00 0000000000000007 0fa0627965".replace(" ", ""))
assert up_frame(1, struct.pack(">HHH", 1, 0, 2) + b"gw1", flags=2) == HELLO
assert up_frame(0x12, b"hi", session=7, flags=1) == DATA
assert len(OPEN) == 4 + 0x32

# The fan-out examples of docs/protocol.md (version 2).
HELLO_ACK_V2 = bytes.fromhex("0000000f 02 00 0000000000000000 0002 687562".replace(" ", ""))
JOIN = bytes.fromhex("00000010 20 02 0000000000000007 726f6f6d2d33".replace(" ", ""))
LEAVE = bytes.fromhex("00000010 21 00 0000000000000007 726f6f6d2d33".replace(" ", ""))
PUBLISH = bytes.fromhex("00000013 22 01 0000000000000007 06 726f6f6d2d33 6869".replace(" ", ""))
BROADCAST = bytes.fromhex("0000000c 23 01 0000000000000000 676f".replace(" ", ""))
MULTICAST = bytes.fromhex(
    "0000001d 24 00 0000000000000000 0002 0000000000000007 0000000000000009 2a".replace(" ", "")
)
assert up_frame(0x20, b"room-3", session=7, flags=2) == JOIN
assert up_frame(0x22, lp8(b"room-3") + b"hi", session=7, flags=1) == PUBLISH
assert up_frame(0x24, struct.pack(">HQQ", 2, 7, 9) + b"\x2a") == MULTICAST


def ids(*sessions):
    return struct.pack(">H", len(sessions)) + b"".join(struct.pack(">Q", s) for s in sessions)


OPEN_HEADERS = up_frame(
    0x10,
    lp16("ålice".encode()) + lp8(b"[2001:db8::1]:443") + lp16(b"/ws?user=alice&room=3") + bytes([2])
    + lp8(b"user-agent") + lp16(b"test/1.0") + lp8(b"x-raw") + lp16(b"\xff\x00"),
    session=1 << 48,
)

ud = {
    "doc_example_session": ctl(255) + HELLO + HELLO_ACK + OPEN + DATA + CLOSE,
    "hello": ctl(255) + HELLO,
    "open_with_headers": ctl(255, 7, 9) + OPEN_HEADERS,
    "ping_pong_goaway": ctl(255)
    + up_frame(4, b"12345678") + up_frame(5, b"12345678") + up_frame(6, struct.pack(">H", 1012) + b"restart"),
    "refuse_link_error": ctl(255)
    + up_frame(0x11, struct.pack(">H", 4003) + b"full", session=9) + up_frame(3, struct.pack(">H", 2) + b"bad"),
    "data_binary_flags": ctl(255) + up_frame(0x12, bytes(range(200)), session=2, flags=0xFE),
    "close_long_reason": ctl(255) + up_frame(0x13, struct.pack(">H", 4000) + "é".encode() * 70, session=3),
    "length_too_small": ctl(255) + struct.pack(">I", 9),
    "too_large": ctl(4) + DATA + up_frame(0x12, bytes(40), session=1),
    "unknown_type": ctl(255) + up_frame(0x07, b""),
    "zero_session_data": ctl(255) + up_frame(0x12, b"x"),
    "link_frame_with_session": ctl(255) + up_frame(4, b"12345678", session=5),
    "ping_short": ctl(255) + up_frame(4, b"1234"),
    "hello_truncated": ctl(255) + up_frame(1, b"\x00\x01\x00"),
    "bad_utf8_reason": ctl(255) + up_frame(0x13, b"\x0f\xa0\xc0\xaf", session=1),
    "open_trailing": ctl(255) + OPEN[:3] + bytes([0x33]) + OPEN[4:] + b"\x00",
    "open_truncated_header": ctl(255) + up_frame(0x10, b"\x00\x00\x00\x00\x00\x01", session=7),
    "hello_v1_only": ctl(255) + HELLO_V1,
    "fan_out_doc_examples": ctl(255, 3, 5)
    + HELLO + HELLO_ACK_V2 + JOIN + PUBLISH + BROADCAST + MULTICAST + LEAVE,
    "fan_out_edges": ctl(255, 9, 1)
    + up_frame(0x20, b"g" * 255, session=1, flags=1)
    + up_frame(0x22, lp8(b"g" * 255), session=0)
    + up_frame(0x23, b"", session=(1 << 64) - 1)
    + up_frame(0x24, ids(5, 5, (1 << 64) - 1) + bytes(range(100)), flags=1),
    "join_bad_policy": ctl(255) + up_frame(0x20, b"room", session=7, flags=3),
    "leave_empty_group": ctl(255) + up_frame(0x21, b"", session=7),
    "join_group_too_long": ctl(255) + up_frame(0x20, b"g" * 256, session=7),
    "publish_group_truncated": ctl(255) + up_frame(0x22, b"\x05abc"),
    "multicast_huge_count": ctl(255) + up_frame(0x24, struct.pack(">HQ", 0xFFFF, 7)),
    "multicast_zero_target": ctl(255) + up_frame(0x24, ids(7, 0) + b"x"),
    "multicast_with_session": ctl(255) + up_frame(0x24, ids(7), session=7),
    "moved_reserved": ctl(255) + up_frame(0x14, b"", session=7),
}
for name, data in ud.items():
    write("upstream_decoder", name, data)

# --- session -----------------------------------------------------------------------------------
# Byte 0: max message / 8; then steps of two bytes (step, argument): steps 0-3 feed the next
# `argument` bytes as client bytes, 4 ticks by argument % 64 s, 5 begins our close (1000 + argument),
# 6 the game server gone, 7 a write done (argument % 2 bytes left), 8 the peer gone, 9 the end.


def feed(data):
    out = b""
    while data:
        part, data = data[:255], data[255:]
        out += bytes([0, len(part)]) + part
    return out


def step(kind, arg=0):
    return bytes([kind, arg])


ss = {
    "echo_then_client_close": bytes([32]) + feed(ws_frame(1, b"hello") + ws_frame(2, bytes(100)))
    + feed(ws_frame(8, struct.pack(">H", 1000))) + step(7, 0) + step(9),
    "ping_then_idle": bytes([32]) + feed(ws_frame(9, b"p")) + step(4, 40) + step(4, 63) + step(4, 63) + step(7) + step(9),
    "server_close_then_timeout": bytes([32]) + feed(ws_frame(1, b"a")) + step(5, 1) + step(7, 0)
    + feed(ws_frame(1, b"late")) + step(4, 10) + step(9),
    "split_frame": bytes([255]) + feed(ws_frame(2, bytes(300))[:7]) + feed(ws_frame(2, bytes(300))[7:]) + step(9),
    "violation": bytes([32]) + feed(ws_frame(1, b"x", masked=False)) + step(8) + step(9),
    "upstream_gone_then_data": bytes([32]) + step(6) + feed(ws_frame(1, b"dropped")) + step(5, 11) + step(9),
}
for name, data in ss.items():
    write("session", name, data)

print("seeds:", {t: len(d) for t, d in (("handshake", hs), ("frame_decoder", fd), ("upstream_decoder", ud), ("session", ss))})
