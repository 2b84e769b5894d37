#!/usr/bin/env bash
# bulkhead's benchmark: everything measured in one run, printed as one table of medians, each
# compared with a baseline measured in the same run on the same machine.
#
#  1. terraform apply of RESOURCES terraform_data resources, then a no-change re-apply, with
#     terraform's `local` backend (the floor), terraform's own `pg` backend (fresh schema per
#     run), bulkhead on SQLite (the default storage) and bulkhead on PostgreSQL (the
#     environment's `storage = "postgres://..."`), the last two through terraform's `http`
#     backend. PostgreSQL is a throwaway cluster started here (or BENCH_POSTGRES_URL).
#     Targets: bulkhead within 1.10x of local, and faster than the pg backend.
#  2. Server throughput on loopback with wrk at 1, 8 and 64 connections (threads: min(conns,
#     2)): an authenticated, authorized, audited GET of a 100 KB state from bulkhead; the same
#     file as a static file from nginx (the baseline; target: bulkhead >= 0.5x its req/s); the
#     same GET from a bulkhead with `audit_sync = "all"` (every record flushed before its
#     answer; the default flushes the records of reads within a second); and
#     LOCK -> POST -> UNLOCK cycles on bulkhead, one state per connection (wrk runs one thread
#     per connection there, so each connection's Lua state drives its own cycle).
#  3. Cedar policy decisions per second and per-decision latency, evaluated each time and
#     remembered (benches/policy.rs, built with `cargo bench --bench policy --no-run` before
#     anything is measured, then run; that build also refreshes target/release/bulkhead. If
#     the current source does not build, the newest earlier build of the bench is run and the
#     table says so).
#
# With the defaults it takes about 4 minutes, plus any build (about 8 minutes from scratch on
# 2 cores). nginx keeps its access log, as bulkhead keeps its request log; wrk runs with
# --timeout 10s; latencies are wrk's (per request) or, for the cycles, measured per cycle.
#
# Usage:
#   bench/run.sh [TF_RUNS] [LOAD_RUNS] [SECONDS]      (defaults: 10 runs, 3 runs, 5 s)
#
#   TF_RUNS    terraform apply runs per backend (median printed)
#   LOAD_RUNS  wrk runs per case and connection count (median printed)
#   SECONDS    duration of each wrk run
#
# Environment:
#   BULKHEAD_BIN        the server binary (default target/release/bulkhead, built if missing)
#   TERRAFORM           terraform (default /usr/local/bin/terraform, else on PATH)
#   BENCH_POSTGRES_URL  use this PostgreSQL instead of starting one; it is used as terraform's
#                       pg conn_str (add ?sslmode=disable if the server has no TLS) and as
#                       bulkhead's storage URL
#   BENCH_RESOURCES     resources per apply (200)      BENCH_CONNECTIONS  "1 8 64"
#   BENCH_POLICY_CALLS  calls per round and kind (20000), BENCH_POLICY_ROUNDS (5)
#   BENCH_SKIP          words among: apply pg bulkhead-pg throughput sync-all lock policy
#   BULKHEAD_LOG        the server's log filter (default: the server's own default, info)
#   BENCH_KEEP=1        keep the temporary directories (logs, configs, data) for a look after
#
# Needs: terraform, wrk, nginx, curl, and PostgreSQL server binaries (/usr/lib/postgresql/*/bin)
# for the pg columns (missing ones print n/a). Run it as root or as a normal user; as root the
# throwaway cluster is owned by the `postgres` user (or `nobody`). Every process it starts and
# every temporary directory is removed on exit. Exits 1 if a required measurement failed.
set -euo pipefail

tf_runs=${1:-10}
load_runs=${2:-3}
duration=${3:-5}
resources=${BENCH_RESOURCES:-200}
connections=${BENCH_CONNECTIONS:-"1 8 64"}
policy_calls=${BENCH_POLICY_CALLS:-20000}
policy_rounds=${BENCH_POLICY_ROUNDS:-5}
skip=" ${BENCH_SKIP:-} "
state_bytes=102400

for n in "$tf_runs" "$load_runs" "$duration" "$resources"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [TF_RUNS] [LOAD_RUNS] [SECONDS] (whole numbers > 0)" >&2; exit 2; }
done
skipped() { [[ "$skip" == *" $1 "* ]]; }

root=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin=${BULKHEAD_BIN:-$target_dir/release/bulkhead}
tf=${TERRAFORM:-/usr/local/bin/terraform}
[ -x "$tf" ] || tf=$(command -v terraform || true)
[ -n "$tf" ] && [ -x "$tf" ] || { echo "terraform not found (set TERRAFORM)" >&2; exit 1; }
for tool in wrk nginx curl; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || { echo "$tool not found" >&2; exit 1; }
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

# ---------------------------------------------------------------------------------------------
# Processes and temporary directories, all removed on exit.
work=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-bench.XXXXXX")
pgdir=
pg_ctl_cmd=()
pids=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ -n "$pgdir" ] && [ -f "$pgdir/data/postmaster.pid" ]; then
    "${pg_ctl_cmd[@]}" -D "$pgdir/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  if [ -n "${BENCH_KEEP:-}" ]; then
    echo "kept: $work ${pgdir}" >&2
  else
    rm -rf "$work"
    [ -n "$pgdir" ] && rm -rf "$pgdir"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "$0: line $LINENO: a command failed (status $?)" >&2' ERR

