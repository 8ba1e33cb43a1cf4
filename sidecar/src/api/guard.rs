//! What every API request passes through: the API token, the body limit and the request
//! metrics; as the router's one middleware, and before the invocation handler that bypasses
//! the router. One layer instead of three saves each request two boxed services and
//! futures.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth;
use super::body::{self, BodyLimit};
use crate::metrics::Metrics;

pub struct Guard {
    /// `DAPR_API_TOKEN`, when set.
    pub api_token: Option<String>,
    /// `--max-body-size` in bytes.
    pub body_limit: u64,
    pub metrics: Arc<Metrics>,
}

pub async fn guard(State(guard): State<Arc<Guard>>, mut req: Request, next: Next) -> Response {
    // For the handlers that read whole bodies (the invocation fast path has its own limit).
    req.extensions_mut().insert(BodyLimit(guard.body_limit));
    let path = req.extensions().get::<MatchedPath>().cloned();
    let label = path.as_ref().map_or("unmatched", MatchedPath::as_str);
    guard.run(req, label, |req| next.run(req)).await
}

impl Guard {
    /// Admits `req` (token, body limit), runs `handler` and records the request's metrics
    /// under the route `label`.
    pub async fn run<H, F>(&self, mut req: Request, label: &str, handler: H) -> Response
    where
        H: FnOnce(Request) -> F,
        F: std::future::Future<Output = Response>,
    {
        let started = Instant::now();
        let method = req.method().clone();
        let resp = match auth::admit(self.api_token.as_deref(), &mut req) {
            Err(refused) => refused.into_response(),
            Ok(()) => match body::cap(self.body_limit, req) {
                Ok(req) => handler(req).await,
                Err(too_large) => too_large.into_response(),
            },
        };
        self.metrics.record(&method, label, resp.status(), started);
        resp
    }
}
