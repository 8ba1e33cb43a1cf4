//! The one place that lists every component type this build supports and how to build it.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use thiserror::Error;

use crate::metadata::{Metadata, MetadataError};
use crate::pubsub::PubSub;
use crate::secretstores::{self, SecretStore};
use crate::state::StateStore;

/// What a factory knows about the sidecar it builds a component for.
#[derive(Debug, Clone, Default)]
pub struct BuildContext {
    /// The component's `metadata.name`.
    pub name: String,
    pub app_id: String,
    /// The `NAMESPACE` environment variable, when running in Kubernetes.
    pub namespace: Option<String>,
}

/// A built component, by building block.
#[derive(Clone)]
pub enum Component {
    State(Arc<dyn StateStore>),
    PubSub(Arc<dyn PubSub>),
    SecretStore(Arc<dyn SecretStore>),
}

impl Component {
    /// The capabilities reported in `/v1.0/metadata` (`ETAG`, `TRANSACTIONAL`, …).
    pub fn capabilities(&self) -> Vec<String> {
        match self {
            Component::State(s) => s.capabilities(),
            Component::PubSub(p) => p.capabilities(),
            Component::SecretStore(_) => Vec::new(),
        }
    }

    /// Releases connections and background tasks; called once at shutdown.
    pub async fn close(&self) {
        match self {
            Component::State(s) => s.close().await,
            Component::PubSub(p) => p.close().await,
            Component::SecretStore(_) => {}
        }
    }
}

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("component type {component_type}/{version} is not supported by this build; supported types: {supported}")]
    Unsupported {
        component_type: String,
        version: String,
        supported: String,
    },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("{0}")]
    Init(String),
}

type Factory = fn(Metadata, BuildContext) -> BoxFuture<'static, Result<Component, BuildError>>;

struct Entry {
    component_type: &'static str,
    versions: &'static [&'static str],
    factory: Factory,
}

const TYPES: &[Entry] = &[
    Entry {
        component_type: "pubsub.in-memory",
        versions: &["v1"],
        factory: |md, ctx| {
            Box::pin(async move {
                let config = crate::pubsub::memory::MemoryConfig::from_metadata(&md, &ctx.app_id)?;
                Ok(Component::PubSub(Arc::new(
                    crate::pubsub::memory::MemoryPubSub::new(config),
                )))
            })
        },
    },
    Entry {
        component_type: "pubsub.redis",
        versions: &["v1"],
        factory: |md, ctx| {
            Box::pin(async move {
                let config = crate::pubsub::redis::RedisConfig::from_metadata(&md, &ctx.app_id)?;
                Ok(Component::PubSub(Arc::new(
                    crate::pubsub::redis::RedisPubSub::connect(config).await?,
                )))
            })
        },
    },
    Entry {
        component_type: "pubsub.kafka",
        versions: &["v1"],
        factory: |md, ctx| {
            Box::pin(async move {
                use crate::pubsub::kafka::{KafkaConfig, KafkaInitError, KafkaPubSub};
                let config = KafkaConfig::from_metadata(&md, &ctx.app_id, ctx.namespace.as_deref())
                    .map_err(KafkaInitError::from)?;
                Ok(Component::PubSub(Arc::new(
                    KafkaPubSub::connect(config).await?,
                )))
            })
        },
    },
    Entry {
        component_type: "state.in-memory",
        versions: &["v1"],
        factory: |md, ctx| {
            Box::pin(async move {
                let store = crate::state::memory::MemoryStore::new(&md, &ctx)?;
                Ok(Component::State(Arc::new(store)))
            })
        },
    },
    Entry {
        component_type: "state.redis",
        versions: &["v1"],
        factory: |md, ctx| {
            Box::pin(async move {
                let store = crate::state::redis::RedisStore::new(&md, &ctx).await?;
                Ok(Component::State(Arc::new(store)))
            })
        },
    },
    Entry {
        component_type: "state.postgresql",
        versions: &["v1"],
        factory: |md, ctx| {
            Box::pin(async move {
                let store = crate::state::postgres::PostgresStore::new(&md, &ctx).await?;
                Ok(Component::State(Arc::new(store)))
            })
        },
    },
    Entry {
        component_type: "state.sqlite",
        versions: &["v1"],
        factory: |md, ctx| {
            Box::pin(async move {
                let store = crate::state::sqlite::SqliteStore::new(&md, &ctx).await?;
                Ok(Component::State(Arc::new(store)))
            })
        },
    },
    Entry {
        component_type: "secretstores.local.env",
        versions: &["v1"],
        factory: |md, _| {
            Box::pin(async move {
                let store = secretstores::local_env::LocalEnvStore::new(&md)?;
                Ok(Component::SecretStore(Arc::new(store)))
            })
        },
    },
    Entry {
        component_type: "secretstores.kubernetes",
        versions: &["v1"],
        factory: |_, ctx| {
            Box::pin(async move {
                let store = secretstores::kubernetes::KubernetesSecretStore::in_cluster(
                    ctx.namespace.as_deref(),
                )
                .map_err(|e| BuildError::Init(e.to_string()))?;
                Ok(Component::SecretStore(Arc::new(store)))
            })
        },
    },
    Entry {
        component_type: "secretstores.local.file",
        versions: &["v1"],
        factory: |md, _| {
            Box::pin(async move {
                let store = secretstores::local_file::LocalFileStore::load(&md).await?;
                Ok(Component::SecretStore(Arc::new(store)))
            })
        },
    },
];

fn find(component_type: &str, version: &str) -> Option<&'static Entry> {
    TYPES
        .iter()
        .find(|e| e.component_type == component_type && e.versions.contains(&version))
}

pub fn is_supported(component_type: &str, version: &str) -> bool {
    find(component_type, version).is_some()
}

/// `type/version` for every supported component, sorted.
pub fn supported_types() -> Vec<String> {
    let mut all: Vec<String> = TYPES
        .iter()
        .flat_map(|e| {
            e.versions
                .iter()
                .map(move |v| format!("{}/{v}", e.component_type))
        })
        .collect();
    all.sort();
    all
}

/// Builds a component from its resolved metadata.
pub async fn build(
    component_type: &str,
    version: &str,
    metadata: Metadata,
    ctx: BuildContext,
) -> Result<Component, BuildError> {
    let entry = find(component_type, version).ok_or_else(|| BuildError::Unsupported {
        component_type: component_type.to_string(),
        version: version.to_string(),
        supported: supported_types().join(", "),
    })?;
    (entry.factory)(metadata, ctx).await
}
