#!/usr/bin/env bash
# Kernel and limits profile for a ringgate host holding very many WebSocket connections.
# Idempotent: only values below the target are raised (ranges and triples are compared field by
# field); nothing is lowered. docs/tuning.md explains every knob.
#
#   scripts/tune-kernel.sh --dry-run     print what would change, change nothing (no root needed)
#   scripts/tune-kernel.sh               apply now (root)
#   scripts/tune-kernel.sh --persist     apply and write /etc/sysctl.d/90-ringgate.conf and
#                                        /etc/security/limits.d/90-ringgate.conf (root)
set -euo pipefail

mode=apply
case "${1:-}" in
  --dry-run) mode=dry ;;
  --persist) mode=persist ;;
  "") ;;
  -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--dry-run|--persist]" >&2; exit 2 ;;
esac

# key|target. A target with spaces is a vector (compared element-wise, each kept at the max).
profile=(
  "fs.file-max|4194304"
  "fs.nr_open|4194304"
  "net.core.somaxconn|65535"
  "net.ipv4.tcp_max_syn_backlog|65535"
  "net.core.netdev_max_backlog|65536"
  "net.ipv4.ip_local_port_range|1024 65535"
  "net.ipv4.tcp_fin_timeout|15"
  "net.core.rmem_max|16777216"
  "net.core.wmem_max|16777216"
  "net.ipv4.tcp_rmem|4096 16384 16777216"
  "net.ipv4.tcp_wmem|4096 16384 16777216"
  "net.ipv4.tcp_notsent_lowat|131072"
  "net.netfilter.nf_conntrack_max|2097152"
)

# Knobs where lower is the goal (the value is a limit on waste, not a capacity).
lower_is_better=" net.ipv4.tcp_fin_timeout net.ipv4.tcp_notsent_lowat net.ipv4.tcp_rmem net.ipv4.tcp_wmem "

want_value() { # key current target -> the value to set, or empty if current is already fine
  local key=$1 cur=$2 target=$3
  read -r -a c <<<"$cur"; read -r -a t <<<"$target"
  [ "${#c[@]}" -eq "${#t[@]}" ] || { echo "$target"; return; }
  local out=() changed=0 i
  for i in "${!t[@]}"; do
    local a=${c[$i]} b=${t[$i]}
    if [[ "$key" == net.ipv4.ip_local_port_range && $i -eq 0 ]] ||
       { [[ "$lower_is_better" == *" $key "* ]] && ! [[ "$key" == net.ipv4.tcp_[rw]mem && $i -eq 2 ]]; }; then
      # Lower bound of the port range, FIN timeout, default buffer sizes, notsent_lowat: smaller wins.
      if (( b < a )); then out+=("$b"); changed=1; else out+=("$a"); fi
    else
      if (( b > a )); then out+=("$b"); changed=1; else out+=("$a"); fi
    fi
  done
  (( changed )) && echo "${out[*]}" || true
}

if [ "$mode" != dry ] && [ "$(id -u)" -ne 0 ]; then
  echo "needs root (or use --dry-run)" >&2; exit 1
fi

persist_lines=()
for entry in "${profile[@]}"; do
  key=${entry%%|*}; target=${entry#*|}
  if ! cur=$(sysctl -n "$key" 2>/dev/null | tr '\t' ' '); then
    echo "skip   $key (not available here${key:+; for conntrack: the module is not loaded, nothing to tune})"
    continue
  fi
  new=$(want_value "$key" "$cur" "$target")
  if [ -z "$new" ]; then
    echo "ok     $key = $cur"
    persist_lines+=("$key = $cur")
    continue
  fi
  echo "change $key: $cur -> $new"
  persist_lines+=("$key = $new")
  if [ "$mode" != dry ]; then
    sysctl -q -w "$key=$new" || echo "       (refused by the kernel here: $key)"
  fi
done

nofile=$(ulimit -n)
echo "limit  open files of this shell: $nofile (ringgate needs one per connection + a few; run it with LimitNOFILE=1048576 under systemd)"
if [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" != 0 ]; then
  echo "note   kernel.io_uring_disabled is set: ringgate will fall back to epoll (set it to 0 to allow io_uring)"
fi

if [ "$mode" = persist ]; then
  printf '# written by ringgate scripts/tune-kernel.sh; see docs/tuning.md\n%s\n' "$(printf '%s\n' "${persist_lines[@]}")" > /etc/sysctl.d/90-ringgate.conf
  printf '# written by ringgate scripts/tune-kernel.sh\n* soft nofile 1048576\n* hard nofile 1048576\n' > /etc/security/limits.d/90-ringgate.conf
  echo "wrote /etc/sysctl.d/90-ringgate.conf and /etc/security/limits.d/90-ringgate.conf"
fi
