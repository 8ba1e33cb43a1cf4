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

use std::sync::Arc;

use axum::middleware;
use axum::Router;

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
    let guard = Arc::new(guard::Guard {
        api_token: rt.settings.api_token.clone(),
        body_limit: rt.settings.body_limit,
        metrics: rt.metrics.clone(),
    });
    // Handlers take the request `Body` and read it with `body::read_body`, under the guard's
    // --max-body-size cap. axum's own body extractors (`Json`, `Bytes`, `String`) are not used:
    // they would apply axum's 2 MB default limit too, and disabling it is one more layer on
    // every request.
    routes
        .layer(middleware::from_fn_with_state(guard, guard::guard))
        .with_state(rt)
}
