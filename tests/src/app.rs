//! A scripted in-process HTTP app: records every request and answers with what the test's
//! closure says.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http::{HeaderMap, Method, StatusCode};
use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RecordedRequest {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or(&self.uri)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What the app answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn ok() -> Self {
        Self::status(200)
    }

    pub fn json(status: u16, value: serde_json::Value) -> Self {
        Self::status(status)
            .header("content-type", "application/json")
            .body(value.to_string())
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
}

type Handler = dyn Fn(&RecordedRequest) -> Reply + Send + Sync;

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    handler: Mutex<Arc<Handler>>,
    arrived: Notify,
}

/// The app; shuts down when dropped.
pub struct TestApp {
    pub port: u16,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl TestApp {
    /// Starts an app answering every request with `handler`'s reply.
    pub async fn start(
        handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind test app");
        Self::serve(listener, handler)
    }

    /// Starts on a chosen port (e.g. one a sidecar already waits for).
    pub async fn start_on(
        port: u16,
        handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .expect("bind test app");
        Self::serve(listener, handler)
    }

    fn serve(
        listener: tokio::net::TcpListener,
        handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            handler: Mutex::new(Arc::new(handler)),
            arrived: Notify::new(),
        });
        let state = shared.clone();
        let router = Router::new().fallback(move |req: Request| {
            let state = state.clone();
            async move { handle(state, req).await }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            port,
            shared,
            server,
        }
    }

    /// Replaces the handler.
    pub fn answer(&self, handler: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static) {
        *self.shared.handler.lock() = Arc::new(handler);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    /// Requests whose path is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path() == path)
            .collect()
    }

    /// Waits until at least `n` requests matched `filter` (or `within` elapses) and returns them.
    pub async fn wait_for(
        &self,
        n: usize,
        within: std::time::Duration,
        filter: impl Fn(&RecordedRequest) -> bool,
    ) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.shared.arrived.notified();
            let matched: Vec<_> = self.requests().into_iter().filter(|r| filter(r)).collect();
            if matched.len() >= n || tokio::time::Instant::now() >= deadline {
                return matched;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(shared: Arc<Shared>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method,
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    let handler = shared.handler.lock().clone();
    let reply = handler(&recorded);
    shared.requests.lock().push(recorded);
    shared.arrived.notify_waiters();
    let mut resp = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        resp = resp.header(k, v);
    }
    resp.body(Body::from(reply.body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}
