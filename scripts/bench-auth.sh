#!/usr/bin/env bash
# What authentication at the upgrade costs: the handshake storm of bench.sh (workers connecting,
# upgrading, closing, in a loop) against ringgate with `[auth] mode = "none"`, with JWT HS256 and
# with JWT ES256, in alternating rounds of the same run, and a table of upgrades per second and the
# proxy's CPU per upgrade, with HS256 and ES256 over none.
#
#   scripts/bench-auth.sh
#
# Env: BENCH_AUTH_ROUNDS (rounds, default 4), BENCH_AUTH_SECONDS (measured window per run, default
#      10), BENCH_AUTH_WORKERS (handshake workers, default 64), BENCH_OUT (default a new
#      /tmp/ringgate-bench-auth.XXXXXX). Builds with cargo (CARGO_TARGET_DIR is honoured).
# Each round runs the three modes in an order rotated by one every round (none hs256 es256, then
# hs256 es256 none, ...), so no mode always runs first; every run gets a fresh `ringgate run
# --workers 2` in front of a fresh `ringgate echo-upstream --workers 1`. The jwt modes verify one
# long-lived token (exp an hour ahead) minted with PyJWT from a secret and a P-256 key generated
# here, sent as `Authorization: Bearer` on every connection. Every connection carries the same user
# in every mode (the token's `sub`; `?user=` with mode none), with one_session_per_user = "allow", so
# the modes place their sessions on the same core and differ only in the token and its check.
# Results: summary.md (medians over the rounds; a ratio is the median of the rounds' paired ratios,
# and every round's ratio is listed), the harness's reports and JSON, the configs and logs.
# Loopback only; every run is bounded by its duration. Needs no root; needs python3 with PyJWT and
# cryptography (installed with pip when missing).
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
ROUNDS=$(positive BENCH_AUTH_ROUNDS "${BENCH_AUTH_ROUNDS:-4}")
SECS=$(positive BENCH_AUTH_SECONDS "${BENCH_AUTH_SECONDS:-10}")
WORKERS=$(positive BENCH_AUTH_WORKERS "${BENCH_AUTH_WORKERS:-64}")
OUT=${BENCH_OUT:-$(mktemp -d /tmp/ringgate-bench-auth.XXXXXX)}
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
MODES=(none hs256 es256)
USER_ID=bench-user

TAG=bench-auth
echo "bench-auth: building (release)"
cargo build --release --quiet -p ringgate -p ringgate-load
RG=$(release_dir "$root")/ringgate
LOAD=$(release_dir "$root")/ringgate-load

trap kill_ringgate EXIT

if ! python3 -c 'import jwt, cryptography' 2>/dev/null; then
  echo "bench-auth: installing PyJWT"
  python3 -m pip install --quiet 'pyjwt[crypto]==2.15.1'
fi

# The keys and one token per jwt mode: an HMAC secret (printable, so that no trailing newline is
# stripped from it by ringgate), a P-256 key pair of which ringgate gets the public half.
python3 - "$OUT" "$USER_ID" <<'PY'
import os, sys, time
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
out, user = sys.argv[1], sys.argv[2]
claims = {"sub": user, "iat": int(time.time()), "exp": int(time.time()) + 3600}
secret = os.urandom(32).hex().encode()
with open(os.path.join(out, "hs256.secret"), "wb") as f:
    f.write(secret)
key = ec.generate_private_key(ec.SECP256R1())
with open(os.path.join(out, "es256.pub.pem"), "wb") as f:
    f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo))
for name, token in (("hs256", jwt.encode(claims, secret, algorithm="HS256")),
                    ("es256", jwt.encode(claims, key, algorithm="ES256"))):
    with open(os.path.join(out, f"{name}.token"), "w") as f:
        f.write(token)
PY
chmod 600 "$OUT/hs256.secret"

# One config per mode (listen, workers, upstream and the timeouts come from start_ringgate's flags).
for m in "${MODES[@]}"; do
  {
    echo 'one_session_per_user = "allow"'
    echo '[auth]'
    case $m in
      none) echo 'mode = "none"' ;;
      hs256) printf 'mode = "jwt"\nalgorithms = ["HS256"]\nhs256_secret_file = "%s"\n' "$OUT/hs256.secret" ;;
      es256) printf 'mode = "jwt"\nalgorithms = ["ES256"]\npublic_key_files = ["%s"]\n' "$OUT/es256.pub.pem" ;;
    esac
  } >"$OUT/$m.toml"
  "$RG" check-config "$OUT/$m.toml" >/dev/null
