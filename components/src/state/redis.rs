//! `state.redis`: each key is a hash with the value in `data` and a numeric `version` that is the
//! etag, changed only by Lua scripts so check-and-set is atomic. As in Dapr, an etag is checked
//! only when the key exists, and `last-write` ignores the etag. Transactions are one script: every
//! check runs first, in order, and nothing is written unless all pass. Bulk get is one pipeline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisConnectionInfo, RedisError, Script, Value};

use super::value::expiry_from_millis;
use super::{
    BulkGetResult, Concurrency, DeleteRequest, Features, GetRequest, SetRequest, StateError,
    StateItem, StateStore, StoreOptions, TransactionOperation, Ttl, TTL_EXPIRE_TIME,
};
use crate::metadata::Metadata;
use crate::registry::{BuildContext, BuildError};

/// Defaults (Dapr's go-redis defaults where they apply).
const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_MAX_RETRIES: u64 = 3;
const DEFAULT_MIN_RETRY_INTERVAL: Duration = Duration::from_millis(8);
const DEFAULT_MAX_RETRY_INTERVAL: Duration = Duration::from_millis(512);
/// Multiplexed connections; each carries many requests at once.
const DEFAULT_POOL_SIZE: u64 = 4;
const MAX_POOL_SIZE: u64 = 64;

/// A bulk get sends at most this many keys per pipeline (one round trip each), so one huge
/// request does not build one huge reply.
const BULK_GET_PIPELINE_KEYS: usize = 1000;

/// Error reply the scripts use for a failed etag or first-write check.
const MISMATCH: &str = "TANDEM_ETAG_MISMATCH";

/// KEYS[1]; ARGV: expected version ("" = none), data, "1" when the key must not exist, TTL
/// seconds (> 0 expires, 0 persists).
const SET_SCRIPT: &str = r#"
local ver = redis.pcall("HGET", KEYS[1], "version")
if type(ver) == "table" then redis.call("DEL", KEYS[1]); ver = false end
if ver then
  if ARGV[1] ~= "" and ARGV[1] ~= ver then return redis.error_reply("TANDEM_ETAG_MISMATCH") end
  if ARGV[1] == "" and ARGV[3] == "1" then return redis.error_reply("TANDEM_ETAG_MISMATCH") end
end
redis.call("HSET", KEYS[1], "data", ARGV[2])
local v = redis.call("HINCRBY", KEYS[1], "version", 1)
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call("EXPIRE", KEYS[1], ttl) else redis.call("PERSIST", KEYS[1]) end
return v
"#;

/// KEYS[1]; ARGV[1]: expected version ("" = none).
const DELETE_SCRIPT: &str = r#"
local ver = redis.pcall("HGET", KEYS[1], "version")
if type(ver) == "table" then return redis.call("DEL", KEYS[1]) end
if ver and ARGV[1] ~= "" and ARGV[1] ~= ver then return redis.error_reply("TANDEM_ETAG_MISMATCH") end
return redis.call("DEL", KEYS[1])
"#;

/// KEYS: one per operation, in order; ARGV: five per operation: kind (S|D), expected version,
/// data, must-not-exist flag, TTL seconds. Checks all, in order, against the state the earlier
/// operations leave; then applies all.
const TRANSACTION_SCRIPT: &str = r#"
local seen = {}
local function current(k)
  if seen[k] == nil then
    local v = redis.pcall("HGET", k, "version")
    if type(v) == "table" then v = false end
    seen[k] = v
  end
  return seen[k]
end
for i = 1, #KEYS do
  local b = (i - 1) * 5
  local kind, etag, fresh = ARGV[b + 1], ARGV[b + 2], ARGV[b + 4]
  local cur = current(KEYS[i])
  if cur then
    if etag ~= "" and etag ~= cur then return redis.error_reply("TANDEM_ETAG_MISMATCH " .. KEYS[i]) end
    if kind == "S" and etag == "" and fresh == "1" then return redis.error_reply("TANDEM_ETAG_MISMATCH " .. KEYS[i]) end
  end
  if kind == "S" then seen[KEYS[i]] = tostring((tonumber(cur) or 0) + 1) else seen[KEYS[i]] = false end
