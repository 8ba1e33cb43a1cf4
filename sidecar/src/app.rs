//! The channel to the application: one pooled keep-alive client, a concurrency limit
//! (`--app-max-concurrency`), the app token (`APP_API_TOKEN`) and the app's health.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::auth::TOKEN_HEADER;
use crate::http1::pool::{Destination, Http1Error, Http1Pool, PoolSettings, PooledBody};

#[derive(Debug, Error)]
pub enum AppChannelError {
    #[error("app is not in a healthy state")]
    Unhealthy,
    #[error("invalid request path {0:?}")]
    InvalidPath(String),
    #[error("--app-channel-address {0:?} with the app port is not a valid host:port")]
    InvalidAddress(String),
    #[error("error calling the app: {0}")]
    Transport(#[from] Http1Error),
    #[error("error calling the app over h2c: {0}")]
    H2cTransport(#[from] hyper_util::client::legacy::Error),
}

impl AppChannelError {
    /// Nothing reached the app: it is not listening (not started yet, or gone).
    pub fn is_connect(&self) -> bool {
        match self {
            AppChannelError::Transport(e) => e.is_connect(),
            AppChannelError::H2cTransport(e) => e.is_connect(),
            _ => false,
        }
    }
}

/// HTTP/1.1 on pooled keep-alive connections, or HTTP/2 without TLS (`--app-protocol h2c`) on
/// one multiplexed connection.
enum AppClient {
    Http1(Arc<Destination>),
    H2c(Box<Client<HttpConnector, Body>>),
}

#[derive(Debug, Clone)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub threshold: u32,
}

#[derive(Debug, Clone)]
pub struct AppChannelConfig {
    pub address: String,
    pub port: u16,
    /// `h2c` speaks HTTP/2 without TLS; anything else HTTP/1.1.
    pub http2: bool,
    pub max_concurrency: Option<usize>,
    pub token: Option<String>,
    pub health_check: Option<HealthCheck>,
}

pub struct AppChannel {
    config: AppChannelConfig,
    authority: Authority,
    client: AppClient,
    limit: Option<Arc<Semaphore>>,
    token: Option<HeaderValue>,
    healthy: AtomicBool,
    health_changed: tokio::sync::watch::Sender<bool>,
}

impl AppChannel {
    pub fn new(config: AppChannelConfig) -> Result<Self, AppChannelError> {
        let host = if config.address.contains(':') {
            format!("[{}]", config.address)
        } else {
            config.address.clone()
        };
        let authority = format!("{host}:{}", config.port);
        let authority = Authority::try_from(authority.as_str())
            .map_err(|_| AppChannelError::InvalidAddress(config.address.clone()))?;
        let idle_timeout = Duration::from_secs(90);
        let client = if config.http2 {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            AppClient::H2c(Box::new(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(idle_timeout)
                    .http2_only(true)
                    .build(connector),
            ))
        } else {
            let pool = Http1Pool::new(PoolSettings {
                connect_timeout: None,
                idle_timeout,
                max_idle_per_authority: usize::MAX,
            });
            AppClient::Http1(pool.destination(&authority))
        };
        // Until a probe succeeds, an app with health checks counts as unhealthy (as in Dapr).
        let healthy = config.health_check.is_none();
        Ok(Self {
            authority,
            limit: config
                .max_concurrency
                .map(|n| Arc::new(Semaphore::new(n.max(1)))),
            token: config
                .token
                .as_deref()
                .and_then(|t| HeaderValue::from_str(t).ok()),
            healthy: AtomicBool::new(healthy),
            health_changed: tokio::sync::watch::channel(healthy).0,
            client,
            config,
        })
    }

    pub fn port(&self) -> u16 {
        self.config.port
    }

    pub fn config(&self) -> &AppChannelConfig {
        &self.config
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Changes whenever the app's health flips.
    pub fn health_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.health_changed.subscribe()
    }

    fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            if healthy {
                tracing::info!("app is healthy");
            } else {
                tracing::warn!("app is unhealthy; invocations and deliveries are paused");
            }
            self.health_changed.send_replace(healthy);
        }
    }

    /// Sends `req` (whose URI holds only path and query) to the app. The concurrency permit is
    /// held until the response body has been read to its end.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<AppBody>, AppChannelError> {
        if !self.is_healthy() {
            return Err(AppChannelError::Unhealthy);
        }
        self.send_unchecked(req).await
    }

    /// Like `send`, but also while the app is unhealthy (health probes, subscription discovery).
    pub async fn send_unchecked(
        &self,
        mut req: Request<Body>,
    ) -> Result<Response<AppBody>, AppChannelError> {
        let permit = match &self.limit {
            Some(sem) => sem.clone().acquire_owned().await.ok(),
            None => None,
        };
        if let Some(token) = &self.token {
            req.headers_mut().insert(TOKEN_HEADER, token.clone());
        }
        let resp = match &self.client {
            AppClient::Http1(app) => {
                if req.uri().path_and_query().is_none() {
                    *req.uri_mut() = Uri::from_static("/");
                }
                app.clone().send(req).await?
            }
            AppClient::H2c(client) => {
                // The path and query stay as parsed; only scheme and authority are added.
                let mut parts = std::mem::take(req.uri_mut()).into_parts();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(self.authority.clone());
                if parts.path_and_query.is_none() {
                    parts.path_and_query = Some(PathAndQuery::from_static("/"));
                }
                *req.uri_mut() = Uri::from_parts(parts)
                    .map_err(|e| AppChannelError::InvalidPath(e.to_string()))?;
                client.request(req).await?.map(PooledBody::unpooled)
            }
        };
        Ok(resp.map(|body| body.holding(permit)))
    }

    /// Blocks until the app's port accepts TCP connections (Dapr's `blockUntilAppIsReady`).
    pub async fn wait_until_listening(&self, shutdown: &CancellationToken) -> bool {
        tracing::info!(
            "waiting on port {}. This will block until the app is listening on that port.",
            self.config.port
        );
        loop {
            if tokio::net::TcpStream::connect(self.authority.as_str())
                .await
                .is_ok()
            {
                tracing::info!("app is listening on port {}", self.config.port);
                return true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Probes the health endpoint until shutdown. One success makes the app healthy; `threshold`
    /// failures in a row make it unhealthy.
    pub async fn run_health_checks(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(check) = self.config.health_check.clone() else {
            return;
        };
        let mut failures = 0u32;
        loop {
            let ok = self.probe(&check).await;
            if ok {
                failures = 0;
                self.set_healthy(true);
            } else {
                failures += 1;
                if failures >= check.threshold.max(1) {
                    self.set_healthy(false);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(check.interval) => {}
            }
        }
    }

    async fn probe(&self, check: &HealthCheck) -> bool {
        let Ok(req) = Request::get(check.path.as_str()).body(Body::empty()) else {
            return false;
        };
        match tokio::time::timeout(check.timeout, self.send_unchecked(req)).await {
            Ok(Ok(resp)) => resp.status().is_success(),
            _ => false,
        }
    }
}

/// A response body from the app; it keeps its concurrency permit until it is dropped.
pub type AppBody = PooledBody;
