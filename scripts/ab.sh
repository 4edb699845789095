#!/usr/bin/env bash
# A/B of two ringgate builds, for a change that must not move the figures: the same harness, clients
# and machine against binary A and binary B in alternating rounds, and a table of B over A.
#
#   scripts/ab.sh BINARY_A BINARY_B     e.g. scripts/ab.sh /tmp/ab/ringgate-before target/release/ringgate
#
# Env: AB_ROUNDS (rounds of the echo scenarios, default 5), AB_SECONDS (measured window per echo
#      scenario, default 8), AB_IDLE_ROUNDS (rounds of idle memory, default 3), AB_IDLE_CONNS (idle
#      connections, default 9000), AB_LOAD (the ringgate-load binary, default the release build's),
#      AB_OUT (default a new /tmp/ringgate-ab.XXXXXX).
# Scenarios: echo 200 clients x 64 B at depth 1 and at depth 8, as in bench.sh (`BINARY run --workers
# 2` in front of `BINARY echo-upstream --workers 1`, started for each round and binary); then
# scripts/idle-memory.py with AB_IDLE_CONNS connections (each run starts its own processes). The
# order alternates round by round (AB, BA, AB, ...), so that a machine drifting in one direction
# during a round weighs on both sides. Loopback only; every run is bounded. Needs no root.
set -euo pipefail
usage() { echo "usage: scripts/ab.sh BINARY_A BINARY_B (env: see the head of the script)" >&2; exit 2; }
[ $# -eq 2 ] || usage
declare -A BIN
for side in A B; do
  b=$1; shift
  [[ -f $b && -x $b ]] || { echo "ab: $side: $b is not an executable file" >&2; exit 2; }
  BIN[$side]=$(readlink -f "$b")
done
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ROUNDS=$(positive AB_ROUNDS "${AB_ROUNDS:-5}")
SECS=$(positive AB_SECONDS "${AB_SECONDS:-8}")
IDLE_ROUNDS=$(positive AB_IDLE_ROUNDS "${AB_IDLE_ROUNDS:-3}")
IDLE_CONNS=$(positive AB_IDLE_CONNS "${AB_IDLE_CONNS:-9000}")
TAG=ab
LOAD=${AB_LOAD:-$(release_dir "$root")/ringgate-load}
[ -x "$LOAD" ] || { echo "ab: no harness at $LOAD (cargo build --release -p ringgate-load, or set AB_LOAD)" >&2; exit 2; }
OUT=${AB_OUT:-$(mktemp -d /tmp/ringgate-ab.XXXXXX)}
mkdir -p "$OUT"

IDLE_PID=''
cleanup() {
  kill_ringgate
  # idle-memory.py stops its own processes on SIGTERM (timeout passes the signal on); they may take
  # ringgate's shutdown timeout (10 s), as the clients stay open.
  if [ -n "$IDLE_PID" ]; then kill "$IDLE_PID" 2>/dev/null || true; wait "$IDLE_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

# A then B in odd rounds, B then A in even ones.
order() { # round
  if (( $1 % 2 )); then echo A B; else echo B A; fi
}

{
  for side in A B; do
    echo "$side: ${BIN[$side]} (sha256 $(sha256sum <"${BIN[$side]}" | cut -c1-16))"
  done
  echo "harness: $LOAD"
  echo "machine: $(nproc) CPUs, load average at the start $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/binaries.txt"

for r in $(seq "$ROUNDS"); do
  for side in $(order "$r"); do
    start_ringgate "${BIN[$side]}"
    load_echo64 "$side" "$r" "$SECS"
    stop_ringgate
  done
done

for r in $(seq "$IDLE_ROUNDS"); do
  for side in $(order "$r"); do
    echo "ab: $side-idle.r$r"
    # In the background so that the trap can stop it; timeout bounds a run that hangs.
    timeout -k 60 900 python3 scripts/idle-memory.py --conns "$IDLE_CONNS" --binary "${BIN[$side]}" \
      >"$OUT/$side-idle.r$r.txt" 2>&1 &
    IDLE_PID=$!
    wait "$IDLE_PID" || echo "ab: $side-idle.r$r failed (see $OUT/$side-idle.r$r.txt)"
    IDLE_PID=''
  done
done

python3 - "$OUT" "$ROUNDS" "$IDLE_ROUNDS" "$IDLE_CONNS" <<'PY' | tee "$OUT/summary.md"
import json, os, re, sys
from statistics import median
out, rounds, idle_rounds, idle_conns = sys.argv[1], *map(int, sys.argv[2:])
def order(r):
    return "AB" if r % 2 else "BA"
def echo(side, s, r, path):
    try:
        with open(os.path.join(out, f"{side}-{s}.r{r}.json")) as f:
            v = json.load(f)
        for p in path:
            v = v[p]
        return v
    except (OSError, ValueError, KeyError, TypeError):
        return None
def idle(side, r):
    try:
        with open(os.path.join(out, f"{side}-idle.r{r}.txt")) as f:
            m = re.search(r"resident memory per idle connection: (\S+) bytes", f.read())
        return float(m.group(1)) if m else None
    except OSError:
        return None
def med(vals):
    known = [v for v in vals if v is not None]
    return median(known) if known else None
def ratio(a, b):
    return None if a is None or b is None or a == 0 else b / a
def fmt(v):
    if v is None: return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3f}"
def rx(v):
    return "n/a" if v is None else f"{v:.3f}x"
rows = []  # label, per-round values of A, of B
for s, d in (("echo64-d1", 1), ("echo64-d8", 8)):
    for label, path in (("round trips/s", ("window", "round_trips_per_sec")),
                        ("p99 latency (us)", ("latency_us", "p99")),
                        ("proxy CPU us per round trip", ("cpu", "target_us_per_op")),
                        ("proxy CPU in the kernel, us per round trip", ("cpu", "target_kernel_us_per_op")),
                        ("machine CPU busy in the window (cores)", ("cpu", "machine_cores"))):
        rows.append((f"{label}, 200 x 64 B, depth {d}",
                     *([echo(side, s, r, path) for r in range(1, rounds + 1)] for side in "AB")))
idle_a, idle_b = ([idle(side, r) for r in range(1, idle_rounds + 1)] for side in "AB")
rows.append((f"resident bytes per idle connection, {idle_conns} idle", idle_a, idle_b))
width = max(rounds, idle_rounds)
print(f"Rounds: {rounds} of the echo scenarios, {idle_rounds} of idle memory; orders "
      + ", ".join(order(r) for r in range(1, width + 1)) + ".")
print()
print("| scenario | A (median) | B (median) | B/A (median of rounds) | "
      + " | ".join(f"round {r}" for r in range(1, width + 1)) + " |")
print("|" + " --- |" * (4 + width))
summary = {}
for label, a, b in rows:
    ratios = [ratio(x, y) for x, y in zip(a, b)]
    summary[label] = med(ratios)
    cells = [rx(v) for v in ratios] + [""] * (width - len(ratios))
    print(f"| {label} | {fmt(med(a))} | {fmt(med(b))} | {rx(med(ratios))} | " + " | ".join(cells) + " |")
errors = [sum(echo(side, s, r, ("errors_total",)) or 0 for s in ("echo64-d1", "echo64-d8")
              for r in range(1, rounds + 1)) for side in "AB"]
print(f"| errors counted by the harness (all echo runs) | {errors[0]} | {errors[1]} | |" + " |" * width)
print()
print("Idle memory, bytes per connection (scripts/idle-memory.py, the proxy's VmRSS growth):")
print()
print("| round | order | A | B | B/A |")
print("| --- | --- | --- | --- | --- |")
for r, (a, b) in enumerate(zip(idle_a, idle_b), 1):
    print(f"| {r} | {order(r)} | {fmt(a)} | {fmt(b)} | {rx(ratio(a, b))} |")
print()
print("Targets (B/A as the median of the rounds' ratios):")
print()
for label, limit in (("proxy CPU us per round trip, 200 x 64 B, depth 1", 1.03),
                     ("proxy CPU us per round trip, 200 x 64 B, depth 8", 1.03),
                     (f"resident bytes per idle connection, {idle_conns} idle", 1.00)):
    v = summary[label]
    verdict = "n/a" if v is None else ("met" if v <= limit else "missed")
    print(f"- {label}: {rx(v)}, at most {limit:.2f}: {verdict}")
PY
echo "ab: results in $OUT"
