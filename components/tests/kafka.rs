//! `pubsub.kafka` against librdkafka's in-process mock cluster (no broker needed).
//!
//! Every test makes its own cluster, topic and consumer group. Waits are bounded by generous
//! deadlines that only turn a hang into a failure; nothing asserts how fast anything happens.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tandem_components::pubsub::kafka::{KafkaConfig, KafkaPubSub};
use tandem_components::pubsub::{Message, PubSub, PublishRequest, SubscribeRequest, Subscription};
use tandem_components::{registry, BuildContext, Metadata};

const DEADLINE: Duration = Duration::from_secs(60);

fn cluster(topic: &str, partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(topic, partitions, 1).unwrap();
    cluster
}

async fn connect(bootstrap: &str, group: &str, extra: &[(&str, &str)]) -> KafkaPubSub {
    let mut md: Metadata = [
        ("brokers", bootstrap),
        ("authType", "none"),
        ("consumerGroup", group),
    ]
    .into_iter()
    .collect();
    for (k, v) in extra {
        md.insert(*k, *v);
    }
    let config = KafkaConfig::from_metadata(&md, "app", None).unwrap();
    KafkaPubSub::connect(config).await.unwrap()
}

async fn publish(ps: &KafkaPubSub, topic: &str, data: &str, metadata: &[(&str, &str)]) {
    ps.publish(PublishRequest {
        topic: topic.into(),
        data: data.as_bytes().to_vec().into(),
        content_type: None,
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
    .await
    .unwrap();
}

async fn subscribe(ps: &KafkaPubSub, topic: &str) -> Subscription {
    ps.subscribe(SubscribeRequest {
        topic: topic.into(),
        metadata: BTreeMap::new(),
    })
    .await
    .unwrap()
}

async fn recv(sub: &mut Subscription) -> Message {
    tokio::time::timeout(DEADLINE, sub.messages.recv())
        .await
        .expect("no message before the deadline")
        .expect("subscription ended")
}

fn text(m: &Message) -> String {
    String::from_utf8(m.data.to_vec()).unwrap()
}

/// Reads the consumer group's committed offset of `topic`/`partition` until it equals `want`.
async fn wait_committed(bootstrap: &str, group: &str, topic: &str, partition: i32, want: i64) {
    let (bootstrap, group, topic) = (bootstrap.to_string(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let checker: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let start = std::time::Instant::now();
        let mut last = None;
        while start.elapsed() < DEADLINE {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition);
            if let Ok(got) = checker.committed_offsets(tpl, Duration::from_secs(5)) {
                let offset = got.find_partition(&topic, partition).map(|e| e.offset());
                if offset == Some(Offset::Offset(want)) {
                    return;
                }
                last = offset;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("committed offset never became {want}; last seen {last:?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_puts_partition_key_in_the_record_key_and_metadata_in_headers() {
    let cluster = cluster("orders", 1);
    let bootstrap = cluster.bootstrap_servers();
    let ps = connect(&bootstrap, "g1", &[]).await;
    publish(
        &ps,
        "orders",
        "hello",
        &[("partitionKey", "customer-7"), ("traceid", "abc")],
    )
    .await;

    let record = tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("orders", 0, Offset::Beginning)
            .unwrap();
        reader.assign(&tpl).unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < DEADLINE {
            if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
                let headers: Vec<(String, String)> = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8(h.value.unwrap_or_default().to_vec())
                                        .unwrap(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return (
                    m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                    m.payload().map(|p| p.to_vec()),
                    headers,
                );
            }
        }
        panic!("the record never arrived");
    })
    .await
    .unwrap();
    assert_eq!(record.0.as_deref(), Some("customer-7"));
    assert_eq!(record.1.as_deref(), Some(&b"hello"[..]));
    assert_eq!(record.2, vec![("traceid".to_string(), "abc".to_string())]);
    ps.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_delivers_messages_with_key_headers_and_position() {
    let cluster = cluster("orders", 1);
    let bootstrap = cluster.bootstrap_servers();
    let ps = connect(&bootstrap, "g2", &[("initialOffset", "oldest")]).await;
    publish(
        &ps,
        "orders",
        "one",
        &[("partitionKey", "k1"), ("traceid", "t1")],
    )
    .await;
    publish(&ps, "orders", "two", &[]).await;
    let mut sub = subscribe(&ps, "orders").await;

    let m = recv(&mut sub).await;
    assert_eq!(text(&m), "one");
    assert_eq!(m.topic, "orders");
    assert_eq!(m.position, "0:0");
    assert_eq!(m.partition_key.as_deref(), Some("k1"));
    assert_eq!(m.metadata.get("traceid").map(String::as_str), Some("t1"));
    assert_eq!(m.metadata.get("__key").map(String::as_str), Some("k1"));
    assert_eq!(
        m.metadata.get("__topic").map(String::as_str),
        Some("orders")
    );
    assert_eq!(m.metadata.get("__partition").map(String::as_str), Some("0"));
    assert_eq!(m.metadata.get("__offset").map(String::as_str), Some("0"));
    assert!(!m.metadata.contains_key("partitionKey"));
    m.ack.ack();

    let m = recv(&mut sub).await;
    assert_eq!(text(&m), "two");
    assert_eq!(m.partition_key, None);
    assert_eq!(m.position, "0:1");
    m.ack.ack();
    wait_committed(&bootstrap, "g2", "orders", 0, 2).await;
    sub.stop();
    ps.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newest_skips_messages_published_before_the_subscription() {
    let cluster = cluster("news", 1);
    let bootstrap = cluster.bootstrap_servers();
    let ps = connect(&bootstrap, "g3", &[]).await;
    publish(&ps, "news", "old", &[]).await;
    let mut sub = subscribe(&ps, "news").await;
    // The subscription starts at the end of the partition once it is assigned; keep publishing
    // until something arrives, then check it is not the message from before.
    let mut n = 0;
    let first = loop {
        publish(&ps, "news", &format!("new-{n}"), &[]).await;
        n += 1;
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(500), sub.messages.recv()).await
        {
            break m;
        }
        assert!(n < 120, "nothing delivered");
    };
    assert!(text(&first).starts_with("new-"), "got {}", text(&first));
    first.ack.ack();
    ps.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_only_over_contiguous_settled_messages() {
    let cluster = cluster("ledger", 1);
    let bootstrap = cluster.bootstrap_servers();
    let ps = connect(&bootstrap, "g4", &[("initialOffset", "oldest")]).await;
    for i in 0..4 {
        publish(&ps, "ledger", &format!("m{i}"), &[]).await;
    }
    let mut sub = subscribe(&ps, "ledger").await;
    let mut msgs = Vec::new();
    for _ in 0..4 {
        msgs.push(recv(&mut sub).await);
    }
    let texts: Vec<String> = msgs.iter().map(text).collect();
    assert_eq!(texts, ["m0", "m1", "m2", "m3"]);
    let mut msgs = msgs.into_iter();
    let (m0, m1, m2, m3) = (
        msgs.next().unwrap(),
        msgs.next().unwrap(),
        msgs.next().unwrap(),
        msgs.next().unwrap(),
    );

    // Settle 2 then 0: only offset 0 is a settled prefix, so the group's position is 1.
    m2.ack.ack();
    m0.ack.ack();
    wait_committed(&bootstrap, "g4", "ledger", 0, 1).await;
    // Settling 1 joins 0..=2: position 3 (offset 3 still open).
    m1.ack.ack();
    wait_committed(&bootstrap, "g4", "ledger", 0, 3).await;
    m3.ack.ack();
    wait_committed(&bootstrap, "g4", "ledger", 0, 4).await;
    ps.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_message_is_redelivered_and_not_skipped() {
    let cluster = cluster("retry", 1);
    let bootstrap = cluster.bootstrap_servers();
    let ps = connect(&bootstrap, "g5", &[("initialOffset", "oldest")]).await;
    publish(&ps, "retry", "m0", &[]).await;
    publish(&ps, "retry", "m1", &[]).await;
    let mut sub = subscribe(&ps, "retry").await;
    let m0 = recv(&mut sub).await;
    let m1 = recv(&mut sub).await;
    assert_eq!((text(&m0).as_str(), text(&m1).as_str()), ("m0", "m1"));
    m0.ack.nack();
    m1.ack.ack();

    let again = recv(&mut sub).await;
    assert_eq!(text(&again), "m0");
    assert_eq!(again.position, "0:0");
    // Dropping the handle unsettled is a nack too.
    drop(again);
    let again = recv(&mut sub).await;
    assert_eq!(text(&again), "m0");
    again.ack.ack();
    wait_committed(&bootstrap, "g5", "retry", 0, 2).await;
    ps.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_in_the_group_resumes_after_the_committed_offset() {
    let cluster = cluster("resume", 1);
    let bootstrap = cluster.bootstrap_servers();
    let first = connect(&bootstrap, "g6", &[("initialOffset", "oldest")]).await;
    for i in 0..4 {
        publish(&first, "resume", &format!("m{i}"), &[]).await;
    }
    let mut sub = subscribe(&first, "resume").await;
    let mut msgs = Vec::new();
    for _ in 0..4 {
        msgs.push(recv(&mut sub).await);
    }
    let mut msgs = msgs.into_iter();
    let (m0, m1, m2, m3) = (
        msgs.next().unwrap(),
        msgs.next().unwrap(),
        msgs.next().unwrap(),
        msgs.next().unwrap(),
    );
    m0.ack.ack();
    m1.ack.ack();
    m3.ack.ack();
    wait_committed(&bootstrap, "g6", "resume", 0, 2).await;
    // m2 is still in flight when this sidecar goes away.
    sub.stop();
    first.close().await;
    drop(m2);

    let second = connect(&bootstrap, "g6", &[("initialOffset", "oldest")]).await;
    let mut sub = subscribe(&second, "resume").await;
    // Nothing settled is delivered again; the unsettled m2 is, and m3 after it (it was acked
    // but could not be committed past m2).
    let m = recv(&mut sub).await;
    assert_eq!(text(&m), "m2");
    m.ack.ack();
    let m = recv(&mut sub).await;
    assert_eq!(text(&m), "m3");
    m.ack.ack();
    publish(&second, "resume", "m4", &[]).await;
    let m = recv(&mut sub).await;
    assert_eq!(text(&m), "m4");
    m.ack.ack();
    wait_committed(&bootstrap, "g6", "resume", 0, 5).await;
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_sharing_a_group_lose_nothing_across_a_rebalance() {
    let cluster = cluster("shared", 2);
    let bootstrap = cluster.bootstrap_servers();
    let a = connect(&bootstrap, "g7", &[("initialOffset", "oldest")]).await;
    let b = connect(&bootstrap, "g7", &[("initialOffset", "oldest")]).await;
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5"];
    for (i, key) in keys.iter().enumerate() {
        publish(&a, "shared", &format!("m{i}"), &[("partitionKey", key)]).await;
    }
    let mut sub_a = subscribe(&a, "shared").await;
    // `a` owns both partitions until `b` joins; acking everything it gets commits it, and the
    // revocation when `b` joins commits what `a` settled.
    let mut seen = std::collections::BTreeSet::new();
    let m = recv(&mut sub_a).await;
    seen.insert(text(&m));
    m.ack.ack();
    let mut sub_b = subscribe(&b, "shared").await;
    for i in 6..12 {
        publish(
            &a,
            "shared",
            &format!("m{i}"),
            &[("partitionKey", keys[i % 6])],
        )
        .await;
    }
    while seen.len() < 12 {
        let m = tokio::select! {
            Some(m) = sub_a.messages.recv() => m,
            Some(m) = sub_b.messages.recv() => m,
            _ = tokio::time::sleep(DEADLINE) => panic!("only got {seen:?}"),
        };
        seen.insert(text(&m));
        m.ack.ack();
    }
    let want: std::collections::BTreeSet<String> = (0..12).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn the_registry_builds_kafka_and_reports_metadata_errors_by_field() {
    assert!(registry::is_supported("pubsub.kafka", "v1"));
    let md: Metadata = [("brokers", "127.0.0.1:1"), ("authType", "oidc")]
        .into_iter()
        .collect();
    let err = registry::build(
        "pubsub.kafka",
        "v1",
        md,
        BuildContext {
            name: "kafka".into(),
            app_id: "app".into(),
            namespace: None,
        },
    )
    .await
    .err()
    .expect("oidc is rejected");
    assert!(err.to_string().contains("`authType`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_gets_everything_in_order_through_a_small_buffer() {
    let cluster = cluster("slow", 1);
    let bootstrap = cluster.bootstrap_servers();
    let ps = connect(
        &bootstrap,
        "g8",
        &[("initialOffset", "oldest"), ("channelBufferSize", "2")],
    )
    .await;
    for i in 0..40 {
        publish(&ps, "slow", &format!("m{i}"), &[]).await;
    }
    let mut sub = subscribe(&ps, "slow").await;
    let first = recv(&mut sub).await;
    assert_eq!(text(&first), "m0");
    first.ack.ack();
    // Let the consumer run into the full buffer (and pause fetching) before draining.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..40 {
        let m = recv(&mut sub).await;
        assert_eq!(text(&m), format!("m{i}"));
        m.ack.ack();
    }
    wait_committed(&bootstrap, "g8", "slow", 0, 40).await;
    ps.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_commits_what_is_settled_and_hands_over_the_rest() {
    let cluster = cluster("handover", 1);
    let bootstrap = cluster.bootstrap_servers();
    let a = connect(&bootstrap, "g9", &[("initialOffset", "oldest")]).await;
    let b = connect(&bootstrap, "g9", &[("initialOffset", "oldest")]).await;
    publish(&a, "handover", "m0", &[]).await;
    publish(&a, "handover", "m1", &[]).await;
    let mut sub_a = subscribe(&a, "handover").await;
    let m0 = recv(&mut sub_a).await;
    let held = recv(&mut sub_a).await;
    assert_eq!((text(&m0).as_str(), text(&held).as_str()), ("m0", "m1"));
    m0.ack.ack();
    wait_committed(&bootstrap, "g9", "handover", 0, 1).await;

    // `b` joining revokes the partition from `a` (eager protocol). Whoever owns it next starts
    // from the committed offset: m1 comes again, m0 never does.
    let mut sub_b = subscribe(&b, "handover").await;
    let again = tokio::select! {
        Some(m) = sub_a.messages.recv() => m,
        Some(m) = sub_b.messages.recv() => m,
        _ = tokio::time::sleep(DEADLINE) => panic!("m1 was not handed over"),
    };
    assert_eq!(text(&again), "m1");
    // The old delivery is settled too; its partition was revoked, so only the fresh one counts.
    held.ack.ack();
    again.ack.ack();
    // The group may rebalance more than once while `b` joins (a commit sent meanwhile can be
    // rejected), so m1 may come yet again: keep taking whatever arrives until 2 is committed.
    // Nothing before the committed offset may ever come back.
    let drain = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let m = tokio::select! {
                Some(m) = sub_a.messages.recv() => m,
                Some(m) = sub_b.messages.recv() => m,
                else => return seen,
            };
            seen.push(text(&m));
            m.ack.ack();
            if seen.len() > 100 {
                return seen;
            }
        }
    });
    wait_committed(&bootstrap, "g9", "handover", 0, 2).await;
    a.close().await;
    b.close().await;
    let seen = drain.await.unwrap();
    assert!(seen.iter().all(|t| t == "m1"), "{seen:?}");
}

#[tokio::test]
async fn brokers_that_do_not_answer_fail_init_naming_them() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let brokers = format!("127.0.0.1:{port}");
    let md: Metadata = [("brokers", brokers.as_str()), ("authType", "none")]
        .into_iter()
        .collect();
    let config = KafkaConfig::from_metadata(&md, "app", None).unwrap();
    let err = KafkaPubSub::connect(config)
        .await
        .err()
        .expect("nobody listens there");
    assert!(err.to_string().contains(&brokers), "{err}");
}
