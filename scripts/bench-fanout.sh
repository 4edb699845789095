#!/usr/bin/env bash
# Fan-out: one message to many clients. `ringgate-load fanout` (docs/loadtest.md) against ringgate
# (version-2 PUBLISH/BROADCAST, the harness being its game server), the Node `ws` peer and the
# Python `websockets` peer (bench/peers), in alternating rounds, each run on a freshly started
# server; a markdown table of the server's CPU per delivered message, delivered messages per second,
# delivery p99 (publish to receipt) and resident memory.
#
#   scripts/bench-fanout.sh                     ringgate, node, python
#   scripts/bench-fanout.sh node python         some targets (the peers alone need no version 2)
#   scripts/bench-fanout.sh ringgate ringgate-single
#                                               ringgate with batched sends (the default) against
#                                               ringgate sending one socket at a time
#                                               (`batched_sends = false`)
#
# Scenarios, 64-byte messages, FANOUT_CLIENTS clients (default 10000):
#   room-r20     one room of all the clients, 20 messages/s (ringgate: its members over both workers)
#   room-r100    the same at 100 messages/s
#   rooms100-r20 100 rooms of FANOUT_CLIENTS/100 members, 20 messages/s per room
#   bcast-r20    a broadcast to every client, 20/s (ringgate: one BROADCAST per link)
# Every member must receive every message of its room exactly once, in order; a message still owed
# when the drain ends counts as lost (a server that cannot keep up shows there and in the p99).
#
# Env: FANOUT_ROUNDS (default 2), FANOUT_SECONDS (publishing window per run, default 5),
#      FANOUT_DRAIN (seconds to wait for what is still owed, default 2), FANOUT_CLIENTS (default
#      10000), FANOUT_COALESCE_US (the harness's --coalesce-us, default 200: it halves the harness's
#      CPU per message when a server sends to its clients one by one, and adds at most 0.2 ms to
#      every target's latency alike), BENCH_OUT (default a new /tmp/ringgate-bench-fanout.XXXXXX).
#      The defaults take about 10 minutes on the 2-core machine, most of it the peers' setup of
#      10,000 connections and their backlog. Builds ringgate and the harness (release; CARGO_TARGET_DIR
#      is honoured), runs `npm ci` for the Node peer and pip-installs websockets 17.4 if missing.
#      Round r runs the targets in a rotated order (ringgate node python, node python ringgate, ...).
#      CPU is utime+stime of the server's process over the window (/proc/PID/stat), divided by the
#      messages delivered in it; RSS is its VmRSS at the end of the window. Loopback only; every run
#      is bounded (window, drain and close of the harness, and `timeout` around it). Needs no root,
#      and raises no limit: 10,000 clients and the links fit the 20000 open files of one process.
# Exit status: 0 when every run completed, 1 when a run failed (see its .txt in BENCH_OUT), 3 when
# ringgate refuses protocol version 2 (a build without the gateway side of fan-out).
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ROUNDS=$(positive FANOUT_ROUNDS "${FANOUT_ROUNDS:-2}")
SECS=$(positive FANOUT_SECONDS "${FANOUT_SECONDS:-5}")
DRAIN=$(positive FANOUT_DRAIN "${FANOUT_DRAIN:-2}")
COALESCE=${FANOUT_COALESCE_US:-200}
[[ $COALESCE =~ ^[0-9]+$ ]] || { echo "${0##*/}: FANOUT_COALESCE_US must be a whole number" >&2; exit 2; }
CLIENTS=$(positive FANOUT_CLIENTS "${FANOUT_CLIENTS:-10000}")
OUT=${BENCH_OUT:-$(mktemp -d /tmp/ringgate-bench-fanout.XXXXXX)}
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
TAG=bench-fanout
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(ringgate node python)
for t in "${TARGETS[@]}"; do
  case $t in ringgate | ringgate-single | node | python) ;;
    *) echo "$TAG: unknown target $t (ringgate, ringgate-single, node, python)" >&2; exit 2 ;;
  esac
done
has() { printf '%s\n' "${TARGETS[@]}" | grep -qx "$1"; }

rooms100=$(( CLIENTS >= 100 ? 100 : CLIENTS ))
SCENARIOS=(room-r20 room-r100 rooms100-r20 bcast-r20)
declare -A ARGS=(
  [room-r20]="--rooms 1 --rate 20"
  [room-r100]="--rooms 1 --rate 100"
  [rooms100-r20]="--rooms $rooms100 --rate 20"
  [bcast-r20]="--rooms $rooms100 --broadcast --rate 20"
)

echo "$TAG: building (release)"
cargo build --release --quiet -p ringgate -p ringgate-load
RG=$(release_dir "$root")/ringgate
LOAD=$(release_dir "$root")/ringgate-load
NODE_PEER=$root/bench/peers/node-ws
PY_PEER=$root/bench/peers/python-websockets/server.py
if has node && [ ! -f "$NODE_PEER/node_modules/ws/package.json" ]; then
  echo "$TAG: npm ci in bench/peers/node-ws"
  npm ci --prefix "$NODE_PEER" --no-audit --no-fund --quiet >"$OUT/npm.log" 2>&1
