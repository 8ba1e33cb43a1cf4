//! Headers on the invocation path: hop-by-hop headers never cross a proxy; the caller's sidecar
//! stamps who calls whom, where the request came from, and the trace context.

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use rand::Rng;

pub const APP_ID_HEADER: &str = "dapr-app-id";
pub const CALLER_APP_ID: &str = "dapr-caller-app-id";
pub const CALLER_NAMESPACE: &str = "dapr-caller-namespace";
pub const CALLEE_APP_ID: &str = "dapr-callee-app-id";
pub const TRACEPARENT: &str = "traceparent";
/// Set by a callee sidecar on a 503 it produced itself (its app is unhealthy, or it is not the
/// app asked for): the caller then tries another instance. Never passed on to the app.
pub const INSTANCE_UNAVAILABLE: &str = "tandem-instance-unavailable";

/// RFC 9110 §7.6.1 connection-specific headers, plus the legacy `proxy-connection`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Who is calling and from where.
pub struct CallerInfo<'a> {
    pub app_id: &'a str,
    pub namespace: Option<&'a str>,
    pub client: Option<SocketAddr>,
}

/// Prepares an incoming API request's headers for forwarding to `callee`.
pub fn stamp_outgoing(headers: &mut HeaderMap, caller: &CallerInfo<'_>, callee: &str) {
    strip_hop_by_hop(headers);
    // `expect: 100-continue` was for this sidecar's server, which has answered it.
    headers.remove(http::header::EXPECT);
    for name in [
        APP_ID_HEADER,
        CALLER_APP_ID,
        CALLER_NAMESPACE,
        CALLEE_APP_ID,
        INSTANCE_UNAVAILABLE,
    ] {
        headers.remove(name);
    }
    let host = headers
        .remove(HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string));
    set(headers, CALLER_APP_ID, caller.app_id);
    set(headers, CALLEE_APP_ID, callee);
    if let Some(ns) = caller.namespace {
        set(headers, CALLER_NAMESPACE, ns);
    }
    if let Some(client) = caller.client {
        let ip = client.ip().to_string();
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {ip}"),
            _ => ip.clone(),
        };
        set(headers, "x-forwarded-for", &forwarded_for);
        let forwarded_ip = if client.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip
        };
        let mut forwarded = format!("for={forwarded_ip}");
        if let Some(h) = &host {
            forwarded.push_str(&format!(";host={h}"));
        }
        set(headers, "forwarded", &forwarded);
    }
    if let Some(h) = &host {
        set(headers, "x-forwarded-host", h);
    }
    let parent = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    set(headers, TRACEPARENT, &child_traceparent(parent.as_deref()));
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// A W3C traceparent for the outgoing call: the caller's trace id (or a new one) with a new
/// span id, keeping the caller's flags.
pub fn child_traceparent(incoming: Option<&str>) -> String {
    let mut rng = rand::rng();
    let span: u64 = rng.random_range(1..=u64::MAX);
    if let Some((trace, flags)) = incoming.and_then(parse_traceparent) {
        return format!("00-{trace}-{span:016x}-{flags}");
    }
    let trace: u128 = rng.random_range(1..=u128::MAX);
    format!("00-{trace:032x}-{span:016x}-01")
}

fn parse_traceparent(text: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = text.trim().split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, span, flags]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && trace.bytes().any(|b| b != b'0')
                && hex(span, 16)
                && hex(flags, 2) =>
        {
            Some((trace, flags))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-custom"], "kept");
    }

    #[test]
    fn stamps_caller_callee_forwarding_and_trace() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("localhost:3500"));
        h.insert("dapr-app-id", HeaderValue::from_static("b"));
        h.insert("dapr-caller-app-id", HeaderValue::from_static("spoofed"));
        h.insert("expect", HeaderValue::from_static("100-continue"));
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        let caller = CallerInfo {
            app_id: "a",
            namespace: Some("ns"),
            client: Some("127.0.0.1:5000".parse().unwrap()),
        };
        stamp_outgoing(&mut h, &caller, "b");
        assert_eq!(h["dapr-caller-app-id"], "a");
        assert_eq!(h["dapr-callee-app-id"], "b");
        assert_eq!(h["dapr-caller-namespace"], "ns");
        assert!(h.get("dapr-app-id").is_none());
        assert!(h.get("host").is_none());
        assert!(h.get("expect").is_none());
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "localhost:3500");
        assert_eq!(h["forwarded"], "for=127.0.0.1;host=localhost:3500");
        let tp = h["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"));
        assert_ne!(
            tp,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }

    #[test]
    fn new_traceparent_when_missing_or_invalid() {
        for incoming in [
            None,
            Some("garbage"),
            Some("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
        ] {
            let tp = child_traceparent(incoming);
            assert!(parse_traceparent(&tp).is_some(), "{tp}");
            assert_ne!(&tp[3..35], "00000000000000000000000000000000");
        }
    }
}