failures=()        # required measurements that failed: the exit status is 1 if any
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
first_line() { sed 's/\x1b\[[0-9;]*m//g; s/^[│╷╵ ]*//' | grep -v '^[[:space:]]*$' | head -1; }
# The line that says what went wrong in a log: the first `error`, else the first line.
error_line() {
  local clean
  clean=$(sed 's/\x1b\[[0-9;]*m//g; s/^[│╷╵ ]*//' "$1" | grep -v '^[[:space:]]*$' || true)
  { grep -m1 -i 'error' <<<"$clean" || head -1 <<<"$clean"; } | cut -c1-160
}
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "n/a"; exit} m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; print m}'; }
sum() { awk '{s+=$1} END {print s+0}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="n/a"||b=="n/a"||b==0) print "n/a"; else printf "%.3fx", a/b }'; }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}
run_id=$(date +%s)-$$

# ---------------------------------------------------------------------------------------------
# Build: the policy bench first (it also rebuilds target/release/bulkhead from the current
# source), so that no compiler runs while anything is measured.
policy_exe='' policy_note=''
if ! skipped policy; then
  log "building the policy bench (cargo bench --bench policy --no-run)"
  if out=$(cd "$root" && cargo bench --bench policy --no-run --message-format=json 2>"$work/policy-build.log"); then
    policy_exe=$(grep -o '"executable":"[^"]*/policy-[0-9a-f]*"' <<<"$out" | tail -1 | sed 's/.*:"\(.*\)"/\1/')
  fi
  if [ -z "$policy_exe" ]; then
    why=$(grep -m1 '^error' "$work/policy-build.log" | cut -c1-120 || true)
    for f in "$target_dir"/release/deps/policy-*; do   # the newest earlier build
      [ -x "$f" ] && [ -f "$f" ] && { [ -z "$policy_exe" ] || [ "$f" -nt "$policy_exe" ]; } && policy_exe=$f
    done
    if [ -n "$policy_exe" ]; then
      policy_note="stale bench binary of $(date -r "$policy_exe" '+%F %T'): the current source does not build (${why:-see cargo})"
    else
      policy_note="the policy bench does not build: ${why:-see cargo}"
    fi
    log "$policy_note"
  fi
fi
if [ ! -x "$bin" ]; then
  log "building $bin (cargo build --release)"
  (cd "$root" && cargo build --release --quiet)
fi
bin_built=$(date -r "$bin" '+%F %T')

export TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1 NO_COLOR=1
: >"$work/terraformrc"
export TF_CLI_CONFIG_FILE="$work/terraformrc"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# bulkhead servers.
declare -A server_url server_error
# start_bulkhead NAME STORAGE_URL_OR_EMPTY [SERVER_ATTRIBUTE]: writes a config under $work/NAME
# and starts `bulkhead serve` on a free port; sets server_url[NAME] or server_error[NAME].
start_bulkhead() {
  local name=$1 storage=$2 extra=${3:-} dir="$work/$1" pid
  mkdir -p "$dir"
  {
    echo 'server {'
    echo '  data_dir = "data"'
    [ -n "$extra" ] && echo "  $extra"
    echo '}'
    echo 'team "app" { members = ["bench"] }'
    echo 'environment "dev" {'
    echo '  owner = "team:app"'
    echo '  read  = ["team:app"]'
    echo '  write = ["team:app"]'
    [ -n "$storage" ] && echo "  storage = \"$storage\""
    echo '}'
  } >"$dir/bulkhead.hcl"
  "$bin" serve --config "$dir/bulkhead.hcl" --listen 127.0.0.1:0 >"$dir/serve.out" 2>"$dir/serve.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 300); do
    [ -s "$dir/serve.out" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  local url
  url=$(sed -n 's/^bulkhead listening on //p' "$dir/serve.out")
  if [ -z "$url" ]; then
    kill "$pid" 2>/dev/null || true
    server_error[$name]=$(error_line "$dir/serve.log")
    [ -n "${server_error[$name]}" ] || server_error[$name]="no address printed within 15 s"
    return 1
  fi
  server_url[$name]=$url
}
token=
make_token() {
  token=$("$bin" token create bench --config "$work/$1/bulkhead.hcl" 2>"$work/$1/token.log") \
    || { log "token create failed: $(error_line "$work/$1/token.log")"; return 1; }
}

# ---------------------------------------------------------------------------------------------
# Throwaway PostgreSQL (or BENCH_POSTGRES_URL).
pg_tf_conn='' pg_storage='' pg_error='' pg_version='' pg_note=''
start_postgres() {
  if [ -n "${BENCH_POSTGRES_URL:-}" ]; then
    pg_tf_conn=$BENCH_POSTGRES_URL
    pg_storage=$BENCH_POSTGRES_URL
    pg_version="BENCH_POSTGRES_URL"
    return 0
  fi
  local pgbin
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$pgbin" ] && [ -x "$pgbin/initdb" ] || pgbin=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  if [ ! -x "$pgbin/initdb" ] || [ ! -x "$pgbin/pg_ctl" ]; then
    pg_error="no PostgreSQL server binaries (initdb, pg_ctl)"
    return 1
  fi
  pgdir=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-bench-pg.XXXXXX")
  local as=()
  if [ "$(id -u)" = 0 ]; then
    local owner=postgres
    id postgres >/dev/null 2>&1 || owner=nobody
    chown "$owner" "$pgdir"
    as=(runuser -u "$owner" --)
  fi
  pg_ctl_cmd=("${as[@]}" "$pgbin/pg_ctl")
  if ! "${as[@]}" "$pgbin/initdb" -D "$pgdir/data" -A trust -U bench -E UTF8 --no-sync >"$pgdir/initdb.log" 2>&1; then
    pg_error="initdb failed: $(error_line "$pgdir/initdb.log")"
    return 1
  fi
  local port
  port=$(free_port)
  if ! "${pg_ctl_cmd[@]}" -D "$pgdir/data" -l "$pgdir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $pgdir" start >"$pgdir/pg_ctl.log" 2>&1; then
    pg_error="the server did not start: $(error_line "$pgdir/server.log")"
    return 1
  fi
  if ! "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U bench bulkhead >"$pgdir/createdb.log" 2>&1; then
    pg_error="createdb failed: $(error_line "$pgdir/createdb.log")"
    return 1
  fi
  pg_version=$("$pgbin/postgres" --version | sed 's/^postgres (PostgreSQL) /PostgreSQL /')
  pg_tf_conn="postgres://bench@127.0.0.1:$port/postgres?sslmode=disable"
  pg_storage="postgres://bench@127.0.0.1:$port/bulkhead"
}
stop_postgres() {
  if [ -n "$pgdir" ] && [ -f "$pgdir/data/postmaster.pid" ]; then
    "${pg_ctl_cmd[@]}" -D "$pgdir/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------------------------------------------
# 1. terraform apply.
backends=(local pg bulkhead bulkhead-pg)
declare -A label=([local]="local backend" [pg]="terraform pg backend" [bulkhead]="bulkhead (SQLite)" [bulkhead-pg]="bulkhead (PostgreSQL)")
declare -A na apply_med noop_med

resources_tf() {
  cat <<TF
resource "terraform_data" "r" {
  count = $resources
  input = "value-\${count.index}"
}
TF
}
backend_tf() {
  local backend=$1 i=$2 url
  case $backend in
    local) ;;
    pg)
      cat <<TF
terraform {
  backend "pg" {
    conn_str    = "$pg_tf_conn"
    schema_name = "bench_${run_id//-/_}_$i"
  }
}
TF
      ;;
    bulkhead | bulkhead-pg)
      url="${server_url[$backend]}/v1/state/dev/apply-$run_id-$i"
      cat <<TF
