//! Dapr's CloudEvent envelope: wrapping a published body, completing a body that already is a
//! CloudEvent, and wrapping a raw payload for raw subscribers.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::trace_context::{new_traceparent, parse_traceparent};

pub const EVENT_TYPE: &str = "com.dapr.event.sent";
pub const BULK_EVENT_TYPE: &str = "com.dapr.event.sent.bulk";
pub const SPEC_VERSION: &str = "1.0";
pub const DEFAULT_SOURCE: &str = "Dapr";
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";
pub const DEFAULT_CONTENT_TYPE: &str = "text/plain";

#[derive(Debug, Error)]
pub enum EnvelopeError {
    #[error("the body is not a JSON CloudEvent object: {0}")]
    NotACloudEvent(String),
}

/// W3C trace context of the publishing request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
}

impl TraceContext {
    /// The caller's context, or a new sampled one (Dapr starts a span for every publish).
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        let traceparent = traceparent
            .filter(|t| parse_traceparent(t).is_some())
            .map(str::to_string)
            .unwrap_or_else(new_traceparent);
        Self {
            traceparent,
            tracestate: tracestate.unwrap_or_default().to_string(),
        }
    }
}

/// Everything a published envelope is made from, besides the body.
#[derive(Debug, Clone)]
pub struct EnvelopeContext<'a> {
    pub app_id: &'a str,
    pub pubsub: &'a str,
    pub topic: &'a str,
    pub trace: &'a TraceContext,
    /// Request metadata (`cloudevent.*` overrides, `ttlInSeconds`).
    pub metadata: &'a BTreeMap<String, String>,
    /// Stamp `expiration` for `ttlInSeconds` (the broker has no native TTL).
    pub stamp_expiration: bool,
    pub now: DateTime<Utc>,
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The essence of a content type: lowercase, without parameters.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// `application/json`, `text/json` or any `+json` type.
pub fn is_json(content_type: &str) -> bool {
    let e = essence(content_type);
    e == "application/json" || e == "text/json" || e.ends_with("+json")
}

pub fn is_cloudevent(content_type: &str) -> bool {
    essence(content_type) == CLOUDEVENTS_JSON
}

fn is_binary(content_type: &str) -> bool {
    let e = essence(content_type);
    e == "application/octet-stream" || e == "application/cloudevents+protobuf"
}

/// The value of one member of a written envelope.
enum Member<'a> {
    /// JSON text, written as it is.
    Json(&'a [u8]),
    Text(Cow<'a, str>),
}

/// The `data` / `data_base64` member for a body of `content_type`: JSON as sent, text as a
/// string, anything else base64.
fn data_member<'a>(body: &'a [u8], content_type: &str) -> (&'static str, Member<'a>) {
    if is_json(content_type) && tandem_components::state::value::is_json(body) {
        return ("data", Member::Json(body));
    }
    if !is_binary(content_type) {
        if let Ok(text) = std::str::from_utf8(body) {
            return ("data", Member::Text(Cow::Borrowed(text)));
        }
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(body);
    ("data_base64", Member::Text(Cow::Owned(encoded)))
}

/// A JSON object of `members`, in name order (as Go's encoder writes Dapr's envelope).
fn write_object(members: &mut [(&str, Member<'_>)]) -> Vec<u8> {
    members.sort_unstable_by_key(|(name, _)| *name);
    let size: usize = members
        .iter()
        .map(|(name, member)| {
            name.len()
                + 8
                + match member {
                    Member::Json(raw) => raw.len(),
                    Member::Text(text) => text.len() + 8,
                }
        })
        .sum();
    let mut out = Vec::with_capacity(size + 2);
    out.push(b'{');
    for (index, (name, member)) in members.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match member {
            Member::Json(raw) => out.extend_from_slice(raw),
            Member::Text(text) => write_string(&mut out, text),
        }
    }
    out.push(b'}');
    out
}

/// `text` as a JSON string.
fn write_string(out: &mut Vec<u8>, text: &str) {
    // Writing into memory cannot fail, and a `str` always serializes.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn ttl_seconds(metadata: &BTreeMap<String, String>) -> Option<i64> {
    metadata
        .get("ttlInSeconds")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|s| *s > 0)
}

/// `cloudevent.<field>` request metadata (looked up without building the key: most publishes
/// carry no metadata at all).
fn override_of<'m>(metadata: &'m BTreeMap<String, String>, field: &str) -> Option<&'m str> {
    metadata
        .iter()
        .find(|(key, _)| key.strip_prefix("cloudevent.") == Some(field))
        .map(|(_, value)| value.as_str())
        .filter(|v| !v.is_empty())
}

