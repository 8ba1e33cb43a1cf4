//! `state.postgresql` (v1 layout): `key text PRIMARY KEY, value jsonb, isbinary boolean,
//! insertdate, updatedate, expiredate`, with the row's `xmin` as etag. The store creates its
//! tables (and records the schema level in the metadata table) itself. Transactions are database
//! transactions; expired rows are invisible at once and deleted every `cleanupInterval`.
//!
//! `jsonb` reformats JSON (key order, spaces, number forms). To give back exactly the bytes that
//! were saved, a value is stored as `jsonb` only when jsonb's text form is identical to it;
//! otherwise it is stored as Dapr stores binary values (a base64 JSON string, `isbinary` true).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::task::JoinHandle;
use tokio_postgres::GenericClient;

use super::options::{cleanup_interval, valid_identifier};
use super::postgres_connection::normalize;
use super::postgres_tls::{connector, SslSettings};
use super::value::{expiry_from_millis, from_base64, is_canonical_jsonb, to_base64};
use super::{
    DeleteRequest, Features, GetRequest, SetRequest, StateError, StateItem, StateStore,
    StoreOptions, TransactionOperation, Ttl, TTL_EXPIRE_TIME,
};
use crate::metadata::Metadata;
use crate::registry::{BuildContext, BuildError};

/// Defaults, as Dapr's PostgreSQL v1 store has them.
const DEFAULT_TABLE: &str = "state";
const DEFAULT_METADATA_TABLE: &str = "dapr_metadata";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);
/// Serialises schema migrations between sidecars sharing a database.
const MIGRATION_LOCK_ID: i64 = 0x7461_6e64_656d;
const SCHEMA_LEVEL: &str = "2";

fn backend(e: impl std::fmt::Display) -> StateError {
    StateError::Backend(format!("postgresql: {e}"))
}

#[derive(Clone)]
struct Sql {
    get: String,
    upsert: String,
    insert_new: String,
    update_if: String,
    delete: String,
    delete_if: String,
}

impl Sql {
    fn new(table: &str) -> Self {
        let live = "(expiredate IS NULL OR expiredate > now())";
        let ttl = "CASE WHEN $4::bigint IS NULL THEN NULL ELSE now() + $4::bigint * interval '1 second' END";
        Self {
            get: format!(
                "SELECT value::text, isbinary, xmin::text, (extract(epoch FROM expiredate) * 1000)::bigint
                 FROM {table} WHERE key = $1 AND {live}"
            ),
            upsert: format!(
                "INSERT INTO {table} (key, value, isbinary, expiredate) VALUES ($1, ($2::text)::jsonb, $3, {ttl})
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, isbinary = excluded.isbinary,
                   expiredate = excluded.expiredate, updatedate = now()"
            ),
            // First-write without an etag: only a missing (or expired) key may be written.
            insert_new: format!(
                "INSERT INTO {table} AS t (key, value, isbinary, expiredate) VALUES ($1, ($2::text)::jsonb, $3, {ttl})
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, isbinary = excluded.isbinary,
                   expiredate = excluded.expiredate, updatedate = now(), insertdate = now()
                 WHERE t.expiredate IS NOT NULL AND t.expiredate <= now()"
            ),
            update_if: format!(
                "UPDATE {table} SET value = ($2::text)::jsonb, isbinary = $3, expiredate = {ttl}, updatedate = now()
                 WHERE key = $1 AND xmin::text = $5 AND {live}"
            ),
            delete: format!("DELETE FROM {table} WHERE key = $1"),
            delete_if: format!("DELETE FROM {table} WHERE key = $1 AND xmin::text = $2 AND {live}"),
        }
    }
}

pub struct PostgresStore {
    options: StoreOptions,
    pool: Pool,
    sql: Sql,
    timeout: Duration,
    cleaner: Option<JoinHandle<()>>,
}

/// The driver's configuration and the TLS settings, from `connectionString` or from `host`,
/// `port`, `user`, `password` and `database`.
fn pg_config(md: &Metadata) -> Result<(tokio_postgres::Config, SslSettings), BuildError> {
    if let Some(conn) = md.get_non_empty("connectionString") {
        let (text, ssl) = normalize(conn)?;
        let config = tokio_postgres::Config::from_str(&text)
            .map_err(|e| BuildError::Init(format!("connectionString: {e}")))?;
        return Ok((config, ssl));
    }
    let mut config = tokio_postgres::Config::new();
    config.host(md.require("host")?);
    if let Some(port) = md.get_non_empty("port") {
        config.port(
            port.parse()
                .map_err(|_| BuildError::Init(format!("port {port:?} is not a port number")))?,
        );
    }
    config.user(md.get_non_empty("user").unwrap_or("postgres"));
    if let Some(password) = md.get("password").filter(|p| !p.is_empty()) {
        config.password(password);
    }
    if let Some(db) = md.get_non_empty("database") {
        config.dbname(db);
    }
    Ok((config, SslSettings::default()))
}

