//! `pubsub.kafka` in the real binary: it initialises against a broker (librdkafka's mock
//! cluster, in this test process) and a metadata field Tandem cannot honour stops start-up with
//! an error naming the file and the field.

use std::process::Stdio;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use serde_json::Value;
use tandem_testkit::{free_port, http, ResourcesDir, Sidecar};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

fn kafka_component(name: &str, metadata: &[(&str, &str)]) -> String {
    let mut text = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: pubsub.kafka\n  version: v1\n  metadata:\n"
    );
    for (k, v) in metadata {
        text.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    text
}

#[tokio::test]
async fn a_kafka_component_initialises_and_is_listed() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let res = ResourcesDir::new();
    res.write(
        "kafka.yaml",
        &kafka_component(
            "events",
            &[
                ("brokers", &brokers),
                ("authType", "none"),
                ("initialOffset", "oldest"),
            ],
        ),
    );
    let sidecar = Sidecar::builder(BIN)
        .app_id("kafka-app")
        .resources(res.path())
        .start()
        .await;
    let md: Value = tandem_testkit::get_json(&sidecar.url("/v1.0/metadata")).await;
    let listed = md["components"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "events" && c["type"] == "pubsub.kafka" && c["version"] == "v1");
    assert!(listed, "{md}");
}

#[tokio::test]
async fn an_unsupported_auth_type_stops_start_up_naming_the_field() {
    let res = ResourcesDir::new();
    res.write(
        "kafka.yaml",
        &kafka_component(
            "events",
            &[("brokers", "127.0.0.1:9"), ("authType", "awsiam")],
        ),
    );
    let home = tempfile::tempdir().unwrap();
    let dir = res.path().display().to_string();
    let port = free_port().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(BIN)
            .args([
                "sidecar",
                "--app-id",
                "bad",
                "--dapr-http-port",
                &port,
                "--resources-path",
                &dir,
            ])
            .env("HOME", home.path())
            .env_remove("DAPR_API_TOKEN")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("process exits")
    .expect("process runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "must fail:\n{text}");
    for needle in ["kafka.yaml", "authType", "awsiam"] {
        assert!(text.contains(needle), "output lacks {needle:?}:\n{text}");
    }
}

/// Publish through the API, deliver to the app through the delivery engine: a message the app
/// keeps failing outlasts the engine's retries, is nacked, and Kafka redelivers it (the offset
/// is not committed past it) until the app takes it.
#[tokio::test]
async fn publish_and_deliver_through_kafka_with_redelivery_after_retries_run_out() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tandem_testkit::{Reply, TestApp};

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let res = ResourcesDir::new();
    res.write(
        "kafka.yaml",
        &kafka_component(
            "pubsub",
            &[
                ("brokers", &brokers),
                ("authType", "none"),
                ("initialOffset", "oldest"),
            ],
        ),
    );
    let failures_left = Arc::new(AtomicUsize::new(6));
    let left = failures_left.clone();
    let app = TestApp::start(move |req| {
        if req.path() == "/dapr/subscribe" {
            return Reply::json(
                200,
                serde_json::json!([{"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}]),
            );
        }
        if req.path() == "/orders" && req.json()["data"]["n"] == 1 {
            let failing = left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Reply::status(500).body("not yet");
            }
        }
        Reply::json(200, serde_json::json!({"status": "SUCCESS"}))
    })
    .await;
    let mut sidecar = Sidecar::builder(BIN)
        .app_id("kafka-app")
        .app_port(app.port)
        .resources(res.path())
        .start()
        .await;
    sidecar.wait_ready().await;

    for n in [1, 2] {
        let status = http()
            .post(sidecar.url("/v1.0/publish/pubsub/orders?metadata.partitionKey=k1"))
            .json(&serde_json::json!({"n": n}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 204);
    }
    let is_order = |r: &tandem_testkit::RecordedRequest, n: i64| {
        r.path() == "/orders" && r.json()["data"]["n"] == n
    };
    // Six failures outlast the engine's built-in policy (one attempt + 3 retries), so the
    // seventh, successful attempt is only reached through a nack and Kafka-side redelivery.
    let ones = app
        .wait_for(7, Duration::from_secs(60), |r| is_order(r, 1))
        .await;
    assert_eq!(ones.len(), 7, "{}", sidecar.logs());
    assert_eq!(failures_left.load(Ordering::SeqCst), 0);
    let event = ones[0].json();
    assert_eq!(event["topic"], "orders");
    assert_eq!(event["pubsubname"], "pubsub");
    let twos = app
        .wait_for(1, Duration::from_secs(60), |r| is_order(r, 2))
        .await;
    assert_eq!(twos.len(), 1, "{}", sidecar.logs());
}

/// The record key is the message's partition key, so the delivery engine keeps each key's
/// messages in publish order even with several partitions and parallel delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_key_messages_arrive_in_publish_order() {
    use tandem_testkit::{Reply, TestApp};

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("keyed", 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let res = ResourcesDir::new();
    res.write(
        "kafka.yaml",
        &kafka_component(
            "pubsub",
            &[
                ("brokers", &brokers),
                ("authType", "none"),
                ("initialOffset", "oldest"),
                ("concurrency", "4"),
            ],
        ),
    );
    let app = TestApp::start(|req| {
        if req.path() == "/dapr/subscribe" {
            return Reply::json(
                200,
                serde_json::json!([{"pubsubname": "pubsub", "topic": "keyed", "route": "/keyed"}]),
            );
        }
        Reply::ok()
    })
    .await;
    let mut sidecar = Sidecar::builder(BIN)
        .app_id("kafka-keyed")
        .app_port(app.port)
        .resources(res.path())
        .start()
        .await;
    sidecar.wait_ready().await;
    let client = http();
    for i in 0..30 {
        let key = format!("k{}", i % 3);
        let status = client
            .post(sidecar.url(&format!(
                "/v1.0/publish/pubsub/keyed?metadata.partitionKey={key}"
            )))
            .json(&serde_json::json!({"key": key, "seq": i}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 204);
    }
    let got = app
        .wait_for(30, Duration::from_secs(60), |r| r.path() == "/keyed")
        .await;
    assert_eq!(got.len(), 30, "{}", sidecar.logs());
    let mut last = std::collections::HashMap::new();
    for r in &got {
        let e = r.json();
        let key = e["data"]["key"].as_str().unwrap().to_string();
        let seq = e["data"]["seq"].as_i64().unwrap();
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(seq > prev, "key {key}: {seq} after {prev}");
        }
    }
}
