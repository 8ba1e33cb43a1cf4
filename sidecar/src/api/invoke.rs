//! Service invocation: `/v1.0/invoke/{appId}/method/{method…}` with any verb, and any other path
//! carrying a `dapr-app-id` header (the router's fallback).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use super::error::ApiError;
use crate::invoke::headers::APP_ID_HEADER;
use crate::invoke::{InvokeError, InvokeFailure, InvokeRequest};
use crate::runtime::Runtime;

/// The route of the path form, also its metrics label.
pub const PATH_ROUTE: &str = "/v1.0/invoke/{*rest}";

pub fn routes() -> Router<Arc<Runtime>> {
    Router::new()
        .route(PATH_ROUTE, any(by_path))
        .fallback(by_header)
}

/// Whether `path` is one `PATH_ROUTE` matches.
pub fn is_path_form(path: &str) -> bool {
    path.strip_prefix("/v1.0/invoke/")
        .is_some_and(|rest| !rest.is_empty())
}

fn client_of(req: &Request) -> Option<SocketAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// The target and method path of `/v1.0/invoke/{appId}/method/{method…}`. The app id may be a
/// full URL (`http://host:port`), so the split is at the first `/method/` after it.
fn split_invoke_path(rest: &str) -> Option<(String, &str)> {
    let rest = rest.trim_start_matches('/');
    let has_scheme = |scheme: &str| {
        rest.get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
    };
    let skip = if has_scheme("http://") || has_scheme("https://") {
        rest.find("://").map(|i| i + 3).unwrap_or(0)
    } else {
        0
    };
    // The first `/method` after the id (found by slashes: cheaper than a substring search).
    let at = rest[skip..]
        .match_indices('/')
        .map(|(i, _)| i + skip)
        .find(|&i| rest[i..].starts_with("/method"))?;
    let id = &rest[..at];
    let after = &rest[at + "/method".len()..];
    if !(after.is_empty() || after.starts_with('/')) {
        return None;
    }
    let id = percent_decode(id);
    Some((id, after))
}

fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

async fn by_path(State(rt): State<Arc<Runtime>>, req: Request) -> Response {
    let client = client_of(&req);
    path_form(&rt, req, client).await
}

/// `/v1.0/invoke/{appId}/method/{method…}` from `client`; a `dapr-app-id` header wins over the
/// id in the path.
pub async fn path_form(rt: &Runtime, req: Request, client: Option<SocketAddr>) -> Response {
    if target_from_headers(req.headers()).is_some() {
        return header_form(rt, req, client).await;
    }
    let uri = req.uri();
    let rest = uri.path().strip_prefix("/v1.0/invoke/").unwrap_or_default();
    let Some((target, method)) = split_invoke_path(rest) else {
        return ApiError::from(InvokeFailure {
            app_id: String::new(),
            error: InvokeError::NoAppId,
        })
        .into_response();
    };
    let method = if method.is_empty() { "/" } else { method };
    let path_and_query = match uri.query() {
        Some(q) => [method, "?", q].concat(),
        None => method.to_string(),
    };
    invoke(rt, target, path_and_query, req, client).await
}

/// The target named by a `dapr-app-id` header, or (as Dapr allows for clients that can only
/// set credentials) by HTTP Basic auth with user `dapr-app-id` and the app id as password.
fn target_from_headers(headers: &http::HeaderMap) -> Option<(String, bool)> {
    if let Some(id) = headers.get(APP_ID_HEADER).and_then(|v| v.to_str().ok()) {
        return Some((id.trim().to_string(), false));
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = auth.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, id) = text.split_once(':')?;
    (user == APP_ID_HEADER.as_str()).then(|| (id.trim().to_string(), true))
}

async fn by_header(State(rt): State<Arc<Runtime>>, req: Request) -> Response {
    let client = client_of(&req);
    header_form(&rt, req, client).await
}

async fn header_form(rt: &Runtime, mut req: Request, client: Option<SocketAddr>) -> Response {
    let Some((target, from_basic_auth)) = target_from_headers(req.headers()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if from_basic_auth {
        req.headers_mut().remove(http::header::AUTHORIZATION);
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    invoke(rt, target, path_and_query, req, client).await
}

async fn invoke(
    rt: &Runtime,
    target: String,
    path_and_query: String,
    req: Request,
    client: Option<SocketAddr>,
) -> Response {
    let (parts, body) = req.into_parts();
    let request = InvokeRequest {
        target,
        method: parts.method,
        path_and_query,
        headers: parts.headers,
        body,
        client,
    };
    match rt.invoker.invoke(request).await {
        Ok(resp) => resp.into_response(),
        Err(failure) => {
            tracing::debug!("{failure}");
            ApiError::from(failure).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_from_header_or_basic_auth() {
        let mut h = http::HeaderMap::new();
        assert_eq!(target_from_headers(&h), None);
        // base64("dapr-app-id:orders")
        h.insert(
            "authorization",
            "Basic ZGFwci1hcHAtaWQ6b3JkZXJz".parse().unwrap(),
        );
        assert_eq!(target_from_headers(&h), Some(("orders".into(), true)));
        h.insert("dapr-app-id", "b".parse().unwrap());
        assert_eq!(target_from_headers(&h), Some(("b".into(), false)));
        let mut other = http::HeaderMap::new();
        // base64("user:pass")
        other.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(target_from_headers(&other), None);
    }

    #[test]
    fn path_form_needs_something_after_the_prefix() {
        assert!(is_path_form("/v1.0/invoke/b/method/x"));
        assert!(!is_path_form("/v1.0/invoke/"));
        assert!(!is_path_form("/v1.0/invoke"));
        assert!(!is_path_form("/v1.0/state/s"));
    }

    #[test]
    fn splits_ids_and_methods() {
        assert_eq!(
            split_invoke_path("b/method/api/v1/add"),
            Some(("b".into(), "/api/v1/add"))
        );
        assert_eq!(
            split_invoke_path("b.ns/method/x"),
            Some(("b.ns".into(), "/x"))
        );
        assert_eq!(split_invoke_path("b/method"), Some(("b".into(), "")));
        assert_eq!(
            split_invoke_path("http://127.0.0.1:80/method/x/method/y"),
            Some(("http://127.0.0.1:80".into(), "/x/method/y"))
        );
        assert_eq!(
            split_invoke_path("http%3A%2F%2Fh%3A1/method/x"),
            Some(("http://h:1".into(), "/x"))
        );
        assert_eq!(split_invoke_path("b/methods/x"), None);
        assert_eq!(split_invoke_path("b"), None);
        assert_eq!(split_invoke_path("/method/x"), None);
    }
}
