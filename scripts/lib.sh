# Shared by bench.sh and ab.sh (sourced, not run): ringgate started in front of its echo server on
# free loopback ports, and the load harness run against it. The caller sets TAG (the prefix of its
# messages), OUT (where logs and results go) and LOAD (the ringgate-load binary).
# shellcheck shell=bash

# Where cargo puts release builds: CARGO_TARGET_DIR when set, else the repo's target/.
release_dir() { # repo root
  echo "${CARGO_TARGET_DIR:-$1/target}/release"
}

# Reads the first stdout line of a background process (bounded wait).
first_line() { # fifo
  local line
  IFS= read -r -t 30 line <"$1" || { echo "$TAG: no start-up line" >&2; return 1; }
  echo "$line"
}

# `BINARY echo-upstream` (one worker) and `BINARY run --workers 2` (with CONFIG-FILE, if given) in
# front of it. Sets URL, and
# PIDS to the proxy's process alone (the harness measures its CPU and memory, not the echo
# server's); both processes are in RG_PIDS for stop_ringgate and the caller's cleanup.
RG_PIDS=()
URL='' PIDS=''
start_ringgate() { # binary [config-file]
  local up_fifo rg_fifo up pid config=()
  [ $# -ge 2 ] && config=(--config "$2")
  up_fifo=$(mktemp -u "$OUT/up.XXXX"); rg_fifo=$(mktemp -u "$OUT/rg.XXXX")
  mkfifo "$up_fifo" "$rg_fifo"
  "$1" echo-upstream --listen 127.0.0.1:0 --workers 1 >"$up_fifo" 2>>"$OUT/echo-upstream.log" &
  RG_PIDS+=($!)
  exec 7<>"$up_fifo"
  up=$(first_line /dev/fd/7 | awk '{print $NF}')
  "$1" run "${config[@]}" --listen 127.0.0.1:0 --workers 2 --upstream "$up" \
    --ping-interval 1h --idle-timeout 2h >"$rg_fifo" 2>>"$OUT/ringgate.log" &
  pid=$!; RG_PIDS+=("$pid")
  exec 8<>"$rg_fifo"
  URL=$(first_line /dev/fd/8 | grep -o 'ws://[^ ]*')
  PIDS=$pid
  rm -f "$up_fifo" "$rg_fifo"  # both ends are open; the names are no longer needed
}

kill_ringgate() {
  local p
  for p in "${RG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
}

# Stops both (a graceful shutdown, bounded by ringgate's shutdown timeout) and waits for them.
stop_ringgate() {
  local p
  kill_ringgate
  for p in "${RG_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  RG_PIDS=()
  exec 7<&- 8<&-
}

# One harness run against URL, measuring PIDS; its report and JSON go to $OUT/NAME.txt and .json.
load() { # name args...
  local name=$1; shift
  echo "$TAG: $name"
  "$LOAD" "$@" --url "$URL" --query 'user={i}' --pid "$PIDS" --quiet \
    --json "$OUT/$name.json" >"$OUT/$name.txt" 2>&1 \
    || echo "$TAG: $name counted errors or failed (see $OUT/$name.txt)"
}

# The 64-byte scenarios, the same in bench.sh and ab.sh: 200 clients echoing 64-byte messages at depth
# 1, then at depth 8; results in $OUT/LABEL-echo64-d1.rROUND.json and -d8.
load_echo64() { # label round seconds
  load "$1-echo64-d1.r$2" echo --conns 200 --size 64 --depth 1 --duration "$3"
  load "$1-echo64-d8.r$2" echo --conns 200 --size 64 --depth 8 --duration "$3"
}

# A positive whole number from the environment, or exit 2 naming the variable.
positive() { # name value
  [[ $2 =~ ^[1-9][0-9]*$ ]] || { echo "${0##*/}: $1 must be a positive number" >&2; exit 2; }
  echo "$2"
}
