//! Store-level checks that the HTTP API cannot reach: arbitrary binary values (not UTF-8, not
//! JSON) round-trip byte-exact on every store, and PostgreSQL keeps canonical JSON as jsonb.

use bytes::Bytes;
use tandem_components::registry::{self, BuildContext, Component};
use tandem_components::state::{GetRequest, SetRequest, StateStore, TransactionOperation};
use tandem_components::Metadata;
use tandem_testkit::{PostgresDb, RedisServer};

async fn build(ty: &str, md: &[(&str, String)]) -> std::sync::Arc<dyn StateStore> {
    let metadata: Metadata = md.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let ctx = BuildContext {
        name: "store".into(),
        app_id: "app".into(),
        namespace: None,
    };
    match registry::build(ty, "v1", metadata, ctx).await {
        Ok(Component::State(s)) => s,
        Ok(_) => panic!("not a state store"),
        Err(e) => panic!("build {ty}: {e}"),
    }
}

const VALUES: &[&[u8]] = &[
    b"\x00\x01\x02\xff\xfe binary",
    b"not json at all",
    "plain unicode \u{1F600}".as_bytes(),
    br#"{"json": true}"#,
    br#"{"json":true}"#,
    b"",
];

fn get(key: &str) -> GetRequest {
    GetRequest {
        key: key.into(),
        ..Default::default()
    }
}

async fn binary_round_trip(store: &dyn StateStore) {
    for (i, value) in VALUES.iter().enumerate() {
        let key = format!("bin-{i}");
        store
            .set(SetRequest {
                key: key.clone(),
                value: Bytes::from_static(value),
                ..Default::default()
            })
            .await
            .unwrap();
        let item = store.get(get(&key)).await.unwrap().expect("stored");
        assert_eq!(item.data.as_ref(), *value, "value {i}");
        assert!(item.etag.is_some());
    }
    // Through a transaction and a bulk get too.
    store
        .transact(vec![TransactionOperation::Upsert(SetRequest {
            key: "bin-tx".into(),
            value: Bytes::from_static(b"\xde\xad\xbe\xef"),
            ..Default::default()
        })])
        .await
        .unwrap();
    let bulk = store
        .bulk_get(vec![get("bin-0"), get("bin-tx"), get("nothing")], 4)
        .await;
    let data = |i: usize| {
        bulk[i]
            .result
            .as_ref()
            .unwrap()
            .as_ref()
            .map(|item| item.data.clone())
    };
    assert_eq!(data(0).unwrap().as_ref(), VALUES[0]);
    assert_eq!(data(1).unwrap().as_ref(), b"\xde\xad\xbe\xef");
    assert!(data(2).is_none());
    store.close().await;
}

#[tokio::test]
async fn binary_values_in_memory() {
    binary_round_trip(build("state.in-memory", &[]).await.as_ref()).await;
}

#[tokio::test]
async fn binary_values_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db").display().to_string();
    let store = build("state.sqlite", &[("connectionString", path)]).await;
    binary_round_trip(store.as_ref()).await;
}

#[tokio::test]
async fn binary_values_sqlite_memory_database() {
    let store = build("state.sqlite", &[("connectionString", ":memory:".into())]).await;
    binary_round_trip(store.as_ref()).await;
}

#[tokio::test]
async fn binary_values_redis() {
    let redis = RedisServer::start().await;
    let store = build("state.redis", &[("redisHost", redis.address())]).await;
    binary_round_trip(store.as_ref()).await;
}

