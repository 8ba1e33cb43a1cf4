//! The accept loop behind every port Tandem serves (API, public, metrics, internal): connections
//! send without Nagle's delay, each gets the service made for its peer address, and shutdown
//! stops accepting and lets in-flight requests finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::Request;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A service for one connection: requests in, responses out, never an error (failures are
/// responses).
pub trait ConnectionService:
    Service<Request<Incoming>, Response = Response, Error = Infallible, Future = Self::Pending>
    + Send
    + 'static
{
    type Pending: std::future::Future<Output = Result<Response, Infallible>> + Send + 'static;
}

impl<S> ConnectionService for S
where
    S: Service<Request<Incoming>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Pending = S::Future;
}

#[derive(Debug, Clone, Copy)]
pub enum Protocols {
    /// HTTP/1.1 only (the internal port: peers' pools speak nothing else).
    Http1,
    /// HTTP/1.1, and HTTP/2 without TLS for clients that open with its preface.
    Http1AndH2c,
}

/// Serves `listener` until `shutdown`, then waits for open requests to finish (the caller
/// bounds the wait).
pub async fn serve<M, S>(
    listener: TcpListener,
    protocols: Protocols,
    shutdown: CancellationToken,
    make_service: M,
) where
    M: Fn(SocketAddr) -> S,
    S: ConnectionService,
{
    let connections = GracefulShutdown::new();
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1().writev(false);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, typically: wait rather than spin.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY not set on a connection from {peer}: {e}");
        }
        let io = TokioIo::new(stream);
        let service = make_service(peer);
        match protocols {
            Protocols::Http1 => {
                let connection = hyper::server::conn::http1::Builder::new()
                    .writev(false)
                    .serve_connection(io, service);
                spawn_connection(connections.watch(connection), peer);
            }
            Protocols::Http1AndH2c => {
                let connection = auto.serve_connection(io, service).into_owned();
                spawn_connection(connections.watch(connection), peer);
            }
        }
    }
    connections.shutdown().await;
}

fn spawn_connection<F, E>(connection: F, peer: SocketAddr)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("connection from {peer} closed: {e}");
        }
    });
}

/// The service for one connection to an axum `router`: handlers see the peer address
/// (`ConnectInfo`), which invocation stamps as X-Forwarded-For.
pub fn router_service(router: axum::Router, peer: SocketAddr) -> impl ConnectionService {
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(Body::new);
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        tower::ServiceExt::oneshot(router.clone(), req)
    })
}
