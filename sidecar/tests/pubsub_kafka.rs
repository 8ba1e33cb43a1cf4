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
    let md: Value = http()
        .get(sidecar.url("/v1.0/metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