impl PostgresStore {
    pub async fn new(md: &Metadata, ctx: &BuildContext) -> Result<Self, BuildError> {
        let options = StoreOptions::from_metadata(md, ctx)?;
        let table = md
            .get_non_empty("tableName")
            .unwrap_or(DEFAULT_TABLE)
            .to_string();
        let metadata_table = md
            .get_non_empty("metadataTableName")
            .unwrap_or(DEFAULT_METADATA_TABLE)
            .to_string();
        for name in [&table, &metadata_table] {
            if !valid_identifier(name) {
                return Err(BuildError::Init(format!(
                    "table name {name:?} must be a plain identifier (letters, digits, _, schema.table)"
                )));
            }
        }
        let timeout = md.get_duration("timeout", Duration::from_secs(1), DEFAULT_TIMEOUT)?;
        let cleanup = cleanup_interval(md, DEFAULT_CLEANUP_INTERVAL)?;
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        let max_conns = md.get_u64("maxConns", cpus.max(4) as u64)?.clamp(1, 1000);
        let (mut config, ssl) = pg_config(md)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let manager = Manager::from_config(
            config,
            connector(&ssl)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(usize::try_from(max_conns).unwrap_or(4))
            .wait_timeout(Some(timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| BuildError::Init(format!("postgresql pool: {e}")))?;
        migrate(&pool, &table, &metadata_table)
            .await
            .map_err(|e| BuildError::Init(format!("postgresql: cannot prepare the tables: {e}")))?;
        let cleaner = cleanup.map(|every| {
            tokio::spawn(clean_expired(
                pool.clone(),
                table.clone(),
                metadata_table.clone(),
                every,
            ))
        });
        Ok(Self {
            options,
            pool,
            sql: Sql::new(&table),
            timeout,
            cleaner,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StateError> {
        // The causes say why a connection failed (a refused certificate, a wrong password).
        self.pool
            .get()
            .await
            .map_err(|e| backend(crate::error_chain(&e)))
    }

    async fn within<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(backend(format!("no answer within {:?}", self.timeout))))
    }
}

async fn migrate(pool: &Pool, table: &str, metadata_table: &str) -> Result<(), String> {
    let mut client = pool.get().await.map_err(|e| crate::error_chain(&e))?;
    let client: &mut tokio_postgres::Client = &mut client;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_ID])
        .await
        .map_err(|e| e.to_string())?;
    let index = format!("{}_expiredate_idx", table.replace('.', "_"));
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {metadata_table} (key text NOT NULL PRIMARY KEY, value text NOT NULL);
         CREATE TABLE IF NOT EXISTS {table} (
           key text NOT NULL PRIMARY KEY,
           value jsonb NOT NULL,
           isbinary boolean NOT NULL,
           insertdate TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
           updatedate TIMESTAMP WITH TIME ZONE NULL);
         ALTER TABLE {table} ADD COLUMN IF NOT EXISTS expiredate TIMESTAMP WITH TIME ZONE;
         CREATE INDEX IF NOT EXISTS {index} ON {table} (expiredate);"
    ))
    .await
    .map_err(|e| e.to_string())?;
    tx.execute(
        &format!(
            "INSERT INTO {metadata_table} (key, value) VALUES ('migrations', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value
             WHERE {metadata_table}.value::int < excluded.value::int"
        ),
        &[&SCHEMA_LEVEL],
    )
    .await
    .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())
}

/// Deletes expired rows at most once per interval across all sidecars sharing the table: the one
/// that moves `last-cleanup-<table>` forward does the work.
async fn clean_expired(pool: Pool, table: String, metadata_table: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let run = async {
            let client = pool.get().await.map_err(|e| crate::error_chain(&e))?;
            let claimed = client
                .execute(
                    &format!(
                        "INSERT INTO {metadata_table} (key, value) VALUES ($1, now()::text)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value
                         WHERE {metadata_table}.value::timestamptz <= now() - $2::bigint * interval '1 millisecond' + interval '1 second'"
                    ),
                    &[
                        &format!("last-cleanup-{table}"),
                        &i64::try_from(every.as_millis()).unwrap_or(i64::MAX),
                    ],
                )
                .await
                .map_err(|e| e.to_string())?;
            if claimed == 0 {
                return Ok(0);
            }
            client
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE expiredate IS NOT NULL AND expiredate <= now()"
                    ),
                    &[],
                )
                .await
                .map_err(|e| e.to_string())
        };
        match run.await {
            Ok(n) if n > 0 => tracing::debug!("postgresql state store removed {n} expired rows"),
            Ok(_) => {}
            Err(e) => tracing::warn!("postgresql state store cleanup failed: {e}"),
        }
    }
}

/// Stored text and binary flag (see the module comment).
fn encode(data: &[u8]) -> (String, bool) {
    if is_canonical_jsonb(data) {
        if let Ok(text) = std::str::from_utf8(data) {
            return (text.to_string(), false);
        }
    }
    (serde_json::Value::String(to_base64(data)).to_string(), true)
}

