#!/usr/bin/env bash
# Times `terraform apply` of N terraform_data resources, then a no-change re-apply, with
# terraform's `local` backend and with bulkhead's http backend, and prints the medians and
# the ratio bulkhead/local.
#
#   bench/terraform-apply.sh [RUNS] [RESOURCES]        (defaults: 5 runs, 200 resources)
#
# BULKHEAD_BIN picks the binary (default: target/release/bulkhead, built if missing).
set -euo pipefail
runs=${1:-5}
resources=${2:-200}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BULKHEAD_BIN:-$root/target/release/bulkhead}
tf=${TERRAFORM:-$(command -v terraform || echo /usr/local/bin/terraform)}
[ -x "$tf" ] || { echo "SKIPPED: terraform not found" >&2; exit 1; }
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet)

work=$(mktemp -d)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/bulkhead.hcl" <<'HCL'
server { data_dir = "data" }
team "app" { members = ["bench"] }
environment "dev" {
  owner = "team:app"
  read  = ["team:app"]
  write = ["team:app"]
}
HCL
"$bin" serve --config "$work/bulkhead.hcl" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/serve.out" ] && break; sleep 0.1; done
base=$(sed -n 's/^bulkhead listening on //p' "$work/serve.out")
[ -n "$base" ] || { echo "the server did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }
export TF_HTTP_USERNAME=bench
TF_HTTP_PASSWORD=$("$bin" token create bench --config "$work/bulkhead.hcl" 2>/dev/null)
export TF_HTTP_PASSWORD TF_IN_AUTOMATION=1 TF_INPUT=0 CHECKPOINT_DISABLE=1
touch "$work/terraformrc"; export TF_CLI_CONFIG_FILE="$work/terraformrc"

resources_tf() {
  cat <<TF
resource "terraform_data" "r" {
  count = $resources
  input = "value-\${count.index}"
}
TF
}

# Prints the seconds one command takes.
timed() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v s="$s" -v e="$e" 'BEGIN { printf "%.4f\n", e - s }'; }

median() { sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }

declare -A apply noop
for backend in local bulkhead; do
  : >"$work/$backend.apply"; : >"$work/$backend.noop"
  for i in $(seq "$runs"); do
    dir="$work/$backend-$i"; mkdir -p "$dir"; cd "$dir"
    resources_tf >main.tf
    if [ "$backend" = bulkhead ]; then
      url="$base/v1/state/dev/bench-$i"
      cat >>main.tf <<TF
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
    fi
    "$tf" init -input=false >/dev/null
    timed "$tf" apply -auto-approve -input=false >>"$work/$backend.apply"
    timed "$tf" apply -auto-approve -input=false >>"$work/$backend.noop"
  done
  apply[$backend]=$(median <"$work/$backend.apply")
  noop[$backend]=$(median <"$work/$backend.noop")
done

echo "terraform apply of $resources terraform_data resources, median of $runs runs ($("$tf" version | head -1))"
printf '%-26s %12s %12s %8s\n' "case" "local (s)" "bulkhead (s)" "ratio"
for case in apply noop; do
  declare -n m=$case
  label=$([ "$case" = apply ] && echo "apply (create all)" || echo "re-apply (no change)")
  printf '%-26s %12s %12s %7.3fx\n' "$label" "${m[local]}" "${m[bulkhead]}" "$(awk -v b="${m[bulkhead]}" -v l="${m[local]}" 'BEGIN { print b / l }')"
done
