#!/usr/bin/env bash
# Does a flooding client raise other clients' latency? 100 well-behaved clients echo 64-byte
# messages in an open loop (2000 a second in all) against ringgate with a per-session rate limit
# (`message_rate = { rate = 100, burst = 200 }`, `rate_limit_action = "drop"`), once alone and once
# beside a client that sends 1 KiB messages as fast as one Python process can, in alternating rounds
# of one run; a table of the honest clients' latency (p50, p99) with and without the flood.
#
#   scripts/bench-flood.sh
#
# Env: BENCH_FLOOD_ROUNDS (default 3), BENCH_FLOOD_SECONDS (measured window, default 8), BENCH_OUT
#      (default a new /tmp/ringgate-bench-flood.XXXXXX). Builds with cargo (CARGO_TARGET_DIR is
#      honoured). Every run gets a fresh `ringgate run --workers 2` in front of a fresh echo server;
#      the flooder's user lives on one core, with about half of the honest clients. Loopback only;
#      every run is bounded by its duration. Needs no root.
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ROUNDS=$(positive BENCH_FLOOD_ROUNDS "${BENCH_FLOOD_ROUNDS:-3}")
SECS=$(positive BENCH_FLOOD_SECONDS "${BENCH_FLOOD_SECONDS:-8}")
OUT=${BENCH_OUT:-$(mktemp -d /tmp/ringgate-bench-flood.XXXXXX)}
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
TAG=bench-flood

echo "$TAG: building (release)"
cargo build --release --quiet -p ringgate -p ringgate-load
RG=$(release_dir "$root")/ringgate
# shellcheck disable=SC2034  # read by load() in lib.sh
LOAD=$(release_dir "$root")/ringgate-load

FLOOD_PID=
cleanup() {
  if [ -n "$FLOOD_PID" ]; then kill "$FLOOD_PID" 2>/dev/null || true; fi
  kill_ringgate
}
trap cleanup EXIT

printf 'message_rate = { rate = 100, burst = 200 }\nrate_limit_action = "drop"\n' >"$OUT/flood.toml"

# One client sending 1 KiB masked binary frames as fast as it can for SECONDS, reading (and
# discarding) what comes back so that it is never closed for not reading; prints what it sent.
flood() { # url seconds
  python3 - "$1" "$2" <<'PY' >"$OUT/flooder.txt" 2>&1 &
import base64, os, socket, sys, threading, time, urllib.parse
url, secs = urllib.parse.urlparse(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection((url.hostname, url.port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET {url.path}?user=flooder HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(4096)
assert head.startswith(b"HTTP/1.1 101"), head[:80]
mask, payload = b"\x01\x02\x03\x04", bytes(1024)
frame = bytes([0x82, 0x80 | 126]) + (1024).to_bytes(2, "big") + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
burst = frame * 64
def drain():
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
threading.Thread(target=drain, daemon=True).start()
sent, end = 0, time.monotonic() + secs
while time.monotonic() < end:
    s.sendall(burst)
    sent += 64
print(f"flooder sent {sent} messages in {secs:.0f} s")
PY
  FLOOD_PID=$!
}

for r in $(seq 1 "$ROUNDS"); do
  order=(alone flood)
  (( r % 2 == 0 )) && order=(flood alone)
  for mode in "${order[@]}"; do
    start_ringgate "$RG" "$OUT/flood.toml"
    if [ "$mode" = flood ]; then
      flood "$URL" $((SECS + 4))
    fi
    load "$mode.r$r" echo --conns 100 --size 64 --rate 2000 --duration "$SECS"
    if [ -n "$FLOOD_PID" ]; then
      wait "$FLOOD_PID" || true
      FLOOD_PID=
      cat "$OUT/flooder.txt" >"$OUT/flooder.r$r.txt"
    fi
    stop_ringgate
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def lat(mode, r):
    return json.load(open(f"{out}/{mode}.r{r}.json"))["latency_us"]
rows = []
for r in range(1, rounds + 1):
    a, f = lat("alone", r), lat("flood", r)
    sent = open(f"{out}/flooder.r{r}.txt").read().strip()
    rows.append((r, a["p50"], a["p99"], f["p50"], f["p99"], f["p99"] / a["p99"], sent))
print("| round | alone p50 (us) | alone p99 | with flood p50 | with flood p99 | p99 flood / alone | flooder |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for row in rows:
    print("| {} | {:,} | {:,} | {:,} | {:,} | {:.2f}x | {} |".format(*row))
print(f"\nMedian p99 ratio (flood / alone): {statistics.median(x[5] for x in rows):.2f}x")
PY
echo "$TAG: results in $OUT"
