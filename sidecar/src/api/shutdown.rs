//! `POST /v1.0/shutdown`: answer 204, then shut down gracefully.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

use crate::runtime::Runtime;

pub fn routes() -> Router<Arc<Runtime>> {
    Router::new().route("/v1.0/shutdown", post(shutdown))
}

async fn shutdown(State(rt): State<Arc<Runtime>>) -> StatusCode {
    tracing::info!("shutdown requested through the API");
    // Let this response go out before the listeners stop.
    let token = rt.shutdown.clone();
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        token.cancel();
    });
    StatusCode::NO_CONTENT
}
