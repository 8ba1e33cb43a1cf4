"""Hello, Tandem: keep a counter in the state store and publish an event about it.

Runs with nothing but the Python standard library and the sidecar's embedded defaults:

    tandem run --app-id hello -- python3 examples/hello-python/app.py
"""

import json
import os
import sys
import urllib.request

DAPR = f"http://127.0.0.1:{os.environ.get('DAPR_HTTP_PORT', '3500')}"


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(DAPR + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else None)


def main():
    status, current = call("GET", "/v1.0/state/statestore/counter")
    count = (current or 0) + 1
    call("POST", "/v1.0/state/statestore", [{"key": "counter", "value": count}])
    status, stored = call("GET", "/v1.0/state/statestore/counter")
    if stored != count:
        print(f"expected {count}, read back {stored}", file=sys.stderr)
        return 1
    call("POST", "/v1.0/publish/pubsub/counted", {"count": count})
    print(f"counter is now {stored}; event published to topic 'counted'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
