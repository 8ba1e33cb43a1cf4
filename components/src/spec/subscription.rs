//! Subscriptions: declarative `kind: Subscription` (dapr.io/v1alpha1 and v2alpha1) and the
//! programmatic entries an app returns from `GET /dapr/subscribe`. Both share one shape.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{from_value, stringify_value, FieldError, ObjectMeta, Origin};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SubscriptionKind {
    Declarative,
    Programmatic,
}

/// One routing rule. `match_expr` is a CEL expression over `event`; `None` matches everything
/// (the default route, always last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub match_expr: Option<String>,
    pub path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkSubscribe {
    pub enabled: bool,
    pub max_messages_count: u32,
    pub max_await_duration_ms: u64,
}

/// Dapr's defaults for components without native bulk support.
pub const DEFAULT_BULK_MAX_MESSAGES: u32 = 100;
pub const DEFAULT_BULK_MAX_AWAIT_MS: u64 = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionSpec {
    /// The resource name (declarative only).
    pub name: Option<String>,
    pub kind: SubscriptionKind,
    pub pubsub_name: String,
    pub topic: String,
    /// Rules in order, then the default route as a match-all rule.
    pub rules: Vec<RouteRule>,
    pub dead_letter_topic: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub bulk_subscribe: Option<BulkSubscribe>,
    pub scopes: Vec<String>,
    pub origin: Option<Origin>,
}

impl SubscriptionSpec {
    /// `metadata.rawPayload` is true.
    pub fn raw_payload(&self) -> bool {
        self.metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("rawPayload"))
            .and_then(|(_, v)| crate::metadata::parse_bool(v))
            .unwrap_or(false)
    }

    /// The match-all route, if any.
    pub fn default_route(&self) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.match_expr.is_none())
            .map(|r| r.path.as_str())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSubscriptionSpec {
    #[serde(alias = "pubsubName", alias = "pubSubName")]
    pubsubname: String,
    topic: String,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    routes: Option<RawRoutes>,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    bulk_subscribe: Option<RawBulk>,
}

#[derive(Deserialize)]
struct RawRoutes {
    #[serde(default)]
    rules: Option<Vec<RawRule>>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Deserialize)]
struct RawRule {
    #[serde(default, rename = "match")]
    match_expr: Option<String>,
    path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBulk {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    max_messages_count: Option<u32>,
    #[serde(default)]
    max_await_duration_ms: Option<u64>,
}

#[derive(Deserialize)]
struct RawSubscription {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: Value,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

fn convert(
    raw: RawSubscriptionSpec,
    field_prefix: &str,
    kind: SubscriptionKind,
) -> Result<SubscriptionSpec, FieldError> {
    let pubsub_name = raw.pubsubname.trim().to_string();
    if pubsub_name.is_empty() {
        return Err(FieldError::new(
            format!("{field_prefix}pubsubname"),
            "is required",
        ));
    }
    let topic = raw.topic.trim().to_string();
    if topic.is_empty() {
        return Err(FieldError::new(
            format!("{field_prefix}topic"),
            "is required",
        ));
    }
    let mut rules = Vec::new();
    let mut default = None;
    if let Some(routes) = raw.routes {
        for (i, rule) in routes.rules.unwrap_or_default().into_iter().enumerate() {
            let expr = rule.match_expr.map(|m| m.trim().to_string());
            if rule.path.trim().is_empty() {
                return Err(FieldError::new(
                    format!("{field_prefix}routes.rules[{i}].path"),
                    "is required",
                ));
            }
            match expr.filter(|e| !e.is_empty()) {
                Some(expr) => rules.push(RouteRule {
                    match_expr: Some(expr),
                    path: rule.path,
                }),
                // A rule without a match is a match-all rule.
                None => {
                    default.get_or_insert(rule.path);
                }
            }
        }
        default = default.or(routes.default);
    }
    if let Some(path) = default.or(raw.route).filter(|p| !p.trim().is_empty()) {
        rules.push(RouteRule {
            match_expr: None,
            path,
        });
    }
    Ok(SubscriptionSpec {
        name: None,
        kind,
        pubsub_name,
        topic,
        rules,
        dead_letter_topic: raw.dead_letter_topic.filter(|t| !t.trim().is_empty()),
        metadata: raw
            .metadata
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| (k.clone(), stringify_value(v)))
            .collect(),
        bulk_subscribe: raw.bulk_subscribe.map(|b| BulkSubscribe {
            enabled: b.enabled,
            max_messages_count: b
                .max_messages_count
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_BULK_MAX_MESSAGES),
            max_await_duration_ms: b
                .max_await_duration_ms
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_BULK_MAX_AWAIT_MS),
        }),
        scopes: Vec::new(),
        origin: None,
    })
}

