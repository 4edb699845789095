#!/usr/bin/env bash
# shellcheck disable=SC2016  # wait_until conditions are single-quoted on purpose (eval later)
# Interop checks of ringgate against websocat 1.x (the `websocket` crate based client).
#
#   websocat_test.sh ws://127.0.0.1:PORT/ws [--admin http://ADMIN/stats] [--idle-timeout SECONDS]
#
# --admin: also check, from the proxy's counters, that one line became one message.
# --idle-timeout: the server's idle timeout, when it runs with a short --ping-interval: check that
# websocat's automatic pongs keep an idle connection open, and that without them (websocat
# --inhibit-pongs 0) the server closes it with 1001 "idle timeout".
#
# Expects `ringgate demo` (an echo game server behind the proxy). websocat is $WEBSOCAT, else
# `websocat` on PATH. Each check feeds websocat's stdin from a FIFO that stays open until every
# echo has arrived (websocat sends its close frame at stdin EOF, and a close overtakes echoes
# still on their way back from the game server), then closes it and expects websocat to exit 0.
# Prints one line per check and `N passed, N failed` last; exits 1 on any failure.
set -uo pipefail

URL=${1:?usage: websocat_test.sh WS_URL [--admin STATS_URL] [--idle-timeout SECONDS]}
shift
ADMIN=
IDLE=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --admin) ADMIN=$2; shift 2 ;;
    --idle-timeout) IDLE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
WEBSOCAT=${WEBSOCAT:-$(command -v websocat)}
CHECK_TIMEOUT=20   # seconds for one check's echoes / close

PASSED=0
FAILED=0
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ringgate-websocat.XXXXXX")
WS_PID=

