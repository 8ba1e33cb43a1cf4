#!/usr/bin/env bash
# Records which functions of the release `tandem` binary run while a sidecar starts and idles,
# then while it serves the common requests, into sidecar/link/startup-symbols.txt, which the
# linker uses to place that code together (see sidecar/build.rs). Run it after changes that
# move much start-up code, or after updating dependencies or the toolchain (symbol names carry
# crate hashes), and commit the file.
#
# Needs valgrind (its lackey tool traces every block of code run), curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in valgrind curl python3; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done

target="${CARGO_TARGET_DIR:-target}"
work=$(mktemp -d)
cleanup() {
  pkill -P $$ 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The same build the benchmark measures, plus a link map to name the stripped binary's code.
TANDEM_LINK_MAP="$work/tandem.map" cargo build --release -p tandem
cp "$target/release/tandem" "$work/tandem"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
app_port=$(free_port)
api="http://127.0.0.1:$http_port"

# A stand-in app: one subscription, and 200 for everything else.
cat >"$work/app.py" <<'EOF'
import http.server, sys
class App(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'[{"pubsubname":"pubsub","topic":"orders","route":"/orders"}]' \
            if self.path == "/dapr/subscribe" else b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), App).serve_forever()
EOF
python3 "$work/app.py" "$app_port" &

mkdir "$work/home"
# Runs a sidecar under valgrind on the embedded defaults until it is healthy and has idled.
start_traced() {
  local name=$1
  shift
  HOME="$work/home" valgrind --tool=lackey --trace-superblocks=yes --log-file="$work/$name.trace" \
    "$work/tandem" sidecar --dapr-http-port "$http_port" "$@" &
  sidecar=$!
  for _ in $(seq 1 600); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$api/v1.0/healthz")" = 204 ]; then
      sleep 2
      return
    fi
    sleep 0.1
  done
  echo "the sidecar did not become healthy under valgrind" >&2
  exit 1
}
stop_traced() {
  kill -TERM "$sidecar"
  wait "$sidecar" || true
}

# 1. Start-up and idle, without an app, on the embedded defaults and with an empty resources
# path: what the idle-memory benchmark runs.
start_traced idle --app-id recorder
stop_traced
mkdir "$work/no-resources"
start_traced idle-no-resources --app-id recorder --resources-path "$work/no-resources"
stop_traced

# 2. With an app, serving the common requests.
start_traced requests --app-id recorder --app-port "$app_port"
json=(-H 'content-type: application/json')
for _ in 1 2 3; do
  curl -sf -o /dev/null "$api/v1.0/healthz"
  curl -sf -o /dev/null "$api/v1.0/metadata"
  curl -sf -o /dev/null "${json[@]}" -d '[{"key":"k","value":{"n":1}}]' "$api/v1.0/state/statestore"
  curl -sf -o /dev/null "$api/v1.0/state/statestore/k"
  curl -sf -o /dev/null "${json[@]}" -d '{"keys":["k","missing"]}' "$api/v1.0/state/statestore/bulk"
  curl -sf -o /dev/null "${json[@]}" \
    -d '{"operations":[{"operation":"upsert","request":{"key":"t","value":1}}]}' \
    "$api/v1.0/state/statestore/transaction"
  curl -sf -o /dev/null -X DELETE "$api/v1.0/state/statestore/k"
  curl -sf -o /dev/null "${json[@]}" -d '{"order":1}' "$api/v1.0/publish/pubsub/orders"
  curl -sf -o /dev/null "${json[@]}" -d '{"x":1}' "$api/v1.0/invoke/recorder/method/echo"
done
sleep 1
stop_traced

# Start-up functions first, then those the app and the requests added.
python3 scripts/startup_symbols.py "$work/tandem.map" "$work/idle.trace" \
  "$work/idle-no-resources.trace" "$work/requests.trace" >sidecar/link/startup-symbols.txt
echo "$(wc -l <sidecar/link/startup-symbols.txt) symbols in sidecar/link/startup-symbols.txt;" \
  "the next cargo build --release -p tandem links with them"