end
for i = 1, #KEYS do
  local b = (i - 1) * 5
  local k = KEYS[i]
  if ARGV[b + 1] == "S" then
    if redis.call("TYPE", k)["ok"] ~= "hash" then redis.call("DEL", k) end
    redis.call("HSET", k, "data", ARGV[b + 3])
    redis.call("HINCRBY", k, "version", 1)
    local ttl = tonumber(ARGV[b + 5])
    if ttl > 0 then redis.call("EXPIRE", k, ttl) else redis.call("PERSIST", k) end
  else
    redis.call("DEL", k)
  end
end
return #KEYS
"#;

pub struct RedisStore {
    options: StoreOptions,
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    default_ttl: Option<u64>,
    max_retries: u64,
    min_retry_interval: Duration,
    max_retry_interval: Duration,
    set_script: Script,
    delete_script: Script,
    transaction_script: Script,
}

fn backend(e: impl std::fmt::Display) -> StateError {
    StateError::Backend(format!("redis: {e}"))
}

fn is_mismatch(e: &RedisError) -> bool {
    e.code() == Some(MISMATCH) || e.to_string().contains(MISMATCH)
}

/// Errors after which the same call is worth sending again (the connection manager reconnects).
fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

/// `host:port` (port 6379 when left out).
fn split_host(text: &str) -> Result<(String, u16), BuildError> {
    let text = text.trim();
    match text.rsplit_once(':') {
        Some((host, port)) => port
            .parse()
            .map(|p| (host.trim_matches(['[', ']']).to_string(), p))
            .map_err(|_| BuildError::Init(format!("redisHost {text:?}: port is not a number"))),
        None => Ok((text.to_string(), 6379)),
    }
}

/// TCP settings for every Redis connection: no Nagle delay, as Go's dialer (and so Dapr's
/// go-redis) does. A pooled connection carries many requests at once, and with Nagle on, a
/// command written while an earlier one is unanswered waits for that answer.
pub(crate) fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// A TLS client (rustls with the ring provider) that verifies the server against the system's
/// roots, or against `caCert` (PEM) when given; `clientCert` + `clientKey` (PEM) enable mTLS.
pub(crate) fn tls_client(
    md: &Metadata,
    info: redis::ConnectionInfo,
) -> Result<redis::Client, BuildError> {
    // Another crate may have installed a provider already; either way one is in place after this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client_tls = match (
        md.get_non_empty("clientCert"),
        md.get_non_empty("clientKey"),
    ) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: cert.as_bytes().to_vec(),
            client_key: key.as_bytes().to_vec(),
        }),
        (None, None) => None,
        _ => {
            return Err(BuildError::Init(
                "clientCert and clientKey must be given together".into(),
            ))
        }
    };
    let certs = redis::TlsCertificates {
        client_tls,
        root_cert: md
            .get_non_empty("caCert")
            .map(|pem| pem.as_bytes().to_vec()),
    };
    redis::Client::build_with_tls(info, certs)
        .map_err(|e| BuildError::Init(format!("redis TLS settings: {e}")))
}