fi
if has python && ! python3 -c 'import websockets.asyncio.server' 2>/dev/null; then
  echo "$TAG: pip install websockets==17.4"
  python3 -m pip install --quiet 'websockets==17.4'
fi

SERVER_PID='' HARNESS_PID='' DRAIN_PID=''
cleanup() {
  local p
  for p in $HARNESS_PID $SERVER_PID $DRAIN_PID; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# Stops the server started last (SIGTERM: each one exits on it, ringgate after closing its
# sessions) and waits for it, at most 20 s: a peer still working through its backlog is killed.
stop_server() {
  local watchdog
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    { sleep 20; kill -KILL "$SERVER_PID" 2>/dev/null; } &
    watchdog=$!
    wait "$SERVER_PID" 2>/dev/null || true
    kill "$watchdog" 2>/dev/null || true
    wait "$watchdog" 2>/dev/null || true
  fi
  SERVER_PID=''
  exec 7<&-
}

# A peer on a free port: sets SERVER_PID and URL.
start_peer() { # node|python
  local fifo
  fifo=$(mktemp -u "$OUT/peer.XXXX"); mkfifo "$fifo"
  case $1 in
    node) node "$NODE_PEER/server.js" --port 0 >"$fifo" 2>>"$OUT/node.log" & ;;
    python) python3 "$PY_PEER" --port 0 >"$fifo" 2>>"$OUT/python.log" & ;;
  esac
  SERVER_PID=$!
  exec 7<>"$fifo"
  URL=$(first_line /dev/fd/7 | grep -o 'ws://[^ ]*') || URL=''
  rm -f "$fifo"  # the server has it open once it printed; the name is no longer needed
}

# Runs `ringgate-load fanout ARGS`: in peer mode against URL, or in ringgate mode with the harness
# listening as the game server first and a fresh `ringgate run --workers 2` started against it,
# whose URL the harness then reads on stdin. Report in $OUT/NAME.txt, JSON in $OUT/NAME.json.
run_fanout() { # target name args...
  local target=$1 name=$2; shift 2
  local limit=$(( SECS + DRAIN + 240 ))
  local common=(--clients "$CLIENTS" --size 64 --duration "$SECS" --drain "$DRAIN"
                --coalesce-us "$COALESCE" --close-timeout 2 --quiet --json "$OUT/$name.json")
  rm -f "$OUT/$name.json"
  echo "$TAG: $name"
  if [[ $target != ringgate* ]]; then
    start_peer "$target"
    if [ -z "$URL" ]; then
      echo "$TAG: $name: the $target peer did not start (see $OUT/$target.log)" >&2
      stop_server
      return
    fi
    timeout -k 10 "$limit" "$LOAD" fanout --peer --url "$URL" --pid "$SERVER_PID" "${common[@]}" "$@" \
      >"$OUT/$name.txt" 2>&1 || true
    stop_server
    return
  fi
  local hin hout line up rg_fifo
  hin=$(mktemp -u "$OUT/hin.XXXX"); hout=$(mktemp -u "$OUT/hout.XXXX"); rg_fifo=$(mktemp -u "$OUT/rg.XXXX")
  mkfifo "$hin" "$hout" "$rg_fifo"
  timeout -k 10 "$limit" "$LOAD" fanout --upstream-listen 127.0.0.1:0 --url - "${common[@]}" "$@" \
    <"$hin" >"$hout" 2>"$OUT/$name.err" &
  HARNESS_PID=$!
  exec 6>"$hin" 9<"$hout"
  rm -f "$hin" "$hout"
  if ! IFS= read -r -t 30 line <&9; then
    echo "$TAG: $name: the harness did not start (see $OUT/$name.err)" >&2
    exec 6>&- 9<&-
    wait "$HARNESS_PID" || true; HARNESS_PID=''
    return
  fi
  up=${line##* }
  # The rest of the harness's stdout (its report) goes to the file until it exits.
  cat <&9 >"$OUT/$name.txt" &
  DRAIN_PID=$!
  exec 9<&-
  local config=()
  [ "$target" = ringgate-single ] && config=(--config "$OUT/single.toml")
  "$RG" run "${config[@]}" --listen 127.0.0.1:0 --workers 2 --upstream "$up" --ping-interval 1h \
    --idle-timeout 2h >"$rg_fifo" 2>>"$OUT/ringgate.log" &
  SERVER_PID=$!
  exec 7<>"$rg_fifo"
  # ringgate's URL line, and its pid for the CPU and memory figures (it runs after the harness).
  line=$(first_line /dev/fd/7) || line=''
  rm -f "$rg_fifo"
  # In a subshell: a harness that is gone already must not take the script down with SIGPIPE.
  ( echo "$line pid=$SERVER_PID" >&6 ) 2>/dev/null || true
  exec 6>&-
  wait "$HARNESS_PID" || true
  HARNESS_PID=''
  wait "$DRAIN_PID" || true
  DRAIN_PID=''
  stop_server
}

echo "batched_sends = false" >"$OUT/single.toml"

# ringgate mode needs the gateway side of version 2: a short run first, so that a build without it
# stops the script at once with the reason instead of after every peer round.
if has ringgate; then
  run_fanout ringgate preflight-ringgate --rooms 2 --rate 20
  # The preflight is small: its own figures are not part of the table.
  why=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("failure") or "")' \
        "$OUT/preflight-ringgate.json" 2>/dev/null || echo "no report (see $OUT/preflight-ringgate.txt and .err)")
  if [ -n "$why" ]; then
    echo "$TAG: ringgate cannot run the fan-out scenarios: $why" >&2
    case $why in *"version 2"*) exit 3 ;; *) exit 1 ;; esac
  fi