#[tokio::test]
async fn redis_plain_strings_are_read_and_other_types_fail_only_their_key() {
    let redis = RedisServer::start().await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    cli(&["SET", "legacy", "{\"old\":true}"]);
    cli(&["RPUSH", "a-list", "x"]);
    let store = build("state.redis", &[("redisHost", redis.address())]).await;
    store
        .set(SetRequest {
            key: "fresh".into(),
            value: Bytes::from_static(b"1"),
            ..Default::default()
        })
        .await
        .unwrap();
    let item = store.get(get("legacy")).await.unwrap().unwrap();
    assert_eq!(item.data.as_ref(), br#"{"old":true}"#);
    assert_eq!(item.etag, None);
    let bulk = store
        .bulk_get(
            vec![get("legacy"), get("a-list"), get("fresh"), get("none")],
            4,
        )
        .await;
    assert!(bulk[0].result.as_ref().unwrap().is_some());
    assert!(bulk[1].result.is_err(), "a list is not a state value");
    assert_eq!(
        bulk[2]
            .result
            .as_ref()
            .unwrap()
            .as_ref()
            .unwrap()
            .etag
            .as_deref(),
        Some("1")
    );
    assert!(bulk[3].result.as_ref().unwrap().is_none());
    // Writing over a plain string replaces it with a versioned value.
    store
        .set(SetRequest {
            key: "legacy".into(),
            value: Bytes::from_static(b"2"),
            ..Default::default()
        })
        .await
        .unwrap();
    let item = store.get(get("legacy")).await.unwrap().unwrap();
    assert_eq!(item.etag.as_deref(), Some("1"));
}

fn psql(db: &PostgresDb, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            &db.name,
            "-At",
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn binary_values_postgres_and_v1_layout() {
    let db = PostgresDb::create();
    let store = build(
        "state.postgresql",
        &[
            ("connectionString", db.connection_string()),
            ("tableName", "mystate".into()),
        ],
    )
    .await;
    binary_round_trip(store.as_ref()).await;
    // Canonical JSON is kept as jsonb; everything else is flagged binary.
    let rows = psql(
        &db,
        "SELECT key, isbinary, jsonb_typeof(value) FROM mystate ORDER BY key",
    );
    assert!(rows.contains("bin-3|f|object"), "{rows}");
    assert!(rows.contains("bin-4|t|string"), "{rows}");
    assert!(rows.contains("bin-0|t|string"), "{rows}");
    let migrations = psql(
        &db,
        "SELECT value FROM dapr_metadata WHERE key = 'migrations'",
    );
    assert_eq!(migrations.trim(), "2");
    let columns = psql(
        &db,
        "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns WHERE table_name = 'mystate'",
    );
    assert_eq!(
        columns.trim(),
        "key,value,isbinary,insertdate,updatedate,expiredate"
    );
}

#[tokio::test]
async fn postgres_cleanup_deletes_expired_rows() {
    let db = PostgresDb::create();
    let store = build(
        "state.postgresql",
        &[
            ("connectionString", db.connection_string()),
            ("cleanupInterval", "1s".into()),
        ],
    )
    .await;
    store
        .set(SetRequest {
            key: "short".into(),
            value: Bytes::from_static(b"1"),
            ttl: tandem_components::state::Ttl::Seconds(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let gone = tandem_testkit::eventually(std::time::Duration::from_secs(15), || async {
        psql(&db, "SELECT count(*) FROM state").trim() == "0"
    })
    .await;
    assert!(gone, "the expired row was never deleted");
    store.close().await;
}

#[tokio::test]
async fn postgres_from_separate_connection_fields() {
    let db = PostgresDb::create();
    let store = build(
        "state.postgresql",
        &[
            ("host", "127.0.0.1".into()),
            ("port", "5432".into()),
            ("user", "postgres".into()),
            ("database", db.name.clone()),
            ("metadataTableName", "my_meta".into()),
        ],
    )
    .await;
    binary_round_trip(store.as_ref()).await;
    assert_eq!(
        psql(&db, "SELECT value FROM my_meta WHERE key = 'migrations'").trim(),
        "2"
    );
}

#[tokio::test]
async fn sqlite_cleanup_deletes_expired_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = build(
        "state.sqlite",
        &[
            ("connectionString", path.display().to_string()),
            ("cleanupInterval", "1s".into()),
            ("tableName", "kv".into()),
        ],
    )
    .await;
    store
        .set(SetRequest {
            key: "short".into(),
            value: Bytes::from_static(b"1"),
            ttl: tandem_components::state::Ttl::Seconds(1),
            ..Default::default()
        })
        .await
        .unwrap();
    let count = || {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row("SELECT count(*) FROM kv", [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    let gone = tandem_testkit::eventually(std::time::Duration::from_secs(15), || async {
        count() == 0
    })
    .await;
    assert!(gone, "the expired row was never deleted");
    store.close().await;
}

/// A redis-server with a password, killed on drop.
struct PasswordRedis {
    port: u16,
    child: std::process::Child,
}

impl Drop for PasswordRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_password_username_and_database() {
    let port = tandem_testkit::free_port();
    let child = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--requirepass", "s3cret"])
        .args(["--user", "tandem", "on", ">userpass", "~*", "+@all"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = PasswordRedis { port, child };
    assert!(
        tandem_testkit::eventually(std::time::Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await
    );
    let host = format!("127.0.0.1:{}", server.port);
    let store = build(
        "state.redis",
        &[
            ("redisHost", host.clone()),
            ("redisPassword", "s3cret".into()),
            ("redisDB", "3".into()),
            ("poolSize", "2".into()),
            ("dialTimeout", "2s".into()),
            ("readTimeout", "2s".into()),
        ],
    )
    .await;
    store
        .set(SetRequest {
            key: "in-db-3".into(),
            value: Bytes::from_static(b"\"x\""),
            ..Default::default()
        })
        .await
        .unwrap();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &server.port.to_string(), "--no-auth-warning"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        cli(&["-a", "s3cret", "-n", "3", "HGET", "in-db-3", "data"]),
        "\"x\""
    );
    assert_eq!(
        cli(&["-a", "s3cret", "-n", "3", "HGET", "in-db-3", "version"]),
        "1"
    );
    assert_eq!(cli(&["-a", "s3cret", "-n", "0", "EXISTS", "in-db-3"]), "0");
    store.close().await;

    // ACL user and password.
    let store = build(
        "state.redis",
        &[
            ("redisHost", host.clone()),
            ("redisUsername", "tandem".into()),
            ("redisPassword", "userpass".into()),
        ],
    )
    .await;
    assert!(store.get(get("anything")).await.unwrap().is_none());

    // A wrong password fails initialisation.
    let metadata: Metadata = [("redisHost", host), ("redisPassword", "wrong".into())]
        .into_iter()
        .collect();
    let ctx = BuildContext {
        name: "store".into(),
        app_id: "app".into(),
        namespace: None,
    };
    assert!(registry::build("state.redis", "v1", metadata, ctx)
        .await
        .is_err());
}

#[tokio::test]
async fn redis_bulk_get_of_many_keys_keeps_order() {
    let redis = RedisServer::start().await;
    let store = build("state.redis", &[("redisHost", redis.address())]).await;
    let n = 2500;
    let sets = (0..n)
        .map(|i| SetRequest {
            key: format!("k{i}"),
            value: Bytes::from(i.to_string()),
            ..Default::default()
        })
        .collect();
    assert!(store.bulk_set(sets).await.iter().all(|r| r.is_ok()));
    let results = store
        .bulk_get((0..n).map(|i| get(&format!("k{i}"))).collect(), 10)
        .await;
    assert_eq!(results.len(), n);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.key, format!("k{i}"));
        let item = r.result.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(item.data, Bytes::from(i.to_string()));
    }
}