terraform {
  backend "http" {
    address        = "$url"
    lock_address   = "$url"
    unlock_address = "$url"
    lock_method    = "LOCK"
    unlock_method  = "UNLOCK"
  }
}
TF
      ;;
  esac
}
# timed LOG COMMAND...: runs it with its output in LOG, prints the seconds it took.
timed() {
  local out=$1 s e
  shift
  s=$EPOCHREALTIME
  timeout 300 "$@" >"$out" 2>&1 || return 1
  e=$EPOCHREALTIME
  awk -v s="$s" -v e="$e" 'BEGIN { printf "%.4f\n", e - s }'
}

if ! skipped apply; then
  skipped pg && na[pg]="skipped (BENCH_SKIP)"
  skipped bulkhead-pg && na[bulkhead-pg]="skipped (BENCH_SKIP)"
  if [ -z "${na[pg]:-}" ] || [ -z "${na[bulkhead-pg]:-}" ]; then
    log "starting PostgreSQL"
    if ! start_postgres; then
      log "PostgreSQL unavailable: $pg_error"
      : "${na[pg]:=PostgreSQL unavailable: $pg_error}"
      : "${na[bulkhead-pg]:=PostgreSQL unavailable: $pg_error}"
    fi
  fi
  log "starting bulkhead (SQLite)"
  if ! start_bulkhead bulkhead ""; then
    na[bulkhead]="the server did not start: ${server_error[bulkhead]}"
  elif ! make_token bulkhead; then
    na[bulkhead]="token create failed"
  fi
  bulkhead_token=$token
  if [ -z "${na[bulkhead-pg]:-}" ]; then
    log "starting bulkhead (PostgreSQL storage)"
    if ! start_bulkhead bulkhead-pg "$pg_storage"; then
      na[bulkhead-pg]="postgres storage unavailable: ${server_error[bulkhead-pg]}"
    elif ! make_token bulkhead-pg; then
      na[bulkhead-pg]="postgres storage unavailable: token create failed"
    fi
  fi
  bulkhead_pg_token=$token

  # Warm-up (file cache, terraform binary): one untimed local apply.
  mkdir -p "$work/tf/warmup"
  resources_tf >"$work/tf/warmup/main.tf"
  (cd "$work/tf/warmup" && "$tf" init -input=false -no-color >/dev/null 2>&1 && "$tf" apply -auto-approve -input=false -no-color >/dev/null 2>&1) || true

  for i in $(seq "$tf_runs"); do
    log "terraform apply: run $i of $tf_runs"
    # Interleaved, and in a rotating order, so that drift in machine load hits all alike.
    order=("${backends[@]:$(( (i - 1) % ${#backends[@]} ))}" "${backends[@]:0:$(( (i - 1) % ${#backends[@]} ))}")
    for b in "${order[@]}"; do
      [ -z "${na[$b]:-}" ] || continue
      case $b in
        bulkhead) export TF_HTTP_USERNAME=bench TF_HTTP_PASSWORD=$bulkhead_token ;;
        bulkhead-pg) export TF_HTTP_USERNAME=bench TF_HTTP_PASSWORD=$bulkhead_pg_token ;;
        *) unset TF_HTTP_USERNAME TF_HTTP_PASSWORD ;;
      esac
      dir="$work/tf/$b-$i"
      mkdir -p "$dir"
      { resources_tf; backend_tf "$b" "$i"; } >"$dir/main.tf"
      cd "$dir"
      if ! timeout 300 "$tf" init -input=false -no-color >init.log 2>&1; then
        na[$b]="init failed: $(error_line init.log)"
      elif ! t=$(timed apply.log "$tf" apply -auto-approve -input=false -no-color); then
        na[$b]="apply failed: $(error_line apply.log)"
      elif ! t2=$(timed noop.log "$tf" apply -auto-approve -input=false -no-color); then
        na[$b]="re-apply failed: $(error_line noop.log)"
      elif ! grep -q 'No changes' noop.log; then
        na[$b]="the re-apply was not a no-change apply"
      else
        echo "$t" >>"$work/$b.apply"
        echo "$t2" >>"$work/$b.noop"
      fi
      cd "$work"
      [ -z "${na[$b]:-}" ] || log "$b: ${na[$b]}"
    done
  done
  unset TF_HTTP_USERNAME TF_HTTP_PASSWORD
  for b in "${backends[@]}"; do
    if [ -n "${na[$b]:-}" ]; then
      case $b in
        local | bulkhead) failures+=("terraform apply, ${label[$b]}: ${na[$b]}") ;;
        pg) [[ "${na[$b]}" == skipped* || "${na[$b]}" == "PostgreSQL unavailable"* ]] || failures+=("terraform apply, ${label[$b]}: ${na[$b]}") ;;
      esac
      continue
    fi
    apply_med[$b]=$(median <"$work/$b.apply")
    noop_med[$b]=$(median <"$work/$b.noop")
  done
  # That bulkhead (PostgreSQL) really wrote to PostgreSQL, then PostgreSQL is not needed.
  if [ -z "${na[bulkhead-pg]:-}" ]; then
    psql=$(command -v psql || ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$psql" ]; then
      tables=$("$psql" "$pg_storage" -Atc "select count(*) from information_schema.tables where table_schema not in ('pg_catalog', 'information_schema')" 2>&1 || true)
      [[ "$tables" =~ ^[1-9][0-9]*$ ]] || pg_note="bulkhead (PostgreSQL) left no tables in $pg_storage ($tables): did it use PostgreSQL?"
    fi
  fi
  stop_postgres
fi

# ---------------------------------------------------------------------------------------------
# 2. Throughput.
make_state() {   # FILE: a valid terraform state of about $state_bytes bytes
  local lineage head tail instances="" n=0 pad
  lineage=$(cat /proc/sys/kernel/random/uuid)
  head='{"version":4,"terraform_version":"1.11.4","serial":1,"lineage":"'$lineage'","outputs":{},"resources":[{"mode":"managed","type":"terraform_data","name":"pad","provider":"provider[\"terraform.io/builtin/terraform\"]","instances":['
  tail=']}],"check_results":null}'
  pad=$(printf 'x%.0s' $(seq 200))
  while [ $(( ${#head} + ${#instances} + ${#tail} )) -lt "$state_bytes" ]; do
    [ -n "$instances" ] && instances+=","
    instances+='{"index_key":'$n',"schema_version":0,"attributes":{"id":"'$(cat /proc/sys/kernel/random/uuid)'","input":{"value":"value-'$n'-'$pad'","type":"string"},"output":{"value":"value-'$n'-'$pad'","type":"string"},"triggers_replace":null},"sensitive_attributes":[]}'
    n=$((n + 1))
  done
  printf '%s%s%s\n' "$head" "$instances" "$tail" >"$1"
}

write_lua() {
  # Fields of the RESULT line: rps, p50_us, p99_us (per request), requests, non2xx, errors,
  # bytes (per response); the cycle script adds cycles, cps, cp50_us, cp99_us, *_fail, statuses.
  cat >"$work/get.lua" <<'LUA'
-- Static GET with HTTP Basic auth (the same request bytes to bulkhead and to nginx).
wrk.method = "GET"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BENCH_BASIC")
function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT rps=%.2f p50_us=%.1f p99_us=%.1f requests=%d non2xx=%d errors=%d bytes=%.0f\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99), summary.requests,
    e.status, e.connect + e.read + e.write + e.timeout,
    summary.requests > 0 and summary.bytes / summary.requests or 0))
end
LUA
  cat >"$work/cycle.lua" <<'LUA'
-- LOCK -> POST (serial + 1) -> UNLOCK, over and over, on a state of this thread's own. Run with
-- as many threads as connections: each thread then drives exactly one connection, in order.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local threads, next_tid = {}, 0
function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  table.insert(threads, thread)
end

-- Per thread; globals, so that done() can collect them with thread:get().
cycles, lock_fail, post_fail, unlock_fail = 0, 0, 0, 0
lat, statuses = {}, {}

local step, serial, n, started = 0, 0, 0, 0
local path, pre, post, headers, lock_id, lock_body
local function new_lock()
  n = n + 1
  lock_id = string.format("%08x-0000-4000-8000-%012x", tid, n)
  lock_body = string.format(
    '{"ID":"%s","Operation":"OperationTypeApply","Info":"","Who":"bench","Version":"1.11.4","Created":"%s","Path":""}',
    lock_id, os.date("!%Y-%m-%dT%H:%M:%SZ"))
end

function init(args)
  path = "/v1/state/dev/" .. os.getenv("BENCH_PREFIX") .. "-" .. tid
  local f = assert(io.open(os.getenv("BENCH_STATE_FILE"), "rb"))
  local body = f:read("*a")
  f:close()
  pre, post = body:match('^(.-"serial":)%d+(,.*)$')
  assert(pre, "no serial in the state file")
  headers = { ["Authorization"] = "Basic " .. os.getenv("BENCH_BASIC"),
              ["Content-Type"] = "application/json" }
  new_lock()
end

function request()
  if step == 0 then
    started = now_us()
    return wrk.format("LOCK", path, headers, lock_body)
  elseif step == 1 then
    return wrk.format("POST", path .. "?ID=" .. lock_id, headers, pre .. (serial + 1) .. post)
  else
    return wrk.format("UNLOCK", path, headers, lock_body)
  end
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
  if step == 0 then
    if status == 200 then step = 1 else lock_fail = lock_fail + 1 end
  elseif step == 1 then
    if status == 200 then serial = serial + 1 else post_fail = post_fail + 1 end
    step = 2
  else
    if status ~= 200 then unlock_fail = unlock_fail + 1 end
    cycles = cycles + 1
    lat[#lat + 1] = now_us() - started
    step = 0
    new_lock()
  end
end

function done(summary, latency, requests)
  local all, total, st, lf, pf, uf, non2xx = {}, 0, {}, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    total = total + t:get("cycles")
    lf, pf, uf = lf + t:get("lock_fail"), pf + t:get("post_fail"), uf + t:get("unlock_fail")
    for _, v in ipairs(t:get("lat")) do all[#all + 1] = v end
    for k, v in pairs(t:get("statuses")) do st[k] = (st[k] or 0) + v end
  end
  table.sort(all)
  local function pct(p)
    if #all == 0 then return 0 end
    return all[math.floor((#all - 1) * p + 0.5) + 1]
  end
  local codes = {}
  for k, v in pairs(st) do
    codes[#codes + 1] = k .. ":" .. v
    if k < 200 or k > 299 then non2xx = non2xx + v end
  end
  table.sort(codes)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT rps=%.2f p50_us=%.1f p99_us=%.1f requests=%d non2xx=%d errors=%d cycles=%d cps=%.2f cp50_us=%.1f cp99_us=%.1f lock_fail=%d post_fail=%d unlock_fail=%d statuses=%s\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99), summary.requests,
    non2xx, e.connect + e.read + e.write + e.timeout, total, total / secs, pct(0.5), pct(0.99),
    lf, pf, uf, table.concat(codes, ",")))
end
LUA
}

field() { { grep -o "\b$1=[^ ]*" <<<"$2" || true; } | head -1 | cut -d= -f2; }
# run_wrk CASE CONNS THREADS SCRIPT URL: one wrk run; its RESULT fields appended per metric.
run_wrk() {
  local case=$1 c=$2 t=$3 script=$4 url=$5 out line m
  out="$work/load/$case-$c.$(date +%s%N).out"
  if ! timeout $((duration + 60)) wrk -t"$t" -c"$c" -d"${duration}s" --timeout 10s -s "$script" "$url" >"$out" 2>&1; then
    log "wrk failed ($case, $c connections): $(error_line "$out")"
    echo "wrk failed: $(error_line "$out")" >>"$work/load/$case-$c.problems"
    return 0
  fi
  line=$(grep '^RESULT' "$out" | tail -1 || true)
  if [ -z "$line" ]; then
    echo "no RESULT line from wrk: $(error_line "$out")" >>"$work/load/$case-$c.problems"
    return 0
  fi
  # A run that got no response at all is counted (requests=0) but left out of the medians.
  local metrics="rps p50_us p99_us requests non2xx errors bytes cps cp50_us cp99_us lock_fail post_fail unlock_fail statuses"
  [ "$(field requests "$line")" = 0 ] && metrics="requests non2xx errors"
  for m in $metrics; do
    local v
    v=$(field "$m" "$line")
    [ -n "$v" ] && echo "$v" >>"$work/load/$case-$c.$m"
  done
  return 0
}
# "NO RESPONSES in K of N runs" when some wrk runs of CASE at CONNS got no response at all.
dead_runs() {
  local f="$work/load/$1-$2.requests"
  [ -s "$f" ] || { echo "NO RESULT (see the wrk problems)"; return; }
  awk '$1 == 0 { k++ } END { if (k) printf "NO RESPONSES in %d of %d runs (median of the others)", k, NR }' "$f"
}
metric() {   # CASE CONNS METRIC [median|sum|list]
  local f="$work/load/$1-$2.$3"
  [ -s "$f" ] || { echo "n/a"; return; }
  case ${4:-median} in
    median) median <"$f" ;;
    sum) sum <"$f" ;;
    list) sort -u "$f" | paste -sd' ' ;;
  esac
}

throughput_done=
bh_all=
if ! skipped throughput || ! skipped lock; then
  mkdir -p "$work/load" "$work/www" "$work/nginx/tmp"
  make_state "$work/www/state.json"
  state_size=$(stat -c %s "$work/www/state.json")
  write_lua
  if [ -z "${server_url[bulkhead]:-}" ]; then
    log "starting bulkhead (SQLite)"
    start_bulkhead bulkhead "" && make_token bulkhead && bulkhead_token=$token || true
  fi
  if [ -z "${server_url[bulkhead]:-}" ] || [ -z "${bulkhead_token:-}" ]; then
    failures+=("throughput: bulkhead did not start: ${server_error[bulkhead]:-token create failed}")
  else
    bh=${server_url[bulkhead]}
    export BENCH_BASIC BENCH_STATE_FILE="$work/www/state.json"
    BENCH_BASIC=$(printf 'bench:%s' "$bulkhead_token" | base64 -w0)
    code=$(curl -sS --max-time 60 -o "$work/post.out" -w '%{http_code}' -u "bench:$bulkhead_token" -X POST \
      -H 'Content-Type: application/json' --data-binary "@$work/www/state.json" "$bh/v1/state/dev/get-100k")
    [ "$code" = 200 ] || { echo "POST of the 100 KB state answered $code: $(head -c 300 "$work/post.out")" >&2; exit 1; }
    curl -sS --max-time 60 -u "bench:$bulkhead_token" "$bh/v1/state/dev/get-100k" -o "$work/get.out"
    cmp -s "$work/get.out" "$work/www/state.json" || { echo "GET did not return the state POSTed" >&2; exit 1; }

    # The same server with every audit record flushed to disk before its answer.
    if ! skipped throughput && ! skipped sync-all; then
      log "starting bulkhead (SQLite, audit_sync = \"all\")"
      if start_bulkhead bulkhead-all "" 'audit_sync = "all"' && make_token bulkhead-all; then
        bh_all=${server_url[bulkhead-all]}
        # The same token name for both servers: get.lua sends one Authorization header.
        curl -sS --max-time 60 -o /dev/null -u "bench:$token" -X POST -H 'Content-Type: application/json' \
          --data-binary "@$work/www/state.json" "$bh_all/v1/state/dev/get-100k"
        BENCH_BASIC_ALL=$(printf 'bench:%s' "$token" | base64 -w0)
      else
        failures+=("throughput: bulkhead (audit_sync = all) did not start: ${server_error[bulkhead-all]:-token create failed}")
      fi
    fi

    # nginx serving the same file.
    nginx_port=$(free_port)
    chmod 755 "$work" "$work/www"
    chmod 644 "$work/www/state.json"
    cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 2;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log $work/nginx/access.log;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  default_type application/json;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/www;
  }
}
NGINX
    "$nginx_bin" -p "$work/nginx/" -e "$work/nginx/error.log" -c "$work/nginx/nginx.conf" >"$work/nginx/stdout" 2>&1 &
    pids+=("$!")
    ngx="http://127.0.0.1:$nginx_port"
    for _ in $(seq 100); do
      curl -sf --max-time 60 -o /dev/null "$ngx/state.json" && break
      sleep 0.05
    done
    curl -sf --max-time 60 "$ngx/state.json" | cmp -s - "$work/www/state.json" \
      || { echo "nginx does not serve the state: $(cat "$work/nginx/error.log" "$work/nginx/stdout" 2>/dev/null | head -3)" >&2; exit 1; }

    log "warm-up"
    run_wrk warmup 8 2 "$work/get.lua" "$bh/v1/state/dev/get-100k"
    run_wrk warmup 8 2 "$work/get.lua" "$ngx/state.json"
    [ -n "$bh_all" ] && BENCH_BASIC=$BENCH_BASIC_ALL run_wrk warmup 8 2 "$work/get.lua" "$bh_all/v1/state/dev/get-100k"
    rm -f "$work"/load/warmup-*
    for r in $(seq "$load_runs"); do
      for c in $connections; do
        t=$((c < 2 ? c : 2))
        if ! skipped throughput; then
          log "wrk run $r of $load_runs, $c connections: GET bulkhead, GET nginx"
          run_wrk bulkhead-get "$c" "$t" "$work/get.lua" "$bh/v1/state/dev/get-100k"
          run_wrk nginx-get "$c" "$t" "$work/get.lua" "$ngx/state.json"
          if [ -n "$bh_all" ]; then
            BENCH_BASIC=$BENCH_BASIC_ALL run_wrk bulkhead-get-all "$c" "$t" "$work/get.lua" \
              "$bh_all/v1/state/dev/get-100k"
          fi
        fi
        if ! skipped lock; then
          log "wrk run $r of $load_runs, $c connections: LOCK/POST/UNLOCK cycles"
          export BENCH_PREFIX="cycle-$run_id-r$r-c$c"
          run_wrk cycle "$c" "$c" "$work/cycle.lua" "$bh"
        fi
      done
    done
    throughput_done=1
  fi
