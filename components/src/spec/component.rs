//! `kind: Component` (dapr.io/v1alpha1).

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{duration_field, from_value, stringify_value, FieldError, ObjectMeta, Origin};

/// A reference to a secret: the secret's `name` in the component's secret store, and the `key`
/// inside that secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SecretKeyRef {
    pub name: String,
    #[serde(default)]
    pub key: Option<String>,
}

/// Where a metadata item's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataSource {
    Value(String),
    SecretKeyRef(SecretKeyRef),
    EnvRef(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataItem {
    pub name: String,
    pub source: MetadataSource,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ComponentSpec {
    pub name: String,
    pub namespace: Option<String>,
    /// `state.redis`, `pubsub.kafka`, …
    pub component_type: String,
    pub version: String,
    pub init_timeout: Duration,
    pub ignore_errors: bool,
    pub metadata: Vec<MetadataItem>,
    /// `auth.secretStore`: the store that resolves `secretKeyRef` items.
    pub secret_store: Option<String>,
    pub scopes: Vec<String>,
    pub origin: Origin,
}

impl ComponentSpec {
    /// The building block, the part of the type before the first dot (`state`, `pubsub`).
    pub fn building_block(&self) -> &str {
        self.component_type
            .split_once('.')
            .map(|(block, _)| block)
            .unwrap_or(&self.component_type)
    }
}

pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawComponent {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: RawSpec,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(rename = "type")]
    component_type: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    init_timeout: Option<String>,
    #[serde(default)]
    ignore_errors: Option<Value>,
    #[serde(default)]
    metadata: Option<Vec<RawMetadataItem>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAuth {
    #[serde(default)]
    secret_store: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawMetadataItem {
    name: String,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    secret_key_ref: Option<SecretKeyRef>,
    #[serde(default)]
    env_ref: Option<String>,
}

impl RawMetadataItem {
    /// Converts one `{name, value | secretKeyRef | envRef}` entry; `field` is its path for errors.
    pub(crate) fn into_item(self, field: &str) -> Result<MetadataItem, FieldError> {
        let name = self.name.trim().to_string();
        if name.is_empty() {
            return Err(FieldError::new(
                format!("{field}.name"),
                "must not be empty",
            ));
        }
        let source = match (self.value, self.secret_key_ref, self.env_ref) {
            (_, Some(secret), _) => {
                if secret.name.trim().is_empty() {
                    return Err(FieldError::new(
                        format!("{field}.secretKeyRef.name"),
                        "must not be empty",
                    ));
                }
                MetadataSource::SecretKeyRef(secret)
            }
            (_, None, Some(env)) => MetadataSource::EnvRef(env),
            (value, None, None) => {
                MetadataSource::Value(value.as_ref().map(stringify_value).unwrap_or_default())
            }
        };
        Ok(MetadataItem { name, source })
    }
}

pub(crate) fn parse(value: Value, origin: Origin) -> Result<ComponentSpec, FieldError> {
    let raw: RawComponent = from_value(value)?;
    let name = raw.metadata.name.unwrap_or_default().trim().to_string();
    if name.is_empty() {
        return Err(FieldError::new("metadata.name", "is required"));
    }
    let component_type = raw.spec.component_type.trim().to_string();
    if component_type.is_empty() || !component_type.contains('.') {
        return Err(FieldError::new(
            "spec.type",
            format!("{component_type:?} is not a component type such as state.redis"),
        ));
    }
    let ignore_errors = match raw.spec.ignore_errors {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(other) => crate::metadata::parse_bool(&stringify_value(&other)).ok_or_else(|| {
            FieldError::new("spec.ignoreErrors", format!("{other} is not a boolean"))
        })?,
    };
    let init_timeout = duration_field(
        "spec.initTimeout",
        raw.spec.init_timeout.as_deref(),
        DEFAULT_INIT_TIMEOUT,
    )?;
    let metadata = raw
        .spec
        .metadata
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, item)| item.into_item(&format!("spec.metadata[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ComponentSpec {
        name,
        namespace: raw.metadata.namespace,
        component_type,
        version: raw
            .spec
            .version
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "v1".to_string()),
        init_timeout,
        ignore_errors,
        metadata,
        secret_store: raw
            .auth
            .and_then(|a| a.secret_store)
            .filter(|s| !s.trim().is_empty()),
        scopes: raw.scopes.unwrap_or_default(),
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_yaml(yaml: &str) -> Result<ComponentSpec, FieldError> {
        let value: Value = serde_saphyr::from_str(yaml).expect("valid yaml");
        parse(value, Origin::default())
    }

    #[test]
    fn parses_a_full_component() {
        let spec = parse_yaml(
            r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore, namespace: default}
spec:
  type: state.redis
  version: v1
  initTimeout: 10s
  ignoreErrors: "true"
  metadata:
  - name: redisHost
    value: localhost:6379
  - name: redisDB
    value: 3
  - name: enableTLS
    value: false
  - name: empty
    value:
  - name: redisPassword
    secretKeyRef: {name: redis, key: password}
  - name: fromEnv
    envRef: MY_VAR
auth: {secretStore: local}
scopes: [app1]
"#,
        )
        .unwrap();
        assert_eq!(spec.name, "statestore");
        assert_eq!(spec.building_block(), "state");
        assert_eq!(spec.init_timeout, Duration::from_secs(10));
        assert!(spec.ignore_errors);
        assert_eq!(spec.secret_store.as_deref(), Some("local"));
        assert_eq!(spec.scopes, vec!["app1"]);
        let values: Vec<_> = spec.metadata.iter().map(|m| m.source.clone()).collect();
        assert_eq!(values[0], MetadataSource::Value("localhost:6379".into()));
        assert_eq!(values[1], MetadataSource::Value("3".into()));
        assert_eq!(values[2], MetadataSource::Value("false".into()));
        assert_eq!(values[3], MetadataSource::Value(String::new()));
        assert!(matches!(&values[4], MetadataSource::SecretKeyRef(r) if r.name == "redis"));
        assert_eq!(values[5], MetadataSource::EnvRef("MY_VAR".into()));
    }

    #[test]
    fn null_metadata_and_missing_version_are_accepted() {
        let spec =
            parse_yaml("metadata: {name: s}\nspec: {type: state.in-memory, metadata: }\n").unwrap();
        assert!(spec.metadata.is_empty());
        assert_eq!(spec.version, "v1");
        assert_eq!(spec.init_timeout, DEFAULT_INIT_TIMEOUT);
    }

    #[test]
    fn errors_name_the_field() {
        let err =
            parse_yaml("metadata: {name: s}\nspec: {type: state.redis, metadata: [{value: 1}]}")
                .unwrap_err();
        assert_eq!(err.field, "spec.metadata[0]");
        assert!(err.message.contains("name"), "{err:?}");
        let err = parse_yaml("metadata: {name: s}\nspec: {type: state.redis, initTimeout: soon}")
            .unwrap_err();
        assert_eq!(err.field, "spec.initTimeout");
        let err = parse_yaml("spec: {type: state.redis}").unwrap_err();
        assert_eq!(err.field, "metadata.name");
    }
}
