#!/usr/bin/env bash
# Does a flooding client raise other clients' latency? 100 well-behaved clients echo 64-byte
# messages in an open loop (2000 a second in all), once alone and once beside a client that sends
# 1 KiB messages as fast as one Python process can, in alternating rounds of one run; a table of the
# honest clients' latency (p50, p99) with and without the flood.
#
#   scripts/bench-flood.sh              the flooder is held by a per-session rate limit
#                                       (`message_rate = { rate = 100, burst = 200 }`,
#                                       `rate_limit_action = "drop"`)
#   scripts/bench-flood.sh congested    no rate limit, and a game server slower than the flood
#                                       (`echo-upstream --read-rate`): only the link's congestion
#                                       rule holds the flooder back; the table also shows what the
#                                       flooder's link held mid-run
#
# Env: BENCH_FLOOD_ROUNDS (default 3), BENCH_FLOOD_SECONDS (measured window, default 8), BENCH_OUT
#      (default a new /tmp/ringgate-bench-flood.XXXXXX); for `congested`: BENCH_FLOOD_READ_RATE
#      (bytes a second the game server reads of each link, default 4000000), BENCH_FLOOD_RECV_BUFFER
#      (the game server's SO_RCVBUF per link, default 0: the kernel's, which grows as the server
#      reads). Builds with cargo (CARGO_TARGET_DIR is honoured). Every run gets a fresh `ringgate
#      run --workers 2` in front of a fresh echo server; the flooder's user lives on one core, with
#      about half of the honest clients. Loopback only; every run is bounded by its duration. Needs
#      no root.
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
CASE=${1:-rate-limit}
case $CASE in rate-limit | congested) ;; *) echo "${0##*/}: unknown case $CASE (rate-limit, congested)" >&2; exit 2 ;; esac
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

cleanup() {
  if [ -n "$FLOOD_PID" ]; then kill "$FLOOD_PID" 2>/dev/null || true; fi
  kill_ringgate
}
trap cleanup EXIT

DEPTH=()
if [ "$CASE" = congested ]; then
  READ_RATE=$(positive BENCH_FLOOD_READ_RATE "${BENCH_FLOOD_READ_RATE:-4000000}")
  RECV_BUFFER=${BENCH_FLOOD_RECV_BUFFER:-0}
  [[ $RECV_BUFFER =~ ^[0-9]+$ ]] || { echo "BENCH_FLOOD_RECV_BUFFER must be a number" >&2; exit 2; }
  # shellcheck disable=SC2034  # read by start_ringgate() in lib.sh
  ECHO_ARGS=(--read-rate "$READ_RATE" --recv-buffer "$RECV_BUFFER")
  # No rate limit: the link's congestion is all that holds the flooder back. The admin endpoint
  # shows what the links hold.
  printf 'admin_listen = "127.0.0.1:0"\n' >"$OUT/flood.toml"
  # Honest messages wait behind the flood: the open loop must not run out of depth meanwhile.
  DEPTH=(--depth 1000)
else
  printf 'message_rate = { rate = 100, burst = 200 }\nrate_limit_action = "drop"\n' >"$OUT/flood.toml"
fi

# The flooder's link as /stats shows it halfway through the window: its queue and whether it is
# paused, and the core's count of reads held back.
sample() { # admin-url name
  sleep $((SECS / 2))
  python3 - "$1" >"$OUT/$2.stats.txt" 2>&1 <<'PY' || true
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))
for core in s:
    for l in core["upstreams"]:
        print(f"core {core['core']}: link queued {l['queued_bytes']} B, paused {l['paused']}, "
              f"reads held back {core['counters'].get('paused', 0)}")
PY
}

for r in $(seq 1 "$ROUNDS"); do
  order=(alone flood)
  (( r % 2 == 0 )) && order=(flood alone)
  for mode in "${order[@]}"; do
    start_ringgate "$RG" "$OUT/flood.toml"
    if [ "$mode" = flood ]; then
      flood "$URL" $((SECS + 4))
    fi
    sampler=
    if [ "$CASE" = congested ]; then
      sample "$(first_line /dev/fd/8 | grep -o 'http://[^ ]*')" "$mode.r$r" &
      sampler=$!
    fi
    load "$mode.r$r" echo --conns 100 --size 64 --rate 2000 "${DEPTH[@]}" --duration "$SECS"
    if [ -n "$sampler" ]; then wait "$sampler" || true; fi
    if [ -n "$FLOOD_PID" ]; then
      wait "$FLOOD_PID" || true
      FLOOD_PID=
      cat "$OUT/flooder.txt" >"$OUT/flooder.r$r.txt"
    fi
    stop_ringgate
  done
done

python3 - "$OUT" "$ROUNDS" "$CASE" <<'PY' | tee "$OUT/summary.md"
import json, statistics, sys
out, rounds, case = sys.argv[1], int(sys.argv[2]), sys.argv[3]
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
if case == "congested":
    print("\nMid-run link state with the flooder:")
    for r in range(1, rounds + 1):
        print(f"- round {r}: " + "; ".join(open(f"{out}/flood.r{r}.stats.txt").read().split("\n")).strip("; "))
PY
echo "$TAG: results in $OUT"
