//! The HTTP API: one module per building block, the error mapping, token auth and body limits.

pub mod auth;
pub mod body;
pub mod error;
mod guard;
mod health;
mod invoke;
mod metadata;
mod pubsub;
mod secrets;
mod shutdown;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::middleware;
use axum::response::Response;
use axum::Router;
use http::Request;

use crate::http1::server::Handler;
use crate::runtime::Runtime;

/// The router of the API port.
pub fn router(rt: Arc<Runtime>) -> Router {
    let routes = Router::new()
        .merge(health::routes())
        .merge(metadata::routes())
        .merge(pubsub::routes())
        .merge(secrets::routes())
        .merge(shutdown::routes())
        .merge(state::routes())
        // Last: its fallback serves the `dapr-app-id` header form on every unmatched path.
        .merge(invoke::routes());
    finish(routes, rt)
}

/// The router of `--dapr-public-port`: health and metadata only.
pub fn public_router(rt: Arc<Runtime>) -> Router {
    finish(
        Router::new()
            .merge(health::routes())
            .merge(metadata::routes()),
        rt,
    )
}

fn finish(routes: Router<Arc<Runtime>>, rt: Arc<Runtime>) -> Router {
    // Handlers take the request `Body` and read it with `body::read_body`, under the guard's
    // --max-body-size cap. axum's own body extractors (`Json`, `Bytes`, `String`) are not used:
    // they would apply axum's 2 MB default limit too, and disabling it is one more layer on
    // every request.
    routes
        .layer(middleware::from_fn_with_state(guard(&rt), guard::guard))
        .with_state(rt)
}

fn guard(rt: &Runtime) -> Arc<guard::Guard> {
    Arc::new(guard::Guard {
        api_token: rt.settings.api_token.clone(),
        body_limit: rt.settings.body_limit,
        metrics: rt.metrics.clone(),
    })
}

/// The API port. Invocations by path (`/v1.0/invoke/…`), the hot path of service invocation, go
/// straight to their handler through the same guard; every other request goes through the
/// router (whose routes, invocation included, stay complete).
#[derive(Clone)]
pub struct ApiPort {
    rt: Arc<Runtime>,
    router: Router,
    guard: Arc<guard::Guard>,
}

impl ApiPort {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self {
            router: router(rt.clone()),
            guard: guard(&rt),
            rt,
        }
    }

    /// The handler for one connection from `peer`.
    pub fn handler(&self, peer: SocketAddr) -> ApiHandler {
        // One reference count per request instead of one per field.
        ApiHandler {
            port: Arc::new(self.clone()),
            peer,
        }
    }
}

/// The API port's handler for one connection.
#[derive(Clone)]
pub struct ApiHandler {
    port: Arc<ApiPort>,
    peer: SocketAddr,
}

impl Handler for ApiHandler {
    async fn call(&self, mut req: Request<Body>) -> Response {
        let port = &self.port;
        if invoke::is_path_form(req.uri().path()) {
            let handler = |req| invoke::path_form(&port.rt, req, Some(self.peer));
            return port.guard.run(req, invoke::PATH_ROUTE, handler).await;
        }
        req.extensions_mut().insert(ConnectInfo(self.peer));
        match tower::ServiceExt::oneshot(port.router.clone(), req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}
