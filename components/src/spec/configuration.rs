//! `kind: Configuration` (dapr.io/v1alpha1). The parts Tandem acts on are typed; the whole spec is
//! kept so later features can read more of it.

use serde::Deserialize;
use serde_json::Value;

use super::{from_value, FieldError, ObjectMeta, Origin};

#[derive(Debug, Clone, PartialEq)]
pub struct NameResolutionSpec {
    /// `local` (Tandem's default), `kubernetes`, `static`, or a Dapr resolver name.
    pub component: String,
    pub version: String,
    pub configuration: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub name: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretScope {
    pub store_name: String,
    pub default_access_allow: bool,
    pub allowed_secrets: Vec<String>,
    pub denied_secrets: Vec<String>,
}

impl SecretScope {
    /// Dapr's rule: denied wins, then the allow list (when non-empty), then the default.
    pub fn allows(&self, key: &str) -> bool {
        if self.denied_secrets.iter().any(|s| s == key) {
            return false;
        }
        if !self.allowed_secrets.is_empty() {
            return self.allowed_secrets.iter().any(|s| s == key);
        }
        self.default_access_allow
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigurationSpec {
    pub name: String,
    pub name_resolution: Option<NameResolutionSpec>,
    pub features: Vec<Feature>,
    pub secret_scopes: Vec<SecretScope>,
    /// The whole `spec`, as written.
    pub raw: Value,
    pub origin: Origin,
}

#[derive(Deserialize)]
struct RawConfiguration {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Value,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawSpec {
    #[serde(default)]
    name_resolution: Option<RawNameResolution>,
    #[serde(default)]
    features: Option<Vec<RawFeature>>,
    #[serde(default)]
    secrets: Option<RawSecrets>,
}

#[derive(Deserialize)]
struct RawNameResolution {
    component: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    configuration: Value,
}

#[derive(Deserialize)]
struct RawFeature {
    name: String,
    #[serde(default)]
    enabled: bool,
}

#[derive(Deserialize)]
struct RawSecrets {
    #[serde(default)]
    scopes: Option<Vec<RawSecretScope>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSecretScope {
    store_name: String,
    #[serde(default)]
    default_access: Option<String>,
    #[serde(default)]
    allowed_secrets: Option<Vec<String>>,
    #[serde(default)]
    denied_secrets: Option<Vec<String>>,
}

pub(crate) fn parse(value: Value, origin: Origin) -> Result<ConfigurationSpec, FieldError> {
    let raw: RawConfiguration = from_value(value)?;
    let spec_value = if raw.spec.is_null() {
        Value::Object(Default::default())
    } else {
        raw.spec
    };
    let spec: RawSpec = from_value(spec_value.clone()).map_err(|e| FieldError {
        field: format!("spec.{}", e.field)
            .trim_end_matches('.')
            .to_string(),
        message: e.message,
    })?;
    let secret_scopes = spec
        .secrets
        .and_then(|s| s.scopes)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let default_access_allow = match s.default_access.as_deref().map(str::trim) {
                None | Some("") | Some("allow") => true,
                Some("deny") => false,
                Some(other) => {
                    return Err(FieldError::new(
                        format!("spec.secrets.scopes[{i}].defaultAccess"),
                        format!("{other:?} is not allow or deny"),
                    ))
                }
            };
            Ok(SecretScope {
                store_name: s.store_name,
                default_access_allow,
                allowed_secrets: s.allowed_secrets.unwrap_or_default(),
                denied_secrets: s.denied_secrets.unwrap_or_default(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ConfigurationSpec {
        name: raw.metadata.name.unwrap_or_default(),
        name_resolution: spec.name_resolution.map(|n| NameResolutionSpec {
            component: n.component,
            version: n.version.unwrap_or_else(|| "v1".into()),
            configuration: n.configuration,
        }),
        features: spec
            .features
            .unwrap_or_default()
            .into_iter()
            .map(|f| Feature {
                name: f.name,
                enabled: f.enabled,
            })
            .collect(),
        secret_scopes,
        raw: spec_value,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_scope_rules() {
        let scope = SecretScope {
            store_name: "s".into(),
            default_access_allow: false,
            allowed_secrets: vec!["a".into()],
            denied_secrets: vec!["b".into()],
        };
        assert!(scope.allows("a"));
        assert!(!scope.allows("b"));
        assert!(!scope.allows("c"));
    }

    #[test]
    fn parses_name_resolution_and_scopes() {
        let value = serde_saphyr::from_str(
            r#"
kind: Configuration
metadata: {name: cfg}
spec:
  nameResolution: {component: static, configuration: {apps: {b: ["127.0.0.1:1"]}}}
  secrets: {scopes: [{storeName: local, defaultAccess: deny, allowedSecrets: [x]}]}
  features: [{name: HotReload, enabled: true}]
"#,
        )
        .unwrap();
        let cfg = parse(value, Origin::default()).unwrap();
        assert_eq!(cfg.name_resolution.unwrap().component, "static");
        assert!(!cfg.secret_scopes[0].default_access_allow);
        assert!(cfg.features[0].enabled);
    }
}
