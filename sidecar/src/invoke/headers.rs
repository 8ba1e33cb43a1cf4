//! Headers on the invocation path: hop-by-hop headers never cross a proxy; the caller's sidecar
//! stamps who calls whom, where the request came from, and the trace context.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::trace_context::child_traceparent_bytes;
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
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
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

/// Who is calling and from where. The values are built once per sidecar and per target, so
/// stamping them costs a reference count, not a parse.
pub struct CallerInfo<'a> {
    pub app_id: Option<&'a HeaderValue>,
    pub namespace: Option<&'a HeaderValue>,
    pub client: Option<SocketAddr>,
}

/// Prepares an incoming API request's headers for forwarding to `callee` (its app id).
pub fn stamp_outgoing(headers: &mut HeaderMap, caller: &CallerInfo<'_>, callee: &HeaderValue) {
    // `expect: 100-continue` was for this sidecar's server, which has answered it.
    remove_hop_by_hop_and(headers, |name| name == EXPECT || is_stamped(name));
    let host = headers.remove(HOST);
    // Room for everything stamped below, so the map grows once at most.
    headers.reserve(7);
    if let Some(id) = caller.app_id {
        headers.insert(CALLER_APP_ID, id.clone());
    }
    headers.insert(CALLEE_APP_ID, callee.clone());
    if let Some(ns) = caller.namespace {
        headers.insert(CALLER_NAMESPACE, ns.clone());
    }
    if let Some(client) = caller.client {
        let ip = IpText::new(client.ip());
        let earlier = headers
            .get(&X_FORWARDED_FOR)
            .map(|v| v.as_bytes().trim_ascii())
            .filter(|v| !v.is_empty());
        let forwarded_for = match earlier {
            Some(earlier) => joined(&[earlier, b", ", ip.as_bytes()]),
            None => HeaderValue::from_bytes(ip.as_bytes()).ok(),
        };
        let host = host.as_ref().map(HeaderValue::as_bytes);
        let forwarded = match (client.ip().is_ipv6(), host) {
            (false, None) => joined(&[b"for=", ip.as_bytes()]),
            (false, Some(h)) => joined(&[b"for=", ip.as_bytes(), b";host=", h]),
            (true, None) => joined(&[b"for=\"[", ip.as_bytes(), b"]\""]),
            (true, Some(h)) => joined(&[b"for=\"[", ip.as_bytes(), b"]\";host=", h]),
        };
        if let Some(v) = forwarded_for {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if let Some(v) = forwarded {
            headers.insert(FORWARDED, v);
        }
    }
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST, h);
    }
    let parent = headers.get(&TRACEPARENT).and_then(|v| v.to_str().ok());
    let child = child_traceparent_bytes(parent);
    if let Ok(v) = HeaderValue::from_bytes(&child) {
        headers.insert(TRACEPARENT, v);
    }
}

/// A header value made of `parts`, in one allocation.
fn joined(parts: &[&[u8]]) -> Option<HeaderValue> {
    let mut value = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        value.extend_from_slice(part);
    }
    // Exactly as long as its capacity, so `Bytes` takes the buffer over without another
    // allocation.
    HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
}

/// An address as forwarding headers write it, on the stack (`Ipv4Addr`'s `Display` costs more
/// than the rest of the header work).
struct IpText {
    buf: [u8; IPV6_TEXT_MAX],
    len: usize,
}

/// The longest IPv6 text: eight groups of four hex digits with seven colons, or the IPv4-mapped
/// form with an embedded dotted quad.
const IPV6_TEXT_MAX: usize = 45;

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut text = IpText {
            buf: [0; IPV6_TEXT_MAX],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                // Cannot fail: the longest form fits the buffer.
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
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
            app_id: Some(&HeaderValue::from_static("a")),
            namespace: Some(&HeaderValue::from_static("ns")),
            client: Some("127.0.0.1:5000".parse().unwrap()),
        };
        stamp_outgoing(&mut h, &caller, &HeaderValue::from_static("b"));
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
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.255.9",
            "::1",
            "fe80::1:2",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn appends_to_earlier_forwarding_and_brackets_ipv6() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static(" 10.0.0.1 "));
        let caller = CallerInfo {
            app_id: Some(&HeaderValue::from_static("a")),
            namespace: None,
            client: Some("[::1]:5000".parse().unwrap()),
        };
        stamp_outgoing(&mut h, &caller, &HeaderValue::from_static("b"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(h["forwarded"], "for=\"[::1]\"");
        assert!(h.get("x-forwarded-host").is_none());
        assert!(h.get("dapr-caller-namespace").is_none());
    }
}