done

{
  echo "ringgate: $RG (sha256 $(sha256sum <"$RG" | cut -c1-16)), commit $(git rev-parse --short HEAD)"
  echo "harness: $LOAD"
  echo "machine: $(nproc) CPUs, load average at the start $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "handshake storm: $WORKERS workers, $SECS s per run, $ROUNDS rounds"
  for m in hs256 es256; do echo "$m token: $(wc -c <"$OUT/$m.token") bytes"; done
} | tee "$OUT/setup.txt"

# Round r runs the modes rotated left by r-1.
order() { # round
  local i n=${#MODES[@]}
  for ((i = 0; i < n; i++)); do echo "${MODES[(i + $1 - 1) % n]}"; done
}

for r in $(seq "$ROUNDS"); do
  for m in $(order "$r"); do
    start_ringgate "$RG" "$OUT/$m.toml"
    # The URL's own query comes before load's per-worker `user={i}`, and ringgate takes the first
    # `user`: every connection is USER_ID's, as in the jwt modes (which ignore `?user=`).
    URL="$URL?user=$USER_ID"
    if [ "$m" = none ]; then
      load "$m.r$r" handshake --workers "$WORKERS" --duration "$SECS"
    else
      load "$m.r$r" handshake --workers "$WORKERS" --duration "$SECS" \
        --header "Authorization: Bearer $(cat "$OUT/$m.token")"
    fi
    stop_ringgate
  done
done

python3 - "$OUT" "$ROUNDS" "${MODES[@]}" <<'PY' | tee "$OUT/summary.md"
import json, os, sys
from statistics import median
out, rounds, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
RUNS = range(1, rounds + 1)
def get(m, r, *path):
    try:
        with open(os.path.join(out, f"{m}.r{r}.json")) as f:
            v = json.load(f)
        for p in path:
            v = v[p]
        return v
    except (OSError, ValueError, KeyError, TypeError):
        return None
def med(vals):
    vals = [v for v in vals if v is not None]
    return median(vals) if vals else None
def ratios(m, path):
    """m over none, round by round (None where a figure is missing)."""
    pairs = [(get(m, r, *path), get("none", r, *path)) for r in RUNS]
    return [None if a is None or b in (None, 0) else a / b for a, b in pairs]
def fmt(v):
    if v is None: return "n/a"
    if abs(v) >= 100: return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
def x(v):
    return "n/a" if v is None else f"{v:.3f}x"
RATE = ("window", "connects_per_sec")
CPU = ("cpu", "target_us_per_op")
rows = [
    ("upgrades/s", RATE, True),
    ("proxy CPU us per upgrade", CPU, True),
    ("proxy CPU in the kernel, us per upgrade", ("cpu", "target_kernel_us_per_op"), True),
    ("p99 upgrade latency (us)", ("handshake_latency_us", "p99"), False),
    ("whole machine, cores busy", ("cpu", "machine_cores"), False),
    ("errors (all rounds)", None, False),
]
others = [m for m in modes if m != "none"]
print("| figure | " + " | ".join(modes) + " | " + " | ".join(f"{m} / none" for m in others) + " |")
print("|" + " --- |" * (1 + len(modes) + len(others)))
for label, path, with_ratio in rows:
    if path is None:
        vals = [sum(get(m, r, "errors_total") or 0 for r in RUNS) for m in modes]
        cells = [f"{v:,}" for v in vals]
    else:
        cells = [fmt(med(get(m, r, *path) for r in RUNS)) for m in modes]
    ratio_cells = [x(med(ratios(m, path))) if with_ratio else "" for m in others]
    print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratio_cells) + " |")
print()
print(f"Medians over {rounds} rounds; a ratio is the median of the rounds' own ratios (each round's"
      " runs are under a minute apart):")
print()
print("| ratio | " + " | ".join(f"round {r}" for r in RUNS) + " |")
print("|" + " --- |" * (1 + rounds))
for m in others:
    for what, path in (("upgrades/s", RATE), ("CPU per upgrade", CPU)):
        print(f"| {what}, {m} / none | " + " | ".join(x(v) for v in ratios(m, path)) + " |")
print()
hs = med(ratios("hs256", CPU)) if "hs256" in modes else None
verdict = "n/a" if hs is None else ("met" if hs <= 1.05 else "not met")
print(f"Target, proxy CPU per upgrade with HS256 at most 1.05x none's: {x(hs)}, {verdict}.")
PY
echo "bench-auth: results in $OUT"
