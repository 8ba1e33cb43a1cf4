//! The callee side: the internal port other sidecars forward invocations to. Each request is
//! handed to this sidecar's app through its app channel (concurrency limit, app token, health);
//! the app's answer streams back unchanged.
//!
//! Tandem speaks plain HTTP/1.1 between sidecars (Dapr uses gRPC with mTLS); the request is the
//! app's request itself, with the `dapr-callee-app-id` header naming the app it is for. The port
//! has one handler and one protocol, served by `http1::server` without a router.

use std::sync::Arc;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, Request};

use super::headers::{strip_hop_by_hop, CALLEE_APP_ID, INSTANCE_UNAVAILABLE};
use super::{InvokeError, InvokeFailure};
use crate::api::error::ApiError;
use crate::app::AppChannelError;
use crate::http1::server::Handler;
use crate::runtime::Runtime;

/// The internal port's handler.
#[derive(Clone)]
pub struct InternalPort(pub Arc<Runtime>);

impl Handler for InternalPort {
    async fn call(&self, req: Request<Body>) -> Response {
        handle(&self.0, req).await
    }
}

async fn handle(rt: &Runtime, req: Request<Body>) -> Response {
    let own_id = rt.settings.app_id.as_str();
    let callee = req
        .headers()
        .get(CALLEE_APP_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if callee != own_id {
        // A stale registry entry (a reused pid or port): let the caller try another instance.
        return unavailable(
            "wrong-app",
            InvokeFailure {
                app_id: callee.to_string(),
                error: InvokeError::Unreachable(format!(
                    "this sidecar serves app {own_id:?}, not {callee:?}"
                )),
            },
        );
    }
    let Some(app) = rt.app.clone() else {
        return ApiError::from(InvokeFailure {
            app_id: own_id.to_string(),
            error: InvokeError::NoAppChannel,
        })
        .into_response();
    };
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The app channel sets the app's own authority; X-Forwarded-Host keeps the original.
    parts.headers.remove(http::header::HOST);
    let req = Request::from_parts(parts, body);
    match app.send(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(AppChannelError::Unhealthy) => unavailable(
            "app-unhealthy",
            InvokeFailure {
                app_id: own_id.to_string(),
                error: InvokeError::AppUnhealthy,
            },
        ),
        // The app is not listening (not started yet, or gone): nothing reached it, so another
        // instance may take the call.
        Err(e) if e.is_connect() => unavailable(
            "app-unreachable",
            InvokeFailure {
                app_id: own_id.to_string(),
                error: InvokeError::Unreachable(format!("error calling the app: {e}")),
            },
        ),
        Err(e) => ApiError::from(InvokeFailure {
            app_id: own_id.to_string(),
            error: InvokeError::Unreachable(e.to_string()),
        })
        .into_response(),
    }
}

/// A 503 the caller's sidecar recognises (by the header) and answers by trying another instance.
fn unavailable(reason: &'static str, failure: InvokeFailure) -> Response {
    let mut resp = ApiError::from(failure).into_response();
    *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut()
        .insert(INSTANCE_UNAVAILABLE, HeaderValue::from_static(reason));
    resp
}
