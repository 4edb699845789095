#!/usr/bin/env bash
# The standard load suite, run with the same harness, clients and machine against ringgate and its
# peers (../shared/peers: nginx as a WebSocket proxy, and the Go gorilla/websocket gateway), in one
# run, and a comparison table. Results and the raw JSON land in $BENCH_OUT.
#
#   scripts/bench.sh                  all targets, all scenarios (about 7 minutes)
#   scripts/bench.sh ringgate nginx   some targets
#   scripts/bench.sh ringgate ringgate-single
#                                     ringgate against itself with `batched_sends = false` (one
#                                     sendmsg per socket instead of one io_uring entry per flush)
#
# Env: BENCH_SECONDS (measured window per scenario, default 10), BENCH_ROUNDS (rounds of the 64-byte
#      scenarios, default 3), BENCH_OUT (default a new /tmp/ringgate-bench.XXXXXX), PEERS_DIR
#      (default <repo>/../shared/peers).
# Scenarios: echo 200 clients x 64 B at depth 1 and 8; echo 2000 clients x 1 KiB; 9000 idle clients
# (on a freshly started target); a handshake storm (64 workers connecting, upgrading, closing).
# Loopback only; every run is bounded by its duration. Needs no root.
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
PEERS_DIR=${PEERS_DIR:-$root/../shared/peers}
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench: BENCH_ROUNDS must be a positive number" >&2; exit 2; }
OUT=${BENCH_OUT:-$(mktemp -d /tmp/ringgate-bench.XXXXXX)}
mkdir -p "$OUT"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(ringgate nginx gogw)

TAG=bench
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
echo "bench: building (release)"
cargo build --release --quiet -p ringgate -p ringgate-load
RG=$(release_dir "$root")/ringgate
LOAD=$(release_dir "$root")/ringgate-load
if printf '%s\n' "${TARGETS[@]}" | grep -qv '^ringgate\(-single\)\?$'; then
  [ -x "$PEERS_DIR/setup.sh" ] || { echo "bench: no peers at $PEERS_DIR" >&2; exit 2; }
  echo "bench: setting up the peers (idempotent)"
  "$PEERS_DIR/setup.sh" >"$OUT/peers-setup.log" 2>&1
fi

cleanup() {
  kill_ringgate
  if [ -x "$PEERS_DIR/stop.sh" ]; then "$PEERS_DIR/stop.sh" all >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
echo "batched_sends = false" >"$OUT/single.toml"

start_target() { # name
  case $1 in
    ringgate) start_ringgate "$RG" ;;
    ringgate-single) start_ringgate "$RG" "$OUT/single.toml" ;;
    *)
      eval "$("$PEERS_DIR/start.sh" "$1")"
      PIDS=$PROXY_PIDS ;;
  esac
}

stop_target() { # name
  case $1 in
    ringgate | ringgate-single) stop_ringgate ;;
    *) "$PEERS_DIR/stop.sh" "$1" >/dev/null ;;
  esac
}

# The 64-byte scenarios, whose ratios sit closest to the targets, run in rounds with every target in
# turn: each round's ratios compare runs under a minute apart, and the table shows their median, so that
# one pass against a machine that drifted meanwhile does not decide a comparison.
for r in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    start_target "$t"
    load_echo64 "$t" "$r" "$SECS"
    stop_target "$t"
  done
done

for t in "${TARGETS[@]}"; do
  start_target "$t"
  load "$t-echo1k-2000" echo --conns 2000 --size 1024 --depth 1 --duration "$SECS"
  load "$t-handshake" handshake --workers 64 --duration "$SECS"
  stop_target "$t"
  # Idle memory on a freshly started process: allocators keep what earlier scenarios freed.
  start_target "$t"
  load "$t-idle9000" idle --conns 9000 --hold 3
  stop_target "$t"
done

python3 - "$OUT" "$ROUNDS" "${TARGETS[@]}" <<'PY' | tee "$OUT/summary.md"
import json, os, sys
from functools import lru_cache
from statistics import median
out, rounds, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
ROUNDED = ("echo64-d1", "echo64-d8")
def names(s):
    return [f"{s}.r{r}" for r in range(1, rounds + 1)] if s in ROUNDED else [s]