cleanup() {
  exec 3>&- 2>/dev/null
  if [[ -n $WS_PID ]] && kill -0 "$WS_PID" 2>/dev/null; then
    kill "$WS_PID" 2>/dev/null
    wait "$WS_PID" 2>/dev/null
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

pass() { PASSED=$((PASSED + 1)); echo "PASS websocat: $*"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL websocat: $*"; }

if [[ -z $WEBSOCAT || ! -x $WEBSOCAT ]]; then
  fail "websocat not found (cargo install websocat --version '^1' --locked)"
  echo "$PASSED passed, $FAILED failed"
  exit 1
fi
echo "client: $("$WEBSOCAT" --version)"

# Polls a condition (a shell command) until it holds or the deadline passes.
wait_until() { # seconds command...
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    ((SECONDS >= deadline)) && return 1
    sleep 0.05
  done
}

# Starts websocat in the background: stdin from a FIFO held open on fd 3, stdout and stderr to files.
start() { # name user websocat-args...
  local name=$1 user=$2; shift 2
  OUT=$TMP/$name.out ERR=$TMP/$name.err
  rm -f "$TMP/in"
  mkfifo "$TMP/in"
  "$WEBSOCAT" "$@" "$URL?user=$user" <"$TMP/in" >"$OUT" 2>"$ERR" &
  WS_PID=$!
  exec 3>"$TMP/in"
}

# Closes websocat's stdin (it then sends its close frame) and waits for it to exit, bounded.
finish() { # sets WS_STATUS
  exec 3>&-
  if wait_until "$CHECK_TIMEOUT" eval '! kill -0 "$WS_PID" 2>/dev/null'; then
    wait "$WS_PID"
    WS_STATUS=$?
  else
    kill -9 "$WS_PID" 2>/dev/null
    wait "$WS_PID" 2>/dev/null
    WS_STATUS="still running ${CHECK_TIMEOUT}s after stdin EOF (killed)"
  fi
  WS_PID=
}

size() { stat -c %s "$1" 2>/dev/null || echo 0; }
lines() { wc -l <"$1" 2>/dev/null || echo 0; }
stderr_tail() { tail -5 "$ERR" | sed 's/^/    /'; }

messages_in() { # total client messages the proxy received, from the admin endpoint
  [[ -n $ADMIN ]] || { echo 0; return; }
  python3 -c 'import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    print(sum(c["counters"]["messages_in"] for c in json.load(r)))' "$ADMIN"
}

# 1. Text mode: one text message per line (websocat keeps the newline in the message), echoed back.
check_text() {
  local t0=$SECONDS before after
  {
    printf 'hello ringgate\n'
    printf 'héllo wörld, 日本語, emoji 😀🎮, 𝄞\n'
    printf '\n'
    printf '  spaces and\ttabs  \n'
    head -c 30000 /dev/zero | tr '\0' 'x'; printf '€%.0s' $(seq 1000); printf '\n'  # 33001 bytes
    for i in $(seq 1 200); do printf 'line %d of a burst\n' "$i"; done
    printf 'last line\n'
  } >"$TMP/text.in"
  local n
  n=$(lines "$TMP/text.in")
  before=$(messages_in)
  start text wsc-text -v -v -t
  cat "$TMP/text.in" >&3
  if ! wait_until "$CHECK_TIMEOUT" eval '[[ $(lines "$OUT") -ge $n ]]'; then
    finish
    fail "text lines: $(lines "$OUT") of $n lines echoed within ${CHECK_TIMEOUT}s"; stderr_tail; return
  fi
  finish
  after=$(messages_in)
  if ! cmp -s "$TMP/text.in" "$OUT"; then
    fail "text lines: echo differs from input: $(cmp "$TMP/text.in" "$OUT" 2>&1)"
  elif [[ $WS_STATUS != 0 ]]; then
    fail "text lines: websocat exit status $WS_STATUS"; stderr_tail
  elif [[ -n $ADMIN && $((after - before)) -ne $n ]]; then
    fail "text lines: proxy counted $((after - before)) messages for $n lines"
  elif ! grep -q 'The close message is None' "$ERR"; then
    # websocat sends a close frame without a status code; the answer echoes that (no code).
    fail "text lines: no close answer logged by websocat"; stderr_tail
  else
    local counted=""
    [[ -n $ADMIN ]] && counted=" as $((after - before)) text messages"
    pass "text lines: $n lines ($(size "$TMP/text.in") B, ASCII and UTF-8) echoed" \
         "identically$counted; close answered; exit 0; $((SECONDS - t0))s"
  fi
}

# 2. Binary mode: a file of random bytes, written to websocat's stdin in 64 KiB pieces (each read
#    becomes one binary message), comes back byte-identical and in order. At most WINDOW bytes are
#    in flight: ringgate closes a client whose queue passes max_client_backlog (1 MiB) with 1008
#    "client not reading", and websocat 1.x, one thread pumping both directions, can fall that far
#    behind on its reads while it is writing a multi-megabyte burst (seen on a loaded machine).
# shellcheck disable=SC2034  # used inside eval
WINDOW=$((256 * 1024))
check_binary() { # bytes
  local t0=$SECONDS bytes=$1 chunk=65536 off=0
  head -c "$bytes" /dev/urandom >"$TMP/bin.in"
  start binary wsc-bin -v -v -b
  while ((off < bytes)); do
    if ! wait_until "$CHECK_TIMEOUT" eval '[[ $(( off - $(size "$OUT") )) -le $((WINDOW - chunk)) ]]'; then
      break
    fi
    tail -c +$((off + 1)) "$TMP/bin.in" | head -c "$chunk" >&3
    off=$((off + chunk))
  done
  if ! wait_until "$CHECK_TIMEOUT" eval '[[ $(size "$OUT") -ge $bytes ]]'; then
    finish
    fail "binary $bytes B: $(size "$OUT") B echoed within ${CHECK_TIMEOUT}s"; stderr_tail; return
  fi
  finish
  local msgs
  msgs=$(grep -c 'incoming binary' "$ERR")
  if ! cmp -s "$TMP/bin.in" "$OUT"; then
    fail "binary $bytes B: echo differs: $(cmp "$TMP/bin.in" "$OUT" 2>&1)"
  elif grep -q 'incoming text' "$ERR"; then
    fail "binary $bytes B: some echoes came back as text messages"
  elif [[ $WS_STATUS != 0 ]]; then
    fail "binary $bytes B: websocat exit status $WS_STATUS"; stderr_tail
  else
    pass "binary -b: $bytes random bytes echoed byte-identical in $msgs binary messages; exit 0;" \
         "$((SECONDS - t0))s"
  fi
}

# 3. Client close with a status code: the server answers with the same code.
check_close() { # code reason
  local t0=$SECONDS code=$1 reason=$2
  start "close$code" "wsc-close$code" -v -v -t --close-status-code "$code" --close-reason "$reason"
  printf 'before close\n' >&3
  if ! wait_until "$CHECK_TIMEOUT" eval '[[ $(lines "$OUT") -ge 1 ]]'; then
    finish; fail "close $code: no echo before closing"; stderr_tail; return
  fi
  finish
  local got
  got=$(grep -o 'The close message is .*' "$ERR" | head -1)
  if [[ $got != *"status_code: $code,"* ]]; then
    fail "close $code: answer was '${got:-none}'"; stderr_tail
  elif [[ $WS_STATUS != 0 ]]; then
    fail "close $code: websocat exit status $WS_STATUS"; stderr_tail
  else
    pass "close: sent $code \"$reason\", server answered: ${got#The close message is }; exit 0; $((SECONDS - t0))s"
  fi
}

# 4. Server-initiated close: `kick` makes the game server close the session with 4000 "kicked".
#    --no-line makes the 4 bytes one message without a newline.
check_kick() {
  local t0=$SECONDS
  start kick wsc-kick -v -v -t --no-line
  printf 'kick' >&3
  if ! wait_until "$CHECK_TIMEOUT" grep -q 'The close message is' "$ERR"; then
    finish; fail "kick: no close from the server within ${CHECK_TIMEOUT}s"; stderr_tail; return
  fi
  # websocat 1.x answers the server's close only when its stdin ends: end it now.
  finish
  local got
  got=$(grep -o 'The close message is .*' "$ERR" | head -1)
  if [[ $got != *'status_code: 4000, reason: "kicked"'* ]]; then
    fail "kick: server close was '$got'"
  elif [[ $WS_STATUS != 0 ]]; then
    fail "kick: websocat exit status $WS_STATUS"; stderr_tail
  else
    pass "kick: server closed with ${got#The close message is }; exit 0; $((SECONDS - t0))s"
  fi
}

# 5. websocat's pings are answered with pongs.
check_ping() {
  local t0=$SECONDS
  start ping wsc-ping -t --ping-interval 1 --print-ping-rtts
  if ! wait_until "$CHECK_TIMEOUT" eval '[[ $(grep -c "^RTT " "$ERR") -ge 2 ]]'; then
    finish; fail "ping: fewer than 2 pongs within ${CHECK_TIMEOUT}s"; stderr_tail; return
  fi
  printf 'after pings\n' >&3
  wait_until "$CHECK_TIMEOUT" eval '[[ $(lines "$OUT") -ge 1 ]]'
  finish
  if [[ $(cat "$OUT") != "after pings" ]]; then
    fail "ping: echo after pings was '$(head -c 100 "$OUT")'"
  elif [[ $WS_STATUS != 0 ]]; then
    fail "ping: websocat exit status $WS_STATUS"; stderr_tail
  else
    pass "ping: pongs received ($(grep '^RTT ' "$ERR" | head -2 | tr '\n' ' ')), echo after; exit 0;" \
         "$((SECONDS - t0))s"
  fi
}

# 6. Server pings: websocat answers them by itself, which keeps an idle connection open past the
#    idle timeout; with --inhibit-pongs 0 it ignores them and the server closes it with 1001.
check_keepalive() {
  local t0=$SECONDS idle_for
  idle_for=$(( ${IDLE%.*} + 2 ))
  start keepalive wsc-idle -v -v -t
  # Idle: nothing sent. The connection must still be open after idle_for seconds.
  if wait_until "$idle_for" grep -q 'The close message is' "$ERR"; then
    finish; fail "keepalive: closed while idle: $(grep -o 'The close message is .*' "$ERR")"; return
  fi
  printf 'after idling\n' >&3
  wait_until "$CHECK_TIMEOUT" eval '[[ $(lines "$OUT") -ge 1 ]]'
  finish
  local pings
  pings=$(grep -c 'Received WebSocket ping' "$ERR")
  if [[ $(cat "$OUT") != "after idling" ]]; then
    fail "keepalive: no echo after idling ${idle_for}s"; stderr_tail
  elif ((pings < 2)); then
    fail "keepalive: only $pings server pings in ${idle_for}s"
  else
    pass "keepalive: idle ${idle_for}s > idle timeout ${IDLE}s, $pings server pings answered, echo after;" \
         "$((SECONDS - t0))s"
  fi
}

check_no_pong() {
  local t0=$SECONDS
  start nopong wsc-nopong -v -v -t --inhibit-pongs 0
  if ! wait_until $(( ${IDLE%.*} + CHECK_TIMEOUT )) grep -q 'The close message is' "$ERR"; then
    finish; fail "no pongs: not closed within $(( ${IDLE%.*} + CHECK_TIMEOUT ))s"; stderr_tail; return
  fi
  finish
  local got
  got=$(grep -o 'The close message is .*' "$ERR" | head -1)
  if [[ $got != *'status_code: 1001, reason: "idle timeout"'* ]]; then
    fail "no pongs: server close was '$got'"
  else
    pass "no pongs (--inhibit-pongs 0): closed after $((SECONDS - t0))s with ${got#The close message is }"
  fi
}

check_text
check_binary $((3 * 1024 * 1024 + 17))
check_close 1000 bye
check_close 4001 custom
check_kick
check_ping
if [[ $IDLE != 0 ]]; then
  check_keepalive
  check_no_pong
fi

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
