//! The trivial app every scenario talks to (`tandem-bench app --port P`), a plain hyper HTTP/1.1
//! server in its own process:
//!
//! - `GET /healthz` → 200
//! - `GET /dapr/subscribe` → the `--subscribe pubsub=topic` pairs, each routed to `/events`
//! - `POST /events` → 200; records end-to-end latency from the `"sent"` stamp in the body (see
//!   `loadgen::Body::Stamped`) to receipt
//! - `GET /stats` → `{"count","p50_us","p90_us","p99_us","max_us","first_ns","last_ns"}`;
//!   `POST /stats/reset` clears them
//! - anything else → 200 echoing the request body (the invocation target)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::loadgen::{find_stamp, unix_ns};

/// Delivery statistics the app keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeliveryStats {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Unix ns of the first and last delivery since the last reset.
    pub first_ns: u64,
    pub last_ns: u64,
}

struct Recorder {
    hist: Histogram<u64>,
    count: u64,
    first_ns: u64,
    last_ns: u64,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap()),
            count: 0,
            first_ns: 0,
            last_ns: 0,
        }
    }

    fn record(&mut self, sent_ns: Option<u64>, now_ns: u64) {
        self.count += 1;
        if self.first_ns == 0 {
            self.first_ns = now_ns;
        }
        self.last_ns = now_ns;
        if let Some(sent) = sent_ns {
            let us = now_ns.saturating_sub(sent) / 1000;
            self.hist.saturating_record(us.max(1));
        }
    }

    fn stats(&self) -> DeliveryStats {
        DeliveryStats {
            count: self.count,
            p50_us: self.hist.value_at_quantile(0.5),
            p90_us: self.hist.value_at_quantile(0.9),
            p99_us: self.hist.value_at_quantile(0.99),
            max_us: self.hist.max(),
            first_ns: self.first_ns,
            last_ns: self.last_ns,
        }
    }
}

#[derive(Debug, Serialize)]
struct Subscription<'a> {
    pubsubname: &'a str,
    topic: &'a str,
    route: &'static str,
}

struct AppState {
    subscribe_json: Bytes,
    recorder: Mutex<Recorder>,
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r
}

fn json(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = reply(StatusCode::OK, Bytes::from(body));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new())),
    };
    let resp = match (method, path.as_str()) {
        (Method::GET, "/healthz") => reply(StatusCode::OK, Bytes::new()),
        (Method::GET, "/dapr/subscribe") => json(state.subscribe_json.to_vec()),
        (Method::POST, "/events") => {
            let now = unix_ns(SystemTime::now());
            if let Ok(mut r) = state.recorder.lock() {
                r.record(find_stamp(&body), now);
            }
            reply(StatusCode::OK, Bytes::new())
        }
        (Method::GET, "/stats") => {
            let stats = state.recorder.lock().map(|r| r.stats()).unwrap_or_default();
            json(serde_json::to_vec(&stats).unwrap_or_default())
        }
        (Method::POST, "/stats/reset") => {
            if let Ok(mut r) = state.recorder.lock() {
                *r = Recorder::new();
            }
            reply(StatusCode::NO_CONTENT, Bytes::new())
        }
        _ => reply(StatusCode::OK, body),
    };
    Ok(resp)
}

/// Serves until the process is killed.
pub async fn serve(port: u16, subscriptions: &[(String, String)]) -> std::io::Result<()> {
    let subs: Vec<Subscription> = subscriptions
        .iter()
        .map(|(p, t)| Subscription {
            pubsubname: p,
            topic: t,
            route: "/events",
        })
        .collect();
    let state = Arc::new(AppState {
        subscribe_json: Bytes::from(serde_json::to_vec(&subs).unwrap_or_default()),
        recorder: Mutex::new(Recorder::new()),
    });
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_measures_from_the_stamp() {
        let mut r = Recorder::new();
        r.record(Some(1_000_000), 1_500_000);
        r.record(None, 2_000_000);
        let s = r.stats();
        assert_eq!(s.count, 2);
        assert_eq!((s.first_ns, s.last_ns), (1_500_000, 2_000_000));
        assert!((499..=501).contains(&s.p50_us));
    }
}
