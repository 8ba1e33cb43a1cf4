//! The innermost step of an invocation: send the call to a peer sidecar's internal port (trying
//! the app's instances round-robin and failing over while the request was not delivered), or to
//! an external HTTP service, on pooled keep-alive connections.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::uri::Authority;
use http::{Request, Response, Uri};
use tower::Service;

use super::headers::{strip_hop_by_hop, INSTANCE_UNAVAILABLE};
use super::tls::{client_config, https_client, HttpsClient, HTTP_ENDPOINT_TLS};
use super::{body_error, Call, CallBody, InvokeError, InvokeTarget};
use crate::http1::pool::{Http1Pool, PoolSettings};
use crate::naming::{Balancer, Resolver};

/// Idle keep-alive connections to peers are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per peer.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// The innermost service of every invocation stack; clones share one state.
#[derive(Clone)]
pub struct Forward(Arc<Shared>);

struct Shared {
    /// To peer sidecars (plain HTTP/1.1).
    peers: Http1Pool,
    /// To external services (`http` and `https`), built on first use (loading the system's
    /// root certificates is not worth delaying every start-up for); `None` when no trusted root
    /// certificates could be loaded, in which case only `http` endpoints work.
    external: tokio::sync::OnceCell<Option<HttpsClient>>,
    /// HTTPEndpoints with their own `clientTLS`, by name.
    endpoint_clients: HashMap<String, HttpsClient>,
    resolver: Arc<Resolver>,
    balancer: Arc<Balancer>,
    body_limit: u64,
}

/// How one attempt at one instance ended.
enum Attempt {
    Answered(Response<Body>),
    /// Not delivered (connection refused, or the callee refused before reaching its app): another
    /// instance may take it.
    NotDelivered(InvokeError),
    Failed(InvokeError),
}

impl Forward {
    pub fn new(
        resolver: Arc<Resolver>,
        balancer: Arc<Balancer>,
        endpoint_clients: HashMap<String, HttpsClient>,
        body_limit: u64,
    ) -> Self {
        let peers = Http1Pool::new(PoolSettings {
            connect_timeout: Some(Duration::from_secs(5)),
            idle_timeout: POOL_IDLE_TIMEOUT,
            max_idle_per_authority: POOL_MAX_IDLE_PER_HOST,
        });
        Self(Arc::new(Shared {
            peers,
            external: tokio::sync::OnceCell::new(),
            endpoint_clients,
            resolver,
            balancer,
            body_limit,
        }))
    }

    pub fn resolver(&self) -> &Resolver {
        &self.0.resolver
    }
}

impl Shared {
    async fn external_client(&self) -> Option<&HttpsClient> {
        self.external
            .get_or_init(|| async {
                // Reads certificate files: off the async workers.
                match tokio::task::spawn_blocking(|| client_config(None, &HTTP_ENDPOINT_TLS)).await
                {
                    Ok(Ok(config)) => Some(https_client(config)),
                    Ok(Err(e)) => {
                        tracing::warn!("https invocation targets are unavailable: {e}");
                        None
                    }
                    Err(e) => {
                        tracing::warn!("loading root certificates failed: {e}");
                        None
                    }
                }
            })
            .await
            .as_ref()
    }

