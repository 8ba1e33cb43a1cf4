//! Harness for Tandem's end-to-end tests: the real `tandem` binary on free ports, resource
//! directories, scripted in-process test apps, private `redis-server` instances and a throwaway
//! certificate authority.
//!
//! Every helper picks free ports and temporary directories, so tests never share state.
#![forbid(unsafe_code)]

mod app;
mod postgres;
mod redis;
mod sidecar;
mod tls;

pub use app::{RecordedRequest, Reply, TestApp};
pub use postgres::PostgresDb;
pub use redis::RedisServer;
pub use sidecar::{ResourcesDir, Sidecar, SidecarBuilder};
pub use tls::TestCa;

use std::time::Duration;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` every 20 ms until it returns true or `within` elapses.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A shared HTTP client for tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()
        .expect("http client")
}

/// GETs `url` and parses the body as JSON (panics on failure: tests only).
pub async fn get_json(url: &str) -> serde_json::Value {
    http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"))
}
