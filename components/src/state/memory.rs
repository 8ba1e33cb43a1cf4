//! `state.in-memory`: a process-local store with UUID etags, TTLs and transactions. It is also the
//! embedded default `statestore`. Everything is lost when the sidecar stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::task::JoinHandle;

use super::etag::{check_write, is_uuid, new_uuid};
use super::value::format_expiry;
use super::{
    DeleteRequest, Features, GetRequest, SetRequest, StateError, StateItem, StateStore,
    StoreOptions, TransactionOperation, Ttl, TTL_EXPIRE_TIME,
};
use crate::metadata::{Metadata, MetadataError};
use crate::registry::BuildContext;

/// How often expired entries are swept out (reads never return them in the meantime).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Entry {
    data: Bytes,
    etag: String,
    expires: Option<DateTime<Utc>>,
}

impl Entry {
    fn live(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

type Items = Mutex<HashMap<String, Entry>>;

pub struct MemoryStore {
    options: StoreOptions,
    items: Arc<Items>,
    sweeper: JoinHandle<()>,
}

impl MemoryStore {
    pub fn new(md: &Metadata, ctx: &BuildContext) -> Result<Self, MetadataError> {
        let items: Arc<Items> = Arc::default();
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&items)));
        Ok(Self {
            options: StoreOptions::from_metadata(md, ctx)?,
            items,
            sweeper,
        })
    }

    fn current<'a>(
        items: &'a HashMap<String, Entry>,
        key: &str,
        now: DateTime<Utc>,
    ) -> Option<&'a Entry> {
        items.get(key).filter(|e| e.live(now))
    }
}

async fn sweep(items: Weak<Items>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(items) = items.upgrade() else { return };
        let now = Utc::now();
        items.lock().retain(|_, e| e.live(now));
    }
}

fn expiry(ttl: Ttl, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match ttl {
        Ttl::Seconds(s) => {
            let secs = i64::try_from(s).unwrap_or(i64::MAX);
            now.checked_add_signed(chrono::TimeDelta::try_seconds(secs)?)
        }
        Ttl::StoreDefault | Ttl::Never => None,
    }
}

/// Checks one write against `current` and returns the entry to store.
fn apply_set(
    req: &SetRequest,
    current: Option<&Entry>,
    now: DateTime<Utc>,
) -> Result<Entry, StateError> {
    check_write(
        &req.key,
        current.map(|e| e.etag.as_str()),
        req.etag.as_deref(),
        req.must_not_exist(),
        is_uuid,
    )?;
    Ok(Entry {
        data: req.value.clone(),
        etag: new_uuid(),
        expires: expiry(req.ttl, now),
    })
}

fn check_delete(req: &DeleteRequest, current: Option<&Entry>) -> Result<(), StateError> {
    check_write(
        &req.key,
        current.map(|e| e.etag.as_str()),
        req.etag.as_deref(),
        false,
        is_uuid,
    )
}

#[async_trait]
impl StateStore for MemoryStore {
    fn features(&self) -> Features {
        Features::full(self.options.actor_state_store)
    }

    fn options(&self) -> &StoreOptions {
        &self.options
    }

    async fn get(&self, req: GetRequest) -> Result<Option<StateItem>, StateError> {
        let now = Utc::now();
        let items = self.items.lock();
        Ok(Self::current(&items, &req.key, now).map(|e| StateItem {
            data: e.data.clone(),
            etag: Some(e.etag.clone()),
            metadata: e
                .expires
                .map(|at| BTreeMap::from([(TTL_EXPIRE_TIME.to_string(), format_expiry(at))]))
                .unwrap_or_default(),
        }))
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        let now = Utc::now();
        let mut items = self.items.lock();
        let entry = apply_set(&req, Self::current(&items, &req.key, now), now)?;
        items.insert(req.key, entry);
        Ok(())
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let now = Utc::now();
        let mut items = self.items.lock();
        check_delete(&req, Self::current(&items, &req.key, now))?;
        items.remove(&req.key);
        Ok(())
    }

    async fn transact(&self, ops: Vec<TransactionOperation>) -> Result<(), StateError> {
        let now = Utc::now();
        let mut items = self.items.lock();
        // Each operation sees the ones before it; nothing is applied unless all pass.
        let mut staged: HashMap<String, Option<Entry>> = HashMap::new();
        for op in &ops {
            let key = op.key();
            let current = match staged.get(key) {
                Some(staged) => staged.as_ref(),
                None => Self::current(&items, key, now),
            };
            let next = match op {
                TransactionOperation::Upsert(req) => Some(apply_set(req, current, now)?),
                TransactionOperation::Delete(req) => {
                    check_delete(req, current)?;
                    None
                }
            };
            staged.insert(key.to_string(), next);
        }
        for (key, entry) in staged {
            match entry {
                Some(entry) => items.insert(key, entry),
                None => items.remove(&key),
            };
        }
        Ok(())
    }

    async fn close(&self) {
        self.sweeper.abort();
    }
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}