    async fn send(&self, call: Call) -> Result<Response<Body>, InvokeError> {
        match call.target.as_ref() {
            InvokeTarget::External(endpoint) => {
                let uri = endpoint.url(&call.path_and_query)?;
                let mut headers = call.headers;
                for (name, value) in &endpoint.headers {
                    headers.insert(name.clone(), value.clone());
                }
                let body = match call.body {
                    CallBody::Buffered(bytes) => Body::from(bytes),
                    CallBody::Streaming(body) => body,
                };
                let client = match self.endpoint_clients.get(&endpoint.name) {
                    Some(own) => Some(own),
                    None => self.external_client().await,
                };
                let attempt = match client {
                    Some(client) => {
                        let req = request(&call.method, uri, headers, body);
                        match client.request(req).await {
                            Ok(resp) => answered(resp),
                            Err(e) if e.is_connect() => not_delivered(&e),
                            Err(e) => self.failure(&e),
                        }
                    }
                    None if uri.scheme_str() == Some("https") => {
                        return Err(InvokeError::NoTrustedRoots)
                    }
                    None => {
                        let authority = uri.authority().cloned().ok_or_else(|| {
                            InvokeError::InvalidRequest(format!("{uri} names no host"))
                        })?;
                        let path = uri.path_and_query().map_or("/", |p| p.as_str());
                        self.to_peer(&authority, &call.method, path, headers, body)
                            .await
                    }
                };
                match attempt {
                    Attempt::Answered(resp) => Ok(resp),
                    Attempt::NotDelivered(e) | Attempt::Failed(e) => Err(e),
                }
            }
            InvokeTarget::App { id, namespace } => {
                let instances = self.resolver.resolve(id, namespace.as_deref()).await?;
                let order = self.balancer.order(id, instances);
                let (buffered, mut streaming) = match call.body {
                    CallBody::Buffered(bytes) => (Some(bytes), None),
                    CallBody::Streaming(body) => (None, Some(body)),
                };
                let mut headers = call.headers;
                let mut last_error = None;
                for (i, instance) in order.iter().enumerate() {
                    let body = match (&buffered, streaming.take()) {
                        (Some(bytes), _) => Body::from(bytes.clone()),
                        (None, Some(body)) => body,
                        // A streamed body went to an earlier instance and cannot be sent again.
                        (None, None) => break,
                    };
                    // Only a failover needs the headers again.
                    let headers = if i + 1 == order.len() {
                        std::mem::take(&mut headers)
                    } else {
                        headers.clone()
                    };
                    let path = call.path_and_query.as_str();
                    match self
                        .to_peer(instance, &call.method, path, headers, body)
                        .await
                    {
                        Attempt::Answered(resp) => {
                            self.balancer.report_success(instance.as_str());
                            return Ok(resp);
                        }
                        Attempt::NotDelivered(e) => {
                            tracing::debug!("instance {instance} of {id} unavailable: {e}");
                            self.balancer.report_failure(instance.as_str());
                            self.resolver.invalidate(id);
                            last_error = Some(e);
                        }
                        Attempt::Failed(e) => {
                            self.balancer.report_failure(instance.as_str());
                            self.resolver.invalidate(id);
                            return Err(e);
                        }
                    }
                }
                Err(last_error.unwrap_or_else(|| {
                    InvokeError::Unreachable(format!("no instance of {id} could be reached"))
                }))
            }
        }
    }

    /// One attempt on a pooled plain HTTP/1.1 connection (a peer sidecar, or an `http`
    /// endpoint when no TLS client could be built).
    async fn to_peer(
        &self,
        authority: &Authority,
        method: &http::Method,
        path_and_query: &str,
        headers: http::HeaderMap,
        body: Body,
    ) -> Attempt {
        let uri = match Uri::try_from(path_and_query) {
            Ok(uri) => uri,
            Err(_) => {
                return Attempt::Failed(InvokeError::InvalidRequest(format!(
                    "{path_and_query:?} is not a valid request path"
                )))
            }
        };
        let req = request(method, uri, headers, body);
        match self.peers.send(authority, req).await {
            Ok(resp) => answered(resp),
            Err(e) if e.is_connect() => not_delivered(&e),
            Err(e) => self.failure(&e),
        }
    }

    fn failure(&self, e: &(dyn std::error::Error + 'static)) -> Attempt {
        match body_error(e, self.body_limit) {
            too_large @ InvokeError::BodyTooLarge(_) => Attempt::Failed(too_large),
            _ => Attempt::Failed(InvokeError::Unreachable(tandem_components::error_chain(e))),
        }
    }
}

/// An answer, unless it is the callee's refusal (a 503 with `INSTANCE_UNAVAILABLE`): then the
/// call did not reach the app and another instance may take it.
fn answered<B>(resp: Response<B>) -> Attempt
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if resp.status() == http::StatusCode::SERVICE_UNAVAILABLE {
        if let Some(reason) = resp.headers().get(INSTANCE_UNAVAILABLE) {
            let error = match reason.as_bytes() {
                b"app-unhealthy" => InvokeError::AppUnhealthy,
                b"app-unreachable" => InvokeError::Unreachable("the app is not listening".into()),
                _ => InvokeError::Unreachable("the instance is not serving this app".into()),
            };
            return Attempt::NotDelivered(error);
        }
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Attempt::Answered(Response::from_parts(parts, Body::new(body)))
}

/// No connection could be made: nothing was sent.
fn not_delivered(e: &(dyn std::error::Error + 'static)) -> Attempt {
    Attempt::NotDelivered(InvokeError::Unreachable(tandem_components::error_chain(e)))
}

fn request(method: &http::Method, uri: Uri, headers: http::HeaderMap, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

impl Service<Call> for Forward {
    type Response = Response<Body>;
    type Error = InvokeError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, InvokeError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), InvokeError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move { shared.send(call).await })
    }
}
