//! Loading every `*.yaml`/`*.yml` file of the resources paths into typed specs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use super::{
    component, configuration, http_endpoint, in_scope, resiliency, subscription, ComponentSpec,
    ConfigurationSpec, FieldError, HttpEndpointSpec, Origin, ResiliencySpec, ResourceError,
    SubscriptionSpec,
};
use crate::registry;

/// Everything the resources paths hold that applies to this app id.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub components: Vec<ComponentSpec>,
    pub subscriptions: Vec<SubscriptionSpec>,
    pub resiliencies: Vec<ResiliencySpec>,
    pub configurations: Vec<ConfigurationSpec>,
    pub http_endpoints: Vec<HttpEndpointSpec>,
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("resources path {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ResourceError>),
}

/// Reads the files of each path (a directory, or a single file) in name order.
pub fn load_resources(paths: &[PathBuf], app_id: &str) -> Result<Resources, LoadError> {
    let mut resources = Resources::default();
    let mut errors = Vec::new();
    for path in paths {
        for file in yaml_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Io {
                path: file.clone(),
                source,
            })?;
            load_file(&file, &text, app_id, &mut resources, &mut errors);
        }
    }
    check_duplicates(&resources, &mut errors);
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(LoadError::Invalid(errors))
    }
}

/// Adds resources read from somewhere other than files (the Kubernetes API): each document
/// comes with the origin its errors should name. Names must stay unique across everything.
pub fn add_documents(
    resources: &mut Resources,
    documents: Vec<(Origin, Value)>,
    app_id: &str,
) -> Result<(), LoadError> {
    let mut errors = Vec::new();
    for (origin, document) in documents {
        if let Err(e) = load_document(document, origin, app_id, resources) {
            errors.push(e);
        }
    }
    check_duplicates(resources, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Invalid(errors))
    }
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let file = entry.map_err(io)?.path();
        let is_yaml = matches!(
            file.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if is_yaml && file.is_file() {
            files.push(file);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses one file's documents into `resources`, recording problems in `errors`.
pub fn load_file(
    file: &Path,
    text: &str,
    app_id: &str,
    resources: &mut Resources,
    errors: &mut Vec<ResourceError>,
) {
    let documents: Vec<Value> = match serde_saphyr::from_multiple(text) {
        Ok(docs) => docs,
        Err(e) => {
            errors.push(ResourceError {
                origin: Origin {
                    file: file.to_path_buf(),
                    document: 1,
                },
                resource: None,
                field: "(yaml)".into(),
                message: format!("not valid YAML: {e}"),
            });
            return;
        }
    };
    for (index, document) in documents.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document: index + 1,
        };
        if let Err(e) = load_document(document, origin.clone(), app_id, resources) {
            errors.push(e);
        }
    }
}

fn load_document(
    document: Value,
    origin: Origin,
    app_id: &str,
    resources: &mut Resources,
) -> Result<(), ResourceError> {
    let kind = document
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = document
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let fail = |e: FieldError| ResourceError {
        origin: origin.clone(),
        resource: Some(format!("{kind} {name:?}")),
        field: if e.field.is_empty() {
            "(document)".into()
        } else {
            e.field
        },
        message: e.message,
    };
    match kind.as_str() {
        "Component" => {
            let ignore_errors = document
                .pointer("/spec/ignoreErrors")
                .map(|v| matches!(v, Value::Bool(true)) || v.as_str() == Some("true"))
                .unwrap_or(false);
            let parsed = component::parse(document, origin.clone()).and_then(|spec| {
                if registry::is_supported(&spec.component_type, &spec.version) {
                    Ok(spec)
                } else {
                    Err(FieldError::new(
                        "spec.type",
                        format!(
                            "component type {}/{} is not supported by this build; supported types: {}",
                            spec.component_type,
                            spec.version,
                            registry::supported_types().join(", ")
                        ),
                    ))
                }
            });
            match parsed {
                Ok(spec) if in_scope(&spec.scopes, app_id) => resources.components.push(spec),
                Ok(spec) => tracing::info!(
                    component = %spec.name,
                    "component skipped: app id {app_id:?} is not in its scopes"
                ),
                Err(e) if ignore_errors => {
                    let e = fail(e);
                    tracing::warn!("ignoring invalid component (ignoreErrors is true): {e}");
                }
                Err(e) => return Err(fail(e)),
            }
        }
        "Subscription" => {
            let spec = subscription::parse(document, origin.clone()).map_err(fail)?;
            if spec.rules.is_empty() {
                tracing::warn!("{origin}: subscription {name:?} has no route; skipped");
            } else if in_scope(&spec.scopes, app_id) {
                resources.subscriptions.push(spec);
            }
        }
        "Resiliency" => {
            let spec = resiliency::parse(document, origin.clone()).map_err(fail)?;
            if in_scope(&spec.scopes, app_id) {
                resources.resiliencies.push(spec);
            }
        }
        "Configuration" => {
            let spec = configuration::parse(document, origin.clone()).map_err(fail)?;
            resources.configurations.push(spec);
        }
        "HTTPEndpoint" => {
            let spec = http_endpoint::parse(document, origin.clone()).map_err(fail)?;
            if in_scope(&spec.scopes, app_id) {
                resources.http_endpoints.push(spec);
            }
        }
        "" => {
            return Err(fail(FieldError::new(
                "kind",
                "is missing; expected Component, Subscription, Resiliency, Configuration or HTTPEndpoint",
            )))
        }
        other => tracing::warn!("{origin}: skipping resource of unsupported kind {other:?}"),
    }
    Ok(())
}

