#!/usr/bin/env bash
# Interop tests: WebSocket clients nobody on the team wrote, against a freshly started ringgate demo.
#
#   scripts/interop.sh [browser] [python] [websocat]     # default: all three
#
# Starts `ringgate demo --listen 127.0.0.1:0 --workers 2 --admin 127.0.0.1:0 --ping-interval 1s
# --idle-timeout 5s` (free ports; the short heartbeat lets the suites check in seconds that each
# client's automatic pongs keep an idle connection open), waits
# for its stdout lines and for /stats to show every core's upstream link up, runs each client suite
# under a time limit, stops ringgate with SIGTERM (it must exit 0), and prints `N passed, N failed`
# as its last line; exits non-zero on any failure. Needs: python3 with `websockets`, chromium,
# websocat 1.x (see docs/interop.md for the install lines).
#
# Environment:
#   RINGGATE_BIN   ringgate binary to test (default: `cargo build`, then $CARGO_TARGET_DIR/debug/ringgate)
#   RINGGATE_ARGS  extra arguments for `ringgate demo` (e.g. --max-message-size 65536)
#   MAX_MESSAGE_SIZE  the server's limit the clients test against (default 1048576; set both
#                  this and --max-message-size in RINGGATE_ARGS to change it)
#   IDLE_TIMEOUT   seconds; the server gets --ping-interval 1s --idle-timeout ${IDLE_TIMEOUT}s and
#                  the suites check keepalive against it (default 5; 0: server defaults, no checks)
#   CHROMIUM, WEBSOCAT, PYTHON  client executables (defaults: on PATH; websocat also
#                  ${PEERS_HOME:-~/.cache/ringgate-peers}/bin/websocat)
#   INTEROP_KEEP=1 keep the temporary directory with ringgate's logs
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IDIR=$ROOT/tests/interop
PYTHON=${PYTHON:-python3}
MAX_MESSAGE_SIZE=${MAX_MESSAGE_SIZE:-1048576}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-5}
HEARTBEAT_ARGS=()
[[ $IDLE_TIMEOUT != 0 ]] && HEARTBEAT_ARGS=(--ping-interval 1s --idle-timeout "${IDLE_TIMEOUT}s")
START_TIMEOUT=60     # seconds for ringgate to listen and link its upstreams
PART_TIMEOUT=180     # seconds for one client suite (each also bounds its own checks)
STOP_TIMEOUT=20      # seconds for ringgate to exit after SIGTERM

PARTS=("$@")
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(browser python websocat)

PASSED=0
FAILED=0
RG_PID=
PART_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ringgate-interop.XXXXXX")

pass() { PASSED=$((PASSED + 1)); echo "PASS interop: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL interop: $*"; }

stop_ringgate() { # sets RG_STATUS to ringgate's exit status, or "killed"
  RG_STATUS=
  [[ -n $RG_PID ]] || return 0
  if kill -0 "$RG_PID" 2>/dev/null; then
    kill -TERM "$RG_PID" 2>/dev/null
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$RG_PID" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if kill -0 "$RG_PID" 2>/dev/null; then
      kill -KILL "$RG_PID" 2>/dev/null
      wait "$RG_PID" 2>/dev/null
      RG_STATUS=killed
      RG_PID=
      return 0
    fi
  fi
  wait "$RG_PID" 2>/dev/null
  RG_STATUS=$?
  RG_PID=
}

