//! The `local` resolver: the shared on-disk registry of this machine's sidecars
//! (`local_registry`), read through a short-lived cache so a request does not scan the directory.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use http::uri::Authority;

use super::local_registry::{LocalRegistry, RegistryEntry};
use super::{Instances, NameResolutionError};

/// How long a registry listing is reused. Failures invalidate it at once, so a stale answer
/// costs at most one failed attempt before failover.
pub const CACHE_TTL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct LocalResolver {
    registry: LocalRegistry,
    cache: Mutex<Option<(Instant, Listing)>>,
}

/// App id → `host:port` of each instance.
type Listing = HashMap<String, Instances>;

impl LocalResolver {
    pub fn from_env() -> Self {
        Self::new(LocalRegistry::from_env())
    }

    pub fn new(registry: LocalRegistry) -> Self {
        Self {
            registry,
            cache: Mutex::new(None),
        }
    }

    pub fn registry(&self) -> &LocalRegistry {
        &self.registry
    }

    pub async fn resolve(&self, app_id: &str) -> Result<Instances, NameResolutionError> {
        if let Some((at, map)) = self.cache.lock().as_ref() {
            if at.elapsed() < CACHE_TTL {
                return Ok(instances_of(map, app_id));
            }
        }
        let registry = self.registry.clone();
        // Reading the directory and probing pids is blocking file-system work.
        let entries = tokio::task::spawn_blocking(move || registry.list())
            .await
            .map_err(|e| NameResolutionError::Registry(e.to_string()))?;
        let map = group(entries);
        let found = instances_of(&map, app_id);
        *self.cache.lock() = Some((Instant::now(), map));
        Ok(found)
    }

    pub fn invalidate(&self, _app_id: &str) {
        *self.cache.lock() = None;
    }
}

fn instances_of(map: &Listing, app_id: &str) -> Instances {
    map.get(app_id)
        .cloned()
        .unwrap_or_else(|| Instances::from([]))
}

/// The entries by app id; an entry whose address is not a host is skipped (with a warning).
fn group(entries: Vec<RegistryEntry>) -> Listing {
    let mut map: HashMap<String, Vec<Authority>> = HashMap::new();
    for e in entries {
        let host = if e.address.contains(':') {
            format!("[{}]", e.address)
        } else {
            e.address.clone()
        };
        let address = format!("{host}:{}", e.internal_port);
        match Authority::try_from(address.as_str()) {
            Ok(authority) => map.entry(e.app_id).or_default().push(authority),
            Err(_) => tracing::warn!(
                "local registry: ignoring {}'s entry: {address:?} is not host:port",
                e.app_id
            ),
        }
    }
    map.into_iter()
        .map(|(id, list)| (id, Instances::from(list)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_registered_instances() {
        let dir = tempfile::tempdir().unwrap();
        let registry = LocalRegistry::at(dir.path());
        let entry = RegistryEntry {
            app_id: "orders".into(),
            pid: std::process::id(),
            address: "127.0.0.1".into(),
            http_port: 1,
            internal_port: 4242,
            app_port: None,
            started_at: String::new(),
        };
        registry.register(&entry).unwrap();
        let resolver = LocalResolver::new(registry.clone());
        assert_eq!(
            *resolver.resolve("orders").await.unwrap(),
            ["127.0.0.1:4242"]
        );
        assert!(resolver.resolve("billing").await.unwrap().is_empty());
        registry.unregister(&entry);
        resolver.invalidate("orders");
        assert!(resolver.resolve("orders").await.unwrap().is_empty());
    }
}
