#!/usr/bin/env bash
# More WebSocket connections than one process may open (20000 files here) or one source address
# may use (one port range): several ringgate processes share one port through SO_REUSEPORT, in
# front of one echo game server, and ringgate-load holds N idle connections from enough worker
# processes and source addresses (127.0.0.2, 127.0.0.3, ...). Prints the harness's report: open
# connections, connects+upgrades per second, resident bytes per connection over all proxies.
#
#   scripts/many-connections.sh [N]        N connections (default 60000), 15000 per process
#
# Loopback only; every process it starts is stopped on exit; the run is bounded by the harness's
# setup timeout and a 3-second hold.
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
N=${1:-60000}
PER_PROC=15000
procs=$(( (N + PER_PROC - 1) / PER_PROC ))

cargo build --release --quiet -p ringgate -p ringgate-load
RG=$root/target/release/ringgate
LOAD=$root/target/release/ringgate-load
OUT=$(mktemp -d /tmp/ringgate-many.XXXXXX)

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# Reads the first stdout line of a background process (bounded wait).
first_line() { # file
  for _ in $(seq 100); do [ -s "$1" ] && { head -1 "$1"; return; }; sleep 0.1; done
  echo "many-connections: no start-up line in $1" >&2; return 1
}

"$RG" echo-upstream --listen 127.0.0.1:0 --workers 1 >"$OUT/up.out" 2>"$OUT/up.err" &
pids+=($!)
up=$(first_line "$OUT/up.out" | awk '{print $NF}')

# The first proxy picks the port; the others join it (SO_REUSEPORT), and the kernel spreads
# connections over all of them.
port=0 proxies=()
for k in $(seq "$procs"); do
  "$RG" run --listen "127.0.0.1:$port" --workers 2 --upstream "$up" \
    --ping-interval 1h --idle-timeout 2h >"$OUT/rg$k.out" 2>"$OUT/rg$k.err" &
  pids+=($!) proxies+=($!)
  url=$(first_line "$OUT/rg$k.out" | grep -o 'ws://[^ ]*')
  port=${url#ws://127.0.0.1:}
  port=${port%%/*}
done
echo "many-connections: $N connections, $procs harness processes, $procs proxies on $url"

# The harness exits 1 when it counted errors; say where its report is before passing that on.
rc=0
"$LOAD" idle --url "$url" --conns "$N" --procs "$procs" --hold 3 --query 'user={i}' \
  --pid "$(IFS=,; echo "${proxies[*]}")" --quiet --json "$OUT/idle.json" || rc=$?
echo "many-connections: JSON report in $OUT/idle.json"
exit "$rc"
