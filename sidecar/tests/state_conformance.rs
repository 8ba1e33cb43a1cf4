//! One conformance suite for the state API, run through the real binary's HTTP API against each
//! store: state.in-memory, state.sqlite, state.redis (own redis-server) and state.postgresql (own
//! database on the local server).

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tandem_testkit::{eventually, http, PostgresDb, RedisServer, ResourcesDir, Sidecar, TestCa};

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Memory,
    Sqlite,
    Redis,
    Postgres,
}

/// The backing server or file of one test, kept alive for the test's length.
enum Backend {
    None,
    Sqlite(tempfile::TempDir),
    Redis(RedisServer),
    Postgres(PostgresDb),
}

impl Backend {
    async fn start(kind: Kind) -> Self {
        match kind {
            Kind::Memory => Backend::None,
            Kind::Sqlite => Backend::Sqlite(tempfile::tempdir().unwrap()),
            Kind::Redis => Backend::Redis(RedisServer::start().await),
            Kind::Postgres => Backend::Postgres(PostgresDb::create()),
        }
    }

    /// A component YAML for this backend, with extra metadata lines.
    fn component(&self, name: &str, extra: &[(&str, &str)]) -> String {
        let (ty, mut md): (&str, Vec<(String, String)>) = match self {
            Backend::None => ("state.in-memory", vec![]),
            Backend::Sqlite(dir) => (
                "state.sqlite",
                vec![
                    (
                        "connectionString".into(),
                        dir.path().join("state.db").display().to_string(),
                    ),
                    ("cleanupInterval".into(), "1s".into()),
                ],
            ),
            Backend::Redis(server) => ("state.redis", vec![("redisHost".into(), server.address())]),
            Backend::Postgres(db) => (
                "state.postgresql",
                vec![
                    // pgx syntax, as in Dapr's docs (`database`, pool options).
                    (
                        "connectionString".into(),
                        format!(
                            "host=127.0.0.1 user=postgres port=5432 connect_timeout=10 database={} pool_max_conns=8",
                            db.name
                        ),
                    ),
                    ("cleanupInterval".into(), "1s".into()),
                ],
            ),
        };
        md.push(("actorStateStore".into(), "true".into()));
        md.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut yaml = format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {ty}\n  version: v1\n  metadata:\n"
        );
        for (k, v) in md {
            yaml.push_str(&format!("  - name: {k}\n    value: {}\n", json!(v)));
        }
        yaml
    }
}

struct Env {
    backend: Backend,
    _resources: ResourcesDir,
    sidecar: Sidecar,
    client: reqwest::Client,
}

async fn sidecar_for(
    backend: &Backend,
    app_id: &str,
    extra: &[(&str, &str)],
) -> (ResourcesDir, Sidecar) {
    let resources = ResourcesDir::new();
    resources.write("statestore.yaml", &backend.component("statestore", extra));
    let sidecar = Sidecar::builder(BIN)
        .app_id(app_id)
        .resources(resources.path())
        .start()
        .await;
    (resources, sidecar)
}

impl Env {
    async fn start(kind: Kind) -> Self {
        let backend = Backend::start(kind).await;
        let (resources, sidecar) = sidecar_for(&backend, "conformance", &[]).await;
        Env {
            backend,
            _resources: resources,
            sidecar,
            client: http(),
        }
    }

    fn url(&self, path: &str) -> String {
        self.sidecar.url(&format!("/v1.0/state/statestore{path}"))
    }

    async fn save(&self, body: Value) -> reqwest::Response {
        self.save_query("", body).await
    }

