//! Finding sidecars by app id. The resolver is chosen by the Configuration's
//! `nameResolution.component`: `local` (the default in standalone mode), `kubernetes` (the default
//! with `--mode kubernetes`) or `static`. Each answers with the internal-port addresses
//! (`host:port`, parsed once) of every instance; `balancer` picks among them.

pub mod balancer;
pub mod kubernetes;
pub mod local;
pub mod local_registry;
pub mod static_list;

use std::sync::Arc;

use http::uri::Authority;
use tandem_components::spec::configuration::NameResolutionSpec;
use thiserror::Error;

pub use balancer::Balancer;
pub use kubernetes::KubernetesResolver;
pub use local::LocalResolver;
pub use static_list::StaticResolver;

#[derive(Debug, Error)]
pub enum NameResolutionError {
    #[error("nameResolution.component {0:?} is not supported; use local, kubernetes or static")]
    UnknownComponent(String),
    #[error("nameResolution.configuration.{field}: {message}")]
    InvalidConfiguration { field: String, message: String },
    #[error("couldn't find service: {0}")]
    NotFound(String),
    #[error("cannot read the local registry: {0}")]
    Registry(String),
    #[error("{0:?} is not a valid host:port address")]
    InvalidAddress(String),
}

/// The internal-port addresses of an app's instances, shared between requests.
pub type Instances = Arc<[Authority]>;

/// The configured resolver.
#[derive(Debug)]
pub enum Resolver {
    Local(LocalResolver),
    Kubernetes(KubernetesResolver),
    Static(StaticResolver),
}

impl Resolver {
    /// The resolver a Configuration asks for; without one, `local` (or `kubernetes` in
    /// kubernetes mode).
    pub fn from_config(
        spec: Option<&NameResolutionSpec>,
        kubernetes_mode: bool,
        own_namespace: Option<&str>,
    ) -> Result<Self, NameResolutionError> {
        let default = if kubernetes_mode {
            "kubernetes"
        } else {
            "local"
        };
        let component = spec.map(|s| s.component.trim()).unwrap_or(default);
        let config = spec.map(|s| &s.configuration);
        match component {
            "local" | "" => Ok(Resolver::Local(LocalResolver::from_env())),
            "kubernetes" => Ok(Resolver::Kubernetes(KubernetesResolver::from_config(
                config,
                own_namespace,
            )?)),
            "static" => Ok(Resolver::Static(StaticResolver::from_config(config)?)),
            other => Err(NameResolutionError::UnknownComponent(other.to_string())),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Resolver::Local(_) => "local",
            Resolver::Kubernetes(_) => "kubernetes",
            Resolver::Static(_) => "static",
        }
    }

    /// The `host:port` of every instance of `app_id` (in `namespace`, where the resolver knows
    /// namespaces). An empty list is `NotFound`.
    pub async fn resolve(
        &self,
        app_id: &str,
        namespace: Option<&str>,
    ) -> Result<Instances, NameResolutionError> {
        let found = match self {
            Resolver::Local(r) => r.resolve(app_id).await?,
            Resolver::Kubernetes(r) => Arc::from([r.resolve(app_id, namespace)?]),
            Resolver::Static(r) => r.resolve(app_id),
        };
        if found.is_empty() {
            return Err(NameResolutionError::NotFound(app_id.to_string()));
        }
        Ok(found)
    }

    /// An instance of `app_id` failed: forget cached answers so the next lookup is fresh.
    pub fn invalidate(&self, app_id: &str) {
        if let Resolver::Local(r) = self {
            r.invalidate(app_id);
        }
    }
}
