//! Pub/sub through the real binary: publishing (envelope, pass-through, raw, bulk, scopes,
//! error codes), subscriptions (programmatic and declarative, routing), every delivery outcome,
//! dead letters, bulk subscribe and per-key ordering, on Redis Streams and the in-memory broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tandem_testkit::{http, RecordedRequest, RedisServer, Reply, ResourcesDir, Sidecar, TestApp};

const WAIT: Duration = Duration::from_secs(20);

fn redis_component(redis: &RedisServer, extra: &str) -> String {
    format!(
        r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: pubsub}}
spec:
  type: pubsub.redis
  version: v1
  metadata:
  - {{name: redisHost, value: "{}"}}
  - {{name: processingTimeout, value: 2s}}
  - {{name: redeliverInterval, value: 500ms}}
{extra}"#,
        redis.address()
    )
}

fn is_post(r: &RecordedRequest, path: &str) -> bool {
    r.method == http::Method::POST && r.path() == path
}

async fn publish_json(sc: &Sidecar, topic: &str, body: Value) -> u16 {
    http()
        .post(sc.url(&format!("/v1.0/publish/pubsub/{topic}")))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn start(app: &TestApp, resources: &ResourcesDir) -> Sidecar {
    let mut sc = Sidecar::builder(env!("CARGO_BIN_EXE_tandem"))
        .app_id("subscriber")
        .app_port(app.port)
        .resources(resources.path())
        .start()
        .await;
    sc.wait_ready().await;
    sc
}

#[tokio::test]
async fn every_outcome_row_on_redis_with_dead_letters() {
    let redis = RedisServer::start().await;
    let resources = ResourcesDir::new();
    resources.write("pubsub.yaml", &redis_component(&redis, ""));
    let retried: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let seen = retried.clone();
    let app = TestApp::start(move |req| {
        if req.path() == "/dapr/subscribe" {
            let topics = ["empty", "nonjson", "success", "nostatus", "retry-once", "unknown-once",
                          "drop", "notfound", "fail500", "fail400"];
            let subs: Vec<Value> = topics
                .iter()
                .map(|t| json!({"pubsubname": "pubsub", "topic": t, "route": format!("/{t}"), "deadLetterTopic": "dlq"}))
                .chain([json!({"pubsubname": "pubsub", "topic": "dlq", "route": "/dlq"})])
                .collect();
            return Reply::json(200, json!(subs));
        }
        let id = req.json()["id"].as_str().unwrap_or_default().to_string();
        let first = {
            let mut m = seen.lock();
            let n = m.entry(format!("{}{id}", req.path())).or_insert(0);
            *n += 1;
            *n == 1
        };
        match req.path() {
            "/empty" => Reply::ok(),
            "/nonjson" => Reply::ok().body("fine thanks"),
            "/success" => Reply::json(200, json!({"status": "SUCCESS"})),
            "/nostatus" => Reply::json(200, json!({"other": 1})),
            "/retry-once" if first => Reply::json(200, json!({"status": "RETRY"})),
            "/unknown-once" if first => Reply::json(200, json!({"status": "MAYBE"})),
            "/retry-once" | "/unknown-once" => Reply::json(200, json!({"status": "SUCCESS"})),
            "/drop" => Reply::json(200, json!({"status": "DROP"})),
            "/notfound" => Reply::status(404).body("no such route"),
            "/fail500" => Reply::status(500).body("boom"),
            "/fail400" => Reply::status(400).body("bad"),
            _ => Reply::ok(),
        }
    })
    .await;
    let sc = start(&app, &resources).await;
    for t in [
        "empty",
        "nonjson",
        "success",
        "nostatus",
        "retry-once",
        "unknown-once",
        "drop",
        "notfound",
        "fail500",
        "fail400",
    ] {
        assert_eq!(publish_json(&sc, t, json!({"topic": t})).await, 204);
    }
    let dlq = app.wait_for(4, WAIT, |r| is_post(r, "/dlq")).await;
    assert_eq!(dlq.len(), 4, "{}", sc.logs());
    let by_topic: HashMap<String, Value> = dlq
        .iter()
        .map(|r| (r.json()["dlqtopic"].as_str().unwrap().to_string(), r.json()))
        .collect();
    assert_eq!(by_topic["drop"]["dlqreason"], "DROP");
    assert_eq!(by_topic["drop"]["dlqattempts"], 1);
    assert_eq!(by_topic["notfound"]["dlqreason"], "NOT_FOUND");
    assert_eq!(by_topic["notfound"]["dlqstatus"], 404);
    assert_eq!(by_topic["notfound"]["dlqerror"], "no such route");
    let exhausted = &by_topic["fail500"];
    assert_eq!(exhausted["dlqreason"], "RETRIES_EXHAUSTED");
    assert_eq!(exhausted["dlqstatus"], 500);
    assert_eq!(exhausted["dlqerror"], "boom");
    assert_eq!(
        exhausted["dlqattempts"], 4,
        "built-in policy: 1 attempt + 3 retries"
    );
    assert_eq!(exhausted["dlqpubsub"], "pubsub");
    assert_eq!(exhausted["dlqsubscriber"], "subscriber");
    assert_eq!(exhausted["dlqroute"], "/fail500");
    assert!(
        exhausted["dlqposition"].as_str().unwrap().contains('-'),
        "a stream id"
    );
    assert!(exhausted["dlqfirstfailure"].as_str().is_some());
    assert!(exhausted["dlqlastfailure"].as_str().is_some());
    // The dead letter is the original event: same id and data.
    let original = app.requests_to("/fail500")[0].json();
    assert_eq!(exhausted["id"], original["id"]);
    assert_eq!(exhausted["data"], json!({"topic": "fail500"}));
    assert_eq!(by_topic["fail400"]["dlqreason"], "RETRIES_EXHAUSTED");
    // Retried rows were redelivered and then succeeded.
    assert_eq!(app.requests_to("/retry-once").len(), 2);
    assert_eq!(app.requests_to("/unknown-once").len(), 2);
    assert_eq!(app.requests_to("/fail500").len(), 4);
    // Successes were delivered once and not dead-lettered.
    for t in ["empty", "nonjson", "success", "nostatus"] {
        assert_eq!(app.requests_to(&format!("/{t}")).len(), 1, "{t}");
        assert!(!by_topic.contains_key(t));
    }
}

#[tokio::test]
async fn envelope_headers_passthrough_raw_and_routing() {
    let resources = ResourcesDir::new();
    let app = TestApp::start(|req| {
        if req.path() == "/dapr/subscribe" {
            return Reply::json(200, json!([
                {"pubsubname": "pubsub", "topic": "orders/eu", "route": "/orders"},
                {"pubsubname": "pubsub", "topic": "raw", "route": "/raw", "metadata": {"rawPayload": "true"}},
                {"pubsubname": "pubsub", "topic": "routed", "deadLetterTopic": "dead",
                 "routes": {"rules": [
                    {"match": "event.type == \"widget\"", "path": "/widgets"},
                    {"match": "has(event.data.amount) && event.data.amount > 100.0", "path": "/big"}],
                  "default": "/other"}},
                {"pubsubname": "pubsub", "topic": "strict", "deadLetterTopic": "dead",
                 "routes": {"rules": [{"match": "event.type == \"never\"", "path": "/never"}]}},
                {"pubsubname": "pubsub", "topic": "dead", "route": "/dead"},
            ]));
        }
        Reply::ok()
    })
    .await;
    resources.write(
        "memory.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec: {type: pubsub.in-memory, version: v1, metadata: []}\n",
    );
    let sc = start(&app, &resources).await;
    let c = http();
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = c
        .post(sc.url("/v1.0/publish/pubsub/orders/eu?metadata.ttlInSeconds=600&metadata.cloudevent.subject=sub1"))
        .header("content-type", "application/json")
        .header("traceparent", tp)
        .body(r#"{"orderId":7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let got = app.wait_for(1, WAIT, |r| is_post(r, "/orders")).await;
    let req = &got[0];
    let ce = req.json();
    assert_eq!(ce["data"], json!({"orderId": 7}));
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(ce["source"], "subscriber");
    assert_eq!(ce["type"], "com.dapr.event.sent");
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["topic"], "orders/eu");
    assert_eq!(ce["pubsubname"], "pubsub");
    assert_eq!(ce["traceparent"], tp);
    assert_eq!(ce["traceid"], tp);
    assert_eq!(ce["subject"], "sub1");
    assert!(ce["expiration"].as_str().is_some());
    assert!(ce["time"].as_str().is_some());
    assert_eq!(
        req.header("content-type"),
        Some("application/cloudevents+json")
    );
    assert_eq!(req.header("traceparent"), Some(tp));
    assert_eq!(req.header("pubsubname"), Some("pubsub"));

    // Text, and a body that already is a CloudEvent.
    c.post(sc.url("/v1.0/publish/pubsub/orders/eu"))
        .body("plain words")
        .send()
        .await
        .unwrap();
    c.post(sc.url("/v1.0/publish/pubsub/orders/eu"))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"id":"mine","source":"elsewhere","type":"custom","specversion":"1.0","topic":"wrong","data":"x","ext":"kept"}"#)
        .send()
        .await
        .unwrap();
    let got = app.wait_for(3, WAIT, |r| is_post(r, "/orders")).await;
    let text = got
        .iter()
        .map(|r| r.json())
        .find(|e| e["data"] == "plain words")
        .unwrap();
    assert_eq!(text["datacontenttype"], "text/plain");
    let passed = got
        .iter()
        .map(|r| r.json())
        .find(|e| e["id"] == "mine")
        .unwrap();
    assert_eq!(passed["source"], "elsewhere");
    assert_eq!(passed["type"], "custom");
    assert_eq!(passed["topic"], "orders/eu");
    assert_eq!(passed["pubsubname"], "pubsub");
    assert_eq!(passed["ext"], "kept");

    // Raw payload: published unwrapped, delivered in Dapr's raw envelope.
    let r = c
        .post(sc.url("/v1.0/publish/pubsub/raw?metadata.rawPayload=true"))
        .body("raw-bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let raw = app.wait_for(1, WAIT, |r| is_post(r, "/raw")).await[0].json();
    assert_eq!(raw["data_base64"], "cmF3LWJ5dGVz");
    assert_eq!(raw["datacontenttype"], "application/octet-stream");
    let r = c
        .post(sc.url("/v1.0/publish/pubsub/raw?metadata.rawPayload=maybe"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errorCode"],
        "ERR_PUBSUB_REQUEST_METADATA"
    );

    // Routing: first matching rule, then default; no rule and no default is NO_ROUTE.
    c.post(sc.url("/v1.0/publish/pubsub/routed?metadata.cloudevent.type=widget"))
        .json(&json!({"amount": 500}))
        .send()
        .await
        .unwrap();
    publish_json(&sc, "routed", json!({"amount": 500})).await;
    publish_json(&sc, "routed", json!({"amount": 5})).await;
    publish_json(&sc, "strict", json!({"n": 1})).await;
    assert_eq!(
        app.wait_for(1, WAIT, |r| is_post(r, "/widgets"))
            .await
            .len(),
        1
    );
    assert_eq!(app.wait_for(1, WAIT, |r| is_post(r, "/big")).await.len(), 1);
    assert_eq!(
        app.wait_for(1, WAIT, |r| is_post(r, "/other")).await.len(),
        1
    );
    let dead = app.wait_for(1, WAIT, |r| is_post(r, "/dead")).await;
    assert_eq!(dead[0].json()["dlqreason"], "NO_ROUTE");
    assert!(app.requests_to("/never").is_empty());

    // An expired event is never delivered; it is dead-lettered as EXPIRED.
    let r = c
        .post(sc.url("/v1.0/publish/pubsub/routed"))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"id":"old","data":{"amount":1000},"expiration":"2000-01-01T00:00:00Z"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let dead = app.wait_for(2, WAIT, |r| is_post(r, "/dead")).await;
    let expired = dead
        .iter()
        .map(|r| r.json())
        .find(|e| e["id"] == "old")
        .unwrap();
    assert_eq!(expired["dlqreason"], "EXPIRED");
    assert_eq!(expired["dlqattempts"], 0);
    assert!(
        app.requests_to("/big").len() == 1,
        "the expired event was not delivered"
    );

    // Both kinds of subscriptions are listed.
    let md: Value = tandem_testkit::get_json(&sc.url("/v1.0/metadata")).await;
    let subs = md["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 5);
    assert!(subs.iter().all(|s| s["type"] == "PROGRAMMATIC"));
    let routed = subs.iter().find(|s| s["topic"] == "routed").unwrap();
    assert_eq!(routed["rules"].as_array().unwrap().len(), 3);
    assert_eq!(routed["deadLetterTopic"], "dead");
}

#[tokio::test]
async fn publish_errors_scopes_and_declarative_subscriptions() {
    let resources = ResourcesDir::new();
    resources.write(
        "pubsub.yaml",
        r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
  - {name: publishingScopes, value: "subscriber=allowed,declared"}
  - {name: subscriptionScopes, value: "subscriber=declared,v1topic"}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: limited}
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
  - {name: allowedTopics, value: "a"}
  - {name: protectedTopics, value: "a"}
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: decl}
spec:
  pubsubname: pubsub
  topic: declared
  routes: {rules: [{match: 'event.data.kind == "x"', path: /x}], default: /declared}
scopes: [subscriber]
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata: {name: old}
spec: {pubsubname: pubsub, topic: v1topic, route: /v1route}
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: notmine}
spec: {pubsubname: pubsub, topic: declared, routes: {default: /wrong}}
scopes: [someone-else]
"#,
    );
    let app = TestApp::start(|req| match req.path() {
        "/dapr/subscribe" => Reply::status(404),
        _ => Reply::ok(),
    })
    .await;
    let sc = start(&app, &resources).await;
    let c = http();
    let code = |v: Value| v["errorCode"].as_str().unwrap_or_default().to_string();
    let r = c
        .post(sc.url("/v1.0/publish/nope/t"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r.json().await.unwrap()), "ERR_PUBSUB_NOT_FOUND");
    let r = c
        .post(sc.url("/v1.0/publish/pubsub"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(code(r.json().await.unwrap()), "ERR_TOPIC_NAME_EMPTY");
    let r = c
        .post(sc.url("/v1.0/publish/pubsub/forbidden"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(code(r.json().await.unwrap()), "ERR_PUBSUB_FORBIDDEN");
    let r = c
        .post(sc.url("/v1.0/publish/limited/b"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "not in allowedTopics");
    let r = c
        .post(sc.url("/v1.0/publish/limited/a"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "protected without a scope");
    assert_eq!(
        c.put(sc.url("/v1.0/publish/pubsub/allowed"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );

    // Declarative subscriptions in scope are delivered, with routing rules.
    assert_eq!(
        publish_json(&sc, "declared", json!({"kind": "x"})).await,
        204
    );
    assert_eq!(
        publish_json(&sc, "declared", json!({"kind": "y"})).await,
        204
    );
    app.wait_for(1, WAIT, |r| is_post(r, "/x")).await;
    app.wait_for(1, WAIT, |r| is_post(r, "/declared")).await;
    assert!(app.requests_to("/wrong").is_empty());
    let md: Value = tandem_testkit::get_json(&sc.url("/v1.0/metadata")).await;
    let subs = md["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 2);
    assert!(subs.iter().all(|s| s["type"] == "DECLARATIVE"));
    assert!(
        app.requests_to("/dapr/subscribe").len() == 1,
        "404 means none, no retry"
    );
}

#[tokio::test]
async fn bulk_publish_and_bulk_subscribe() {
    let redis = RedisServer::start().await;
    let resources = ResourcesDir::new();
    resources.write("pubsub.yaml", &redis_component(&redis, ""));
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let app = TestApp::start(move |req| {
        if req.path() == "/dapr/subscribe" {
            return Reply::json(200, json!([
                {"pubsubname": "pubsub", "topic": "bulk", "route": "/bulk", "deadLetterTopic": "bulkdlq",
                 "bulkSubscribe": {"enabled": true, "maxMessagesCount": 10, "maxAwaitDurationMs": 300}},
                {"pubsubname": "pubsub", "topic": "bulkdlq", "route": "/bulkdlq"},
                {"pubsubname": "pubsub", "topic": "plain", "route": "/plain"},
                {"pubsubname": "pubsub", "topic": "rawbulk", "route": "/rawbulk", "metadata": {"rawPayload": "true"},
                 "bulkSubscribe": {"enabled": true, "maxMessagesCount": 2, "maxAwaitDurationMs": 200}},
            ]));
        }
        if req.path() == "/bulk" {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let body = req.json();
            let statuses: Vec<Value> = body["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let v = e["event"]["data"]["v"].as_i64().unwrap_or(-1);
                    let status = match v {
                        1 => "DROP",
                        2 if n == 0 => "RETRY",
                        3 if n == 0 => "", // missing status is RETRY
                        _ => "SUCCESS",
                    };
                    json!({"entryId": e["entryId"], "status": status})
                })
                .collect();
            return Reply::json(200, json!({"statuses": statuses}));
        }
        Reply::ok()
    })
    .await;
    let sc = start(&app, &resources).await;
    let c = http();
    let entries: Vec<Value> = (0..5)
        .map(|v| json!({"entryId": format!("e{v}"), "event": {"v": v}, "contentType": "application/json"}))
        .collect();
    let r = c
        .post(sc.url("/v1.0-alpha1/publish/bulk/pubsub/bulk"))
        .json(&entries)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let first = app.wait_for(1, WAIT, |r| is_post(r, "/bulk")).await[0].json();
    assert_eq!(first["type"], "com.dapr.event.sent.bulk");
    assert_eq!(first["topic"], "bulk");
    assert_eq!(first["pubsubname"], "pubsub");
    assert_eq!(first["entries"].as_array().unwrap().len(), 5, "one batch");
    assert_eq!(first["entries"][0]["event"]["source"], "subscriber");
    // Entries 2 and 3 are retried alone, entry 1 goes to the dead-letter topic.
    let second = app.wait_for(2, WAIT, |r| is_post(r, "/bulk")).await[1].json();
    assert_eq!(second["entries"].as_array().unwrap().len(), 2);
    let dead = app.wait_for(1, WAIT, |r| is_post(r, "/bulkdlq")).await;
    assert_eq!(dead[0].json()["dlqreason"], "DROP");
    assert_eq!(dead[0].json()["data"], json!({"v": 1}));

    // /v1.0 route, entryID spelling, text entries and per-entry metadata.
    let r = c
        .post(sc.url("/v1.0/publish/bulk/pubsub/plain"))
        .json(&json!([
            {"entryID": "a", "event": "hello", "contentType": "text/plain"},
            {"entryId": "b", "event": {"x": 1}, "contentType": "application/json", "metadata": {"cloudevent.type": "t2"}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let plain = app.wait_for(2, WAIT, |r| is_post(r, "/plain")).await;
    let events: Vec<Value> = plain.iter().map(|r| r.json()).collect();
    assert!(events
        .iter()
        .any(|e| e["data"] == "hello" && e["datacontenttype"] == "text/plain"));
    assert!(events
        .iter()
        .any(|e| e["data"] == json!({"x": 1}) && e["type"] == "t2"));

    // Raw bulk subscribers get each payload base64 as application/octet-stream, as daprd sends.
    for body in ["r1", "r2"] {
        let r = c
            .post(sc.url("/v1.0/publish/pubsub/rawbulk?metadata.rawPayload=true"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let raw = app.wait_for(1, WAIT, |r| is_post(r, "/rawbulk")).await;
    assert!(!raw.is_empty(), "{}", sc.logs());
    let raw = raw[0].json();
    let entries = raw["entries"].as_array().unwrap();
    assert_eq!(entries[0]["contentType"], "application/octet-stream");
    assert_eq!(entries[0]["event"], "cjE=");

    for bad in [
        json!([{"entryId": "a", "event": 1}, {"entryId": "a", "event": 2}]),
        json!([{"event": 1}]),
        json!({"not": "a list"}),
    ] {
        let r = c
            .post(sc.url("/v1.0-alpha1/publish/bulk/pubsub/plain"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["errorCode"],
            "ERR_PUBSUB_EVENTS_SER"
        );
    }
}

#[tokio::test]
async fn bulk_publish_partial_failure_is_500_with_failed_entries() {
    let mut redis = RedisServer::start().await;
    let resources = ResourcesDir::new();
    resources.write("pubsub.yaml", &redis_component(&redis, ""));
    let app = TestApp::start(|_| Reply::status(404)).await;
    let sc = start(&app, &resources).await;
    redis.stop();
    let r = http()
        .post(sc.url("/v1.0-alpha1/publish/bulk/pubsub/t"))
        .json(&json!([{"entryId": "a", "event": 1}, {"entryId": "b", "event": 2}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errorCode"], "ERR_PUBSUB_PUBLISH_MESSAGE");
    let failed = body["failedEntries"].as_array().unwrap();
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["entryId"], "a");
    let r = http()
        .post(sc.url("/v1.0/publish/pubsub/t"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errorCode"],
        "ERR_PUBSUB_PUBLISH_MESSAGE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_in_order_one_at_a_time_other_keys_in_parallel() {
    let redis = RedisServer::start().await;
    let resources = ResourcesDir::new();
    resources.write(
        "pubsub.yaml",
        &redis_component(&redis, "  - {name: concurrency, value: \"4\"}\n"),
    );
    let busy: Arc<Mutex<HashMap<String, bool>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (b, o) = (busy.clone(), overlaps.clone());
    let app = TestApp::start(move |req| {
        if req.path() == "/dapr/subscribe" {
            return Reply::json(
                200,
                json!([{"pubsubname": "pubsub", "topic": "keyed", "route": "/keyed"}]),
            );
        }
        let key = req.json()["data"]["key"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if b.lock().insert(key.clone(), true) == Some(true) {
            o.fetch_add(1, Ordering::SeqCst);
        }
        // A short pause widens the window in which a second delivery of the key would overlap.
        std::thread::sleep(Duration::from_millis(2));
        b.lock().insert(key, false);
        Reply::ok()
    })
    .await;
    let sc = start(&app, &resources).await;
    let c = http();
    for i in 0..60 {
        let key = format!("k{}", i % 3);
        let r = c
            .post(sc.url(&format!(
                "/v1.0/publish/pubsub/keyed?metadata.partitionKey={key}"
            )))
            .json(&json!({"key": key, "seq": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let got = app.wait_for(60, WAIT, |r| is_post(r, "/keyed")).await;
    assert_eq!(got.len(), 60);
    let mut last: HashMap<String, i64> = HashMap::new();
    for r in &got {
        let e = r.json();
        let key = e["data"]["key"].as_str().unwrap().to_string();
        let seq = e["data"]["seq"].as_i64().unwrap();
        // Broker metadata arrives as headers.
        assert_eq!(r.header("partitionKey"), Some(key.as_str()));
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(seq > prev, "key {key}: {seq} after {prev}");
        }
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn resiliency_policy_max_retries_zero_is_a_single_attempt_and_nack_redelivers() {
    let redis = RedisServer::start().await;
    let resources = ResourcesDir::new();
    resources.write("pubsub.yaml", &redis_component(&redis, ""));
    resources.write(
        "resiliency.yaml",
        r#"apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    retries:
      once: {policy: constant, duration: 10ms, maxRetries: 0}
  targets:
    components:
      pubsub: {inbound: {retry: once}}
"#,
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let app = TestApp::start(move |req| {
        if req.path() == "/dapr/subscribe" {
            return Reply::json(
                200,
                json!([{"pubsubname": "pubsub", "topic": "t", "route": "/t"}]),
            );
        }
        // Fails the first time; the broker redelivers it (pending entry reclaimed).
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    })
    .await;
    let sc = start(&app, &resources).await;
    assert_eq!(publish_json(&sc, "t", json!({"a": 1})).await, 204);
    let got = app.wait_for(2, WAIT, |r| is_post(r, "/t")).await;
    assert_eq!(got.len(), 2, "{}", sc.logs());
    assert_eq!(got[0].json()["id"], got[1].json()["id"]);
}

#[tokio::test]
async fn deliveries_pause_while_the_app_is_unhealthy() {
    let resources = ResourcesDir::new();
    resources.write(
        "memory.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec: {type: pubsub.in-memory, version: v1, metadata: []}\n",
    );
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = healthy.clone();
    let app = TestApp::start(move |req| match req.path() {
        "/dapr/subscribe" => Reply::json(
            200,
            json!([{"pubsubname": "pubsub", "topic": "t", "route": "/t", "deadLetterTopic": "d"}]),
        ),
        "/healthz" if h.load(Ordering::SeqCst) => Reply::ok(),
        "/healthz" => Reply::status(500),
        _ => Reply::ok(),
    })
    .await;
    let mut sc = Sidecar::builder(env!("CARGO_BIN_EXE_tandem"))
        .app_id("subscriber")
        .app_port(app.port)
        .resources(resources.path())
        .args([
            "--enable-app-health-check",
            "--app-health-probe-interval",
            "1",
            "--app-health-threshold",
            "1",
        ])
        .start()
        .await;
    sc.wait_ready().await;
    healthy.store(false, Ordering::SeqCst);
    assert!(
        tandem_testkit::eventually(WAIT, || async { sc.logs().contains("app is unhealthy") }).await,
        "{}",
        sc.logs()
    );
    assert_eq!(publish_json(&sc, "t", json!({"n": 1})).await, 204);
    assert_eq!(publish_json(&sc, "t", json!({"n": 2})).await, 204);
    // Nothing is delivered, and nothing is dead-lettered, while the app is unhealthy.
    app.wait_for(1, Duration::from_millis(1500), |r| is_post(r, "/t"))
        .await;
    assert!(app.requests_to("/t").is_empty());
    assert!(app.requests_to("/d").is_empty());
    healthy.store(true, Ordering::SeqCst);
    assert_eq!(
        app.wait_for(2, WAIT, |r| is_post(r, "/t")).await.len(),
        2,
        "{}",
        sc.logs()
    );
    assert!(app.requests_to("/d").is_empty());
}

#[tokio::test]
async fn inbound_circuit_breaker_stops_calling_the_app_once_open() {
    let resources = ResourcesDir::new();
    resources.write(
        "memory.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: pubsub}\nspec: {type: pubsub.in-memory, version: v1, metadata: []}\n",
    );
    resources.write(
        "resiliency.yaml",
        r#"apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: r}
spec:
  policies:
    retries:
      many: {policy: constant, duration: 10ms, maxRetries: 9}
    circuitBreakers:
      cb: {maxRequests: 1, timeout: 60s, trip: consecutiveFailures > 2}
  targets:
    components:
      pubsub: {inbound: {retry: many, circuitBreaker: cb}}
"#,
    );
    let app = TestApp::start(|req| match req.path() {
        "/dapr/subscribe" => Reply::json(
            200,
            json!([
                {"pubsubname": "pubsub", "topic": "t", "route": "/t", "deadLetterTopic": "d"},
                {"pubsubname": "pubsub", "topic": "d", "route": "/d"},
            ]),
        ),
        "/t" => Reply::status(500),
        _ => Reply::ok(),
    })
    .await;
    let sc = start(&app, &resources).await;
    assert_eq!(publish_json(&sc, "t", json!({"n": 1})).await, 204);
    // The breaker guards the whole component inbound (a dead-letter subscription on it would
    // be held too), so the exhausted message goes back to the broker.
    assert!(
        tandem_testkit::eventually(WAIT, || async {
            sc.logs()
                .contains("failed after 10 attempt(s): circuit breaker is open (cb/pubsub)")
        })
        .await,
        "{}",
        sc.logs()
    );
    // Three failures trip the breaker; the remaining attempts never reach the app.
    assert_eq!(app.requests_to("/t").len(), 3);
}