fi

# ---------------------------------------------------------------------------------------------
# 3. Policy.
policy_line='' policy_human=''
if ! skipped policy; then
  if [ -n "$policy_exe" ]; then
    log "policy: $policy_rounds rounds of $policy_calls calls, evaluated and remembered"
    if (cd "$root" && BENCH_POLICY_CALLS=$policy_calls BENCH_POLICY_ROUNDS=$policy_rounds "$policy_exe" --bench) >"$work/policy.out" 2>&1; then
      policy_line=$(grep '^RESULT policy' "$work/policy.out" | tail -1 || true)
      policy_human=$(grep '^policy: .*compiled' "$work/policy.out" | sed 's/^policy: //' || true)
    fi
    if [ -z "$policy_line" ]; then
      failures+=("policy bench: $(error_line "$work/policy.out")")
    fi
  else
    failures+=("policy bench: $policy_note")
  fi
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# The table.
fmt_s() { [ "$1" = n/a ] && echo n/a || printf '%.3f' "$1"; }
fmt_ms() { [ "$1" = n/a ] && echo n/a || awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }
fmt_n() { [ "$1" = n/a ] && echo n/a || printf '%.0f' "$1"; }
verdict() { # TEXT CONDITION(awk expression on a, b)
  local a=$1 b=$2 cond=$3
  { [ "$a" = n/a ] || [ "$b" = n/a ]; } && { echo "-"; return; }
  awk -v a="$a" -v b="$b" "BEGIN { print (($cond) ? \"ok\" : \"MISSED\") }"
}

