#!/usr/bin/env bash
# Peak server memory while a large state is written and read back: for each size, a fresh
# `bulkhead serve`, warmed up with a small state, takes one POST of a state of that size and one GET of it; the server's own
# accounting (/proc/PID/status: VmHWM, the peak resident set) is read before and after.
#
#   bench/large-state.sh [SIZES_MB...]          (default: 1 10 100)
#
# BULKHEAD_BIN picks the binary (default: target/release/bulkhead, built if missing);
# BENCH_POSTGRES_URL, when set, puts the state on that PostgreSQL instead of SQLite.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BULKHEAD_BIN:-$root/target/release/bulkhead}
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet)
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1 10 100)

work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

storage=
[ -n "${BENCH_POSTGRES_URL:-}" ] && storage="storage = \"$BENCH_POSTGRES_URL\""

kib() { awk -v k="$1" '/^'"$1"':/ { print $2 }' "/proc/$server_pid/status"; }

printf '%-8s %-8s %14s %14s %14s %10s\n' "state" "storage" "idle RSS (MB)" "peak RSS (MB)" "growth (MB)" "growth/size"
for mb in "${sizes[@]}"; do
  run="$work/$mb"; mkdir -p "$run"
  cat >"$run/bulkhead.hcl" <<HCL
server {
  data_dir = "data"
  $storage
}
team "app" { members = ["bench"] }
environment "large${mb}" {
  owner          = "team:app"
  read           = ["team:app"]
  write          = ["team:app"]
  max_state_size = "$((mb + 8))MiB"
}
HCL
  # A valid terraform state of about MB megabytes: terraform_data instances with padding.
  python3 - "$mb" "$run/state.json" <<'PY'
import json, sys, uuid
target = int(sys.argv[1]) << 20
pad = "x" * 1000
count = max(1, target // 1100)
doc = {"version": 4, "terraform_version": "1.11.4", "serial": 1, "lineage": str(uuid.uuid4()),
       "outputs": {}, "resources": [{"mode": "managed", "type": "terraform_data", "name": "r",
       "provider": "provider[\"terraform.io/builtin/terraform\"]",
       "instances": [{"index_key": i, "schema_version": 0,
                      "attributes": {"id": str(i), "input": {"value": pad, "type": "string"}}}
                     for i in range(count)]}]}
open(sys.argv[2], "w").write(json.dumps(doc))
PY
  size=$(stat -c %s "$run/state.json")
  (cd "$run" && exec "$bin" serve --config bulkhead.hcl --listen 127.0.0.1:0 >serve.out 2>serve.log) &
  server_pid=$!
  for _ in $(seq 100); do [ -s "$run/serve.out" ] && break; sleep 0.1; done
  base=$(sed -n 's/^bulkhead listening on //p' "$run/serve.out")
  [ -n "$base" ] || { echo "the server did not start:" >&2; cat "$run/serve.log" >&2; exit 1; }
  token=$("$bin" token create bench --config "$run/bulkhead.hcl" 2>/dev/null)
  # Warm up (connections opened, caches filled) with a small state, then take the idle peak.
  small="$base/v1/state/large${mb}/small"
  printf '{"version":4,"serial":1,"lineage":"w","resources":[]}' |
    curl -s -o /dev/null -u "bench:$token" -X POST --data-binary @- "$small"
  curl -s -o /dev/null -u "bench:$token" "$small"
  idle=$(kib VmHWM)
  url="$base/v1/state/large${mb}/big"
  code=$(curl -s -o /dev/null -w '%{http_code}' -u "bench:$token" -X POST \
    -H 'Content-Type: application/json' --data-binary "@$run/state.json" "$url")
  [ "$code" = 200 ] || { echo "POST of $mb MB answered $code" >&2; exit 1; }
  curl -s -u "bench:$token" -o "$run/back.json" "$url"
  cmp -s "$run/state.json" "$run/back.json" || { echo "GET of $mb MB returned other bytes" >&2; exit 1; }
  peak=$(kib VmHWM)
  awk -v mb="$mb" -v st="$([ -n "$storage" ] && echo postgres || echo sqlite)" -v i="$idle" -v p="$peak" -v s="$size" \
    'BEGIN { g = (p - i) / 1024; printf "%-8s %-8s %14.1f %14.1f %14.1f %9.2fx\n", mb " MB", st, i / 1024, p / 1024, g, g * 1048576 / s }'
  kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; server_pid=
done
