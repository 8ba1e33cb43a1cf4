"""Pub/sub with a plain Flask app and `requests` only (no Dapr SDK).

The app subscribes programmatically (GET /dapr/subscribe, v1 and v2 shapes, a dead-letter
topic), then publishes through the sidecar with requests and checks what arrived.
Env: DAPR_HTTP_PORT, APP_PORT. Exits 0 on success, 1 on failure.
"""

import os
import sys
import threading
import time

import requests
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

DAPR = f"http://127.0.0.1:{os.environ['DAPR_HTTP_PORT']}"
APP_PORT = int(os.environ["APP_PORT"])

app = Flask(__name__)
received = {"orders": [], "big": [], "small": [], "dead": []}
lock = threading.Lock()


@app.get("/dapr/subscribe")
def subscribe():
    return jsonify([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
        {
            "pubsubname": "pubsub",
            "topic": "amounts",
            "routes": {
                "rules": [{"match": "event.data.amount > 100.0", "path": "/big"}],
                "default": "/small",
            },
            "deadLetterTopic": "dead",
        },
        {"pubsubname": "pubsub", "topic": "dead", "route": "/dead"},
    ])


def record(kind):
    event = request.get_json(force=True)
    assert request.headers.get("Content-Type", "").startswith("application/cloudevents+json")
    with lock:
        received[kind].append(event)


@app.post("/orders")
def orders():
    record("orders")
    return jsonify({"status": "SUCCESS"})


@app.post("/big")
def big():
    record("big")
    return "", 200


@app.post("/small")
def small():
    record("small")
    if request.get_json(force=True)["data"].get("poison"):
        return jsonify({"status": "DROP"})
    return "", 204


@app.post("/dead")
def dead():
    record("dead")
    return "", 200


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    os._exit(1)


def main():
    server = make_server("127.0.0.1", APP_PORT, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    deadline = time.time() + 30
    while requests.get(f"{DAPR}/v1.0/healthz").status_code != 204:
        if time.time() > deadline:
            fail("sidecar never became ready")
        time.sleep(0.05)
    r = requests.post(f"{DAPR}/v1.0/publish/pubsub/orders", json={"orderId": 42})
    if r.status_code != 204:
        fail(f"publish: {r.status_code} {r.text}")
    requests.post(f"{DAPR}/v1.0/publish/pubsub/orders", data="hello", headers={"Content-Type": "text/plain"})
    requests.post(f"{DAPR}/v1.0/publish/pubsub/amounts", json={"amount": 500})
    requests.post(f"{DAPR}/v1.0/publish/pubsub/amounts", json={"amount": 5})
    requests.post(f"{DAPR}/v1.0/publish/pubsub/amounts", json={"amount": 1, "poison": True})
    r = requests.post(f"{DAPR}/v1.0/publish/nosuch/orders", json={})
    if r.status_code != 404 or r.json()["errorCode"] != "ERR_PUBSUB_NOT_FOUND":
        fail(f"unknown pubsub: {r.status_code} {r.text}")
    while time.time() < deadline:
        with lock:
            done = (len(received["orders"]) >= 2 and received["big"] and len(received["small"]) >= 2
                    and received["dead"])
        if done:
            break
        time.sleep(0.05)
    with lock:
        data = sorted(str(e["data"]) for e in received["orders"])
        if data != sorted(["{'orderId': 42}", "hello"]):
            fail(f"orders: {received['orders']}")
        if received["orders"][0]["type"] != "com.dapr.event.sent" or received["orders"][0]["topic"] != "orders":
            fail(f"envelope: {received['orders'][0]}")
        if len(received["big"]) != 1 or received["big"][0]["data"]["amount"] != 500:
            fail(f"big: {received['big']}")
        if len(received["dead"]) != 1 or received["dead"][0]["dlqreason"] != "DROP":
            fail(f"dead: {received['dead']}")
    print("OK flask pubsub", flush=True)
    server.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
