//! Accounting under faults, through the real binary and a real redis-server: every published
//! message is delivered or dead-lettered with the right reason, none is lost; then kill -9 of
//! the sidecar and a restart of Redis mid-stream lose nothing (duplicates are counted and
//! printed, since delivery is at-least-once).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tandem_testkit::{eventually, http, RedisServer, ResourcesDir, Sidecar};

/// What the scripted app does with message `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Script {
    Success,
    RetryThenSuccess,
    Drop,
    NotFound,
    FailForever,
    TooSlow,
}

fn script(seq: u64) -> Script {
    match seq % 100 {
        0..=79 => Script::Success,
        80..=87 => Script::RetryThenSuccess,
        88..=91 => Script::Drop,
        92..=95 => Script::NotFound,
        96..=98 => Script::FailForever,
        _ => Script::TooSlow,
    }
}

#[derive(Default)]
struct Ledger {
    /// seq -> how many times the app accepted it (answered SUCCESS in time).
    delivered: Mutex<HashMap<u64, usize>>,
    /// seq -> dead-letter reasons received.
    dead: Mutex<HashMap<u64, Vec<String>>>,
    /// seq -> attempts seen.
    attempts: Mutex<HashMap<u64, usize>>,
    scripted: bool,
    /// Milliseconds each successful delivery takes (keeps the stream "in flight" for crash tests).
    work_ms: u64,
    requests: AtomicUsize,
}

async fn app_handler(State(ledger): State<Arc<Ledger>>, uri: Uri, body: Bytes) -> Response {
    ledger.requests.fetch_add(1, Ordering::Relaxed);
    if uri.path() == "/dapr/subscribe" {
        return axum::Json(json!([
            {"pubsubname": "pubsub", "topic": "work", "route": "/work", "deadLetterTopic": "dead"},
            {"pubsubname": "pubsub", "topic": "dead", "route": "/dead"},
        ]))
        .into_response();
    }
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(seq) = event["data"]["seq"].as_u64() else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if uri.path() == "/dead" {
        let reason = event["dlqreason"].as_str().unwrap_or_default().to_string();
        ledger.dead.lock().entry(seq).or_default().push(reason);
        return StatusCode::OK.into_response();
    }
    let attempt = {
        let mut a = ledger.attempts.lock();
        let n = a.entry(seq).or_insert(0);
        *n += 1;
        *n
    };
    let plan = if ledger.scripted {
        script(seq)
    } else {
        Script::Success
    };
    let accept = || {
        *ledger.delivered.lock().entry(seq).or_insert(0) += 1;
    };
    match plan {
        Script::Success => {
            if ledger.work_ms > 0 {
                tokio::time::sleep(Duration::from_millis(ledger.work_ms)).await;
            }
            accept();
            axum::Json(json!({"status": "SUCCESS"})).into_response()
        }
        Script::RetryThenSuccess if attempt == 1 => {
            axum::Json(json!({"status": "RETRY"})).into_response()
        }
        Script::RetryThenSuccess => {
            accept();
            StatusCode::OK.into_response()
        }
        Script::Drop => axum::Json(json!({"status": "DROP"})).into_response(),
        Script::NotFound => StatusCode::NOT_FOUND.into_response(),
        Script::FailForever => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Script::TooSlow => {
            // Longer than the delivery timeout: the sidecar gives up; never accepted.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            StatusCode::OK.into_response()
        }
    }
}

async fn start_app(ledger: Arc<Ledger>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = Router::new().fallback(app_handler).with_state(ledger);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (port, server)
}

fn resources(redis: &RedisServer) -> ResourcesDir {
    let dir = ResourcesDir::new();
    dir.write(
        "pubsub.yaml",
        &format!(
            r#"apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {{name: pubsub}}
spec:
  type: pubsub.redis
  version: v1
  metadata:
  - {{name: redisHost, value: "{}"}}
  - {{name: concurrency, value: "100"}}
  - {{name: queueDepth, value: "200"}}
  - {{name: processingTimeout, value: 3s}}
  - {{name: redeliverInterval, value: 500ms}}
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {{name: delivery}}
spec:
  policies:
    timeouts: {{quick: 300ms}}
    retries:
      few: {{policy: exponential, duration: 20ms, maxInterval: 100ms, maxRetries: 2}}
  targets:
    components:
      pubsub: {{inbound: {{timeout: quick, retry: few}}}}
"#,
            redis.address()
        ),
    );
    dir
}

