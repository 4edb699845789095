# Shared by bench.sh and ab.sh (sourced, not run): ringgate started in front of its echo server on
# free loopback ports, and the load harness run against it. The caller sets TAG (the prefix of its
# messages), OUT (where logs and results go) and LOAD (the ringgate-load binary).
# shellcheck shell=bash

# Where cargo puts release builds: CARGO_TARGET_DIR when set, else the repo's target/.
release_dir() { # repo root
  echo "${CARGO_TARGET_DIR:-$1/target}/release"
}

# Reads the first stdout line of a background process (bounded wait).
first_line() { # fifo
  local line
  IFS= read -r -t 30 line <"$1" || { echo "$TAG: no start-up line" >&2; return 1; }
  echo "$line"
}

# `BINARY echo-upstream` (one worker) and `BINARY run --workers 2` (with CONFIG-FILE, if given) in
# front of it. Sets URL, and
# PIDS to the proxy's process alone (the harness measures its CPU and memory, not the echo
# server's); both processes are in RG_PIDS for stop_ringgate and the caller's cleanup.
# ECHO_ARGS: extra flags for echo-upstream (as `--read-rate N`), empty unless the caller sets it.
RG_PIDS=()
URL='' PIDS=''
ECHO_ARGS=()
start_ringgate() { # binary [config-file]
  local up_fifo rg_fifo up pid config=()
  [ $# -ge 2 ] && config=(--config "$2")
  up_fifo=$(mktemp -u "$OUT/up.XXXX"); rg_fifo=$(mktemp -u "$OUT/rg.XXXX")
  mkfifo "$up_fifo" "$rg_fifo"
  "$1" echo-upstream --listen 127.0.0.1:0 --workers 1 "${ECHO_ARGS[@]}" >"$up_fifo" 2>>"$OUT/echo-upstream.log" &
  RG_PIDS+=($!)
  exec 7<>"$up_fifo"
  up=$(first_line /dev/fd/7 | awk '{print $NF}')
  "$1" run "${config[@]}" --listen 127.0.0.1:0 --workers 2 --upstream "$up" \
    --ping-interval 1h --idle-timeout 2h >"$rg_fifo" 2>>"$OUT/ringgate.log" &
  pid=$!; RG_PIDS+=("$pid")
  exec 8<>"$rg_fifo"
  URL=$(first_line /dev/fd/8 | grep -o 'ws://[^ ]*')
  PIDS=$pid
  rm -f "$up_fifo" "$rg_fifo"  # both ends are open; the names are no longer needed
}

kill_ringgate() {
  local p
  for p in "${RG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}

# Stops both (a graceful shutdown, bounded by ringgate's shutdown timeout) and waits for them.
stop_ringgate() {
  local p
  kill_ringgate
  for p in "${RG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  RG_PIDS=()
  exec 7<&- 8<&-
}

# One harness run against URL, measuring PIDS; its report and JSON go to $OUT/NAME.txt and .json.
load() { # name args...
  local name=$1; shift
  echo "$TAG: $name"
  "$LOAD" "$@" --url "$URL" --query 'user={i}' --pid "$PIDS" --quiet \
    --json "$OUT/$name.json" >"$OUT/$name.txt" 2>&1 \
    || echo "$TAG: $name counted errors or failed (see $OUT/$name.txt)"
}

# The 64-byte scenarios, the same in bench.sh and ab.sh: 200 clients echoing 64-byte messages at depth
# 1, then at depth 8; results in $OUT/LABEL-echo64-d1.rROUND.json and -d8.
load_echo64() { # label round seconds
  load "$1-echo64-d1.r$2" echo --conns 200 --size 64 --depth 1 --duration "$3"
  load "$1-echo64-d8.r$2" echo --conns 200 --size 64 --depth 8 --duration "$3"
}

# One client (user `flooder`) sending 1 KiB masked binary frames as fast as it can for SECONDS,
# reading (and discarding) what comes back so that it is never closed for not reading; prints what
# it sent to $OUT/flooder.txt. Sets FLOOD_PID.
FLOOD_PID=
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

# A positive whole number from the environment, or exit 2 naming the variable.
positive() { # name value
  [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "${0##*/}: $1 must be a positive number" >&2; exit 2; }
  echo "$2"
}