/// Wraps a published body in a new CloudEvent, as JSON text. A JSON body is embedded as sent
/// (checked, not re-encoded), so large events cost one pass over their data.
pub fn wrap(body: &[u8], content_type: Option<&str>, ctx: &EnvelopeContext<'_>) -> Vec<u8> {
    let content_type = content_type
        .filter(|c| !c.trim().is_empty())
        .unwrap_or(DEFAULT_CONTENT_TYPE);
    let text = |s: &'static str| Member::Text(Cow::Borrowed(s));
    let id = match override_of(ctx.metadata, "id") {
        Some(id) => Cow::Borrowed(id),
        None => Cow::Owned(uuid::Uuid::new_v4().to_string()),
    };
    let source = override_of(ctx.metadata, "source").unwrap_or(if ctx.app_id.is_empty() {
        DEFAULT_SOURCE
    } else {
        ctx.app_id
    });
    let event_type = override_of(ctx.metadata, "type").unwrap_or(EVENT_TYPE);
    let (data_name, data) = data_member(body, content_type);
    let trace = TraceFields::of(ctx);
    let mut members = vec![
        ("id", Member::Text(id)),
        ("source", Member::Text(Cow::Borrowed(source))),
        ("type", Member::Text(Cow::Borrowed(event_type))),
        ("specversion", text(SPEC_VERSION)),
        ("datacontenttype", Member::Text(Cow::Borrowed(content_type))),
        (data_name, data),
        ("time", Member::Text(Cow::Owned(rfc3339(ctx.now)))),
        ("topic", Member::Text(Cow::Borrowed(ctx.topic))),
        ("pubsubname", Member::Text(Cow::Borrowed(ctx.pubsub))),
        (
            "traceparent",
            Member::Text(Cow::Borrowed(trace.traceparent)),
        ),
        ("traceid", Member::Text(Cow::Borrowed(trace.traceparent))),
        ("tracestate", Member::Text(Cow::Borrowed(trace.tracestate))),
    ];
    if let Some(subject) = override_of(ctx.metadata, "subject") {
        members.push(("subject", Member::Text(Cow::Borrowed(subject))));
    }
    if let Some(expiration) = expiration(ctx) {
        members.push(("expiration", Member::Text(Cow::Owned(expiration))));
    }
    write_object(&mut members)
}

/// Completes a body sent as `application/cloudevents+json`: missing fields are filled,
/// `topic` and `pubsubname` overwritten, everything else passes through.
pub fn complete(body: &[u8], ctx: &EnvelopeContext<'_>) -> Result<Value, EnvelopeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::NotACloudEvent(e.to_string()))?;
    let Value::Object(mut ce) = value else {
        return Err(EnvelopeError::NotACloudEvent("not an object".into()));
    };
    let mut fill = |key: &str, value: Value| {
        let missing = match ce.get(key) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            _ => false,
        };
        if missing {
            ce.insert(key.into(), value);
        }
    };
    fill("id", uuid::Uuid::new_v4().to_string().into());
    fill("source", DEFAULT_SOURCE.into());
    fill("type", EVENT_TYPE.into());
    fill("specversion", SPEC_VERSION.into());
    fill("time", rfc3339(ctx.now).into());
    for field in ["id", "source", "type", "subject"] {
        if let Some(v) = override_of(ctx.metadata, field) {
            ce.insert(field.into(), v.into());
        }
    }
    stamp(&mut ce, ctx);
    Ok(Value::Object(ce))
}

