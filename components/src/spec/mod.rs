//! The resource model: Dapr-format YAML documents (Component, Subscription, Resiliency,
//! Configuration, HTTPEndpoint) parsed into typed specs, with errors that name the file, the
//! document and the field.

pub mod component;
pub mod configuration;
pub mod http_endpoint;
pub mod load;
pub mod resiliency;
pub mod subscription;
pub mod template;

use std::fmt;
use std::path::PathBuf;

pub use component::{ComponentSpec, MetadataItem, MetadataSource, SecretKeyRef};
pub use configuration::ConfigurationSpec;
pub use http_endpoint::HttpEndpointSpec;
pub use load::{add_documents, load_resources, LoadError, Resources};
pub use resiliency::ResiliencySpec;
pub use subscription::{BulkSubscribe, RouteRule, SubscriptionKind, SubscriptionSpec};

/// Where a resource came from, for messages: the file and the 1-based document number in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub file: PathBuf,
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.file.display(), self.document)
    }
}

/// One invalid resource document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}: field `{field}`: {message}", resource.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
pub struct ResourceError {
    pub origin: Origin,
    /// `Component "statestore"`, when the document got far enough to tell.
    pub resource: Option<String>,
    pub field: String,
    pub message: String,
}

/// A field-level problem found while converting a raw document into its typed spec; the loader
/// adds the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Deserializes `value` into `T`, reporting the path of the first offending field.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        FieldError::new(field, e.into_inner().to_string())
    })
}

/// Turns a YAML scalar (already converted to JSON) into the string Dapr would see.
pub fn stringify_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// Reads a duration field written as a Go duration string (`5s`).
pub(crate) fn duration_field(
    field: &str,
    value: Option<&str>,
    default: std::time::Duration,
) -> Result<std::time::Duration, FieldError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => crate::metadata::parse_go_duration(v).ok_or_else(|| {
            FieldError::new(
                field,
                format!("{v:?} is not a duration (write it like 5s, 500ms or 1m30s)"),
            )
        }),
    }
}

/// `metadata.name` and `metadata.namespace`, shared by every kind.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct ObjectMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

/// True when a resource with these scopes applies to `app_id` (no scopes = everyone).
pub fn in_scope(scopes: &[String], app_id: &str) -> bool {
    scopes.is_empty() || scopes.iter().any(|s| s.trim() == app_id)
}
