#!/usr/bin/env bash
# Counts the instructions each sidecar runs per service invocation, for one or two tandem
# binaries in the same run: generator → caller sidecar → callee sidecar → the benchmark's app,
# 1 KB bodies on one keep-alive connection, the same path as scenario 2 of tandem-bench.
#
#   scripts/count-invoke-instructions.sh NEW [BASELINE]
#
# callgrind counts instructions, not time: the figure is repeatable whatever else the machine
# is doing, so it tells small changes apart where CPU time on a shared machine cannot. It covers
# user space only (the kernel's share of a request is not in it). For a profile by function,
# give a binary built with symbols (CARGO_PROFILE_RELEASE_STRIP=none
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only) and read the kept files with
# `callgrind_annotate --inclusive=yes FILE`.
#
# Needs valgrind, curl, python3 and the tandem-bench binary (for its app); builds it if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 NEW_TANDEM_BINARY [BASELINE_TANDEM_BINARY]" >&2
  exit 2
fi
for tool in valgrind callgrind_control curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done

requests=${REQUESTS:-1000}
warmup=200
target="${CARGO_TARGET_DIR:-target}"
bench="$target/release/tandem-bench"
[ -x "$bench" ] || cargo build --release -p tandem-bench
work=$(mktemp -d)
echo "callgrind output is kept in $work"
cleanup() { pkill -P $$ 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cat >"$work/load.py" <<'EOF'
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
body = b"x" * 1024
for _ in range(int(sys.argv[2])):
    conn.request("POST", "/v1.0/invoke/bench-callee/method/echo", body,
                 {"Content-Type": "application/octet-stream"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200 or len(data) != len(body):
        sys.exit(f"unexpected answer: {resp.status}, {len(data)} bytes")
EOF

wait_healthy() {
  for _ in $(seq 1 600); do
    curl -sf -o /dev/null "http://127.0.0.1:$1/v1.0/healthz/outbound" && return 0
    sleep 0.1
  done
  echo "the sidecar on port $1 did not become healthy" >&2
  exit 1
}

# Sets `result` to the instructions per request of one sidecar (`caller` or `callee`) of
# `binary`. (Not run in a subshell, so the exit trap can stop its processes on a failure.)
count() {
  local binary=$1 which=$2 run="$work/$3-$2"
  mkdir -p "$run/home" "$run/registry"
  local app_port callee_port caller_port
  app_port=$(free_port); callee_port=$(free_port); caller_port=$(free_port)
  local callgrind=(valgrind --tool=callgrind "--callgrind-out-file=$run/callgrind.out")
  local callee_prefix=() caller_prefix=()
  if [ "$which" = callee ]; then callee_prefix=("${callgrind[@]}"); else caller_prefix=("${callgrind[@]}"); fi
  local common=(--dapr-listen-addresses 127.0.0.1 --log-level warn)
  export HOME="$run/home" TANDEM_REGISTRY_DIR="$run/registry"
  unset DAPR_API_TOKEN APP_API_TOKEN
  "$bench" app --port "$app_port" >"$run/app.log" 2>&1 &
  local app=$!
  "${callee_prefix[@]}" "$binary" sidecar --app-id bench-callee --app-port "$app_port" \
    --dapr-http-port "$callee_port" --metrics-port "$(free_port)" "${common[@]}" \
    >"$run/callee.log" 2>&1 &
  local callee=$!
  "${caller_prefix[@]}" "$binary" sidecar --app-id bench-caller \
    --dapr-http-port "$caller_port" --metrics-port "$(free_port)" "${common[@]}" \
    >"$run/caller.log" 2>&1 &
  local caller=$!
  local measured=$caller
  [ "$which" = callee ] && measured=$callee
  wait_healthy "$callee_port"
  wait_healthy "$caller_port"
  python3 "$work/load.py" "$caller_port" "$warmup"
  callgrind_control --zero "$measured" >/dev/null
  python3 "$work/load.py" "$caller_port" "$requests"
  callgrind_control --dump "$measured" >/dev/null
  kill "$caller" "$callee" "$app" 2>/dev/null || true
  wait "$caller" "$callee" "$app" 2>/dev/null || true
  local dumped total
  dumped=$(ls -t "$run"/callgrind.out.* | head -1)
  total=$(grep -E '^(summary|totals):' "$dumped" | head -1 | awk '{print $2}')
  result=$((total / requests))
}

declare -A figures
labels=(new)
[ $# -eq 2 ] && labels+=(baseline)
for label in "${labels[@]}"; do
  binary=$1
  [ "$label" = baseline ] && binary=$2
  for which in caller callee; do
    count "$binary" "$which" "$label"
    figures[$label-$which]=$result
  done
done

echo
echo "instructions per invocation ($requests requests of 1 KB, one keep-alive connection):"
for which in caller callee; do
  if [ $# -eq 2 ]; then
    new=${figures[new-$which]} base=${figures[baseline-$which]}
    ratio=$(python3 -c "print(f'{$new / $base:.3f}')")
    echo "  $which sidecar: $new (baseline $base, ${ratio}×)"
  else
    echo "  $which sidecar: ${figures[new-$which]}"
  fi
done
