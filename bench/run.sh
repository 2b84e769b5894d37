#!/usr/bin/env bash
# bulkhead's benchmark: everything measured in one run, printed as one table of medians, each
# compared with a baseline measured in the same run on the same machine. One module per
# benchmark in bench/suite/, run by bench/bench.py:
#
#  1. apply.py: terraform apply of RESOURCES terraform_data resources, then a no-change
#     re-apply, with terraform's `local` backend (the floor), terraform's own `pg` backend
#     (fresh schema per run), bulkhead on SQLite (the default storage) and bulkhead on
#     PostgreSQL (the environment's `storage = "postgres://..."`), the last two through
#     terraform's `http` backend. PostgreSQL is a throwaway cluster started here (or
#     BENCH_POSTGRES_URL). Runs interleave the backends in a rotating order.
#     Targets: bulkhead within 1.10x of local, and faster than the pg backend.
#  2. throughput.py: server throughput on loopback with wrk at 1, 8 and 64 connections
#     (threads: min(conns, 2)): an authenticated, authorized, audited GET of a 100 KB state
#     from bulkhead; the same file as a static file from nginx (the baseline; target: bulkhead
#     >= 0.5x its req/s); the same GET from a bulkhead with `audit_sync = "all"` (every record
#     flushed before its answer; the default flushes the records of reads within a second);
#     and LOCK -> POST -> UNLOCK cycles on bulkhead, one state per connection (wrk runs one
#     thread per connection there, so each connection's Lua state drives its own cycle). The
#     wrk scripts are bench/wrk/get.lua and bench/wrk/cycle.lua.
#  3. policy.py: Cedar policy decisions per second and per-decision latency, evaluated each
#     time and remembered (benches/policy.rs, built with `cargo bench --bench policy --no-run`
#     before anything is measured, then run; that build also refreshes target/release/bulkhead.
#     If the current source does not build, the newest earlier build of the bench is run and
#     the table says so).
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
# The table goes to stdout; it and every run's figures, one JSON object a line (raw.jsonl),
# are kept in RESULTS (target/bench/YYYYMMDD-HHMMSS, or BENCH_RESULTS), whose path is printed
# on stderr at the end.
#
# Environment:
#   BULKHEAD_BIN        the server binary (default target/release/bulkhead, built if missing)
#   BENCH_POLICY_BIN    the policy bench binary, built already (default: built with cargo)
#   TERRAFORM           terraform (default /usr/local/bin/terraform, else on PATH)
#   BENCH_POSTGRES_URL  use this PostgreSQL instead of starting one; it is used as terraform's
#                       pg conn_str (add ?sslmode=disable if the server has no TLS) and as
#                       bulkhead's storage URL
#   BENCH_RESOURCES     resources per apply (200)      BENCH_CONNECTIONS  "1 8 64"
#   BENCH_POLICY_CALLS  calls per round and kind (20000), BENCH_POLICY_ROUNDS (5)
#   BENCH_SKIP          words among: apply pg bulkhead-pg throughput sync-all lock policy
#   BENCH_RESULTS       where the table and the raw figures are kept (see above)
#   BULKHEAD_LOG        the server's log filter (default: the server's own default, info)
#   BENCH_KEEP=1        keep the temporary directories (logs, configs, data) for a look after
#
# Needs: python3, terraform, wrk, nginx, and PostgreSQL server binaries
# (/usr/lib/postgresql/*/bin), each only when a benchmark that uses it is run (BENCH_SKIP).
# Run as root on a system with apt-get, it installs the missing ones it can (`apt-get install
# -y python3 wrk nginx postgresql`); otherwise, and for terraform (not a Debian package), it
# names what to install and stops with status 2. As root the throwaway cluster is owned by the
# `postgres` user (or `nobody`). Every process it starts and every temporary directory is
# removed on exit. Exits 1 if a required measurement failed, 2 on bad usage or a missing
# program.
set -euo pipefail

if ! command -v python3 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing python3 (apt-get install -y python3)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y python3 >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y python3 >/dev/null; }
fi
command -v python3 >/dev/null 2>&1 || { echo "bench/run.sh needs python3: apt-get install -y python3" >&2; exit 2; }
exec python3 "$(dirname "$0")/bench.py" "$@"
