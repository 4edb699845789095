#!/usr/bin/env bash
# Interop tests: WebSocket clients nobody on the team wrote, against a freshly started ringgate demo.
#
#   scripts/interop.sh [browser] [browser-chat] [python] [websocat] [browser-auth]  # default: all
#
# Starts `ringgate demo --listen 127.0.0.1:0 --workers 2 --admin 127.0.0.1:0 --ping-interval 1s
# --idle-timeout 5s` (free ports; the short heartbeat lets the suites check in seconds that each
# client's automatic pongs keep an idle connection open), waits
# for its stdout lines and for /stats to show every core's upstream link up, runs each client suite
# under a time limit, stops ringgate with SIGTERM (it must exit 0), and prints `N passed, N failed`
# as its last line; exits non-zero on any failure. Needs: python3 with `websockets` and PyJWT,
# chromium, websocat 1.x (see docs/interop.md for the install lines).
#
# browser-chat opens the chat page the demo serves (its `Chat page:` line) in two Chromium tabs, users
# ann and bob, and has them talk through the rooms of the demo's game server (join, say, all, leave).
#
# browser-auth starts a second demo (free ports again) with `[auth] mode = "jwt"` (HS256, a random
# secret in a file written here, forward_claims = ["room"]), mints a token with PyJWT (sub
# browser-player, room lobby-9, exp in an hour) and has Chromium offer it as the subprotocol
# `bearer.<token>` beside `game.v1`; then checks that server's counters (two refusals: a tampered
# token and none), that the token is nowhere in its logs, and that it exits 0 on SIGTERM.
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
#   CHAT_SCREENSHOT=FILE  browser-chat writes both users' views there (PNG), e.g. docs/chat-demo.png
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
[[ ${#PARTS[@]} -eq 0 ]] && PARTS=(browser browser-chat python websocat browser-auth)
AUTH_USER=browser-player   # the token's sub
AUTH_ROOM=lobby-9          # its room claim, forwarded to the game server
AUTH_REFUSALS=2            # connections the auth page expects refused with 401 (tampered, no token)

PASSED=0
FAILED=0
# shellcheck disable=SC2034  # both are read as ${!var} and set with printf -v
RG_PID='' AUTH_PID=''      # the demo, and the second one with [auth] mode = "jwt" (browser-auth)
PART_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ringgate-interop.XXXXXX")

pass() { PASSED=$((PASSED + 1)); echo "PASS interop: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL interop: $*"; }

stop_ringgate() { # [pid-variable, default RG_PID]; sets RG_STATUS to its exit status, or "killed"
  local var=${1:-RG_PID}
  local pid=${!var}
  RG_STATUS=
  [[ -n $pid ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null
      wait "$pid" 2>/dev/null
      RG_STATUS=killed
      printf -v "$var" %s ''
      return 0
    fi
  fi
  wait "$pid" 2>/dev/null
  RG_STATUS=$?
  printf -v "$var" %s ''
}

cleanup() {
  if [[ -n $PART_PID ]] && kill -0 "$PART_PID" 2>/dev/null; then
    kill -TERM "$PART_PID" 2>/dev/null   # timeout(1) passes it on to the suite
    wait "$PART_PID" 2>/dev/null
  fi
  stop_ringgate AUTH_PID
  stop_ringgate RG_PID
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
# start_ringgate LOG PID-VARIABLE [ARGS...]: starts a demo with ARGS added, its output in
# $TMP/LOG.out and $TMP/LOG.err and its pid in PID-VARIABLE (at once, so that the trap can stop it);
# when it is ready, sets STARTED_WS and STARTED_ADMIN to its addresses, and STARTED_CHAT to its chat
# page's (empty if it printed none).
start_ringgate() {
  local name=$1 var=$2 pid
  shift 2
  # shellcheck disable=SC2086  # RINGGATE_ARGS is a list of words on purpose
  "$RINGGATE_BIN" demo --listen 127.0.0.1:0 --workers 2 --admin 127.0.0.1:0 \
    ${HEARTBEAT_ARGS[@]+"${HEARTBEAT_ARGS[@]}"} ${RINGGATE_ARGS:-} "$@" \
    >"$TMP/$name.out" 2>"$TMP/$name.err" </dev/null &
  pid=$!
  printf -v "$var" %s "$pid"
  local deadline=$((SECONDS + START_TIMEOUT))
  local WS_URL='' ADMIN_URL=''
  STARTED_WS='' STARTED_ADMIN='' STARTED_CHAT=''
  while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "ringgate exited during startup; stderr:" >&2
      tail -20 "$TMP/$name.err" >&2
      return 1
    fi
    # (2>/dev/null: the file may not exist yet, until the background job's redirection ran.)
    WS_URL=$(sed -n 's|^ringgate listening on \(ws://[^ ]*\) .*|\1|p' "$TMP/$name.out" 2>/dev/null)
    ADMIN_URL=$(sed -n 's|^ringgate admin on \(http://[^ ]*\)$|\1|p' "$TMP/$name.out" 2>/dev/null)
    if [[ -n $WS_URL && -n $ADMIN_URL ]]; then
      # Ready when every core reports every upstream link up (before that, handshakes get 503).
      if "$PYTHON" - "$ADMIN_URL" <<'EOF' 2>/dev/null; then
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    cores = json.load(r)
ok = cores and all(c.get("upstreams") and all(u.get("up") for u in c["upstreams"]) for c in cores)
sys.exit(0 if ok else 1)
EOF
        STARTED_WS=$WS_URL STARTED_ADMIN=$ADMIN_URL
        # Printed right after the admin line, nothing in between: it is there by now.
        STARTED_CHAT=$(sed -n 's|^Chat page: \(http://[^ ]*\)$|\1|p' "$TMP/$name.out" 2>/dev/null)
        return 0
      fi
    fi
    sleep 0.05
  done
  echo "ringgate not ready within ${START_TIMEOUT}s (ws=${WS_URL:-?} admin=${ADMIN_URL:-?}); stdout/stderr:" >&2
  cat "$TMP/$name.out" >&2
  tail -20 "$TMP/$name.err" >&2
  return 1
}

echo "== starting $RINGGATE_BIN demo ${HEARTBEAT_ARGS[*]} ${RINGGATE_ARGS:-}"
t0=$SECONDS
if ! start_ringgate ringgate RG_PID; then
  fail "ringgate start"
  echo "$PASSED passed, $FAILED failed"
  exit 1
fi
WS_URL=$STARTED_WS ADMIN_URL=$STARTED_ADMIN CHAT_URL=$STARTED_CHAT
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

# Sums every core's counters at an admin URL and prints NAME=VALUE for the names given.
counters() { # admin-url name...
  "$PYTHON" - "$@" <<'EOF'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    cores = json.load(r)
tot = {}
for c in cores:
    for k, v in c["counters"].items():
        tot[k] = tot.get(k, 0) + v
print(" ".join(f"{k}={tot.get(k, 'missing')}" for k in sys.argv[2:]))
EOF
}

# browser-auth: a second demo with [auth] mode = "jwt", and Chromium offering a token minted here.
# Writes a random HS256 secret, the config and a token (0600, in a 0700 directory under $TMP).
auth_setup() { # dir
  mkdir -m 700 "$1" || return 1
  "$PYTHON" - "$1" "$AUTH_USER" "$AUTH_ROOM" <<'EOF'
import json, os, secrets, sys, time
import jwt

d, user, room = sys.argv[1:4]

def write(name, text):
    path = os.path.join(d, name)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)
    return path

secret = secrets.token_urlsafe(48)  # 64 characters, no trailing newline
secret_file = write("hs256.secret", secret)
write("ringgate.toml", f"""[auth]
mode = "jwt"
algorithms = ["HS256"]
hs256_secret_file = {json.dumps(secret_file)}
forward_claims = ["room"]
""")
now = int(time.time())
# `role` is not in forward_claims: the game server must not see it.
token = jwt.encode({"sub": user, "room": room, "role": "player", "iat": now, "exp": now + 3600},
                   secret, algorithm="HS256")
jwt.decode(token, secret, algorithms=["HS256"])  # it verifies here, so a refusal is ringgate's
write("token", token)
EOF
}

run_browser_auth() {
  local dir=$TMP/auth sig stats
  if ! "$PYTHON" -c 'import jwt' 2>/dev/null; then
    fail "browser-auth: PyJWT is not installed (pip install 'pyjwt[crypto]==2.15.1')"
    return
  fi
  if ! auth_setup "$dir"; then
    fail "browser-auth: writing the secret, config and token in $dir"
    return
  fi
  echo "== starting a second demo with [auth] mode = \"jwt\" (HS256, forward_claims = [\"room\"])"
  # Debug logging, so that the check below covers every line ringgate may write about a request.
  if ! start_ringgate ringgate-auth AUTH_PID --config "$dir/ringgate.toml" --log-level ringgate=debug; then
    fail "browser-auth: ringgate start with [auth] mode = \"jwt\""
    stop_ringgate AUTH_PID
    return
  fi
  local auth_ws=$STARTED_WS auth_admin=$STARTED_ADMIN
  pass "auth ringgate ready at $auth_ws, all upstream links up"
  run_part browser-auth "$PYTHON" "$IDIR/browser_test.py" "$auth_ws" --token-file "$dir/token" \
    --expect-user "$AUTH_USER" --expect-claims "{\"room\": \"$AUTH_ROOM\"}"
  # A browser reports a 401 like any failed handshake (error, close 1006): ringgate must have
  # counted the page's refusals as authentication failures.
  if stats=$(counters "$auth_admin" upgraded auth_rejected handshake_rejected panics) &&
     [[ " $stats " == *" auth_rejected=$AUTH_REFUSALS "* && " $stats " == *" panics=0 "* ]]; then
    pass "auth server counted the refusals: $stats"
  else
    fail "auth server counters (expected auth_rejected=$AUTH_REFUSALS panics=0): ${stats:-unreadable}"
  fi
  stop_ringgate AUTH_PID
  if [[ $RG_STATUS == 0 ]]; then
    pass "auth ringgate exited 0 on SIGTERM"
  else
    fail "auth ringgate exit status on SIGTERM: $RG_STATUS"
    tail -20 "$TMP/ringgate-auth.err"
  fi
  sig=$(cut -d. -f3 "$dir/token")
  if [[ -n $sig ]] && grep -qF -e "$sig" "$TMP/ringgate-auth.out" "$TMP/ringgate-auth.err"; then
    fail "auth ringgate logged the token"
  fi
  if grep -qE 'panicked|ERROR' "$TMP/ringgate-auth.err"; then
    fail "auth ringgate logged errors or panics:"
    grep -E 'panicked|ERROR' "$TMP/ringgate-auth.err" | head -20
  fi
}

for part in "${PARTS[@]}"; do
  case $part in
    browser)
      run_part browser "$PYTHON" "$IDIR/browser_test.py" "$WS_URL" \
        --max-message-size "$MAX_MESSAGE_SIZE" --idle-timeout "$IDLE_TIMEOUT"
      ;;
    browser-chat)
      if [[ -z $CHAT_URL ]]; then
        fail "browser-chat: the demo printed no 'Chat page:' line"
      else
        chat_args=(--ws-path "/${WS_URL#ws://*/}")
        [[ -n ${CHAT_SCREENSHOT:-} ]] && chat_args+=(--screenshot "$CHAT_SCREENSHOT")
        run_part browser-chat "$PYTHON" "$IDIR/chat_test.py" "$CHAT_URL" "${chat_args[@]}"
      fi
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
    browser-auth)
      run_browser_auth
      ;;
    *)
      fail "unknown part '$part' (browser, browser-chat, python, websocat, browser-auth)"
      ;;
  esac
done

# --- the server after the suites ---------------------------------------------------------------------
if stats=$(counters "$ADMIN_URL" upgraded messages_in messages_out protocol_errors backlog_closes panics) &&
   [[ $stats == *" panics=0" && $stats != *missing* ]]; then
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
