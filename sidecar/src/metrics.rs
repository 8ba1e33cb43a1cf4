//! Prometheus metrics on `--metrics-port` (`GET /metrics`), with Dapr's metric names so existing
//! dashboards keep working. Labels use the matched route template, never the raw path, so
//! cardinality stays bounded.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use parking_lot::RwLock;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

// Label values are shared or static where they can be. They are built only the first time a
// (method, route, status) is seen; after that the series is found in `Metrics::series`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app_id: Arc<str>,
    method: Cow<'static, str>,
    path: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    app_id: Arc<str>,
    method: Cow<'static, str>,
    path: String,
}

/// Latency buckets in milliseconds, from sub-millisecond hops to slow app calls.
const LATENCY_BUCKETS_MS: [f64; 16] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
    10000.0,
];

/// At most this many (method, route, status) series are remembered; rarer ones are looked up
/// by their labels each time.
const MAX_REMEMBERED_SERIES: usize = 256;

/// The counter and histogram one (method, route, status) records into: found again by a
/// short scan instead of hashing every label of every request.
struct Series {
    method: Method,
    path: Box<str>,
    status: u16,
    count: Counter,
    latency: Histogram,
}

pub struct Metrics {
    app_id: Arc<str>,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram>,
    series: RwLock<Vec<Series>>,
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
            app_id: Arc::from(app_id),
            registry,
            requests,
            latency,
            series: RwLock::new(Vec::new()),
        }
    }

    /// Counts one API request and its latency.
    pub fn record(&self, method: &Method, path: &str, status: StatusCode, started: Instant) {
        let millis = started.elapsed().as_secs_f64() * 1000.0;
        let status = status.as_u16();
        let same = |s: &Series| s.status == status && s.method == *method && &*s.path == path;
        if let Some(series) = self.series.read().iter().find(|s| same(s)) {
            series.count.inc();
            series.latency.observe(millis);
            return;
        }
        let label = method_label(method);
        let count = self
            .requests
            .get_or_create(&RequestLabels {
                app_id: self.app_id.clone(),
                method: label.clone(),
                path: path.to_string(),
                status,
            })
            .clone();
        let latency = self
            .latency
            .get_or_create(&LatencyLabels {
                app_id: self.app_id.clone(),
                method: label,
                path: path.to_string(),
            })
            .clone();
        count.inc();
        latency.observe(millis);
        let mut remembered = self.series.write();
        if remembered.len() < MAX_REMEMBERED_SERIES && !remembered.iter().any(same) {
            remembered.push(Series {
                method: method.clone(),
                path: path.into(),
                status,
                count,
                latency,
            });
        }
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

/// The standard methods without an allocation; others as sent.
fn method_label(method: &Method) -> Cow<'static, str> {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
    ];
    match STANDARD.into_iter().find(|name| *name == method.as_str()) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(method.as_str().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dapr_metric_names() {
        let m = Metrics::new("orders");
        m.record(
            &Method::GET,
            "/v1.0/metadata",
            StatusCode::OK,
            Instant::now(),
        );
        m.record(
            &Method::GET,
            "/v1.0/metadata",
            StatusCode::OK,
            Instant::now(),
        );
        m.record(
            &Method::GET,
            "/v1.0/metadata",
            StatusCode::NOT_FOUND,
            Instant::now(),
        );
        let text = m.render();
        assert!(text.contains("dapr_http_server_request_count_total{app_id=\"orders\",method=\"GET\",path=\"/v1.0/metadata\",status=\"200\"} 2"), "{text}");
        assert!(text.contains("dapr_http_server_request_count_total{app_id=\"orders\",method=\"GET\",path=\"/v1.0/metadata\",status=\"404\"} 1"), "{text}");
        assert!(text.contains("dapr_http_server_latency_count{app_id=\"orders\",method=\"GET\",path=\"/v1.0/metadata\"} 3"), "{text}");
        assert!(text.contains("dapr_http_server_latency_bucket"), "{text}");
    }
}
