//! Headers on the invocation path: hop-by-hop headers never cross a proxy; the caller's sidecar
//! stamps who calls whom, where the request came from, and the trace context.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use crate::trace_context::child_traceparent;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, EXPECT, FORWARDED, HOST, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

// Header names are constants, so the per-request work is a comparison, not a parse.
pub const APP_ID_HEADER: HeaderName = HeaderName::from_static("dapr-app-id");
pub const CALLER_APP_ID: HeaderName = HeaderName::from_static("dapr-caller-app-id");
pub const CALLER_NAMESPACE: HeaderName = HeaderName::from_static("dapr-caller-namespace");
pub const CALLEE_APP_ID: HeaderName = HeaderName::from_static("dapr-callee-app-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Set by a callee sidecar on a 503 it produced itself (its app is unhealthy, or it is not the
/// app asked for): the caller then tries another instance. Never passed on to the app.
pub const INSTANCE_UNAVAILABLE: HeaderName = HeaderName::from_static("tandem-instance-unavailable");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// RFC 9110 §7.6.1 connection-specific headers, plus the legacy `proxy-connection`.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        PROXY_CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ]
    .contains(name)
}

/// Headers only a sidecar sets: a client's own values are dropped, never forwarded.
fn is_stamped(name: &HeaderName) -> bool {
    [
        APP_ID_HEADER,
        CALLER_APP_ID,
        CALLER_NAMESPACE,
        CALLEE_APP_ID,
        INSTANCE_UNAVAILABLE,
    ]
    .contains(name)
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_hop_by_hop_and(headers, |_| false);
}

/// One pass over the headers; a map needs changing only when something matched.
fn remove_hop_by_hop_and(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if name == CONNECTION {
            let listed = value.to_str().unwrap_or_default().split(',');
            doomed.extend(listed.filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()));
        }
        if is_hop_by_hop(name) || also(name) {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
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
    // `expect: 100-continue` was for this sidecar's server, which has answered it.
    remove_hop_by_hop_and(headers, |name| name == EXPECT || is_stamped(name));
    let host = headers.remove(HOST);
    set(headers, CALLER_APP_ID, caller.app_id);
    set(headers, CALLEE_APP_ID, callee);
    if let Some(ns) = caller.namespace {
        set(headers, CALLER_NAMESPACE, ns);
    }
    if let Some(client) = caller.client {
        let ip = client.ip();
        let mut forwarded_for = String::new();
        if let Some(earlier) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            if !earlier.trim().is_empty() {
                forwarded_for.push_str(earlier);
                forwarded_for.push_str(", ");
            }
        }
        push_ip(&mut forwarded_for, ip);
        set(headers, X_FORWARDED_FOR, &forwarded_for);
        let mut forwarded = String::from("for=");
        if ip.is_ipv6() {
            forwarded.push_str("\"[");
            push_ip(&mut forwarded, ip);
            forwarded.push_str("]\"");
        } else {
            push_ip(&mut forwarded, ip);
        }
        if let Some(h) = host.as_ref().and_then(|h| h.to_str().ok()) {
            forwarded.push_str(";host=");
            forwarded.push_str(h);
        }
        set(headers, FORWARDED, &forwarded);
    }
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST, h);
    }
    let parent = headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok());
    let child = child_traceparent(parent);
    set(headers, TRACEPARENT, &child);
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// An address as forwarding headers write it, without the formatter (`Ipv4Addr`'s `Display`
/// costs more than the rest of the header work).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
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
    fn writes_addresses_as_display_does() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.255.9", "::1", "fe80::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }
}
