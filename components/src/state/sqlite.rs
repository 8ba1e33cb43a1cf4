//! `state.sqlite`: the embedded durable store for local development, in Dapr's table layout
//! (`key`, `value` text, `is_binary`, `etag`, `expiration_time`, `update_time`). Every call runs on
//! the blocking pool (`spawn_blocking`) against one connection; SQLite serialises writers anyway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};
use tokio::task::JoinHandle;

use super::etag::{check_write, is_uuid, new_uuid};
use super::options::{cleanup_interval, valid_identifier};
use super::value::{from_base64, is_json, to_base64};
use super::{
    DeleteRequest, Features, GetRequest, SetRequest, StateError, StateItem, StateStore,
    StoreOptions, TransactionOperation, Ttl, TTL_EXPIRE_TIME,
};
use crate::metadata::Metadata;
use crate::registry::{BuildContext, BuildError};

/// Defaults, as Dapr's SQLite store has them.
const DEFAULT_TABLE: &str = "state";
const DEFAULT_METADATA_TABLE: &str = "metadata";
const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);
const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

struct Shared {
    conn: Mutex<Connection>,
    table: String,
}

pub struct SqliteStore {
    options: StoreOptions,
    shared: Arc<Shared>,
    timeout: Duration,
    cleaner: Option<JoinHandle<()>>,
}

fn backend(e: impl std::fmt::Display) -> StateError {
    StateError::backend(e)
}

impl SqliteStore {
    pub async fn new(md: &Metadata, ctx: &BuildContext) -> Result<Self, BuildError> {
        let options = StoreOptions::from_metadata(md, ctx)?;
        let location = md.require("connectionString")?.to_string();
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
                    "table name {name:?} must be a plain identifier (letters, digits, _)"
                )));
            }
        }
        let secs = Duration::from_secs(1);
        let cleanup = cleanup_interval(md, DEFAULT_CLEANUP_INTERVAL)?;
        let busy = md.get_duration("busyTimeout", secs, DEFAULT_BUSY_TIMEOUT)?;
        let timeout = md.get_duration("timeout", secs, DEFAULT_TIMEOUT)?;
        let disable_wal = md.get_bool("disableWAL", false)?;
        let (t, mt) = (table.clone(), metadata_table);
        let conn = tokio::task::spawn_blocking(move || open(&location, busy, disable_wal, &t, &mt))
            .await
            .map_err(|e| BuildError::Init(format!("sqlite open task failed: {e}")))?
            .map_err(|e| BuildError::Init(format!("cannot open the SQLite database: {e}")))?;
        let shared = Arc::new(Shared {
            conn: Mutex::new(conn),
            table,
        });
        let cleaner =
            cleanup.map(|every| tokio::spawn(clean_expired(Arc::downgrade(&shared), every)));
        Ok(Self {
            options,
            shared,
            timeout,
            cleaner,
        })
    }

    /// Runs `f` with the connection on the blocking pool, within the store's timeout.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &str) -> Result<T, StateError> + Send + 'static,
    {
        let shared = self.shared.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut conn = shared.conn.lock();
            f(&mut conn, &shared.table)
        });
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(backend(format!("sqlite task failed: {e}"))),
            Err(_) => Err(backend(format!(
                "sqlite operation did not finish within {:?}",
                self.timeout
            ))),
        }
    }
}

fn open(
    location: &str,
    busy: Duration,
    disable_wal: bool,
    table: &str,
    metadata_table: &str,
) -> rusqlite::Result<Connection> {
    let conn = if location == ":memory:" {
        Connection::open_in_memory()?
    } else {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Connection::open_with_flags(location, flags)?
    };
    conn.busy_timeout(busy)?;
    if !disable_wal && location != ":memory:" && !location.contains("mode=memory") {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    migrate(&conn, table, metadata_table)?;
    Ok(conn)
}

/// Creates the tables on first use and records the schema level in the metadata table.
fn migrate(conn: &Connection, table: &str, metadata_table: &str) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {metadata_table} (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS {table} (
           key TEXT NOT NULL PRIMARY KEY,
           value TEXT NOT NULL,
           is_binary BOOLEAN NOT NULL,
           etag TEXT NOT NULL,
           expiration_time TIMESTAMP DEFAULT NULL,
           update_time TIMESTAMP DEFAULT NULL);
         CREATE INDEX IF NOT EXISTS {table}_expiration_time ON {table} (expiration_time);
         INSERT OR IGNORE INTO {metadata_table} (key, value) VALUES ('migrations', '1');"
    ))
}

async fn clean_expired(shared: std::sync::Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let result = tokio::task::spawn_blocking(move || {
            let conn = shared.conn.lock();
            conn.execute(
                &format!(
                    "DELETE FROM {} WHERE expiration_time IS NOT NULL AND expiration_time <= CURRENT_TIMESTAMP",
                    shared.table
                ),
                [],
            )
        })
        .await;
        match result {
            Ok(Ok(n)) if n > 0 => tracing::debug!("sqlite state store removed {n} expired keys"),
            Ok(Err(e)) => tracing::warn!("sqlite state store cleanup failed: {e}"),
            _ => {}
        }
    }
}