impl RedisStore {
    pub async fn new(md: &Metadata, ctx: &BuildContext) -> Result<Self, BuildError> {
        let options = StoreOptions::from_metadata(md, ctx)?;
        let host = md.require("redisHost")?;
        if host.contains(',') {
            return Err(BuildError::Init(
                "redisHost lists several hosts (Redis Cluster), which this build does not support"
                    .into(),
            ));
        }
        let tls = md.get_bool("enableTLS", false)?;
        if let Some(kind) = md.get_non_empty("redisType") {
            if !kind.eq_ignore_ascii_case("node") {
                return Err(BuildError::Init(format!(
                    "redisType {kind:?} is not supported; only node"
                )));
            }
        }
        if md.get_bool("failover", false)? {
            return Err(BuildError::Init(
                "failover (Sentinel) is not supported".into(),
            ));
        }
        let (host, port) = split_host(host)?;
        let mut redis_info = RedisConnectionInfo::default().set_db(md.get_i64("redisDB", 0)?);
        if let Some(user) = md.get_non_empty("redisUsername") {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = md.get("redisPassword").filter(|p| !p.is_empty()) {
            redis_info = redis_info.set_password(password);
        }
        let info = if tls {
            let url_host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            format!("rediss://{url_host}:{port}").into_connection_info()
        } else {
            (host.as_str(), port).into_connection_info()
        }
        .map_err(|e| BuildError::Init(format!("redisHost: {e}")))?
        .set_redis_settings(redis_info)
        .set_tcp_settings(tcp_settings());
        let ms = Duration::from_millis(1);
        let secs = Duration::from_secs(1);
        let dial = md.get_duration("dialTimeout", secs, DEFAULT_DIAL_TIMEOUT)?;
        let read = md.get_duration("readTimeout", secs, DEFAULT_READ_TIMEOUT)?;
        let write = md.get_duration("writeTimeout", secs, read)?;
        let max_retries = md.get_u64("redisMaxRetries", DEFAULT_MAX_RETRIES)?;
        let min_retry_interval =
            md.get_duration("redisMinRetryInterval", ms, DEFAULT_MIN_RETRY_INTERVAL)?;
        let max_retry_interval =
            md.get_duration("redisMaxRetryInterval", ms, DEFAULT_MAX_RETRY_INTERVAL)?;
        let pool_size = md
            .get_u64("poolSize", DEFAULT_POOL_SIZE)?
            .clamp(1, MAX_POOL_SIZE);
        let default_ttl = match md.get_i64("ttlInSeconds", 0)? {
            n if n > 0 => u64::try_from(n).ok(),
            _ => None,
        };
        let client = if tls {
            tls_client(md, info)?
        } else {
            redis::Client::open(info).map_err(|e| BuildError::Init(format!("redis: {e}")))?
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(dial))
            .set_response_timeout(Some(read.max(write)))
            .set_number_of_retries(usize::try_from(max_retries).unwrap_or(usize::MAX))
            .set_min_delay(min_retry_interval)
            .set_max_delay(max_retry_interval);
        let mut connections = Vec::new();
        for _ in 0..pool_size {
            let conn = ConnectionManager::new_with_config(client.clone(), config.clone())
                .await
                .map_err(|e| {
                    BuildError::Init(format!("cannot connect to redis at {host}:{port}: {e}"))
                })?;
            connections.push(conn);
        }
        Ok(Self {
            options,
            connections,
            next: AtomicUsize::new(0),
            default_ttl,
            max_retries,
            min_retry_interval,
            max_retry_interval,
            set_script: Script::new(SET_SCRIPT),
            delete_script: Script::new(DELETE_SCRIPT),
            transaction_script: Script::new(TRANSACTION_SCRIPT),
        })
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        self.connections[i].clone()
    }

    /// Runs `call` on a connection, again (up to `redisMaxRetries` times, with backoff) when the
    /// connection failed, e.g. because the server restarted.
    async fn with_retry<T, F, Fut>(&self, call: F) -> Result<T, RedisError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let mut attempt = 0u64;
        let mut delay = self.min_retry_interval;
        // Retries stay on the same connection, which reconnects itself after a failure.
        let conn = self.connection();
        loop {
            match call(conn.clone()).await {
                Err(e) if is_transient(&e) && attempt < self.max_retries => {
                    attempt += 1;
                    tracing::debug!(
                        "redis call failed ({e}); retry {attempt}/{}",
                        self.max_retries
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.max_retry_interval);
                }
                result => return result,
            }
        }
    }

    /// The version to check, "" for none. Etags are numbers; `last-write` ignores them.
    fn expected_version(
        etag: Option<&str>,
        concurrency: Concurrency,
        key: &str,
    ) -> Result<String, StateError> {
        match etag {
            Some(_) if concurrency == Concurrency::LastWrite => Ok(String::new()),
            Some(e) => e.parse::<u64>().map(|v| v.to_string()).map_err(|_| {
                StateError::InvalidEtag(format!("{e:?} is not a redis version number (key {key})"))
            }),
            None => Ok(String::new()),
        }
    }