/// Parses a declarative Subscription document (either API version).
pub(crate) fn parse(value: Value, origin: Origin) -> Result<SubscriptionSpec, FieldError> {
    let raw: RawSubscription = from_value(value)?;
    let spec: RawSubscriptionSpec = from_value(raw.spec).map_err(|e| FieldError {
        field: format!("spec.{}", e.field)
            .trim_end_matches('.')
            .to_string(),
        message: e.message,
    })?;
    let mut sub = convert(spec, "spec.", SubscriptionKind::Declarative)?;
    sub.name = raw.metadata.name;
    sub.scopes = raw.scopes.unwrap_or_default();
    sub.origin = Some(origin);
    Ok(sub)
}

/// Parses the body of an app's `GET /dapr/subscribe` answer (v1 `route` or v2 `routes` entries).
/// An empty body means no subscriptions.
pub fn parse_programmatic(body: &[u8]) -> Result<Vec<SubscriptionSpec>, FieldError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| FieldError::new("", format!("not a JSON array: {e}")))?;
    let entries = match value {
        Value::Array(entries) => entries,
        Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(FieldError::new(
                "",
                "expected a JSON array of subscriptions",
            ))
        }
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let raw: RawSubscriptionSpec = from_value(entry).map_err(|e| FieldError {
                field: format!("[{i}].{}", e.field)
                    .trim_end_matches('.')
                    .to_string(),
                message: e.message,
            })?;
            convert(raw, &format!("[{i}]."), SubscriptionKind::Programmatic)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_rules_then_default() {
        let value: Value = serde_saphyr::from_str(
            r#"
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata: {name: order}
spec:
  pubsubname: pubsub
  topic: orders
  routes:
    rules: [{match: 'event.type == "widget"', path: /widgets}]
    default: /checkout
  deadLetterTopic: poison
  metadata: {rawPayload: true}
  bulkSubscribe: {enabled: true}
scopes: [checkout]
"#,
        )
        .unwrap();
        let sub = parse(value, Origin::default()).unwrap();
        assert_eq!(sub.rules.len(), 2);
        assert_eq!(
            sub.rules[0].match_expr.as_deref(),
            Some("event.type == \"widget\"")
        );
        assert_eq!(sub.default_route(), Some("/checkout"));
        assert_eq!(sub.dead_letter_topic.as_deref(), Some("poison"));
        assert!(sub.raw_payload());
        assert_eq!(sub.bulk_subscribe.unwrap().max_messages_count, 100);
        assert_eq!(sub.scopes, vec!["checkout"]);
        assert_eq!(sub.kind, SubscriptionKind::Declarative);
    }

    #[test]
    fn v1_route() {
        let value: Value = serde_saphyr::from_str(
            "kind: Subscription\nspec: {pubsubname: p, topic: t, route: /t}\n",
        )
        .unwrap();
        let sub = parse(value, Origin::default()).unwrap();
        assert_eq!(sub.default_route(), Some("/t"));
    }

    #[test]
    fn programmatic_shapes() {
        let subs = parse_programmatic(
            br#"[{"pubsubname":"pubsub","topic":"a","route":"/a"},
                {"pubsubname":"pubsub","topic":"b","routes":{"rules":[{"match":"event.data.x > 1","path":"/big"}],"default":"/b"},"deadLetterTopic":"dlq"}]"#,
        )
        .unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[1].rules.len(), 2);
        assert_eq!(subs[1].dead_letter_topic.as_deref(), Some("dlq"));
        assert!(parse_programmatic(b"").unwrap().is_empty());
        let err = parse_programmatic(br#"[{"topic":"a"}]"#).unwrap_err();
        assert!(err.field.starts_with("[0]"), "{err:?}");
    }
}