/// The live row of `key`: (value, is_binary, etag, expiration time as text).
type Row = (String, bool, String, Option<String>);

fn read_row(conn: &Connection, table: &str, key: &str) -> Result<Option<Row>, StateError> {
    conn.query_row(
        &format!(
            "SELECT value, is_binary, etag, expiration_time FROM {table}
             WHERE key = ?1 AND (expiration_time IS NULL OR expiration_time > CURRENT_TIMESTAMP)"
        ),
        params![key],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
    .map_err(backend)
}

fn current_etag(conn: &Connection, table: &str, key: &str) -> Result<Option<String>, StateError> {
    Ok(read_row(conn, table, key)?.map(|(_, _, etag, _)| etag))
}

fn row_to_item(row: Row) -> Result<StateItem, StateError> {
    let (value, is_binary, etag, expires) = row;
    let data = if is_binary {
        Bytes::from(from_base64(&value)?)
    } else {
        Bytes::from(value)
    };
    let mut metadata = BTreeMap::new();
    if let Some(at) = expires.as_deref().and_then(parse_sqlite_time) {
        metadata.insert(TTL_EXPIRE_TIME.to_string(), at);
    }
    Ok(StateItem {
        data,
        etag: Some(etag),
        metadata,
    })
}

/// SQLite's `CURRENT_TIMESTAMP` form (`YYYY-MM-DD HH:MM:SS`, UTC) to RFC 3339.
fn parse_sqlite_time(text: &str) -> Option<String> {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| super::value::format_expiry(t.and_utc()))
}

/// Stored text and binary flag: JSON text as is, anything else base64.
fn encode(data: &[u8]) -> (String, bool) {
    match std::str::from_utf8(data) {
        Ok(text) if is_json(data) => (text.to_string(), false),
        _ => (to_base64(data), true),
    }
}

fn do_set(tx: &Transaction<'_>, table: &str, req: &SetRequest) -> Result<(), StateError> {
    let current = current_etag(tx, table, &req.key)?;
    check_write(
        &req.key,
        current.as_deref(),
        req.etag.as_deref(),
        req.must_not_exist(),
        is_uuid,
    )?;
    let (value, is_binary) = encode(&req.value);
    let ttl: Option<i64> = match req.ttl {
        Ttl::Seconds(s) => Some(i64::try_from(s).unwrap_or(i64::MAX)),
        Ttl::Never | Ttl::StoreDefault => None,
    };
    tx.execute(
        &format!(
            "INSERT INTO {table} (key, value, is_binary, etag, expiration_time, update_time)
             VALUES (?1, ?2, ?3, ?4,
               CASE WHEN ?5 IS NULL THEN NULL ELSE datetime(CURRENT_TIMESTAMP, '+' || ?5 || ' seconds') END,
               CURRENT_TIMESTAMP)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, is_binary = excluded.is_binary,
               etag = excluded.etag, expiration_time = excluded.expiration_time,
               update_time = CURRENT_TIMESTAMP"
        ),
        params![req.key, value, is_binary, new_uuid(), ttl],
    )
    .map_err(backend)?;
    Ok(())
}

fn do_delete(tx: &Transaction<'_>, table: &str, req: &DeleteRequest) -> Result<(), StateError> {
    if req.etag.is_some() {
        let current = current_etag(tx, table, &req.key)?;
        check_write(
            &req.key,
            current.as_deref(),
            req.etag.as_deref(),
            false,
            is_uuid,
        )?;
    }
    tx.execute(
        &format!("DELETE FROM {table} WHERE key = ?1"),
        params![req.key],
    )
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl StateStore for SqliteStore {
    fn features(&self) -> Features {
        Features::full(self.options.actor_state_store)
    }

    fn options(&self) -> &StoreOptions {
        &self.options
    }

    async fn get(&self, req: GetRequest) -> Result<Option<StateItem>, StateError> {
        self.with_conn(move |conn, table| {
            read_row(conn, table, &req.key)?
                .map(row_to_item)
                .transpose()
        })
        .await
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        self.with_conn(move |conn, table| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            do_set(&tx, table, &req)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        self.with_conn(move |conn, table| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            do_delete(&tx, table, &req)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn transact(&self, ops: Vec<TransactionOperation>) -> Result<(), StateError> {
        self.with_conn(move |conn, table| {
            // Dropping the transaction on an error rolls everything back.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            for op in &ops {
                match op {
                    TransactionOperation::Upsert(req) => do_set(&tx, table, req)?,
                    TransactionOperation::Delete(req) => do_delete(&tx, table, req)?,
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn close(&self) {
        if let Some(c) = &self.cleaner {
            c.abort();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(c) = &self.cleaner {
            c.abort();
        }
    }
}
