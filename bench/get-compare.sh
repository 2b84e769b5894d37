#!/usr/bin/env bash
# GET throughput of two bulkhead binaries, alternating, on the same machine in the same run:
# for a quick before/after comparison where bench/run.sh (wrk, nginx, a release build) is too
# heavy. Each round starts each binary on a fresh SQLite data directory, POSTs a state of
# SIZE bytes, then times N authenticated GETs over one keep-alive connection (one curl).
# A state of one chunk (up to 1 MiB) is answered from memory after its first read; a bigger
# one is streamed from the database on every GET.
#
# Usage: bench/get-compare.sh BIN_A BIN_B [ROUNDS] [N] [SIZE]   (defaults: 3 rounds, 2000, 102400)
# Prints one line per binary and round: name, round, requests per second.
set -euo pipefail

a=${1:?usage: $0 BIN_A BIN_B [ROUNDS] [N] [SIZE]}
b=${2:?usage: $0 BIN_A BIN_B [ROUNDS] [N] [SIZE]}
rounds=${3:-3}
n=${4:-2000}
size=${5:-102400}

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

padding=$(head -c "$size" /dev/zero | tr '\0' x)
printf '{"version":4,"serial":1,"lineage":"bench","outputs":{},"resources":[],"check_results":"%s"}' \
  "$padding" >"$work/state.json"

measure() {   # BIN NAME ROUND
  local bin=$1 dir="$work/$2-$3"
  mkdir -p "$dir"
  cat >"$dir/bulkhead.hcl" <<'EOF'
server {
  data_dir = "data"
}
team "app" { members = ["bench"] }
environment "dev" {
  owner          = "team:app"
  read           = ["team:app"]
  write          = ["team:app"]
  max_state_size = "64MiB"
}
EOF
  "$bin" serve --config "$dir/bulkhead.hcl" --listen 127.0.0.1:0 >"$dir/serve.out" 2>"$dir/serve.log" &
  pid=$!
  for _ in $(seq 300); do
    [ -s "$dir/serve.out" ] && break
    sleep 0.05
  done
  local url token
  url=$(sed -n 's/^bulkhead listening on //p' "$dir/serve.out")
  [ -n "$url" ] || { echo "$2 did not start: $(tail -1 "$dir/serve.log")" >&2; exit 1; }
  token=$("$bin" token create bench --config "$dir/bulkhead.hcl" 2>/dev/null)
  curl -sSf -o /dev/null -u "bench:$token" -X POST -H 'Content-Type: application/json' \
    --data-binary "@$work/state.json" "$url/v1/state/dev/bench"
  curl -sSf -u "bench:$token" "$url/v1/state/dev/bench" | cmp -s - "$work/state.json" \
    || { echo "$2: GET did not return the state POSTed" >&2; exit 1; }
  for _ in $(seq "$n"); do echo "url = \"$url/v1/state/dev/bench\""; echo 'output = "/dev/null"'; done >"$dir/urls"
  local start end
  start=$(date +%s.%N)
  curl -sSf -u "bench:$token" --config "$dir/urls"
  end=$(date +%s.%N)
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  awk -v n="$n" -v s="$start" -v e="$end" -v name="$2" -v r="$3" \
    'BEGIN { printf "%s round %d: %.0f req/s\n", name, r, n / (e - s) }'
}

for r in $(seq "$rounds"); do
  measure "$a" A "$r"
  measure "$b" B "$r"
done