fn decode(text: String, is_binary: bool) -> Result<Bytes, StateError> {
    if !is_binary {
        return Ok(Bytes::from(text));
    }
    let encoded: String = serde_json::from_str(&text)
        .map_err(|e| backend(format!("binary value is not a JSON string: {e}")))?;
    Ok(Bytes::from(from_base64(&encoded)?))
}

/// Etags are transaction ids (`xmin`), unsigned 32-bit numbers.
fn parse_etag(etag: &str, key: &str) -> Result<String, StateError> {
    etag.parse::<u32>().map(|v| v.to_string()).map_err(|_| {
        StateError::InvalidEtag(format!("{etag:?} is not a postgresql etag (key {key})"))
    })
}

async fn do_get(
    client: &impl GenericClient,
    sql: &Sql,
    key: &str,
) -> Result<Option<StateItem>, StateError> {
    let Some(row) = client.query_opt(&sql.get, &[&key]).await.map_err(backend)? else {
        return Ok(None);
    };
    let text: String = row.try_get(0).map_err(backend)?;
    let is_binary: bool = row.try_get(1).map_err(backend)?;
    let etag: String = row.try_get(2).map_err(backend)?;
    let expires: Option<i64> = row.try_get(3).map_err(backend)?;
    let mut metadata = BTreeMap::new();
    if let Some(at) = expires.and_then(expiry_from_millis) {
        metadata.insert(TTL_EXPIRE_TIME.to_string(), at);
    }
    Ok(Some(StateItem {
        data: decode(text, is_binary)?,
        etag: Some(etag),
        metadata,
    }))
}

async fn do_set(
    client: &impl GenericClient,
    sql: &Sql,
    req: &SetRequest,
) -> Result<(), StateError> {
    let (value, is_binary) = encode(&req.value);
    let ttl: Option<i64> = match req.ttl {
        Ttl::Seconds(s) => Some(i64::try_from(s).unwrap_or(i64::MAX)),
        Ttl::Never | Ttl::StoreDefault => None,
    };
    let key = req.key.as_str();
    let written = match (&req.etag, req.must_not_exist()) {
        (Some(etag), _) => {
            let etag = parse_etag(etag, key)?;
            client
                .execute(&sql.update_if, &[&key, &value, &is_binary, &ttl, &etag])
                .await
        }
        (None, true) => {
            client
                .execute(&sql.insert_new, &[&key, &value, &is_binary, &ttl])
                .await
        }
        (None, false) => {
            client
                .execute(&sql.upsert, &[&key, &value, &is_binary, &ttl])
                .await
        }
    }
    .map_err(backend)?;
    if written == 0 {
        return Err(StateError::EtagMismatch(match &req.etag {
            Some(etag) => format!("key {key} does not exist or has changed since etag {etag}"),
            None => {
                format!("key {key} already exists and first-write was requested without an etag")
            }
        }));
    }
    Ok(())
}

async fn do_delete(
    client: &impl GenericClient,
    sql: &Sql,
    req: &DeleteRequest,
) -> Result<(), StateError> {
    let key = req.key.as_str();
    match &req.etag {
        Some(etag) => {
            let etag = parse_etag(etag, key)?;
            let deleted = client
                .execute(&sql.delete_if, &[&key, &etag])
                .await
                .map_err(backend)?;
            if deleted == 0 {
                return Err(StateError::EtagMismatch(format!(
                    "key {key} does not exist or has changed since etag {etag}"
                )));
            }
        }
        None => {
            client
                .execute(&sql.delete, &[&key])
                .await
                .map_err(backend)?;
        }
    }
    Ok(())
}

#[async_trait]
impl StateStore for PostgresStore {
    fn features(&self) -> Features {
        Features::full(self.options.actor_state_store)
    }

    fn options(&self) -> &StoreOptions {
        &self.options
    }

    async fn get(&self, req: GetRequest) -> Result<Option<StateItem>, StateError> {
        self.within(async {
            let client = self.client().await?;
            let client: &tokio_postgres::Client = &client;
            do_get(client, &self.sql, &req.key).await
        })
        .await
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        self.within(async {
            let client = self.client().await?;
            let client: &tokio_postgres::Client = &client;
            do_set(client, &self.sql, &req).await
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.within(async {
            let client = self.client().await?;
            let client: &tokio_postgres::Client = &client;
            do_delete(client, &self.sql, &req).await
        })
        .await
    }

    async fn transact(&self, ops: Vec<TransactionOperation>) -> Result<(), StateError> {
        self.within(async {
            let mut client = self.client().await?;
            let client: &mut tokio_postgres::Client = &mut client;
            // Dropping the transaction without commit rolls it back.
            let tx = client.transaction().await.map_err(backend)?;
            for op in &ops {
                match op {
                    TransactionOperation::Upsert(req) => do_set(&tx, &self.sql, req).await?,
                    TransactionOperation::Delete(req) => do_delete(&tx, &self.sql, req).await?,
                }
            }
            tx.commit().await.map_err(backend)
        })
        .await
    }

    async fn close(&self) {
        if let Some(c) = &self.cleaner {
            c.abort();
        }
        self.pool.close();
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(c) = &self.cleaner {
            c.abort();
        }
    }
}
