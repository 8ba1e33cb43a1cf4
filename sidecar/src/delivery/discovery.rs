//! Programmatic subscriptions: `GET /dapr/subscribe` on the app, once, after it is ready.

use std::time::Duration;

use axum::body::Body;
use http::Request;
use http_body_util::{BodyExt, Limited};
use tandem_components::spec::subscription::parse_programmatic;
use tandem_components::spec::SubscriptionSpec;
use tokio_util::sync::CancellationToken;

use crate::app::AppChannel;

/// Dapr's `DaprBuiltInInitializationRetries`: 3 retries, exponential from 500 ms.
const RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// One call waits at most this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The answer is read up to this size.
const MAX_BODY: usize = 4 << 20;

enum Attempt {
    Done(Vec<SubscriptionSpec>),
    Retry(String),
}

/// The app's subscriptions; none when the app has no `/dapr/subscribe` (404) or it keeps failing.
pub async fn discover(
    app: &AppChannel,
    app_id: &str,
    stop: &CancellationToken,
) -> Vec<SubscriptionSpec> {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 0..=RETRIES {
        match call(app, app_id).await {
            Attempt::Done(subs) => return subs,
            Attempt::Retry(reason) => {
                tracing::warn!(
                    "GET /dapr/subscribe failed (attempt {}): {reason}",
                    attempt + 1
                );
                if attempt == RETRIES {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return Vec::new(),
                }
                backoff *= 2;
            }
        }
    }
    tracing::error!("no programmatic subscriptions: /dapr/subscribe kept failing");
    Vec::new()
}

async fn call(app: &AppChannel, app_id: &str) -> Attempt {
    let req = match Request::get("/dapr/subscribe")
        .header("dapr-app-id", app_id)
        .header("content-type", "application/json")
        .body(Body::empty())
    {
        Ok(r) => r,
        Err(e) => return Attempt::Retry(e.to_string()),
    };
    let resp = match tokio::time::timeout(CALL_TIMEOUT, app.send_unchecked(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Attempt::Retry(e.to_string()),
        Err(_) => return Attempt::Retry(format!("no answer within {CALL_TIMEOUT:?}")),
    };
    let status = resp.status();
    let body = match Limited::new(resp.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Attempt::Retry(format!("reading the answer: {e}")),
    };
    if status == http::StatusCode::NOT_FOUND {
        return Attempt::Done(Vec::new());
    }
    if !status.is_success() {
        return Attempt::Retry(format!("status {status}"));
    }
    match parse_programmatic(&body) {
        Ok(subs) => {
            let (usable, empty): (Vec<_>, Vec<_>) =
                subs.into_iter().partition(|s| !s.rules.is_empty());
            for s in empty {
                tracing::warn!(
                    "programmatic subscription to topic {} has no route; ignored",
                    s.topic
                );
            }
            Attempt::Done(usable)
        }
        Err(e) => {
            tracing::error!(
                "GET /dapr/subscribe returned an invalid answer: {}: {}",
                e.field,
                e.message
            );
            Attempt::Done(Vec::new())
        }
    }
}