    /// One pipeline for the given keys (two commands each).
    async fn bulk_get_pipeline(&self, reqs: Vec<GetRequest>) -> Vec<BulkGetResult> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for r in &reqs {
            get_pipeline(&mut pipe, &r.key);
        }
        let reply: Result<Vec<Value>, RedisError> = self
            .with_retry(|mut conn| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut conn).await }
            })
            .await;
        let values = match reply {
            Ok(values) if values.len() == reqs.len() * 2 => values,
            Ok(_) => return failed_all(reqs, "redis: short pipeline reply".into()),
            Err(e) => return failed_all(reqs, format!("redis: {e}")),
        };
        let mut values = values.into_iter();
        let mut results = Vec::with_capacity(reqs.len());
        for r in reqs {
            let (Some(fields), Some(pttl)) = (values.next(), values.next()) else {
                break;
            };
            let result = match parse_reply(fields, pttl) {
                Ok(Reply::Item(item)) => Ok(item),
                Ok(Reply::PlainString) => self.plain_get(&r.key).await,
                Err(e) => Err(e),
            };
            results.push(BulkGetResult { key: r.key, result });
        }
        results
    }

    /// A key holding a plain string: its value, without an etag.
    async fn plain_get(&self, key: &str) -> Result<Option<StateItem>, StateError> {
        let data: Option<Vec<u8>> = self
            .with_retry(|mut conn| {
                let key = key.to_string();
                async move { redis::cmd("GET").arg(&key).query_async(&mut conn).await }
            })
            .await
            .map_err(backend)?;
        Ok(data.map(|data| StateItem {
            data: Bytes::from(data),
            etag: None,
            metadata: BTreeMap::new(),
        }))
    }

    fn ttl_seconds(&self, ttl: Ttl) -> u64 {
        match ttl {
            Ttl::Seconds(s) => s,
            Ttl::Never => 0,
            Ttl::StoreDefault => self.default_ttl.unwrap_or(0),
        }
    }

    fn set_args(&self, req: &SetRequest) -> Result<[Vec<u8>; 4], StateError> {
        let version = Self::expected_version(req.etag.as_deref(), req.concurrency, &req.key)?;
        Ok([
            version.into_bytes(),
            req.value.to_vec(),
            if req.must_not_exist() {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            self.ttl_seconds(req.ttl).to_string().into_bytes(),
        ])
    }
}

/// What one key's HMGET + PTTL replies hold.
enum Reply {
    Item(Option<StateItem>),
    /// The key holds a plain string (written by something other than a state store): read it
    /// with GET, as Dapr does, without an etag.
    PlainString,
}

/// One key's HMGET data/version and PTTL replies (a pipeline run with `ignore_errors`, so a
/// failure stays with its key).
fn parse_reply(fields: Value, pttl: Value) -> Result<Reply, StateError> {
    if let Value::ServerError(e) = &fields {
        if e.code() == "WRONGTYPE" {
            return Ok(Reply::PlainString);
        }
    }
    let fields: Vec<Value> = redis::from_redis_value(fields).map_err(backend)?;
    let mut f = fields.into_iter();
    let (Some(data), Some(version)) = (f.next(), f.next()) else {
        return Err(StateError::Backend("redis: short HMGET reply".into()));
    };
    let data: Option<Vec<u8>> = redis::from_redis_value(data).map_err(backend)?;
    let Some(data) = data else {
        return Ok(Reply::Item(None));
    };
    let version: Option<String> = redis::from_redis_value(version).map_err(backend)?;
    let pttl: i64 = redis::from_redis_value(pttl).map_err(backend)?;
    let mut metadata = BTreeMap::new();
    if pttl > 0 {
        if let Some(at) = expiry_from_millis(chrono::Utc::now().timestamp_millis() + pttl) {
            metadata.insert(TTL_EXPIRE_TIME.to_string(), at);
        }
    }
    Ok(Reply::Item(Some(StateItem {
        data: Bytes::from(data),
        etag: version,
        metadata,
    })))
}

