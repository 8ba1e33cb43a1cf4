//! How values are kept by stores whose columns hold text or JSON: JSON values as their exact text,
//! anything else (binary, or text that is not JSON) base64-encoded with a binary flag, as Dapr's
//! SQL stores do.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use super::StateError;

/// Whether `data` is one complete JSON text (checked without building it; skipping a string
/// does not check its UTF-8, so that is checked first).
pub fn is_json(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok()
}

pub fn to_base64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

pub fn from_base64(text: &str) -> Result<Vec<u8>, StateError> {
    STANDARD
        .decode(text.trim())
        .map_err(|e| StateError::Backend(format!("stored binary value is not valid base64: {e}")))
}

/// The RFC 3339 form Dapr uses for `ttlExpireTime`.
pub fn format_expiry(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn expiry_from_millis(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms).map(format_expiry)
}

/// True when PostgreSQL's `jsonb` output of `data` is byte-identical to `data`, so that storing it
/// as `jsonb` keeps the value byte-exact. jsonb sorts object keys (shorter first), writes `": "`
/// and `", "` separators, re-escapes strings and normalises numbers; any value that differs in
/// any of these ways is stored as binary instead.
pub fn is_canonical_jsonb(data: &[u8]) -> bool {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return false;
    };
    let mut out = String::with_capacity(data.len());
    write_jsonb(&value, &mut out) && out.as_bytes() == data
}

fn write_jsonb(value: &Value, out: &mut String) -> bool {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let text = n.to_string();
            // Exponents and negative zero come back from jsonb in another form.
            if text.contains(['e', 'E']) || (text.starts_with('-') && n.as_f64() == Some(0.0)) {
                return false;
            }
            out.push_str(&text);
        }
        Value::String(s) => {
            if !write_jsonb_string(s, out) {
                return false;
            }
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                if !write_jsonb(item, out) {
                    return false;
                }
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                if !write_jsonb_string(k, out) {
                    return false;
                }
                out.push_str(": ");
                if !write_jsonb(v, out) {
                    return false;
                }
            }
            out.push('}');
        }
    }
    true
}

fn write_jsonb_string(s: &str, out: &mut String) -> bool {
    out.push('"');
    for c in s.chars() {
        match c {
            // jsonb cannot hold NUL at all.
            '\0' => return false,
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_jsonb() {
        assert!(is_canonical_jsonb(br#"{"a": 1, "bb": [1, 2.5, "x"]}"#));
        assert!(is_canonical_jsonb(br#""text""#));
        assert!(is_canonical_jsonb(b"42"));
        assert!(!is_canonical_jsonb(br#"{"a":1}"#));
        assert!(!is_canonical_jsonb(br#"{"bb": 1, "a": 2}"#));
        assert!(!is_canonical_jsonb(b"1e3"));
        assert!(!is_canonical_jsonb(b"1.50"));
        assert!(!is_canonical_jsonb(br#""\u00e9""#));
        assert!(is_canonical_jsonb("\"é\"".as_bytes()));
        assert!(!is_canonical_jsonb(b"\xff\x00"));
        assert!(!is_json(b"\xff\x00"));
        assert!(!is_json(b"\"\xff\""));
        assert!(is_json(b" {\"a\":1} "));
    }
}