@lru_cache(maxsize=None)
def load(t, name):
    try:
        with open(os.path.join(out, f"{t}-{name}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def get1(t, name, *path):
    v = load(t, name)
    try:
        for p in path:
            v = v[p]
        return v
    except (KeyError, TypeError):
        return None
def get(t, s, *path):
    vals = [v for v in (get1(t, n, *path) for n in names(s)) if v is not None]
    return median(vals) if vals else None
def round_ratios(s, path, t):
    """ringgate over t for each run of scenario s (None where a figure is missing)."""
    pairs = [(get1("ringgate", n, *path), get1(t, n, *path)) for n in names(s)]
    return [None if a is None or b in (None, 0) else a / b for a, b in pairs]
def ratio(s, path, t):
    """The median of the paired ratios: one pair per round for the rounded scenarios."""
    known = [r for r in round_ratios(s, path, t) if r is not None]
    return median(known) if known else None
rows = [
    ("round trips/s, 200 x 64 B, depth 1", "echo64-d1", ("window", "round_trips_per_sec"), True),
    ("p99 latency (us), 200 x 64 B, depth 1", "echo64-d1", ("latency_us", "p99"), False),
    ("proxy CPU us per round trip, 200 x 64 B, depth 1", "echo64-d1", ("cpu", "target_us_per_op"), False),
    ("proxy CPU in the kernel, us per round trip, 64 B, depth 1", "echo64-d1", ("cpu", "target_kernel_us_per_op"), False),
    ("round trips/s, 200 x 64 B, depth 8", "echo64-d8", ("window", "round_trips_per_sec"), True),
    ("p99 latency (us), 200 x 64 B, depth 8", "echo64-d8", ("latency_us", "p99"), False),
    ("proxy CPU us per round trip, 200 x 64 B, depth 8", "echo64-d8", ("cpu", "target_us_per_op"), False),
    ("proxy CPU in the kernel, us per round trip, 64 B, depth 8", "echo64-d8", ("cpu", "target_kernel_us_per_op"), False),
    ("round trips/s, 2000 x 1 KiB", "echo1k-2000", ("window", "round_trips_per_sec"), True),
    ("p99 latency (us), 2000 x 1 KiB", "echo1k-2000", ("latency_us", "p99"), False),
    ("proxy CPU us per round trip, 2000 x 1 KiB", "echo1k-2000", ("cpu", "target_us_per_op"), False),
    ("proxy CPU in the kernel, us per round trip, 2000 x 1 KiB", "echo1k-2000", ("cpu", "target_kernel_us_per_op"), False),
    ("resident bytes per idle connection, 9000 idle", "idle9000", ("memory", "bytes_per_connection"), False),
    ("handshakes/s, 64 workers", "handshake", ("window", "connects_per_sec"), True),
    ("p99 handshake latency (us)", "handshake", ("handshake_latency_us", "p99"), False),
    ("errors (all scenarios)", None, None, False),
]
def fmt(v):
    if v is None: return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
head = "| scenario | " + " | ".join(targets)
others = [t for t in targets if t != "ringgate"]
if "ringgate" in targets and others:
    head += " | " + " | ".join(f"ringgate vs {t}" for t in others)
print(head + " |")
print("|" + " --- |" * (1 + len(targets) + (len(others) if "ringgate" in targets else 0)))
scen = ["echo64-d1", "echo64-d8", "echo1k-2000", "handshake", "idle9000"]
for label, s, path, higher_better in rows:
    if s is None:
        vals = [sum((get1(t, n, "errors_total") or 0) for x in scen for n in names(x)) for t in targets]
    else:
        vals = [get(t, s, *path) for t in targets]
    line = f"| {label} | " + " | ".join(fmt(v) for v in vals)
    if "ringgate" in targets and others:
        cells = [None if s is None else ratio(s, path, t) for t in others]
        line += " | " + " | ".join("" if c is None else f"{c:.2f}x" for c in cells)
    print(line + " |")
if "ringgate" in targets and others and rounds > 1:
    print()
    print(f"64-byte scenarios, round by round (the table above shows each figure's median over {rounds}"
          " rounds, and for ratios the median of the rounds' ratios):")
    print()
    print("| ratio | " + " | ".join(f"round {r}" for r in range(1, rounds + 1)) + " |")
    print("|" + " --- |" * (1 + rounds))
    for t in others:
        for s in ROUNDED:
            for what, path in (("round trips/s", ("window", "round_trips_per_sec")),
                               ("CPU per round trip", ("cpu", "target_us_per_op"))):
                cells = ["n/a" if r is None else f"{r:.3f}x" for r in round_ratios(s, path, t)]
                print(f"| {what}, {s}, ringgate vs {t} | " + " | ".join(cells) + " |")
PY
echo "bench: results in $OUT"
