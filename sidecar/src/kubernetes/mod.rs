//! Running in Kubernetes: the sidecar's resources from the API (`--mode kubernetes`) and the
//! admission webhook that injects the sidecar into pods (`tandem injector`).

pub mod injector;
pub mod resources;

use std::path::PathBuf;

use tandem_components::kube_api::{is_object_name, KubeApi, KubeError};
use tandem_components::spec::{add_documents, LoadError, Resources};
use thiserror::Error;

use crate::cli::flags::SidecarArgs;
use crate::runtime::{builtin_component, Settings};

/// The secret store daprd loads by itself in Kubernetes, and the default `auth.secretStore`.
pub const BUILTIN_SECRET_STORE: &str = "kubernetes";

#[derive(Debug, Error)]
pub enum KubernetesError {
    #[error("kubernetes mode: {0}")]
    Api(#[from] KubeError),
    #[error("kubernetes mode: no namespace (set NAMESPACE, as the injector does)")]
    NoNamespace,
    #[error("kubernetes mode: --config {0:?} is neither a file nor a Configuration name")]
    ConfigName(String),
    #[error("{0}")]
    Resources(#[from] LoadError),
}

/// Adds the namespace's `dapr.io` resources and the built-in `kubernetes` secret store to
/// `resources`; components without `auth.secretStore` resolve `secretKeyRef` through it.
pub async fn load_resources(
    args: &SidecarArgs,
    settings: &Settings,
    config_names: &[PathBuf],
    resources: &mut Resources,
) -> Result<(), KubernetesError> {
    let api = KubeApi::in_cluster()?;
    let namespace = settings
        .namespace
        .as_deref()
        .or(api.namespace())
        .ok_or(KubernetesError::NoNamespace)?
        .to_string();
    let names = config_names
        .iter()
        .map(|p| {
            let name = p.to_string_lossy().into_owned();
            if is_object_name(&name) {
                Ok(name)
            } else {
                Err(KubernetesError::ConfigName(name))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let documents = resources::fetch(&api, &namespace, &names).await?;
    tracing::info!(
        "loaded {} resources of namespace {namespace} from the Kubernetes API",
        documents.len()
    );
    add_documents(resources, documents, &settings.app_id)?;
    let builtin_store = !args.disable_builtin_k8s_secret_store
        && !resources
            .components
            .iter()
            .any(|c| c.name == BUILTIN_SECRET_STORE);
    if builtin_store {
        resources.components.push(builtin_component(
            BUILTIN_SECRET_STORE,
            "secretstores.kubernetes",
        ));
        for component in &mut resources.components {
            component
                .secret_store
                .get_or_insert_with(|| BUILTIN_SECRET_STORE.to_string());
        }
    }
    Ok(())
}
