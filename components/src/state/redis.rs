//! `state.redis`: each key is a hash with the value in `data` and a numeric `version` that is the
//! etag, changed only by Lua scripts so check-and-set is atomic. As in Dapr, an etag is checked
//! only when the key exists, and `last-write` ignores the etag. Transactions are one script: every
//! check runs first, in order, and nothing is written unless all pass. Bulk get is one pipeline.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::value::expiry_from_millis;
use super::{
    BulkGetResult, Concurrency, DeleteRequest, Features, GetRequest, SetRequest, StateError,
    StateItem, StateStore, StoreOptions, TransactionOperation, Ttl, TTL_EXPIRE_TIME,
};
use crate::metadata::Metadata;
use crate::registry::{BuildContext, BuildError};
use crate::resp::{self, Commands, Pool, RespError, Script, Value};

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
    pool: Pool,
    default_ttl: Option<u64>,
    set_script: Script,
    delete_script: Script,
    transaction_script: Script,
}

fn backend(e: impl std::fmt::Display) -> StateError {
    StateError::Backend(format!("redis: {e}"))
}

/// A script's reply: an etag or first-write check failed, another error reply, or done.
fn script_outcome(reply: Value, mismatch: impl FnOnce(&str) -> String) -> Result<(), StateError> {
    match reply {
        // Redis may put its own code (`ERR`) in front of a script's error text.
        Value::Error(e) if e.contains(MISMATCH) => Err(StateError::EtagMismatch(mismatch(&e))),
        Value::Error(e) => Err(backend(e)),
        _ => Ok(()),
    }
}

impl RedisStore {
    pub async fn new(md: &Metadata, ctx: &BuildContext) -> Result<Self, BuildError> {
        let options = StoreOptions::from_metadata(md, ctx)?;
        let settings = resp::connect_settings(md)?;
        let address = format!("{}:{}", settings.host, settings.port);
        let default_ttl = match md.get_i64("ttlInSeconds", 0)? {
            n if n > 0 => u64::try_from(n).ok(),
            _ => None,
        };
        let pool = Pool::connect(settings, resp::retry_policy(md)?, resp::pool_size(md)?)
            .await
            .map_err(|e| match e {
                RespError::Connect { .. } => BuildError::Init(e.to_string()),
                e => BuildError::Init(format!("redis at {address}: {e}")),
            })?;
        Ok(Self {
            options,
            pool,
            default_ttl,
            set_script: Script::new(SET_SCRIPT),
            delete_script: Script::new(DELETE_SCRIPT),
            transaction_script: Script::new(TRANSACTION_SCRIPT),
        })
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
        let mut commands = Commands::new();
        for r in &reqs {
            get_commands(&mut commands, &r.key);
        }
        let values = match self.pool.query(&commands).await {
            Ok(values) => values,
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
        match self
            .pool
            .query_one(&[&"GET", &key])
            .await
            .map_err(backend)?
        {
            Value::Nil => Ok(None),
            Value::Bulk(data) => Ok(Some(StateItem {
                data,
                etag: None,
                metadata: BTreeMap::new(),
            })),
            Value::Error(e) => Err(backend(e)),
            other => Err(backend(format!("unexpected GET reply {other:?}"))),
        }
    }

    fn ttl_seconds(&self, ttl: Ttl) -> u64 {
        match ttl {
            Ttl::Seconds(s) => s,
            Ttl::Never => 0,
            Ttl::StoreDefault => self.default_ttl.unwrap_or(0),
        }
    }

    fn write_args(&self, req: &SetRequest) -> Result<WriteArgs, StateError> {
        Ok(WriteArgs {
            version: Self::expected_version(req.etag.as_deref(), req.concurrency, &req.key)?,
            fresh: if req.must_not_exist() { b"1" } else { b"0" },
            ttl: self.ttl_seconds(req.ttl).to_string(),
        })
    }
}

/// A write's script arguments besides its value.
struct WriteArgs {
    version: String,
    fresh: &'static [u8],
    ttl: String,
}

impl WriteArgs {
    /// SET_SCRIPT's ARGV: expected version, data, must-not-exist flag, TTL seconds. The value
    /// is borrowed, not copied.
    fn argv<'a>(&'a self, value: &'a [u8]) -> [&'a [u8]; 4] {
        [
            self.version.as_bytes(),
            value,
            self.fresh,
            self.ttl.as_bytes(),
        ]
    }
}