/// The trace context an envelope carries: `cloudevent.traceparent` (or `.traceid`) and
/// `cloudevent.tracestate` metadata override the publishing request's.
struct TraceFields<'a> {
    traceparent: &'a str,
    tracestate: &'a str,
    overridden: bool,
}

impl<'a> TraceFields<'a> {
    fn of(ctx: &EnvelopeContext<'a>) -> Self {
        let given = override_of(ctx.metadata, "traceparent")
            .or_else(|| override_of(ctx.metadata, "traceid"));
        Self {
            traceparent: given.unwrap_or(&ctx.trace.traceparent),
            tracestate: override_of(ctx.metadata, "tracestate").unwrap_or(&ctx.trace.tracestate),
            overridden: given.is_some(),
        }
    }
}

/// `expiration` for `ttlInSeconds`, when the broker has no TTL of its own.
fn expiration(ctx: &EnvelopeContext<'_>) -> Option<String> {
    if !ctx.stamp_expiration {
        return None;
    }
    let ttl = ttl_seconds(ctx.metadata)?;
    Some(rfc3339(ctx.now + chrono::Duration::seconds(ttl)))
}

/// Sets topic, pubsub name, trace fields (where the event has none, unless overridden) and
/// expiration on a CloudEvent the app sent.
fn stamp(ce: &mut Map<String, Value>, ctx: &EnvelopeContext<'_>) {
    ce.insert("topic".into(), ctx.topic.into());
    ce.insert("pubsubname".into(), ctx.pubsub.into());
    let trace = TraceFields::of(ctx);
    for (key, value) in [
        ("traceparent", trace.traceparent),
        ("traceid", trace.traceparent),
        ("tracestate", trace.tracestate),
    ] {
        let present = ce
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        if trace.overridden || !present {
            ce.insert(key.into(), value.into());
        }
    }
    if let Some(expiration) = expiration(ctx) {
        ce.insert("expiration".into(), expiration.into());
    }
}

/// Dapr's envelope for a raw payload delivered to a raw subscriber (`FromRawPayload`).
pub fn from_raw_payload(data: &[u8], pubsub: &str, topic: &str) -> Value {
    let mut ce = Map::new();
    ce.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
    ce.insert("source".into(), DEFAULT_SOURCE.into());
    ce.insert("type".into(), EVENT_TYPE.into());
    ce.insert("specversion".into(), SPEC_VERSION.into());
    ce.insert("datacontenttype".into(), "application/octet-stream".into());
    ce.insert(
        "data_base64".into(),
        base64::engine::general_purpose::STANDARD
            .encode(data)
            .into(),
    );
    ce.insert("topic".into(), topic.into());
    ce.insert("pubsubname".into(), pubsub.into());
    Value::Object(ce)
}

