//! Settings every state store shares: the key prefix strategy and `actorStateStore`.

use std::time::Duration;

use crate::metadata::{Metadata, MetadataError};
use crate::registry::BuildContext;

/// The separator between the key prefix and the key, reserved in keys and prefixes.
pub const KEY_SEPARATOR: &str = "||";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// The resolved prefix (`myapp`, the store name, `ns.myapp`, a custom text) or `None`.
    pub key_prefix: Option<String>,
    /// `actorStateStore: "true"`: the store may hold actor state (reported as `ACTOR`).
    pub actor_state_store: bool,
}

impl StoreOptions {
    /// Reads `keyPrefix` (`appid` default, `name`, `namespace`, `none`, or any other text used as
    /// the prefix itself; lower-cased, as Dapr does) and `actorStateStore`.
    pub fn from_metadata(md: &Metadata, ctx: &BuildContext) -> Result<Self, MetadataError> {
        let strategy = md
            .get_non_empty("keyPrefix")
            .unwrap_or("appid")
            .to_lowercase();
        if strategy.contains(KEY_SEPARATOR) {
            return Err(MetadataError::Invalid {
                field: "keyPrefix".into(),
                value: strategy,
                expected: "a prefix without `||`",
            });
        }
        let app_id = || (!ctx.app_id.is_empty()).then(|| ctx.app_id.clone());
        let key_prefix = match strategy.as_str() {
            "appid" => app_id(),
            "name" => Some(ctx.name.clone()),
            "namespace" => match ctx.namespace.as_deref().filter(|ns| !ns.is_empty()) {
                Some(ns) if !ctx.app_id.is_empty() => Some(format!("{ns}.{}", ctx.app_id)),
                _ => app_id(),
            },
            "none" => None,
            _ => Some(strategy),
        };
        Ok(Self {
            key_prefix,
            actor_state_store: md.get_bool("actorStateStore", false)?,
        })
    }

    /// The key as stored: `<prefix>||<key>`, or the key itself without a prefix.
    pub fn stored_key(&self, key: &str) -> String {
        match &self.key_prefix {
            Some(prefix) => format!("{prefix}{KEY_SEPARATOR}{key}"),
            None => key.to_string(),
        }
    }
}

/// A table name is put into SQL text, so only plain identifiers (optionally `schema.table`) are
/// allowed.
pub fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// `cleanupInterval` of the SQL stores: a duration or a number of seconds; zero or negative
/// disables the cleanup (`None`).
pub fn cleanup_interval(
    md: &Metadata,
    default: Duration,
) -> Result<Option<Duration>, MetadataError> {
    if md
        .get_non_empty("cleanupInterval")
        .is_some_and(|v| v.starts_with('-'))
    {
        return Ok(None);
    }
    let d = md.get_duration("cleanupInterval", Duration::from_secs(1), default)?;
    Ok((!d.is_zero()).then_some(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(prefix: Option<&str>, namespace: Option<&str>) -> Result<StoreOptions, MetadataError> {
        let md: Metadata = prefix.map(|p| ("keyPrefix", p)).into_iter().collect();
        let ctx = BuildContext {
            name: "store1".into(),
            app_id: "myapp".into(),
            namespace: namespace.map(String::from),
        };
        StoreOptions::from_metadata(&md, &ctx)
    }

    #[test]
    fn prefix_strategies() {
        assert_eq!(opts(None, None).unwrap().stored_key("k"), "myapp||k");
        assert_eq!(
            opts(Some("AppID"), None).unwrap().stored_key("k"),
            "myapp||k"
        );
        assert_eq!(
            opts(Some("name"), None).unwrap().stored_key("k"),
            "store1||k"
        );
        assert_eq!(
            opts(Some("namespace"), Some("prod"))
                .unwrap()
                .stored_key("k"),
            "prod.myapp||k"
        );
        assert_eq!(
            opts(Some("namespace"), None).unwrap().stored_key("k"),
            "myapp||k"
        );
        assert_eq!(opts(Some("none"), None).unwrap().stored_key("k"), "k");
        assert_eq!(
            opts(Some("Shared"), None).unwrap().stored_key("k"),
            "shared||k"
        );
        assert!(opts(Some("a||b"), None).is_err());
    }

    #[test]
    fn identifiers_and_cleanup() {
        assert!(valid_identifier("state"));
        assert!(valid_identifier("public.state_1"));
        assert!(!valid_identifier("state; DROP TABLE x"));
        assert!(!valid_identifier("1state"));
        let md = |v: &str| -> Metadata { [("cleanupInterval", v)].into_iter().collect() };
        let hour = Duration::from_secs(3600);
        assert_eq!(cleanup_interval(&Metadata::new(), hour), Ok(Some(hour)));
        assert_eq!(
            cleanup_interval(&md("10"), hour),
            Ok(Some(Duration::from_secs(10)))
        );
        assert_eq!(
            cleanup_interval(&md("30s"), hour),
            Ok(Some(Duration::from_secs(30)))
        );
        assert_eq!(cleanup_interval(&md("0"), hour), Ok(None));
        assert_eq!(cleanup_interval(&md("-1"), hour), Ok(None));
        assert!(cleanup_interval(&md("soon"), hour).is_err());
    }
}