/// What one key's HMGET + PTTL replies hold.
enum Reply {
    Item(Option<StateItem>),
    /// The key holds a plain string (written by something other than a state store): read it
    /// with GET, as Dapr does, without an etag.
    PlainString,
}

/// One key's HMGET data/version and PTTL replies (each command's error stays with its key).
fn parse_reply(fields: Value, pttl: Value) -> Result<Reply, StateError> {
    let fields = match fields {
        Value::Array(fields) => fields,
        e @ Value::Error(_) if e.error_code() == Some("WRONGTYPE") => {
            return Ok(Reply::PlainString)
        }
        Value::Error(e) => return Err(backend(e)),
        other => return Err(backend(format!("unexpected HMGET reply {other:?}"))),
    };
    let mut f = fields.into_iter();
    let (Some(data), Some(version)) = (f.next(), f.next()) else {
        return Err(StateError::Backend("redis: short HMGET reply".into()));
    };
    let Value::Bulk(data) = data else {
        return Ok(Reply::Item(None));
    };
    let etag = match version {
        Value::Bulk(v) => Some(String::from_utf8_lossy(&v).into_owned()),
        _ => None,
    };
    let pttl = pttl
        .as_int()
        .ok_or_else(|| backend(format!("unexpected PTTL reply {pttl:?}")))?;
    let mut metadata = BTreeMap::new();
    if pttl > 0 {
        if let Some(at) = expiry_from_millis(chrono::Utc::now().timestamp_millis() + pttl) {
            metadata.insert(TTL_EXPIRE_TIME.to_string(), at);
        }
    }
    Ok(Reply::Item(Some(StateItem {
        data,
        etag,
        metadata,
    })))
}

fn get_commands(commands: &mut Commands, key: &str) {
    commands.push(&[&"HMGET", &key, &"data", &"version"]);
    commands.push(&[&"PTTL", &key]);
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
        let mut commands = Commands::new();
        get_commands(&mut commands, &req.key);
        let mut replies = self
            .pool
            .query(&commands)
            .await
            .map_err(backend)?
            .into_iter();
        let (Some(fields), Some(pttl)) = (replies.next(), replies.next()) else {
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
        let args = self.write_args(&req)?;
        let reply = self
            .pool
            .run_script(
                &self.set_script,
                &[req.key.as_bytes()],
                &args.argv(&req.value),
            )
            .await
            .map_err(backend)?;
        script_outcome(reply, |_| {
            format!(
                "key {} has another version (or exists, with first-write)",
                req.key
            )
        })
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let version = Self::expected_version(req.etag.as_deref(), req.concurrency, &req.key)?;
        let reply = self
            .pool
            .run_script(
                &self.delete_script,
                &[req.key.as_bytes()],
                &[version.as_bytes()],
            )
            .await
            .map_err(backend)?;
        script_outcome(reply, |_| format!("key {} has another version", req.key))
    }

    async fn transact(&self, ops: Vec<TransactionOperation>) -> Result<(), StateError> {
        let mut keys = Vec::with_capacity(ops.len());
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(ops.len() * 5);
        for op in &ops {
            keys.push(op.key().as_bytes());
            match op {
                TransactionOperation::Upsert(req) => {
                    let write = self.write_args(req)?;
                    args.push(b"S".to_vec());
                    args.extend(write.argv(&req.value).map(<[u8]>::to_vec));
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
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let reply = self
            .pool
            .run_script(&self.transaction_script, &keys, &args)
            .await
            .map_err(backend)?;
        script_outcome(reply, |e| format!("the transaction was not applied: {e}"))
    }
}