fn check_duplicates(resources: &Resources, errors: &mut Vec<ResourceError>) {
    let mut seen: BTreeMap<&str, &Origin> = BTreeMap::new();
    for c in &resources.components {
        if let Some(first) = seen.insert(&c.name, &c.origin) {
            errors.push(ResourceError {
                origin: c.origin.clone(),
                resource: Some(format!("Component {:?}", c.name)),
                field: "metadata.name".into(),
                message: format!("duplicate component name; already defined in {first}"),
            });
        }
    }
    let mut seen: BTreeMap<&str, &Origin> = BTreeMap::new();
    for e in &resources.http_endpoints {
        if let Some(first) = seen.insert(&e.name, &e.origin) {
            errors.push(ResourceError {
                origin: e.origin.clone(),
                resource: Some(format!("HTTPEndpoint {:?}", e.name)),
                field: "metadata.name".into(),
                message: format!("duplicate HTTPEndpoint name; already defined in {first}"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> (Resources, Vec<ResourceError>) {
        let mut resources = Resources::default();
        let mut errors = Vec::new();
        load_file(
            Path::new("c.yaml"),
            text,
            "app1",
            &mut resources,
            &mut errors,
        );
        check_duplicates(&resources, &mut errors);
        (resources, errors)
    }

    #[test]
    fn multi_document_files_with_scopes_and_unknown_kinds() {
        let (res, errors) = load(
            r#"
kind: Component
metadata: {name: a}
spec: {type: secretstores.local.env, version: v1}
---
kind: Component
metadata: {name: b}
spec: {type: secretstores.local.env, version: v1}
scopes: [someone-else]
---
kind: Widget
metadata: {name: w}
---
kind: Subscription
spec: {pubsubname: p, topic: t, route: /t}
"#,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(res.components.len(), 1);
        assert_eq!(res.components[0].name, "a");
        assert_eq!(res.subscriptions.len(), 1);
    }

    #[test]
    fn unknown_type_names_the_supported_ones() {
        let (_, errors) = load("kind: Component\nmetadata: {name: a}\nspec: {type: state.nope}\n");
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert!(text.contains("c.yaml, document 1"), "{text}");
        assert!(text.contains("spec.type"), "{text}");
        assert!(text.contains("secretstores.local.env"), "{text}");
    }

    #[test]
    fn ignore_errors_skips_an_invalid_component() {
        let (res, errors) = load(
            "kind: Component\nmetadata: {name: a}\nspec: {type: state.nope, ignoreErrors: true}\n",
        );
        assert!(errors.is_empty());
        assert!(res.components.is_empty());
    }

    #[test]
    fn duplicates_and_bad_yaml_are_errors() {
        let (_, errors) = load(
            "kind: Component\nmetadata: {name: a}\nspec: {type: secretstores.local.env}\n---\nkind: Component\nmetadata: {name: a}\nspec: {type: secretstores.local.env}\n",
        );
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("duplicate"));
        assert!(errors[0].to_string().contains("document 2"));
        let (_, errors) = load("kind: Component\n  bad: [\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("not valid YAML"));
    }
}