async fn sidecar(app_port: u16, dir: &ResourcesDir) -> Sidecar {
    let mut sc = Sidecar::builder(env!("CARGO_BIN_EXE_tandem"))
        .app_id("accounting")
        .app_port(app_port)
        .resources(dir.path())
        .start()
        .await;
    sc.wait_ready().await;
    sc
}

/// Publishes `range` with bulk publish in chunks; returns the seqs the sidecar confirmed.
async fn publish_range(sc_port: u16, range: std::ops::Range<u64>) -> Vec<u64> {
    let c = http();
    let seqs: Vec<u64> = range.collect();
    let mut confirmed = Vec::new();
    for chunk in seqs.chunks(250) {
        let entries: Vec<Value> = chunk
            .iter()
            .map(|s| json!({"entryId": s.to_string(), "event": {"seq": s}, "contentType": "application/json"}))
            .collect();
        let url = format!("http://127.0.0.1:{sc_port}/v1.0-alpha1/publish/bulk/pubsub/work");
        match c.post(url).json(&entries).send().await {
            Ok(r) if r.status() == 204 => confirmed.extend_from_slice(chunk),
            Ok(r) if r.status() == 500 => {
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let failed: HashSet<String> = body["failedEntries"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e["entryId"].as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                confirmed.extend(chunk.iter().filter(|s| !failed.contains(&s.to_string())));
            }
            _ => {}
        }
    }
    confirmed
}

fn duplicates(ledger: &Ledger) -> usize {
    let delivered: usize = ledger
        .delivered
        .lock()
        .values()
        .map(|n| n.saturating_sub(1))
        .sum();
    let dead: usize = ledger
        .dead
        .lock()
        .values()
        .map(|v| v.len().saturating_sub(1))
        .sum();
    delivered + dead
}

fn settled(ledger: &Ledger, seq: u64) -> bool {
    let delivered = ledger.delivered.lock().contains_key(&seq);
    delivered || ledger.dead.lock().contains_key(&seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_with_a_scripted_mix_are_all_accounted_for() {
    let redis = RedisServer::start().await;
    let ledger = Arc::new(Ledger {
        scripted: true,
        ..Default::default()
    });
    let (port, _app) = start_app(ledger.clone()).await;
    let dir = resources(&redis);
    let sc = sidecar(port, &dir).await;
    let published = publish_range(sc.http_port, 0..10_000).await;
    assert_eq!(published.len(), 10_000);
    let all = eventually(Duration::from_secs(50), || {
        let l = ledger.clone();
        let p = published.clone();
        async move { p.iter().all(|s| settled(&l, *s)) }
    })
    .await;
    let missing: Vec<u64> = published
        .iter()
        .copied()
        .filter(|s| !settled(&ledger, *s))
        .collect();
    assert!(
        all,
        "{} messages unaccounted for, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let delivered = ledger.delivered.lock().clone();
    let dead = ledger.dead.lock().clone();
    for seq in &published {
        let expected = match script(*seq) {
            Script::Success | Script::RetryThenSuccess => None,
            Script::Drop => Some("DROP"),
            Script::NotFound => Some("NOT_FOUND"),
            Script::FailForever | Script::TooSlow => Some("RETRIES_EXHAUSTED"),
        };
        match expected {
            None => {
                assert!(delivered.contains_key(seq), "{seq} not delivered");
                assert!(!dead.contains_key(seq), "{seq} delivered and dead-lettered");
            }
            Some(reason) => {
                assert!(!delivered.contains_key(seq), "{seq} should not be accepted");
                assert_eq!(dead[seq][0], reason, "seq {seq}");
            }
        }
    }
    let attempts = ledger.attempts.lock().clone();
    assert!(published
        .iter()
        .filter(|s| script(**s) == Script::FailForever)
        .all(|s| attempts[s] == 3));
    println!(
        "accounting: published {}, delivered {}, dead-lettered {}, duplicates {}",
        published.len(),
        delivered.len(),
        dead.len(),
        duplicates(&ledger)
    );
    assert_eq!(delivered.len() + dead.len(), published.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_of_the_sidecar_mid_stream_loses_nothing() {
    let redis = RedisServer::start().await;
    let ledger = Arc::new(Ledger {
        work_ms: 5,
        ..Default::default()
    });
    let (port, _app) = start_app(ledger.clone()).await;
    let dir = resources(&redis);
    let mut sc = sidecar(port, &dir).await;
    let published = publish_range(sc.http_port, 0..3000).await;
    assert_eq!(published.len(), 3000);
    // Kill once a part has been delivered, while deliveries are in flight.
    assert!(
        eventually(Duration::from_secs(30), || {
            let l = ledger.clone();
            async move { l.delivered.lock().len() >= 300 }
        })
        .await
    );
    sc.kill().await;
    let before = ledger.delivered.lock().len();
    assert!(before < 3000, "the crash must happen mid-stream");
    let sc2 = sidecar(port, &dir).await;
    let all = eventually(Duration::from_secs(40), || {
        let l = ledger.clone();
        let p = published.clone();
        async move { p.iter().all(|s| settled(&l, *s)) }
    })
    .await;
    let missing = published.iter().filter(|s| !settled(&ledger, **s)).count();
    assert!(all, "{missing} lost after kill -9:\n{}", sc2.logs());
    let delivered = ledger.delivered.lock().len();
    let dups = duplicates(&ledger);
    println!(
        "kill -9: published {}, delivered before crash {before}, delivered {delivered}, duplicates {dups}",
        published.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_redis_mid_stream_loses_nothing() {
    let mut redis = RedisServer::start_persistent().await;
    let ledger = Arc::new(Ledger {
        work_ms: 50,
        ..Default::default()
    });
    let (port, _app) = start_app(ledger.clone()).await;
    let dir = resources(&redis);
    let sc = sidecar(port, &dir).await;
    let mut published = publish_range(sc.http_port, 0..1500).await;
    assert!(
        eventually(Duration::from_secs(30), || {
            let l = ledger.clone();
            async move { l.delivered.lock().len() >= 200 }
        })
        .await
    );
    redis.restart().await;
    let at_restart = ledger.delivered.lock().len();
    assert!(
        at_restart < published.len(),
        "the restart must happen mid-stream"
    );
    // Publishing goes on; what the sidecar refused while Redis was down is not counted.
    let mut next = 1500;
    for _ in 0..50 {
        published.extend(publish_range(sc.http_port, next..next + 100).await);
        next += 100;
        if published.len() >= 2500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = eventually(Duration::from_secs(40), || {
        let l = ledger.clone();
        let p = published.clone();
        async move { p.iter().all(|s| settled(&l, *s)) }
    })
    .await;
    let missing = published.iter().filter(|s| !settled(&ledger, **s)).count();
    assert!(
        all,
        "{missing} lost after the Redis restart:\n{}",
        sc.logs()
    );
    let delivered = ledger.delivered.lock().len();
    let dups = duplicates(&ledger);
    println!(
        "redis restart: published {}, delivered at restart {at_restart}, delivered {delivered}, duplicates {dups}",
        published.len(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_drains_and_a_restart_delivers_the_rest() {
    let redis = RedisServer::start().await;
    let ledger = Arc::new(Ledger {
        work_ms: 5,
        ..Default::default()
    });
    let (port, _app) = start_app(ledger.clone()).await;
    let dir = resources(&redis);
    let mut sc = sidecar(port, &dir).await;
    let published = publish_range(sc.http_port, 0..2000).await;
    assert_eq!(published.len(), 2000);
    assert!(
        eventually(Duration::from_secs(30), || {
            let l = ledger.clone();
            async move { l.delivered.lock().len() >= 200 }
        })
        .await
    );
    sc.signal(nix::sys::signal::Signal::SIGTERM);
    let status = sc.wait().await;
    assert!(status.success(), "{}", sc.logs());
    assert!(sc.logs().contains("drained"), "{}", sc.logs());
    let before = ledger.delivered.lock().len();
    let sc2 = sidecar(port, &dir).await;
    let all = eventually(Duration::from_secs(40), || {
        let l = ledger.clone();
        let p = published.clone();
        async move { p.iter().all(|s| settled(&l, *s)) }
    })
    .await;
    let missing = published.iter().filter(|s| !settled(&ledger, **s)).count();
    assert!(all, "{missing} lost after SIGTERM:\n{}", sc2.logs());
    let dups = duplicates(&ledger);
    println!("sigterm: published 2000, delivered before stop {before}, duplicates {dups}");
}
