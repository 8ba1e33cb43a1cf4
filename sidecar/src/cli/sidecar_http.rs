//! The CLI's HTTP client to local sidecars' APIs (health, metadata, invoke, publish).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use thiserror::Error;

/// Largest response body the CLI reads (an invoked method's reply, a metadata document).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum SidecarHttpError {
    #[error("invalid request to {url}: {source}")]
    Request { url: String, source: http::Error },
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("no answer from {url} within {limit:?}")]
    Timeout { url: String, limit: Duration },
    #[error("cannot read the response from {url}: {message}")]
    Body { url: String, message: String },
}

pub struct Response {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct SidecarHttp {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for SidecarHttp {
    fn default() -> Self {
        Self::new()
    }
}

impl SidecarHttp {
    pub fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends one request (with `dapr-api-token` from `DAPR_API_TOKEN` when set) and reads the
    /// whole response, all within `limit`.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
        limit: Duration,
    ) -> Result<Response, SidecarHttpError> {
        let mut builder = Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            builder = builder.header(http::header::CONTENT_TYPE, ct);
        }
        if let Ok(token) = std::env::var("DAPR_API_TOKEN") {
            if !token.is_empty() {
                builder = builder.header("dapr-api-token", token);
            }
        }
        let request =
            builder
                .body(Full::new(body))
                .map_err(|source| SidecarHttpError::Request {
                    url: url.to_string(),
                    source,
                })?;
        let exchange =
            async {
                let response = self.client.request(request).await.map_err(|source| {
                    SidecarHttpError::Connect {
                        url: url.to_string(),
                        source,
                    }
                })?;
                let status = response.status();
                let content_type = response
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                    .collect()
                    .await
                    .map_err(|e| SidecarHttpError::Body {
                        url: url.to_string(),
                        message: e.to_string(),
                    })?
                    .to_bytes();
                Ok(Response {
                    status,
                    content_type,
                    body,
                })
            };
        match tokio::time::timeout(limit, exchange).await {
            Ok(result) => result,
            Err(_) => Err(SidecarHttpError::Timeout {
                url: url.to_string(),
                limit,
            }),
        }
    }

    pub async fn get(&self, url: &str, limit: Duration) -> Result<Response, SidecarHttpError> {
        self.send(Method::GET, url, None, Bytes::new(), limit).await
    }
}

/// The base URL of a sidecar's API on this machine.
pub fn api_base(address: &str, http_port: u16) -> String {
    let host = match address {
        "" | "0.0.0.0" | "::" => "127.0.0.1",
        a => a,
    };
    if host.contains(':') {
        format!("http://[{host}]:{http_port}")
    } else {
        format!("http://{host}:{http_port}")
    }
}
