//! Building the loaded components: secret stores first, then everything else, each within its
//! `initTimeout`, with `secretKeyRef`/`envRef` metadata resolved and templates expanded.

use std::collections::BTreeMap;
use std::sync::Arc;

use tandem_components::pubsub::namespaced::NamespacedPubSub;
use tandem_components::pubsub::PubSub;
use tandem_components::registry::{self, BuildContext, Component};
use tandem_components::secretstores::SecretStore;
use tandem_components::spec::template::TemplateContext;
use tandem_components::spec::{ComponentSpec, MetadataItem, MetadataSource};
use tandem_components::state::StateStore;
use tandem_components::Metadata;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ComponentSetError {
    #[error("{origin} (Component {name:?}): {message}")]
    Init {
        origin: String,
        name: String,
        message: String,
    },
}

pub struct LoadedComponent {
    pub name: String,
    pub component_type: String,
    pub version: String,
    pub component: Component,
    /// The resolved metadata it was built from (pub/sub topic scopes are read from it).
    pub metadata: Metadata,
}

#[derive(Default)]
pub struct ComponentSet {
    components: Vec<LoadedComponent>,
    by_name: BTreeMap<String, usize>,
}

impl ComponentSet {
    /// Builds every spec. A failing component stops start-up unless it sets `ignoreErrors`.
    pub async fn build(
        specs: &[ComponentSpec],
        templates: &TemplateContext,
    ) -> Result<Self, ComponentSetError> {
        let mut set = ComponentSet::default();
        let (secret_stores, others): (Vec<_>, Vec<_>) = specs
            .iter()
            .partition(|s| s.building_block() == "secretstores");
        for spec in secret_stores.into_iter().chain(others) {
            match set.build_one(spec, templates).await {
                Ok((component, metadata)) => {
                    tracing::info!(
                        "component loaded: {} ({}/{})",
                        spec.name,
                        spec.component_type,
                        spec.version
                    );
                    set.insert(LoadedComponent {
                        name: spec.name.clone(),
                        component_type: spec.component_type.clone(),
                        version: spec.version.clone(),
                        component,
                        metadata,
                    });
                }
                Err(message) if spec.ignore_errors => tracing::warn!(
                    "component {} failed to initialise and is skipped (ignoreErrors): {message}",
                    spec.name
                ),
                Err(message) => {
                    set.close().await;
                    return Err(ComponentSetError::Init {
                        origin: spec.origin.to_string(),
                        name: spec.name.clone(),
                        message,
                    });
                }
            }
        }
        Ok(set)
    }

    async fn build_one(
        &self,
        spec: &ComponentSpec,
        templates: &TemplateContext,
    ) -> Result<(Component, Metadata), String> {
        let mut metadata = Metadata::new();
        let mut names_namespace = false;
        for (i, item) in spec.metadata.iter().enumerate() {
            let value = self
                .resolve(spec, item)
                .await
                .map_err(|e| format!("spec.metadata[{i}] ({}): {e}", item.name))?;
            names_namespace |= value.contains("{namespace}");
            metadata.insert(item.name.clone(), templates.expand(&value));
        }
        if spec.building_block() == "pubsub" {
            metadata.insert_default("consumerID", templates.app_id.clone());
        }
        let ctx = BuildContext {
            name: spec.name.clone(),
            app_id: templates.app_id.clone(),
            namespace: templates.namespace.clone(),
        };
        let build = registry::build(&spec.component_type, &spec.version, metadata.clone(), ctx);
        match tokio::time::timeout(spec.init_timeout, build).await {
            Ok(Ok(Component::PubSub(pubsub))) if names_namespace => {
                Ok((namespaced(pubsub, templates), metadata))
            }
            Ok(Ok(component)) => Ok((component, metadata)),
            Ok(Err(e)) => Err(format!("failed to initialise: {e}")),
            Err(_) => Err(format!(
                "did not initialise within spec.initTimeout ({:?})",
                spec.init_timeout
            )),
        }
    }

    /// The value of one metadata item: literal, from the environment, or from a secret store.
    async fn resolve(&self, spec: &ComponentSpec, item: &MetadataItem) -> Result<String, String> {
        match &item.source {
            MetadataSource::Value(v) => Ok(v.clone()),
            MetadataSource::EnvRef(var) => std::env::var(var)
                .map_err(|_| format!("envRef: environment variable {var} is not set")),
            MetadataSource::SecretKeyRef(secret) => {
                let store_name = spec.secret_store.as_deref().ok_or_else(|| {
                    "secretKeyRef needs auth.secretStore naming a secret store".to_string()
                })?;
                let store = self.secret_store(store_name).ok_or_else(|| {
                    format!("secretKeyRef: secret store {store_name:?} is not loaded")
                })?;
                let values = store
                    .get_secret(&secret.name, &BTreeMap::new())
                    .await
                    .map_err(|e| format!("secretKeyRef: {e}"))?;
                let key = secret.key.as_deref().unwrap_or(&secret.name);
                values.get(key).cloned().ok_or_else(|| {
                    format!("secretKeyRef: secret {:?} has no key {key:?}", secret.name)
                })
            }
        }
    }

    fn insert(&mut self, component: LoadedComponent) {
        self.by_name
            .insert(component.name.clone(), self.components.len());
        self.components.push(component);
    }

    pub fn iter(&self) -> impl Iterator<Item = &LoadedComponent> {
        self.components.iter()
    }

    pub fn get(&self, name: &str) -> Option<&LoadedComponent> {
        self.by_name.get(name).map(|&i| &self.components[i])
    }

    pub fn state_store(&self, name: &str) -> Option<&Arc<dyn StateStore>> {
        match &self.get(name)?.component {
            Component::State(s) => Some(s),
            _ => None,
        }
    }

    pub fn pubsub(&self, name: &str) -> Option<&Arc<dyn PubSub>> {
        match &self.get(name)?.component {
            Component::PubSub(p) => Some(p),
            _ => None,
        }
    }

    pub fn secret_store(&self, name: &str) -> Option<&Arc<dyn SecretStore>> {
        match &self.get(name)?.component {
            Component::SecretStore(s) => Some(s),
            _ => None,
        }
    }

    /// How many components of a building block are loaded (for "not configured" errors).
    pub fn count(&self, block: impl Fn(&Component) -> bool) -> usize {
        self.components
            .iter()
            .filter(|c| block(&c.component))
            .count()
    }

    pub async fn close(&self) {
        for c in self.components.iter().rev() {
            c.component.close().await;
        }
    }
}

/// A pub/sub component whose metadata uses `{namespace}` keeps to its namespace's topics on the
/// broker (`<namespace><topic>`), as in daprd; without `NAMESPACE` topics stay as named.
fn namespaced(pubsub: Arc<dyn PubSub>, templates: &TemplateContext) -> Component {
    match templates.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(namespace) => Component::PubSub(Arc::new(NamespacedPubSub::new(pubsub, namespace))),
        None => Component::PubSub(pubsub),
    }
}
