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

cleanup() {
  if [ -n "$FLOOD_PID" ]; then kill "$FLOOD_PID" 2>/dev/null || true; fi
  kill_ringgate
}
trap cleanup EXIT

printf 'message_rate = { rate = 100, burst = 200 }\nrate_limit_action = "drop"\n' >"$OUT/flood.toml"

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