echo
echo "=============================================================================================="
echo "bulkhead benchmark  $(date -u '+%F %T UTC')"
echo "machine: nproc $(nproc), $(uname -sr), $("$tf" version 2>/dev/null | head -1), $("$nginx_bin" -v 2>&1 | sed 's/^nginx version: //'), $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), ${pg_version:-PostgreSQL not used}"
echo "         load average before $load_before, after $load_after; bulkhead binary $bin (built $bin_built)"
echo "=============================================================================================="

if ! skipped apply; then
  echo
  echo "1. terraform apply: $resources terraform_data resources (apply creates all; re-apply changes nothing),"
  echo "   median of $tf_runs runs; ratios: time / time of the local or the terraform pg backend (lower is faster)"
  row='  %-22s %9s %12s %12s %15s %9s %12s   %s\n'
  printf "$row" backend "apply (s)" "re-apply (s)" "apply/local" "re-apply/local" "apply/pg" "re-apply/pg" "targets (apply, re-apply)"
  for b in "${backends[@]}"; do
    if [ -n "${na[$b]:-}" ]; then
      printf '  %-22s n/a (%s)\n' "${label[$b]}" "${na[$b]}"
      continue
    fi
    target=
    case $b in
      local) target="(the floor)" ;;
      bulkhead | bulkhead-pg)
        target="<= 1.10x local: $(verdict "${apply_med[$b]}" "${apply_med[local]:-n/a}" 'a <= 1.10 * b'), $(verdict "${noop_med[$b]}" "${noop_med[local]:-n/a}" 'a <= 1.10 * b')"
        target+="; faster than pg: $(verdict "${apply_med[$b]}" "${apply_med[pg]:-n/a}" 'a < b'), $(verdict "${noop_med[$b]}" "${noop_med[pg]:-n/a}" 'a < b')"
        ;;
    esac
    printf "$row" "${label[$b]}" "$(fmt_s "${apply_med[$b]}")" "$(fmt_s "${noop_med[$b]}")" \
      "$(ratio "${apply_med[$b]}" "${apply_med[local]:-n/a}")" "$(ratio "${noop_med[$b]}" "${noop_med[local]:-n/a}")" \
      "$(ratio "${apply_med[$b]}" "${apply_med[pg]:-n/a}")" "$(ratio "${noop_med[$b]}" "${noop_med[pg]:-n/a}")" "$target"
  done
  if [ -n "$pg_note" ]; then echo "  NOTE: $pg_note"; fi
  if [ -n "${server_url[bulkhead-pg]:-}" ]; then
    pg_log=$(sed 's/\x1b\[[0-9;]*m//g' "$work/bulkhead-pg/serve.log")
    n=$(grep -c ' ERROR ' <<<"$pg_log" || true)
    echo "  bulkhead (PostgreSQL) server log: $n ERROR, $(grep -c ' WARN ' <<<"$pg_log" || true) WARN lines"
    if [ "$n" -gt 0 ]; then echo "    first ERROR: $(grep -m1 ' ERROR ' <<<"$pg_log" | cut -c1-240)"; fi
  fi
