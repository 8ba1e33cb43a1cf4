//! State stores: the `StateStore` trait and the backends `state.in-memory`, `state.redis`,
//! `state.postgresql` and `state.sqlite`.
//!
//! A store sees keys exactly as they are stored (the API layer adds the `appid||` prefix), values
//! as opaque bytes, and typed options (concurrency, TTL). It never knows HTTP: failures are
//! [`StateError`]s that the API maps to Dapr's codes.

pub mod etag;
pub mod memory;
pub mod options;
pub mod postgres;
pub mod postgres_connection;
pub mod postgres_tls;
pub mod redis;
pub mod sqlite;
pub mod value;

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use thiserror::Error;

pub use options::StoreOptions;

/// Response metadata key for the expiry time of a value with a TTL (RFC 3339, UTC), as Dapr names it.
pub const TTL_EXPIRE_TIME: &str = "ttlExpireTime";

/// How many single-key writes a bulk save runs at once when the store has no batched path.
pub const BULK_SET_PARALLELISM: usize = 16;

#[derive(Debug, Error)]
pub enum StateError {
    /// The given etag does not match the stored one, or first-write found an existing key.
    #[error("possible etag mismatch: {0}")]
    EtagMismatch(String),
    /// The etag is not in the form this store issues.
    #[error("invalid etag value: {0}")]
    InvalidEtag(String),
    #[error("operation not supported: {0}")]
    NotSupported(String),
    #[error("the transaction has {count} operations; this store allows at most {max}")]
    TooManyOperations { count: usize, max: usize },
    /// The backend failed (connection, query, timeout).
    #[error("{0}")]
    Backend(String),
}

impl StateError {
    pub fn backend(e: impl std::fmt::Display) -> Self {
        StateError::Backend(e.to_string())
    }
}

/// `options.concurrency`: with `FirstWrite` a write without an etag fails on an existing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    /// Not given: an etag, when present, is checked; without one the write wins.
    #[default]
    Unspecified,
    FirstWrite,
    LastWrite,
}

/// `options.consistency`: a hint; every backend here is strongly consistent on a single node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    #[default]
    Eventual,
    Strong,
}

/// The time to live of a written value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ttl {
    /// No `ttlInSeconds`: the store's default TTL if it has one, else the value never expires.
    #[default]
    StoreDefault,
    /// `ttlInSeconds` of -1 (or 0): never expires, removing any TTL the key had.
    Never,
    Seconds(u64),
}

#[derive(Debug, Clone, Default)]
pub struct GetRequest {
    pub key: String,
    pub consistency: Consistency,
    pub metadata: BTreeMap<String, String>,
}

/// A stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateItem {
    pub data: Bytes,
    pub etag: Option<String>,
    /// Response metadata, e.g. [`TTL_EXPIRE_TIME`].
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct SetRequest {
    pub key: String,
    pub value: Bytes,
    /// `None` when not given or empty.
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
    pub ttl: Ttl,
    pub metadata: BTreeMap<String, String>,
}

impl SetRequest {
    /// First-write without an etag: the key must not exist yet.
    pub fn must_not_exist(&self) -> bool {
        self.etag.is_none() && self.concurrency == Concurrency::FirstWrite
    }
}

#[derive(Debug, Clone, Default)]
pub struct DeleteRequest {
    pub key: String,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub enum TransactionOperation {
    Upsert(SetRequest),
    Delete(DeleteRequest),
}

impl TransactionOperation {
    pub fn key(&self) -> &str {
        match self {
            TransactionOperation::Upsert(r) => &r.key,
            TransactionOperation::Delete(r) => &r.key,
        }
    }
}

/// One key's outcome in a bulk get.
#[derive(Debug)]
pub struct BulkGetResult {
    pub key: String,
    pub result: Result<Option<StateItem>, StateError>,
}

/// What a store can do, reported as Dapr capability names in `/v1.0/metadata`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub etag: bool,
    pub transactional: bool,
    pub ttl: bool,
    pub actor: bool,
}

impl Features {
    /// ETAG, TRANSACTIONAL and TTL, which every store of this build has; ACTOR as configured.
    pub fn full(actor: bool) -> Self {
        Self {
            etag: true,
            transactional: true,
            ttl: true,
            actor,
        }
    }

    pub fn capability_names(&self) -> Vec<String> {
        [
            (self.etag, "ETAG"),
            (self.transactional, "TRANSACTIONAL"),
            (self.ttl, "TTL"),
            (self.actor, "ACTOR"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_string())
        .collect()
    }
}

/// A state store backend.
#[async_trait]
pub trait StateStore: Send + Sync {
    fn features(&self) -> Features;

    /// Capabilities as Dapr names them: `ETAG`, `TRANSACTIONAL`, `TTL`, `ACTOR`.
    fn capabilities(&self) -> Vec<String> {
        self.features().capability_names()
    }

    /// Settings every store shares (key prefix, actor state store).
    fn options(&self) -> &StoreOptions;

    /// `Ok(None)` when the key does not exist (or has expired).
    async fn get(&self, req: GetRequest) -> Result<Option<StateItem>, StateError>;

    async fn set(&self, req: SetRequest) -> Result<(), StateError>;

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError>;

    /// Reads many keys, at most `parallelism` at a time; one key's failure is reported for that
    /// key only. Stores with a batched read override this.
    async fn bulk_get(&self, reqs: Vec<GetRequest>, parallelism: usize) -> Vec<BulkGetResult> {
        stream::iter(reqs)
            .map(|req| async move {
                let key = req.key.clone();
                BulkGetResult {
                    key,
                    result: self.get(req).await,
                }
            })
            .buffered(parallelism.max(1))
            .collect()
            .await
    }

    /// Writes many keys independently: one key's failure (say a stale etag) does not stop the
    /// others. Results are in request order.
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Vec<Result<(), StateError>> {
        stream::iter(reqs)
            .map(|req| self.set(req))
            .buffered(BULK_SET_PARALLELISM)
            .collect()
            .await
    }

    /// Applies the operations in order, all or nothing.
    async fn transact(&self, _ops: Vec<TransactionOperation>) -> Result<(), StateError> {
        Err(StateError::NotSupported(
            "this state store does not support transactions".into(),
        ))
    }

    /// The most operations one transaction may hold, if the store has a limit.
    fn max_transaction_operations(&self) -> Option<usize> {
        None
    }

    async fn close(&self) {}
}