    async fn save_query(&self, query: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(query))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Saves raw JSON text (to control the exact bytes of the value).
    async fn save_raw(&self, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(""))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/{key}")))
            .send()
            .await
            .unwrap()
    }

    /// (status, body text, etag header)
    async fn get_text(&self, key: &str) -> (StatusCode, String, Option<String>) {
        let resp = self.get(key).await;
        let status = resp.status();
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_string());
        (status, resp.text().await.unwrap(), etag)
    }

    async fn etag(&self, key: &str) -> String {
        self.get_text(key).await.2.expect("an etag")
    }

    async fn delete(&self, key: &str, etag: Option<&str>) -> reqwest::Response {
        let mut req = self.client.delete(self.url(&format!("/{key}")));
        if let Some(e) = etag {
            req = req.header("If-Match", e);
        }
        req.send().await.unwrap()
    }

    async fn bulk(&self, keys: &[&str]) -> Vec<Value> {
        let resp = self
            .client
            .post(self.url("/bulk"))
            .json(&json!({ "keys": keys, "parallelism": 2 }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }

    async fn transaction(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/transaction"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

async fn error_code(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["errorCode"].as_str().unwrap_or("").to_string())
}

// --- the suite -----------------------------------------------------------------------------

async fn values_round_trip_byte_exact(kind: Kind) {
    let env = Env::start(kind).await;
    let cases: &[(&str, &str)] = &[
        ("obj", r#"{"b":1, "a":[1,2.50,{"z":null}],"s":"x"}"#),
        ("jsonb_form", r#"{"a": 1, "bb": [true, false]}"#),
        ("string_of_json", r#""{\"a\":1}""#),
        ("plain_string", r#""hello world""#),
        ("number", "42"),
        ("float", "1e3"),
        ("unicode", r#""héllo ✓ 日本 \u00e9 😀""#),
        ("array", r#"[1,"two",3.0]"#),
        ("null", "null"),
        ("bool", "false"),
    ];
    let items: Vec<String> = cases
        .iter()
        .map(|(k, v)| format!(r#"{{"key":"{k}","value":{v}}}"#))
        .collect();
    let resp = env.save_raw(&format!("[{}]", items.join(","))).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        resp.text().await
    );
    for (key, value) in cases {
        let (status, body, etag) = env.get_text(key).await;
        assert_eq!(status, StatusCode::OK, "{key}");
        assert_eq!(&body, value, "value of {key} must round-trip byte-exact");
        assert!(etag.is_some_and(|e| !e.is_empty()), "{key} has an etag");
    }
    // A single-item save takes the single-write path.
    let resp = env
        .save_raw(r#"[{"key":"single","value":{"k" :  "v"}}]"#)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.get_text("single").await.1, r#"{"k" :  "v"}"#);

    let (status, body, etag) = env.get_text("missing").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(body.is_empty() && etag.is_none());

    let bulk = env
        .bulk(&["obj", "string_of_json", "missing", "number"])
        .await;
    assert_eq!(bulk.len(), 4);
    assert_eq!(bulk[0]["key"], "obj");
    assert_eq!(
        bulk[0]["data"],
        serde_json::from_str::<Value>(cases[0].1).unwrap()
    );
    assert_eq!(bulk[1]["data"], json!("{\"a\":1}"));
    assert!(bulk[0]["etag"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(bulk[2], json!({ "key": "missing" }));
    assert_eq!(bulk[3]["data"], json!(42));
    let empty = env.bulk(&[]).await;
    assert!(empty.is_empty());
}

async fn errors_use_dapr_codes(kind: Kind) {
    let env = Env::start(kind).await;
    assert_eq!(env.save(json!([])).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        error_code(env.save(json!([{ "value": 1 }])).await).await,
        (StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST".into())
    );
    assert_eq!(
        error_code(env.save(json!([{ "key": "a||b", "value": 1 }])).await).await,
        (StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST".into())
    );
    assert_eq!(
        error_code(env.get("a||b").await).await,
        (StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST".into())
    );
    assert_eq!(
        error_code(env.save_raw("[{not json").await).await,
        (StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST".into())
    );
    assert_eq!(
        error_code(
            env.save_query(
                "?metadata.ttlInSeconds=soon",
                json!([{ "key": "k", "value": 1 }])
            )
            .await
        )
        .await,
        (StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST".into())
    );
    let resp = env
        .client
        .get(env.sidecar.url("/v1.0/state/nosuchstore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (StatusCode::BAD_REQUEST, "ERR_STATE_STORE_NOT_FOUND".into())
    );
    // Malformed and stale etags.
    assert_eq!(
        env.save(json!([{ "key": "k", "value": 1 }])).await.status(),
        StatusCode::NO_CONTENT
    );
    let old = env.etag("k").await;
    assert_eq!(
        env.save(json!([{ "key": "k", "value": 2 }])).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        error_code(
            env.save(json!([{ "key": "k", "value": 3, "etag": "not an etag!" }]))
                .await
        )
        .await,
        (StatusCode::BAD_REQUEST, "ERR_STATE_SAVE".into())
    );
    assert_eq!(
        error_code(
            env.save(json!([{ "key": "k", "value": 3, "etag": old }]))
                .await
        )
        .await,
        (StatusCode::CONFLICT, "ERR_STATE_SAVE".into())
    );
    assert_eq!(
        error_code(env.delete("k", Some(&old)).await).await,
        (StatusCode::CONFLICT, "ERR_STATE_DELETE".into())
    );
    assert_eq!(
        error_code(env.delete("k", Some("not an etag!")).await).await,
        (StatusCode::BAD_REQUEST, "ERR_STATE_DELETE".into())
    );
    assert_eq!(env.get_text("k").await.1, "2");
    assert_eq!(
        error_code(
            env.transaction(
                json!({ "operations": [{ "operation": "merge", "request": { "key": "k" } }] })
            )
            .await
        )
        .await,
        (
            StatusCode::BAD_REQUEST,
            "ERR_NOT_SUPPORTED_STATE_OPERATION".into()
        )
    );
    assert_eq!(
        env.transaction(json!({ "operations": [] })).await.status(),
        StatusCode::NO_CONTENT
    );
}

async fn etags_and_first_write(kind: Kind) {
    let env = Env::start(kind).await;
    let first_write = json!({ "concurrency": "first-write" });
    // First-write on a new key succeeds, on an existing key without an etag fails.
    let resp = env
        .save(json!([{ "key": "fw", "value": 1, "options": first_write }]))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = env
        .save(json!([{ "key": "fw", "value": 2, "options": first_write }]))
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    // With the current etag it succeeds, and the etag changes.
    let etag = env.etag("fw").await;
    let resp = env
        .save(json!([{ "key": "fw", "value": 3, "etag": etag, "options": first_write }]))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (_, body, new_etag) = env.get_text("fw").await;
    assert_eq!(body, "3");
    assert_ne!(new_etag.as_deref(), Some(etag.as_str()));
    // last-write without an etag always wins.
    let resp = env
        .save(json!([{ "key": "fw", "value": 4, "options": { "concurrency": "last-write" } }]))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // Delete with the current etag.
    let etag = env.etag("fw").await;
    assert_eq!(
        env.delete("fw", Some(&etag)).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(env.get("fw").await.status(), StatusCode::NO_CONTENT);
    // A delete without an etag of a missing key is fine.
    assert_eq!(
        env.delete("fw", None).await.status(),
        StatusCode::NO_CONTENT
    );

    // An etag for a key that does not exist: Redis checks etags only on existing keys.
    let stale = env.etag_of_deleted_key().await;
    let resp = env
        .save(json!([{ "key": "ghost", "value": 1, "etag": stale }]))
        .await;
    if kind == Kind::Redis {
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    } else {
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(env.get("ghost").await.status(), StatusCode::NO_CONTENT);
    }
}

impl Env {
    /// A well-formed etag of a key that no longer exists.
    async fn etag_of_deleted_key(&self) -> String {
        assert_eq!(
            self.save(json!([{ "key": "gone", "value": 1 }]))
                .await
                .status(),
            StatusCode::NO_CONTENT
        );
        let etag = self.etag("gone").await;
        assert_eq!(
            self.delete("gone", None).await.status(),
            StatusCode::NO_CONTENT
        );
        etag
    }
}

async fn bulk_set_with_one_bad_etag_fails_only_that_key(kind: Kind) {
    let env = Env::start(kind).await;
    let resp = env
        .save(json!([
            { "key": "b1", "value": "one" },
            { "key": "b2", "value": "two" },
            { "key": "b3", "value": "three" },
        ]))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let stale = env.etag("b2").await;
    assert_eq!(
        env.save(json!([{ "key": "b2", "value": "two-b" }]))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let resp = env
        .save(json!([
            { "key": "b1", "value": "ONE" },
            { "key": "b2", "value": "TWO", "etag": stale },
            { "key": "b3", "value": "THREE" },
        ]))
        .await;
    assert_eq!(
        error_code(resp).await,
        (StatusCode::CONFLICT, "ERR_STATE_SAVE".into())
    );
    assert_eq!(env.get_text("b1").await.1, r#""ONE""#);
    assert_eq!(env.get_text("b2").await.1, r#""two-b""#);
    assert_eq!(env.get_text("b3").await.1, r#""THREE""#);
}

async fn transactions_apply_in_order_all_or_nothing(kind: Kind) {
    let env = Env::start(kind).await;
    assert_eq!(
        env.save(json!([{ "key": "k1", "value": 1 }]))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let resp = env
        .transaction(json!({
            "operations": [
                { "operation": "delete", "request": { "key": "k1" } },
                { "operation": "upsert", "request": { "key": "k2", "value": 2 } },
                { "operation": "delete", "request": { "key": "k2" } },
                { "operation": "upsert", "request": { "key": "k3", "value": {"three": 3} } },
            ],
            "metadata": null
        }))
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        resp.text().await
    );
    assert_eq!(env.get("k1").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.get("k2").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.get_text("k3").await.1, r#"{"three":3}"#);

    // An etag check inside the transaction: the current etag passes...
    let etag = env.etag("k3").await;
    let resp = env
        .transaction(json!({ "operations": [
            { "operation": "upsert", "request": { "key": "k3", "value": 33, "etag": etag } },
            { "operation": "upsert", "request": { "key": "k4", "value": 4 } },
        ]}))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // ...a stale one fails the whole transaction, including the operations before it.
    let resp = env
        .transaction(json!({ "operations": [
            { "operation": "upsert", "request": { "key": "k5", "value": 5 } },
            { "operation": "delete", "request": { "key": "k4" } },
            { "operation": "upsert", "request": { "key": "k3", "value": 333, "etag": etag } },
        ]}))
        .await;
    assert_eq!(
        error_code(resp).await,
        (StatusCode::CONFLICT, "ERR_STATE_TRANSACTION".into())
    );
    assert_eq!(env.get("k5").await.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.get_text("k4").await.1, "4");
    assert_eq!(env.get_text("k3").await.1, "33");
    // Request-level metadata applies to every operation (here a TTL).
    let resp = env
        .transaction(json!({
            "operations": [{ "operation": "upsert", "request": { "key": "k6", "value": 6 } }],
            "metadata": { "ttlInSeconds": "100" }
        }))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(env
        .get("k6")
        .await
        .headers()
        .get("metadata.ttlExpireTime")
        .is_some());
}

async fn ttl_expires_and_can_be_removed(kind: Kind) {
    let env = Env::start(kind).await;
    // Item-level TTL: the expiry time is reported...
    let resp = env
        .save(json!([{ "key": "long", "value": "x", "metadata": { "ttlInSeconds": "100" } }]))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = env.get("long").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let expire = resp
        .headers()
        .get("metadata.ttlExpireTime")
        .expect("ttlExpireTime header");
    let expire = chrono::DateTime::parse_from_rfc3339(expire.to_str().unwrap()).unwrap();
    assert!(expire > chrono::Utc::now());
    // ...and a short one makes the value disappear, from get and bulk get.
    let resp = env
        .save(json!([{ "key": "short", "value": "x", "metadata": { "ttlInSeconds": "1" } }]))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(
        eventually(Duration::from_secs(15), || async {
            env.get("short").await.status() == StatusCode::NO_CONTENT
        })
        .await,
        "the value must expire"
    );
    let bulk = env.bulk(&["short"]).await;
    assert_eq!(bulk[0], json!({ "key": "short" }));

    // Request-level TTL, removed by a later write without TTL, or by -1.
    let resp = env
        .save_query(
            "?metadata.ttlInSeconds=100",
            json!([{ "key": "kept", "value": 1 }, { "key": "kept2", "value": 2 }]),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    for key in ["kept", "kept2"] {
        assert!(env
            .get(key)
            .await
            .headers()
            .get("metadata.ttlExpireTime")
            .is_some());
    }
    let resp = env.save(json!([{ "key": "kept", "value": 1 }])).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = env
        .save(json!([{ "key": "kept2", "value": 2, "metadata": { "ttlInSeconds": "-1" } }]))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    for key in ["kept", "kept2"] {
        assert!(env
            .get(key)
            .await
            .headers()
            .get("metadata.ttlExpireTime")
            .is_none());
    }
    // A short TTL overwritten without one: the value outlives the original expiry.
    let resp = env
        .save(json!([{ "key": "rescued", "value": 3, "metadata": { "ttlInSeconds": "1" } }]))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = env.save(json!([{ "key": "rescued", "value": 3 }])).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(env.get_text("rescued").await.1, "3");
    // The request-level TTL wins over the item's.
    let resp = env
        .save_query(
            "?metadata.ttlInSeconds=100",
            json!([{ "key": "over", "value": 1, "metadata": { "ttlInSeconds": "-1" } }]),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(env
        .get("over")
        .await
        .headers()
        .get("metadata.ttlExpireTime")
        .is_some());
}

async fn app_ids_do_not_see_each_others_keys(kind: Kind) {
    let env = Env::start(kind).await;
    let (_res_b, b) = sidecar_for(&env.backend, "other-app", &[]).await;
    assert_eq!(
        env.save(json!([{ "key": "mine", "value": "a" }]))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let resp = env
        .client
        .get(b.url("/v1.0/state/statestore/mine"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = env
        .client
        .post(b.url("/v1.0/state/statestore"))
        .json(&json!([{ "key": "mine", "value": "b" }]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.get_text("mine").await.1, r#""a""#);
    let resp = env
        .client
        .get(b.url("/v1.0/state/statestore/mine"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), r#""b""#);

    // keyPrefix name: two apps on a shared (durable) store see the same keys.
    if kind != Kind::Memory {
        let (_r1, s1) = sidecar_for(&env.backend, "app-one", &[("keyPrefix", "name")]).await;
        let (_r2, s2) = sidecar_for(&env.backend, "app-two", &[("keyPrefix", "name")]).await;
        let resp = env
            .client
            .post(s1.url("/v1.0/state/statestore"))
            .json(&json!([{ "key": "shared", "value": "s" }]))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let resp = env
            .client
            .get(s2.url("/v1.0/state/statestore/shared"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.text().await.unwrap(), r#""s""#);
    }
}

async fn concurrent_read_modify_write_loses_no_update(kind: Kind) {
    let env = Arc::new(Env::start(kind).await);
    const CLIENTS: usize = 8;
    assert_eq!(
        env.save(json!([{ "key": "counter", "value": 0 }]))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let env = env.clone();
        tasks.spawn(async move {
            for _attempt in 0..500 {
                let (status, body, etag) = env.get_text("counter").await;
                assert_eq!(status, StatusCode::OK);
                let n: u64 = body.parse().unwrap();
                let resp = env
                    .save(json!([{ "key": "counter", "value": n + 1, "etag": etag.unwrap() }]))
                    .await;
                match resp.status() {
                    StatusCode::NO_CONTENT => return,
                    StatusCode::CONFLICT => continue,
                    other => panic!("unexpected {other}: {:?}", resp.text().await),
                }
            }
            panic!("no write succeeded in 500 attempts");
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(env.get_text("counter").await.1, CLIENTS.to_string());
}

async fn metadata_reports_capabilities(kind: Kind) {
    let env = Env::start(kind).await;
    let md: Value = tandem_testkit::get_json(&env.sidecar.url("/v1.0/metadata")).await;
    let store = md["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "statestore")
        .unwrap()
        .clone();
    let caps: Vec<&str> = store["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for cap in ["ETAG", "TRANSACTIONAL", "TTL", "ACTOR"] {
        assert!(caps.contains(&cap), "{kind:?} lacks {cap}: {caps:?}");
    }
    assert_eq!(store["version"], "v1");
}

async fn http_surface_options(kind: Kind) {
    let env = Env::start(kind).await;
    // PUT saves like POST; `bulk` and `transaction` are ordinary keys for GET and DELETE.
    let resp = env
        .client
        .put(env.url(""))
        .json(&json!([
            { "key": "bulk", "value": "b", "options": { "consistency": "strong" } },
            { "key": "transaction", "value": "t" },
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.get_text("bulk").await.1, r#""b""#);
    assert_eq!(env.get_text("transaction").await.1, r#""t""#);
    let resp = env
        .client
        .get(env.url("/bulk?consistency=strong&metadata.partitionKey=p"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = env
        .client
        .delete(env.url("/transaction?concurrency=first-write&consistency=strong&metadata.x=y"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        env.get("transaction").await.status(),
        StatusCode::NO_CONTENT
    );
    // PUT works for bulk get and transactions too.
    let resp = env
        .client
        .put(env.url("/bulk"))
        .json(&json!({ "keys": ["bulk"] }))
        .send()
        .await
        .unwrap();
    let items: Value = resp.json().await.unwrap();
    assert_eq!(items[0]["data"], "b");
    let resp = env
        .client
        .put(env.url("/transaction"))
        .json(&json!({ "operations": [{ "operation": "delete", "request": { "key": "bulk" } }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.get("bulk").await.status(), StatusCode::NO_CONTENT);
    // An unknown concurrency model is refused.
    let resp = env
        .save(json!([{ "key": "k", "value": 1, "options": { "concurrency": "whatever" } }]))
        .await;
    assert_eq!(
        error_code(resp).await,
        (StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST".into())
    );
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Kind::Memory).await } )* }
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Kind::Sqlite).await } )* }
        mod redis { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Kind::Redis).await } )* }
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Kind::Postgres).await } )* }
    };
}

conformance!(
    values_round_trip_byte_exact,
    errors_use_dapr_codes,
    etags_and_first_write,
    bulk_set_with_one_bad_etag_fails_only_that_key,
    transactions_apply_in_order_all_or_nothing,
    ttl_expires_and_can_be_removed,
    app_ids_do_not_see_each_others_keys,
    concurrent_read_modify_write_loses_no_update,
    metadata_reports_capabilities,
    http_surface_options,
);

// --- backend-specific ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_test_next_calls_succeed() {
    let mut env = Env::start(Kind::Redis).await;
    assert_eq!(
        env.save(json!([{ "key": "before", "value": 1 }]))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    match &mut env.backend {
        Backend::Redis(server) => server.restart().await,
        _ => unreachable!(),
    }
    let resp = env.save(json!([{ "key": "after", "value": 2 }])).await;
    assert_eq!(
        resp.status(),
        StatusCode::NO_CONTENT,
        "{:?}",
        resp.text().await
    );
    assert_eq!(env.get_text("after").await.1, "2");
    let bulk = env.bulk(&["after", "before"]).await;
    assert_eq!(bulk[0]["data"], json!(2));
    // The server kept no data across the restart.
    assert_eq!(bulk[1], json!({ "key": "before" }));
    let resp = env
        .transaction(json!({ "operations": [{ "operation": "upsert", "request": { "key": "tx", "value": 3 } }] }))
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_default_ttl_applies_and_minus_one_overrides_it() {
    let backend = Backend::start(Kind::Redis).await;
    let (_res, sidecar) = sidecar_for(&backend, "ttl-app", &[("ttlInSeconds", "100")]).await;
    let client = http();
    let url = sidecar.url("/v1.0/state/statestore");
    let resp = client
        .post(&url)
        .json(&json!([{ "key": "d", "value": 1 }, { "key": "forever", "value": 2, "metadata": { "ttlInSeconds": "-1" } }]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let d = client.get(format!("{url}/d")).send().await.unwrap();
    assert!(d.headers().get("metadata.ttlExpireTime").is_some());
    let f = client.get(format!("{url}/forever")).send().await.unwrap();
    assert!(f.headers().get("metadata.ttlExpireTime").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_store_is_not_configured() {
    let resources = ResourcesDir::new();
    resources.write(
        "secrets.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: env\nspec:\n  type: secretstores.local.env\n  version: v1\n  metadata: []\n",
    );
    let sidecar = Sidecar::builder(BIN)
        .resources(resources.path())
        .start()
        .await;
    let resp = http()
        .get(sidecar.url("/v1.0/state/statestore/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(resp).await,
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_STATE_STORE_NOT_CONFIGURED".into()
        )
    );
}

/// Writes a CA (`ca.crt`), a server certificate for 127.0.0.1 (`server.crt`, `server.key`) and,
/// for mutual TLS, a client identity (`client.crt`, `client.key`) signed by it into `dir`.
fn make_certs(dir: &std::path::Path) {
    let ca = TestCa::new("tandem-test-ca");
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    ca.issue_files(&["127.0.0.1"], dir, "server");
    ca.issue_files(&["tandem-test-client"], dir, "client");
}

/// Saves `value` under `key` in `statestore` and reads back exactly its JSON text.
async fn save_and_read_back(sidecar: &Sidecar, key: &str, value: Value) {
    let client = http();
    let resp = client
        .post(sidecar.url("/v1.0/state/statestore"))
        .json(&json!([{ "key": key, "value": value }]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{}", sidecar.logs());
    let resp = client
        .get(sidecar.url(&format!("/v1.0/state/statestore/{key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), value.to_string());
}

/// Starts a sidecar on `resources` that must exit with a failure; returns its logs.
async fn start_fails(resources: &ResourcesDir) -> String {
    let mut failing = Sidecar::builder(BIN).resources(resources.path()).spawn();
    let status = tokio::time::timeout(Duration::from_secs(30), failing.wait())
        .await
        .expect("the sidecar exits");
    assert!(!status.success(), "{}", failing.logs());
    failing.logs()
}

/// A redis-server that speaks only TLS on `port`, with the certificates of [`make_certs`];
/// `auth_clients` is `yes` to require a client certificate.
async fn start_tls_redis(
    dir: &std::path::Path,
    port: u16,
    auth_clients: &str,
) -> tokio::process::Child {
    let path = |f: &str| dir.join(f).display().to_string();
    let server = tokio::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            auth_clients,
        ])
        .args(["--save", "", "--appendonly", "no", "--dir", &path("")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server");
    assert!(
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await
    );
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let port = tandem_testkit::free_port();
    let mut server = start_tls_redis(dir.path(), port, "no").await;
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    let resources = ResourcesDir::new();
    resources.write(
        "statestore.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: \"127.0.0.1:{port}\"\n  - name: enableTLS\n    value: \"true\"\n  - name: caCert\n    value: {}\n",
            json!(ca)
        ),
    );
    let sidecar = Sidecar::builder(BIN)
        .resources(resources.path())
        .start()
        .await;
    save_and_read_back(&sidecar, "secure", json!({ "tls": true })).await;

    // Without the CA the server is not trusted and the component fails to initialise.
    let untrusted = ResourcesDir::new();
    untrusted.write(
        "statestore.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n  initTimeout: 3s\n  metadata:\n  - name: redisHost\n    value: \"127.0.0.1:{port}\"\n  - name: enableTLS\n    value: \"true\"\n  - name: redisMaxRetries\n    value: \"0\"\n"
        ),
    );
    start_fails(&untrusted).await;
    let _ = server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_mutual_tls_for_state_and_pubsub() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let port = tandem_testkit::free_port();
    let _server = start_tls_redis(dir.path(), port, "yes").await;
    let pem = |f: &str| json!(std::fs::read_to_string(dir.path().join(f)).unwrap());
    let tls = format!(
        "  - name: redisHost\n    value: \"127.0.0.1:{port}\"\n  - name: enableTLS\n    value: \"true\"\n  - name: caCert\n    value: {}\n",
        pem("ca.crt")
    );
    let identity = format!(
        "  - name: clientCert\n    value: {}\n  - name: clientKey\n    value: {}\n",
        pem("client.crt"),
        pem("client.key")
    );
    let resources = ResourcesDir::new();
    resources.write(
        "components.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n{tls}{identity}---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  type: pubsub.redis\n  version: v1\n  metadata:\n{tls}{identity}"
        ),
    );
    let sidecar = Sidecar::builder(BIN)
        .resources(resources.path())
        .start()
        .await;
    save_and_read_back(&sidecar, "mtls", json!(1)).await;
    let resp = http()
        .post(sidecar.url("/v1.0/publish/pubsub/orders"))
        .json(&json!({ "id": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{}", sidecar.logs());

    // Without a client certificate the server refuses the connection: start-up fails.
    let anonymous = ResourcesDir::new();
    anonymous.write(
        "statestore.yaml",
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n  initTimeout: 3s\n  metadata:\n{tls}  - name: redisMaxRetries\n    value: \"0\"\n"
        ),
    );
    let logs = start_fails(&anonymous).await;
    assert!(
        logs.contains("statestore") && logs.contains(&format!("redis at 127.0.0.1:{port}")),
        "{logs}"
    );
}