fi

order() { # round: the targets rotated by round-1
  local n=${#TARGETS[@]} k
  for ((k = 0; k < n; k++)); do printf '%s ' "${TARGETS[$(( (k + $1 - 1) % n ))]}"; done
}

for r in $(seq "$ROUNDS"); do
  for s in "${SCENARIOS[@]}"; do
    for t in $(order "$r"); do
      # shellcheck disable=SC2086  # the scenario's arguments are words
      run_fanout "$t" "$t-$s.r$r" ${ARGS[$s]}
    done
  done
done

{
  echo "machine: $(nproc) CPUs, load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "rounds $ROUNDS, ${SECS} s of publishing per run, ${DRAIN} s of drain, $CLIENTS clients, 64-byte messages, harness --coalesce-us $COALESCE"
} >"$OUT/machine.txt"

python3 - "$OUT" "$ROUNDS" "${TARGETS[@]}" <<'PY' | tee "$OUT/summary.md"
import json, os, sys
from statistics import median
out, rounds, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
scenarios = [
    ("room-r20", "1 room of all, 20/s"),
    ("room-r100", "1 room of all, 100/s"),
    ("rooms100-r20", "100 rooms, 20/s each"),
    ("bcast-r20", "broadcast to all, 20/s"),
]
def load(t, s, r):
    try:
        with open(os.path.join(out, f"{t}-{s}.r{r}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def get(j, *path):
    try:
        for p in path:
            j = j[p]
        return j
    except (KeyError, TypeError, IndexError):
        return None
def figures(j):
    """The figures of one run; None where the run has none."""
    if j is None:
        return None
    owed = get(j, "fanout", "expected") or 0
    return {
        "cpu": get(j, "cpu", "target_us_per_op"),
        "rate": get(j, "window", "delivered_per_sec"),
        "p99": get(j, "latency_us", "p99"),
        "rss": get(j, "memory", "end_kib"),
        "owed": 100.0 * (get(j, "fanout", "delivered") or 0) / owed if owed else None,
        "errors": get(j, "errors_total"),
        "failure": get(j, "failure"),
    }
def med(vals):
    vals = [v for v in vals if v is not None]
    return median(vals) if vals else None
def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if unit == "ms":
        return f"{v / 1000:,.1f}"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
rows = [
    ("server CPU per delivered message (us)", "cpu", ""),
    ("delivered messages/s", "rate", ""),
    ("delivery p99, publish to receipt (ms)", "p99", "ms"),
    ("server VmRSS at the end of the window (KiB)", "rss", ""),
    ("delivered of owed by the end of the drain (%)", "owed", ""),
]
print("| scenario | figure (median of rounds) | " + " | ".join(targets) + " |")
print("|" + " --- |" * (2 + len(targets)))
for s, label in scenarios:
    runs = {t: [figures(load(t, s, r)) for r in range(1, rounds + 1)] for t in targets}
    for name, key, unit in rows:
        cells = [fmt(med([f[key] for f in runs[t] if f]), unit) for t in targets]
        print(f"| {label} | {name} | " + " | ".join(cells) + " |")
print()
print("Every run (CPU us per delivered message / delivered per s / p99 ms / errors):")
print()
print("| run | " + " | ".join(f"round {r}" for r in range(1, rounds + 1)) + " |")
print("|" + " --- |" * (1 + rounds))
for s, _ in scenarios:
    for t in targets:
        cells = []
        for r in range(1, rounds + 1):
            f = figures(load(t, s, r))
            if f is None:
                cells.append("no report")
            elif f["failure"]:
                cells.append("failed: " + f["failure"][:60])
            else:
                cells.append(f"{fmt(f['cpu'])} / {fmt(f['rate'])} / {fmt(f['p99'], 'ms')} / {f['errors']}")
        print(f"| {t} {s} | " + " | ".join(cells) + " |")
PY
cat "$OUT/machine.txt"
echo "$TAG: results in $OUT"
