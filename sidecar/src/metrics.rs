//! Prometheus metrics on `--metrics-port` (`GET /metrics`), with Dapr's metric names so existing
//! dashboards keep working. Labels use the matched route template, never the raw path, so
//! cardinality stays bounded.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app_id: String,
    method: String,
    path: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    app_id: String,
    method: String,
    path: String,
}

/// Latency buckets in milliseconds, from sub-millisecond hops to slow app calls.
const LATENCY_BUCKETS_MS: [f64; 16] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
    10000.0,
];

pub struct Metrics {
    app_id: String,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
}

impl Metrics {
    pub fn new(app_id: &str) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS_MS)) as fn() -> Histogram,
        );
        registry.register(
            "dapr_http_server_request_count",
            "Requests received by the HTTP API",
            requests.clone(),
        );
        registry.register(
            "dapr_http_server_latency",
            "HTTP API request latency in milliseconds",
            latency.clone(),
        );
        Self {
            app_id: app_id.to_string(),
            registry,
            requests,
            latency,
        }
    }

    fn record(&self, method: &str, path: &str, status: StatusCode, started: Instant) {
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        self.requests
            .get_or_create(&RequestLabels {
                app_id: self.app_id.clone(),
                method: method.to_string(),
                path: path.to_string(),
                status: status.as_u16().to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                app_id: self.app_id.clone(),
                method: method.to_string(),
                path: path.to_string(),
            })
            .observe(millis);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new().route("/metrics", get(serve)).with_state(self)
    }
}

async fn serve(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// Middleware recording every API request.
pub async fn record_request(
    State(metrics): State<Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    metrics.record(&method, &path, resp.status(), started);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dapr_metric_names() {
        let m = Metrics::new("orders");
        m.record("GET", "/v1.0/metadata", StatusCode::OK, Instant::now());
        let text = m.render();
        assert!(text.contains("dapr_http_server_request_count_total{app_id=\"orders\",method=\"GET\",path=\"/v1.0/metadata\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("dapr_http_server_latency_bucket"), "{text}");
    }
}
