#!/usr/bin/env bash
# Autobahn|Testsuite server conformance (wstest -m fuzzingclient) against ringgate, end to end:
#
#   1. builds the release binary (`cargo build --release`; a no-op when it is up to date),
#   2. sets up wstest with ../shared/autobahn/setup.sh (relative to the repository root),
#   3. starts `ringgate echo-upstream` and `ringgate run` in front of it, on free loopback ports,
#      with --max-message-size 16777216 (Autobahn 9.x sends 16 MiB messages),
#   4. waits until the proxy has announced its address and every core's link is up (GET /stats),
#   5. runs cases 1-10 (12.x/13.x, permessage-deflate, are excluded: ringgate does not offer it),
#   6. stops both processes (also on error or interrupt) and prints the summary.
#
# Usage: scripts/autobahn.sh [CASES [EXCLUDE]]     e.g. scripts/autobahn.sh '9.*'
#   CASES    comma-separated case patterns (default "*")
#   EXCLUDE  comma-separated case patterns (default "12.*,13.*")
#
# Env: AUTOBAHN_OUT       report folder (default: a new /tmp/ringgate-autobahn.XXXXXX); it also gets
#                         the logs of both processes (ringgate.log, echo-upstream.log)
#      AUTOBAHN_TIMEOUT   wall-clock limit for wstest in seconds (default 900)
#      BUILD_TIMEOUT      limit for cargo build in seconds (default 3600)
#      READY_TIMEOUT      limit for each start-up wait in seconds (default 60)
#      RINGGATE_BIN       use this binary and skip the build
#      RINGGATE_WORKERS   proxy worker threads (default 2)
#      RINGGATE_LOG       the processes' --log-level (default info)
#      AUTOBAHN_DIR       the wstest harness (default <repo>/../shared/autobahn)
#
# Exit: 0 = no case FAILED; 1 = some case FAILED, or ringgate crashed/panicked during the run;
#       2 = the run itself is broken (missing harness, build error, start-up timeout, incomplete report).
# Safe for CI: no stdin is read, every wait is bounded, everything listens on 127.0.0.1 only.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
[ $# -le 2 ] || { usage >&2; exit 2; }
CASES="${1:-*}"
EXCLUDE="${2-12.*,13.*}"

say() { echo "autobahn.sh: $*"; }
die() { echo "autobahn.sh: error: $*" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null)" || ROOT="$(cd "$HERE/.." && pwd)"
AB_DIR="${AUTOBAHN_DIR:-$ROOT/../shared/autobahn}"
if [ ! -x "$AB_DIR/setup.sh" ] || [ ! -x "$AB_DIR/run.sh" ]; then
  die "the Autobahn harness is missing: expected setup.sh and run.sh in $AB_DIR
  (the repository's sibling folder shared/autobahn; set AUTOBAHN_DIR to use another copy)"
fi
command -v python3 >/dev/null || die "python3 is required (wstest and the readiness checks use it)"

AUTOBAHN_TIMEOUT="${AUTOBAHN_TIMEOUT:-900}"
BUILD_TIMEOUT="${BUILD_TIMEOUT:-3600}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
WORKERS="${RINGGATE_WORKERS:-2}"
LOG_LEVEL="${RINGGATE_LOG:-info}"
MAX_MESSAGE=16777216
[ "${CI:-}" = true ] && export CARGO_TERM_COLOR=never
exec </dev/null

# ---- processes and cleanup ------------------------------------------------------------------------
PROXY_PID=""
ECHO_PID=""
BUILD_PID=""
SUITE_SID=""
OUT=""

# Stops one process: SIGTERM (graceful), then SIGKILL if it has not exited within $2 seconds.
stop() {
  local pid="$1" grace="$2" name="$3" i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) did not stop within ${grace}s, killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# Stops everything in the session $1 (wstest runs under `timeout`, which moves to its own process
# group, so the session is what holds all of it).
stop_session() {
  local sid="$1" i pids
  [ -n "$sid" ] || return 0
  for ((i = 0; i < 50; i++)); do
    pids="$(ps -s "$sid" -o pid= 2>/dev/null | tr -s ' \n' ' ' || true)"
    [ -n "${pids// /}" ] || break
    # shellcheck disable=SC2086
    kill -s "$([ "$i" -lt 30 ] && echo TERM || echo KILL)" $pids 2>/dev/null || true
    sleep 0.1
  done
  wait "$sid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -z "$BUILD_PID" ] || { kill -TERM "$BUILD_PID" 2>/dev/null; wait "$BUILD_PID" 2>/dev/null; }
  stop_session "$SUITE_SID"
  stop "$PROXY_PID" 10 ringgate
  stop "$ECHO_PID" 10 echo-upstream
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls until `$2` prints something on a line of file $1 (a sed -n expression), the process $3
# exits, or READY_TIMEOUT passes. Prints the match.
wait_line() {
  local file="$1" expr="$2" pid="$3" name="$4" deadline=$((SECONDS + READY_TIMEOUT)) got
  while :; do
    got="$(sed -n "$expr" "$file" 2>/dev/null | head -n 1)"
    [ -n "$got" ] && { printf '%s\n' "$got"; return 0; }
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "autobahn.sh: error: $name exited during start-up; its log:" >&2
      tail -n 30 "$OUT/$name.log" >&2 || true
      return 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || { echo "autobahn.sh: error: $name did not announce itself within ${READY_TIMEOUT}s" >&2; return 1; }
    sleep 0.1
  done
}

# GET /stats and prints "<cores> <links> <links up> <panics>", or fails.
stats() {
  python3 - "$1" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    cores = json.load(r)
links = [l for c in cores for l in c.get("upstreams", [])]
panics = sum(c.get("counters", {}).get("panics", 0) for c in cores)
print(len(cores), len(links), sum(1 for l in links if l.get("up")), panics)
EOF
}

# ---- build ----------------------------------------------------------------------------------------
if [ -n "${RINGGATE_BIN:-}" ]; then
  BIN="$RINGGATE_BIN"
  say "using $BIN (RINGGATE_BIN set, not building)"
else
  say "building the release binary (cargo build --release)"
  # In the background and waited for, so that INT/TERM reach the trap at once.
  (cd "$ROOT" && exec timeout -k 10 "$BUILD_TIMEOUT" cargo build --release --bin ringgate) &
  BUILD_PID=$!
  wait "$BUILD_PID" || die "cargo build --release failed"
  BUILD_PID=""
  TARGET_DIR="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')" \
    || die "cannot find cargo's target directory"
  BIN="$TARGET_DIR/release/ringgate"
fi
[ -x "$BIN" ] || die "no executable at $BIN"

# ---- wstest ---------------------------------------------------------------------------------------
say "setting up wstest ($AB_DIR/setup.sh)"
timeout -k 10 600 "$AB_DIR/setup.sh" || die "$AB_DIR/setup.sh failed"

OUT="${AUTOBAHN_OUT:-$(mktemp -d /tmp/ringgate-autobahn.XXXXXX)}"
mkdir -p "$OUT" || die "cannot create $OUT"
OUT="$(cd "$OUT" && pwd)"

# ---- start echo-upstream, then the proxy in front of it --------------------------------------------
"$BIN" --log-level "$LOG_LEVEL" echo-upstream --listen 127.0.0.1:0 \
  >"$OUT/echo-upstream.out" 2>"$OUT/echo-upstream.log" &
ECHO_PID=$!
UPSTREAM="$(wait_line "$OUT/echo-upstream.out" 's/^echo-upstream listening on \([0-9.]*:[0-9]*\)$/\1/p' \
  "$ECHO_PID" echo-upstream)" || exit 2
say "echo-upstream on $UPSTREAM (pid $ECHO_PID)"

"$BIN" --log-level "$LOG_LEVEL" run --listen 127.0.0.1:0 --admin 127.0.0.1:0 --upstream "$UPSTREAM" \
  --workers "$WORKERS" --max-message-size "$MAX_MESSAGE" --shutdown-timeout 5s \
  >"$OUT/ringgate.out" 2>"$OUT/ringgate.log" &
PROXY_PID=$!
URL="$(wait_line "$OUT/ringgate.out" 's/^ringgate listening on \(ws:[^ ]*\) .*/\1/p' "$PROXY_PID" ringgate)" || exit 2
ADMIN="$(wait_line "$OUT/ringgate.out" 's/^ringgate admin on \(http:[^ ]*\)$/\1/p' "$PROXY_PID" ringgate)" || exit 2
say "ringgate on $URL (pid $PROXY_PID, $WORKERS workers, admin $ADMIN)"

# Every core must have its link up, or the handshakes it accepts get 503.
deadline=$((SECONDS + READY_TIMEOUT))
while :; do
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then
    tail -n 30 "$OUT/ringgate.log" >&2
    die "ringgate exited while its links came up"
  fi
  read -r cores links up _ < <(stats "$ADMIN" 2>/dev/null || echo "0 0 0 0")
  if [ "$cores" -eq "$WORKERS" ] && [ "$links" -eq "$WORKERS" ] && [ "$up" -eq "$links" ]; then
    break
  fi
  [ "$SECONDS" -lt "$deadline" ] || die "links not up within ${READY_TIMEOUT}s (cores=$cores links=$links up=$up); see $OUT/ringgate.log"
  sleep 0.1
done
say "all $links upstream links are up"

# ---- run the suite --------------------------------------------------------------------------------
# In a session of its own, waited for in the background: an interrupt stops all of it (see cleanup).
AUTOBAHN_OUT="$OUT" AUTOBAHN_TIMEOUT="$AUTOBAHN_TIMEOUT" AUTOBAHN_AGENT=ringgate SUMMARY="$OUT/summary.txt" \
  setsid bash -c '"$0" "$@" 2>&1 | tee "$SUMMARY"; exit "${PIPESTATUS[0]}"' \
  "$AB_DIR/run.sh" "$URL" "$CASES" "$EXCLUDE" &
SUITE_SID=$!
RC=0
wait "$SUITE_SID" || RC=$?
SUITE_SID=""

# ---- the server's own health over the run ---------------------------------------------------------
problems=0
if ! kill -0 "$PROXY_PID" 2>/dev/null; then
  say "PROBLEM: ringgate exited during the run; last lines of its log:"
  tail -n 20 "$OUT/ringgate.log"
  problems=1
elif read -r _ _ up panics < <(stats "$ADMIN" 2>/dev/null); then
  if [ "$panics" -gt 0 ]; then
    say "PROBLEM: $panics connection driver panic(s) during the run (see $OUT/ringgate.log)"
    problems=1
  fi
  [ "$up" -eq "$WORKERS" ] || say "warning: only $up of $WORKERS upstream links are up after the run"
fi
if ! kill -0 "$ECHO_PID" 2>/dev/null; then
  say "PROBLEM: echo-upstream exited during the run"
  problems=1
fi
# Link failures during the run explain 1011 closes and 503 handshakes in the report.
if grep -E ' (WARN|ERROR) ' "$OUT/ringgate.log" "$OUT/echo-upstream.log" >/dev/null 2>&1; then
  say "warnings and errors logged during the run (first 10):"
  grep -h -E ' (WARN|ERROR) ' "$OUT/ringgate.log" "$OUT/echo-upstream.log" | head -n 10 | cut -c1-300
fi

stop "$PROXY_PID" 10 ringgate
PROXY_PID=""
stop "$ECHO_PID" 10 echo-upstream
ECHO_PID=""

say "report: $OUT/reports/servers/index.html"
SUMMARY="$(grep '^autobahn: [0-9]* OK' "$OUT/summary.txt" | tail -n 1 || true)"
if [ -n "$SUMMARY" ]; then echo "$SUMMARY"; fi
if [ "$RC" -eq 0 ] && [ "$problems" -ne 0 ]; then
  RC=1
fi
case "$RC" in
  0) say "PASSED: no case FAILED" ;;
  1) say "FAILED" ;;
  *) say "BROKEN: the run did not complete (run.sh exit $RC)"; RC=2 ;;
esac
exit "$RC"