fi

if [ -n "$throughput_done" ]; then
  echo
  echo "2. throughput on loopback (wrk, ${duration}s per run, median of $load_runs runs; state $state_size bytes;"
  echo "   latency per request, per cycle for cycles; non-2xx and socket errors summed over all runs;"
  echo "   a run that got no response at all is flagged and left out of the medians)"
  printf '  %-34s %6s %11s %10s %10s %8s %7s   %s\n' case conns "req/s" "p50 (ms)" "p99 (ms)" non-2xx errors ""
  for c in $connections; do
    if ! skipped throughput; then
      cases="bulkhead-get nginx-get"
      [ -n "$bh_all" ] && cases="$cases bulkhead-get-all"
      for case in $cases; do
        case $case in
          bulkhead-get) name="bulkhead GET (auth+policy+audit)" ;;
          nginx-get) name="nginx static GET (baseline)" ;;
          bulkhead-get-all) name='bulkhead GET, audit_sync = "all"' ;;
        esac
        note=
        bytes=$(metric "$case" "$c" bytes)
        dead=$(dead_runs "$case" "$c")
        if [ -n "$dead" ]; then
          note="$dead"
          failures+=("throughput: $name at $c connections: $dead")
        elif [ "$bytes" != n/a ] && awk -v b="$bytes" -v s="$state_size" 'BEGIN { exit !(b < s) }'; then
          note="responses average $(fmt_n "$bytes") bytes, less than the state!"
        fi
        [ -s "$work/load/$case-$c.problems" ] && note="$note $(head -1 "$work/load/$case-$c.problems")"
        printf '  %-34s %6s %11s %10s %10s %8s %7s   %s\n' "$name" "$c" "$(fmt_n "$(metric "$case" "$c" rps)")" \
          "$(fmt_ms "$(metric "$case" "$c" p50_us)")" "$(fmt_ms "$(metric "$case" "$c" p99_us)")" \
          "$(metric "$case" "$c" non2xx sum)" "$(metric "$case" "$c" errors sum)" "$note"
      done
      b=$(metric bulkhead-get "$c" rps)
      n=$(metric nginx-get "$c" rps)
      printf '  %-34s %6s %11s %10s %10s %8s %7s   %s\n' "bulkhead / nginx req/s" "$c" "$(ratio "$b" "$n")" "" "" "" "" \
        "target >= 0.5x: $(verdict "$b" "$n" 'a >= 0.5 * b')"
      if [ -n "$bh_all" ]; then
        printf '  %-34s %6s %11s\n' 'audit_sync = "all" / nginx req/s' "$c" "$(ratio "$(metric bulkhead-get-all "$c" rps)" "$n")"
      fi
    fi
    if ! skipped lock; then
      note="cycles/s; requests/s $(fmt_n "$(metric cycle "$c" rps)")"
      dead=$(dead_runs cycle "$c")
      if [ -n "$dead" ]; then
        note="$dead; $note"
        failures+=("throughput: lock cycles at $c connections: $dead")
      fi
      fails="$(metric cycle "$c" lock_fail sum)/$(metric cycle "$c" post_fail sum)/$(metric cycle "$c" unlock_fail sum)"
      [ "$fails" != "0/0/0" ] && note="$note; failed LOCK/POST/UNLOCK $fails; statuses $(metric cycle "$c" statuses list)"
      [ -s "$work/load/cycle-$c.problems" ] && note="$note $(head -1 "$work/load/cycle-$c.problems")"
      printf '  %-34s %6s %11s %10s %10s %8s %7s   %s\n' "bulkhead LOCK+POST+UNLOCK cycle" "$c" \
        "$(fmt_n "$(metric cycle "$c" cps)")" "$(fmt_ms "$(metric cycle "$c" cp50_us)")" \
        "$(fmt_ms "$(metric cycle "$c" cp99_us)")" "$(metric cycle "$c" non2xx sum)" \
        "$(metric cycle "$c" errors sum)" "$note"
    fi
  done
  server_log=$(sed 's/\x1b\[[0-9;]*m//g' "$work/bulkhead/serve.log")
  errs=$(grep -c ' ERROR ' <<<"$server_log" || true)
  warns=$(grep -c ' WARN ' <<<"$server_log" || true)
  printf '  bulkhead (SQLite) server log: %s ERROR, %s WARN lines' "$errs" "$warns"
  echo
  if [ "$errs" -gt 0 ]; then echo "    first ERROR: $(grep -m1 ' ERROR ' <<<"$server_log" | cut -c1-240)"; fi
  if [ "$warns" -gt 0 ]; then echo "    first WARN:  $(grep -m1 ' WARN ' <<<"$server_log" | cut -c1-240)"; fi
fi

if ! skipped policy; then
  echo
  echo "3. Cedar policy (benches/policy.rs), median of $policy_rounds rounds of $policy_calls calls"
  if [ -n "$policy_line" ]; then
    printf '  %-34s %11s %10s %10s\n' "" "decisions/s" "p50 (us)" "p99 (us)"
    printf '  %-34s %11s %10s %10s\n' "evaluate(), mixed allow/deny" "$(field decisions_per_s "$policy_line")" \
      "$(field p50_us "$policy_line")" "$(field p99_us "$policy_line")"
    printf '  %-34s %11s %10s %10s\n' "decide(), the same, remembered" "$(field remembered_per_s "$policy_line")" \
      "$(field remembered_p50_us "$policy_line")" "$(field remembered_p99_us "$policy_line")"
    echo "  ($policy_human)"
    [ -n "$policy_note" ] && echo "  NOTE: $policy_note"
  else
    echo "  n/a (${policy_note:-$(error_line "$work/policy.out")})"
  fi
fi
echo "=============================================================================================="
if [ "${#failures[@]}" -gt 0 ]; then
  echo "FAILED:"
  printf '  %s\n' "${failures[@]}"
  exit 1
fi