cleanup() {
  if [[ -n $PART_PID ]] && kill -0 "$PART_PID" 2>/dev/null; then
    kill -TERM "$PART_PID" 2>/dev/null   # timeout(1) passes it on to the suite
    wait "$PART_PID" 2>/dev/null
  fi
  stop_ringgate
  if [[ ${INTEROP_KEEP:-} == 1 ]]; then
    echo "interop: logs kept in $TMP" >&2
  else
    rm -rf "$TMP"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the binary ----------------------------------------------------------------------------------
if [[ -z ${RINGGATE_BIN:-} ]]; then
  echo "== building ringgate (cargo build)"
  (cd "$ROOT" && cargo build --quiet) || { fail "cargo build"; echo "$PASSED passed, $FAILED failed"; exit 1; }
  RINGGATE_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/ringgate
  [[ $RINGGATE_BIN == /* ]] || RINGGATE_BIN=$ROOT/$RINGGATE_BIN
fi
if [[ ! -x $RINGGATE_BIN ]]; then
  fail "no ringgate binary at $RINGGATE_BIN"
  echo "$PASSED passed, $FAILED failed"
  exit 1
fi

# --- start ringgate and wait until it is ready -----------------------------------------------------
start_ringgate() {
  # shellcheck disable=SC2086  # RINGGATE_ARGS is a list of words on purpose
  "$RINGGATE_BIN" demo --listen 127.0.0.1:0 --workers 2 --admin 127.0.0.1:0 \
    ${HEARTBEAT_ARGS[@]+"${HEARTBEAT_ARGS[@]}"} ${RINGGATE_ARGS:-} \
    >"$TMP/ringgate.out" 2>"$TMP/ringgate.err" </dev/null &
  RG_PID=$!
  local deadline=$((SECONDS + START_TIMEOUT))
  WS_URL='' ADMIN_URL=''
  while ((SECONDS < deadline)); do
    if ! kill -0 "$RG_PID" 2>/dev/null; then
      echo "ringgate exited during startup; stderr:" >&2
      tail -20 "$TMP/ringgate.err" >&2
      return 1
    fi
    WS_URL=$(sed -n 's|^ringgate listening on \(ws://[^ ]*\) .*|\1|p' "$TMP/ringgate.out")
    ADMIN_URL=$(sed -n 's|^ringgate admin on \(http://[^ ]*\)$|\1|p' "$TMP/ringgate.out")
    if [[ -n $WS_URL && -n $ADMIN_URL ]]; then
      # Ready when every core reports every upstream link up (before that, handshakes get 503).
      if "$PYTHON" - "$ADMIN_URL" <<'EOF' 2>/dev/null; then
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    cores = json.load(r)
ok = cores and all(c.get("upstreams") and all(u.get("up") for u in c["upstreams"]) for c in cores)
sys.exit(0 if ok else 1)
EOF
        return 0
      fi
    fi
    sleep 0.05
  done
  echo "ringgate not ready within ${START_TIMEOUT}s (ws=${WS_URL:-?} admin=${ADMIN_URL:-?}); stdout/stderr:" >&2
  cat "$TMP/ringgate.out" >&2
  tail -20 "$TMP/ringgate.err" >&2
  return 1
}

echo "== starting $RINGGATE_BIN demo ${HEARTBEAT_ARGS[*]} ${RINGGATE_ARGS:-}"
t0=$SECONDS
if ! start_ringgate; then
  fail "ringgate start"
  echo "$PASSED passed, $FAILED failed"
  exit 1
fi
pass "ringgate ready at $WS_URL, all upstream links up ($((SECONDS - t0))s)"

# --- the client suites -----------------------------------------------------------------------------
find_websocat() {
  local c
  for c in "${WEBSOCAT:-}" "$(command -v websocat 2>/dev/null)" \
           "${PEERS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/ringgate-peers}/bin/websocat"; do
    [[ -n $c && -x $c ]] && { echo "$c"; return 0; }
  done
  return 1
}

# Runs one suite; its last line must be `N passed, N failed`, whose counts are added to ours.
run_part() { # name command...
  local name=$1; shift
  local log=$TMP/$name.log start=$SECONDS status
  echo "== $name: $*"
  # In the background and waited for, so that a signal to this script is handled at once (the
  # trap stops the suite too); its output is shown when it ends.
  timeout --kill-after=10 "$PART_TIMEOUT" "$@" >"$log" 2>"$TMP/$name.stderr" </dev/null &
  PART_PID=$!
  wait "$PART_PID"
  status=$?
  PART_PID=
  cat "$log"
  local last p f
  last=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1)
  if [[ -n $last ]]; then
    p=${last%% passed*}; f=${last#*, }; f=${f%% failed*}
    PASSED=$((PASSED + p)); FAILED=$((FAILED + f))
  fi
  if [[ $status -eq 124 || $status -eq 137 ]]; then
    fail "$name suite timed out after ${PART_TIMEOUT}s"
  elif [[ -z $last ]]; then
    fail "$name suite exited $status without a result line"
  elif [[ $status -ne 0 && $f -eq 0 ]]; then
    fail "$name suite exited $status"
  fi
  if [[ ( -z $last || $status -eq 124 || $status -eq 137 ) && -s $TMP/$name.stderr ]]; then
    echo "-- $name stderr (last 30 lines):"
    tail -30 "$TMP/$name.stderr"
  fi
  echo "-- $name took $((SECONDS - start))s"
}

for part in "${PARTS[@]}"; do
  case $part in
    browser)
      run_part browser "$PYTHON" "$IDIR/browser_test.py" "$WS_URL" \
        --max-message-size "$MAX_MESSAGE_SIZE" --idle-timeout "$IDLE_TIMEOUT"
      ;;
    python)
      if "$PYTHON" -c 'import websockets' 2>/dev/null; then
        run_part python "$PYTHON" "$IDIR/python_client.py" "$WS_URL" \
          --max-message-size "$MAX_MESSAGE_SIZE" --idle-timeout "$IDLE_TIMEOUT"
      else
        fail "python: the websockets package is not installed (pip install websockets)"
      fi
      ;;
    websocat)
      if WEBSOCAT_BIN=$(find_websocat); then
        WEBSOCAT=$WEBSOCAT_BIN run_part websocat bash "$IDIR/websocat_test.sh" "$WS_URL" \
          --admin "$ADMIN_URL" --idle-timeout "$IDLE_TIMEOUT"
      else
        fail "websocat: not found (cargo install websocat --version '^1' --locked)"
      fi
      ;;
    *)
      fail "unknown part '$part' (browser, python, websocat)"
      ;;
  esac
done

# --- the server after the suites ---------------------------------------------------------------------
if stats=$("$PYTHON" - "$ADMIN_URL" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    cores = json.load(r)
tot = {}
for c in cores:
    for k, v in c["counters"].items():
        tot[k] = tot.get(k, 0) + v
print(" ".join(f"{k}={tot[k]}" for k in ("upgraded", "messages_in", "messages_out", "protocol_errors",
                                         "backlog_closes", "panics")))
sys.exit(1 if tot.get("panics", 0) else 0)
EOF
); then
  pass "server stats after the suites: $stats"
else
  fail "server stats after the suites: ${stats:-unreadable}"
fi

stop_ringgate
if [[ $RG_STATUS == 0 ]]; then
  pass "ringgate exited 0 on SIGTERM"
else
  fail "ringgate exit status on SIGTERM: $RG_STATUS"
  tail -20 "$TMP/ringgate.err"
fi
if grep -qE 'panicked|ERROR' "$TMP/ringgate.err"; then
  fail "ringgate logged errors or panics:"
  grep -E 'panicked|ERROR' "$TMP/ringgate.err" | head -20
fi

echo "interop total time $((SECONDS - t0))s"
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
