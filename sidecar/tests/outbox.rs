//! The transactional outbox through the real binary: the upserts of a committed transaction are
//! published to the outbox topic (a projection replaces what is published, not what is stored);
//! a transaction that fails publishes nothing.

use std::time::Duration;

use serde_json::{json, Value};
use tandem_testkit::{http, Reply, ResourcesDir, Sidecar, TestApp};

const WAIT: Duration = Duration::from_secs(20);

const RESOURCES: &str = r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec:
  type: state.in-memory
  version: v1
  metadata:
  - {name: outboxPublishPubsub, value: pubsub}
  - {name: outboxPublishTopic, value: orders}
  - {name: outboxDiscardWhenMissingState, value: "true"}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec:
  type: pubsub.in-memory
  version: v1
"#;

async fn transact(sc: &Sidecar, operations: Value) -> u16 {
    http()
        .post(sc.url("/v1.0/state/statestore/transaction"))
        .json(&json!({ "operations": operations }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// An app `shop` subscribed to `orders` on `pubsub`, and its sidecar on `resources`.
async fn start_shop(resources: &ResourcesDir) -> (TestApp, Sidecar) {
    let app = TestApp::start(|req| {
        if req.path() == "/dapr/subscribe" {
            return Reply::json(
                200,
                json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]),
            );
        }
        Reply::json(200, json!({"status": "SUCCESS"}))
    })
    .await;
    let mut sc = Sidecar::builder(env!("CARGO_BIN_EXE_tandem"))
        .app_id("shop")
        .app_port(app.port)
        .resources(resources.path())
        .start()
        .await;
    sc.wait_ready().await;
    (app, sc)
}

/// The saved value of `key`, as the state API returns it.
async fn saved(sc: &Sidecar, key: &str) -> String {
    http()
        .get(sc.url(&format!("/v1.0/state/statestore/{key}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn upsert(key: &str, value: Value) -> Value {
    json!({"operation": "upsert", "request": {"key": key, "value": value}})
}

#[tokio::test]
async fn committed_upserts_are_published_once_and_failed_ones_never() {
    let resources = ResourcesDir::new();
    resources.write("components.yaml", RESOURCES);
    let (app, sc) = start_shop(&resources).await;

    let ops = json!([
        upsert("order-1", json!({"total": 5})),
        upsert("order-2", json!({"total": 7})),
        {"operation": "delete", "request": {"key": "old"}},
    ]);
    assert_eq!(transact(&sc, ops).await, 204, "{}", sc.logs());
    let events = app.wait_for(2, WAIT, |r| r.path() == "/orders").await;
    let mut data: Vec<Value> = events.iter().map(|e| e.json()["data"].clone()).collect();
    data.sort_by_key(|d| d["total"].as_i64());
    assert_eq!(data, vec![json!({"total": 5}), json!({"total": 7})]);
    let event = events[0].json();
    assert_eq!(event["type"], "com.dapr.event.sent");
    assert_eq!(event["topic"], "orders");
    assert_eq!(event["pubsubname"], "pubsub");
    assert_eq!(event["source"], "shop");
    let stored = saved(&sc, "order-2").await;
    assert_eq!(stored, r#"{"total":7}"#);

    // A projection: the event carries the projected value; the store keeps the full one.
    let ops = json!([
        upsert("order-3", json!({"total": 9, "card": "4111"})),
        {"operation": "upsert", "request": {"key": "order-3", "value": {"total": 9},
            "metadata": {"outbox.projection": "true"}}},
    ]);
    assert_eq!(transact(&sc, ops).await, 204, "{}", sc.logs());
    let events = app.wait_for(3, WAIT, |r| r.path() == "/orders").await;
    assert!(
        events
            .iter()
            .any(|e| e.json()["data"] == json!({"total": 9})),
        "{events:?}"
    );
    let stored = saved(&sc, "order-3").await;
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored, json!({"total": 9, "card": "4111"}));

    // A projection without its upsert is refused before anything happens.
    let ops = json!([{"operation": "upsert", "request": {"key": "lonely", "value": 1,
        "metadata": {"outbox.projection": "true"}}}]);
    assert_eq!(transact(&sc, ops).await, 500);

    // A transaction that fails (first-write on a key that exists) publishes nothing: its event
    // is staged, its marker never written, and the relay drops it
    // (outboxDiscardWhenMissingState).
    let ops = json!([
        upsert("order-4", json!({"total": 11})),
        {"operation": "upsert", "request": {"key": "order-1", "value": {"total": 0},
            "options": {"concurrency": "first-write"}}},
    ]);
    assert_eq!(transact(&sc, ops).await, 409);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !sc.logs().contains("no committed transaction") && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sc.logs().contains("no committed transaction"),
        "{}",
        sc.logs()
    );
    assert!(
        app.requests_to("/orders")
            .iter()
            .all(|e| e.json()["data"] != json!({"total": 11})),
        "an event of a failed transaction was published"
    );
    assert_eq!(app.requests_to("/orders").len(), 3);
}

#[tokio::test]
async fn an_outbox_naming_a_missing_pubsub_stops_start_up() {
    let resources = ResourcesDir::new();
    resources.write(
        "statestore.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: statestore}\nspec:\n  type: state.in-memory\n  version: v1\n  metadata:\n  - {name: outboxPublishPubsub, value: nowhere}\n  - {name: outboxPublishTopic, value: orders}\n",
    );
    let mut sc = Sidecar::builder(env!("CARGO_BIN_EXE_tandem"))
        .resources(resources.path())
        .spawn();
    let status = tokio::time::timeout(Duration::from_secs(30), sc.wait())
        .await
        .expect("exits");
    assert!(!status.success());
    assert!(
        sc.logs()
            .contains("outboxPublishPubsub \"nowhere\" is not a loaded pub/sub component"),
        "{}",
        sc.logs()
    );
}

#[tokio::test]
async fn committed_upserts_are_published_through_redis() {
    let redis = tandem_testkit::RedisServer::start().await;
    let resources = ResourcesDir::new();
    let host = redis.address();
    resources.write(
        "components.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: statestore}}\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - {{name: redisHost, value: \"{host}\"}}\n  - {{name: outboxPublishPubsub, value: pubsub}}\n  - {{name: outboxPublishTopic, value: orders}}\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: pubsub}}\nspec:\n  type: pubsub.redis\n  version: v1\n  metadata:\n  - {{name: redisHost, value: \"{host}\"}}\n"
        ),
    );
    let (app, sc) = start_shop(&resources).await;
    let ops = json!([upsert("a", json!({"n": 1})), upsert("b", json!({"n": 2}))]);
    assert_eq!(transact(&sc, ops).await, 204, "{}", sc.logs());
    let events = app.wait_for(2, WAIT, |r| r.path() == "/orders").await;
    assert_eq!(events.len(), 2, "{}", sc.logs());
    // The markers are gone once their events are out.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut left = markers_left(redis.port).await;
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = markers_left(redis.port).await;
    }
    assert!(left.is_empty(), "markers left: {left}");
}

/// The outbox marker keys in the Redis on `port`, one per line.
async fn markers_left(port: u16) -> String {
    let keys = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--scan", "--pattern", "*outbox-*"])
        .output()
        .await
        .expect("redis-cli");
    String::from_utf8_lossy(&keys.stdout).trim().to_string()
}