fn get_pipeline(pipe: &mut redis::Pipeline, key: &str) {
    pipe.cmd("HMGET").arg(key).arg("data").arg("version");
    pipe.cmd("PTTL").arg(key);
}

fn failed_all(reqs: Vec<GetRequest>, message: String) -> Vec<BulkGetResult> {
    reqs.into_iter()
        .map(|r| BulkGetResult {
            key: r.key,
            result: Err(StateError::Backend(message.clone())),
        })
        .collect()
}

#[async_trait]
impl StateStore for RedisStore {
    fn features(&self) -> Features {
        Features::full(self.options.actor_state_store)
    }

    fn options(&self) -> &StoreOptions {
        &self.options
    }

    async fn get(&self, req: GetRequest) -> Result<Option<StateItem>, StateError> {
        let mut pipe = redis::pipe();
        get_pipeline(pipe.ignore_errors(), &req.key);
        let reply: Vec<Value> = self
            .with_retry(|mut conn| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut conn).await }
            })
            .await
            .map_err(backend)?;
        let mut it = reply.into_iter();
        let (Some(fields), Some(pttl)) = (it.next(), it.next()) else {
            return Err(StateError::Backend("redis: short pipeline reply".into()));
        };
        match parse_reply(fields, pttl)? {
            Reply::Item(item) => Ok(item),
            Reply::PlainString => self.plain_get(&req.key).await,
        }
    }

    /// One pipeline for all keys, whatever the parallelism.
    async fn bulk_get(&self, reqs: Vec<GetRequest>, _parallelism: usize) -> Vec<BulkGetResult> {
        let mut results = Vec::with_capacity(reqs.len());
        let mut reqs = reqs.into_iter().peekable();
        while reqs.peek().is_some() {
            let chunk: Vec<GetRequest> = reqs.by_ref().take(BULK_GET_PIPELINE_KEYS).collect();
            results.extend(self.bulk_get_pipeline(chunk).await);
        }
        results
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        let args = self.set_args(&req)?;
        let result: Result<i64, RedisError> = self
            .with_retry(|mut conn| {
                let mut invocation = self.set_script.key(&req.key);
                for a in &args {
                    invocation.arg(a.as_slice());
                }
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_mismatch(&e) => Err(StateError::EtagMismatch(format!(
                "key {} has another version (or exists, with first-write)",
                req.key
            ))),
            Err(e) => Err(backend(e)),
        }
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let version = Self::expected_version(req.etag.as_deref(), req.concurrency, &req.key)?;
        let result: Result<i64, RedisError> = self
            .with_retry(|mut conn| {
                let mut invocation = self.delete_script.key(&req.key);
                invocation.arg(&version);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_mismatch(&e) => Err(StateError::EtagMismatch(format!(
                "key {} has another version",
                req.key
            ))),
            Err(e) => Err(backend(e)),
        }
    }

    async fn transact(&self, ops: Vec<TransactionOperation>) -> Result<(), StateError> {
        let mut keys = Vec::with_capacity(ops.len());
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(ops.len() * 5);
        for op in &ops {
            keys.push(op.key().to_string());
            match op {
                TransactionOperation::Upsert(req) => {
                    let [version, data, fresh, ttl] = self.set_args(req)?;
                    args.extend([b"S".to_vec(), version, data, fresh, ttl]);
                }
                TransactionOperation::Delete(req) => {
                    let version =
                        Self::expected_version(req.etag.as_deref(), req.concurrency, &req.key)?;
                    args.extend([
                        b"D".to_vec(),
                        version.into_bytes(),
                        Vec::new(),
                        b"0".to_vec(),
                        b"0".to_vec(),
                    ]);
                }
            }
        }
        let result: Result<i64, RedisError> = self
            .with_retry(|mut conn| {
                let mut invocation = self.transaction_script.prepare_invoke();
                for k in &keys {
                    invocation.key(k);
                }
                for a in &args {
                    invocation.arg(a.as_slice());
                }
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_mismatch(&e) => Err(StateError::EtagMismatch(format!(
                "the transaction was not applied: {e}"
            ))),
            Err(e) => Err(backend(e)),
        }
    }
}