/// True when an event's `expiration` is in the past.
pub fn is_expired(expiration: Option<&str>, now: DateTime<Utc>) -> bool {
    expiration
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|exp| exp.with_timezone(&Utc) < now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The envelope `wrap` writes, parsed.
    pub(super) fn wrapped(
        body: &[u8],
        content_type: Option<&str>,
        ctx: &EnvelopeContext<'_>,
    ) -> Value {
        let text = wrap(body, content_type, ctx);
        serde_json::from_slice(&text).expect("wrap writes JSON")
    }

    fn ctx<'a>(md: &'a BTreeMap<String, String>, trace: &'a TraceContext) -> EnvelopeContext<'a> {
        EnvelopeContext {
            app_id: "checkout",
            pubsub: "pubsub",
            topic: "orders/eu",
            trace,
            metadata: md,
            stamp_expiration: true,
            now: DateTime::parse_from_rfc3339("2024-01-02T03:04:05Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn wraps_json_text_and_binary() {
        let md = BTreeMap::new();
        let trace = TraceContext::from_headers(None, None);
        let ce = wrapped(
            br#"{"orderId":1.5}"#,
            Some("application/json; charset=utf-8"),
            &ctx(&md, &trace),
        );
        assert_eq!(ce["data"], json!({"orderId": 1.5}));
        assert_eq!(ce["datacontenttype"], "application/json; charset=utf-8");
        assert_eq!(ce["source"], "checkout");
        assert_eq!(ce["type"], EVENT_TYPE);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["topic"], "orders/eu");
        assert_eq!(ce["pubsubname"], "pubsub");
        assert_eq!(ce["time"], "2024-01-02T03:04:05Z");
        assert_eq!(ce["traceparent"], ce["traceid"]);
        assert!(parse_traceparent(ce["traceparent"].as_str().unwrap()).is_some());
        assert!(ce.get("expiration").is_none());

        let ce = wrapped(b"hello", None, &ctx(&md, &trace));
        assert_eq!(ce["data"], "hello");
        assert_eq!(ce["datacontenttype"], "text/plain");

        let ce = wrapped(b"not json", Some("application/json"), &ctx(&md, &trace));
        assert_eq!(ce["data"], "not json");

        let ce = wrapped(
            &[0, 159, 146],
            Some("application/octet-stream"),
            &ctx(&md, &trace),
        );
        assert_eq!(ce["data_base64"], "AJ+S");
        assert!(ce.get("data").is_none());
    }

    #[test]
    fn overrides_and_ttl() {
        let md: BTreeMap<String, String> = [
            ("cloudevent.id", "my-id"),
            ("cloudevent.source", "src"),
            ("cloudevent.type", "t"),
            ("cloudevent.subject", "s"),
            (
                "cloudevent.traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("ttlInSeconds", "60"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let trace = TraceContext::from_headers(None, None);
        let ce = wrapped(b"x", None, &ctx(&md, &trace));
        assert_eq!(ce["id"], "my-id");
        assert_eq!(ce["source"], "src");
        assert_eq!(ce["type"], "t");
        assert_eq!(ce["subject"], "s");
        assert_eq!(
            ce["traceid"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(ce["expiration"], "2024-01-02T03:05:05Z");
    }

    #[test]
    fn completes_a_given_cloudevent() {
        let md = BTreeMap::new();
        let trace = TraceContext::from_headers(
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("k=v"),
        );
        let body =
            br#"{"id":"given","type":"mine","data":{"a":1},"topic":"other","custom":"kept"}"#;
        let ce = complete(body, &ctx(&md, &trace)).unwrap();
        assert_eq!(ce["id"], "given");
        assert_eq!(ce["type"], "mine");
        assert_eq!(ce["source"], DEFAULT_SOURCE);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["topic"], "orders/eu");
        assert_eq!(ce["custom"], "kept");
        assert_eq!(ce["tracestate"], "k=v");
        assert!(complete(b"[1]", &ctx(&md, &trace)).is_err());
    }

    #[test]
    fn raw_payload_and_expiry() {
        let ce = from_raw_payload(b"raw", "p", "t");
        assert_eq!(ce["data_base64"], "cmF3");
        assert_eq!(ce["datacontenttype"], "application/octet-stream");
        let now = Utc::now();
        assert!(is_expired(
            Some(&rfc3339(now - chrono::Duration::seconds(5))),
            now
        ));
        assert!(!is_expired(
            Some(&rfc3339(now + chrono::Duration::seconds(5))),
            now
        ));
        assert!(!is_expired(None, now));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// JSON published as application/json arrives as the same JSON in `data`; any bytes
        /// published as octet-stream arrive intact in `data_base64`.
        #[test]
        fn data_round_trips(value in json_value(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let md = BTreeMap::new();
            let trace = TraceContext::from_headers(None, None);
            let ctx = EnvelopeContext {
                app_id: "a",
                pubsub: "p",
                topic: "t",
                trace: &trace,
                metadata: &md,
                stamp_expiration: false,
                now: Utc::now(),
            };
            let ce = tests::wrapped(value.to_string().as_bytes(), Some("application/json"), &ctx);
            prop_assert_eq!(&ce["data"], &value);
            let ce = tests::wrapped(&bytes, Some("application/octet-stream"), &ctx);
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(ce["data_base64"].as_str().unwrap())
                .unwrap();
            prop_assert_eq!(decoded, bytes);
        }
    }
}
