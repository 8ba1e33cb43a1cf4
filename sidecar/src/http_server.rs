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
use tokio::net::{TcpListener, TcpStream};
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

/// Serves `listener` with HTTP/1.1, and HTTP/2 without TLS for clients that open with its
/// preface, until `shutdown`; then waits for open requests to finish (the caller bounds the
/// wait).
pub async fn serve<M, S>(listener: TcpListener, shutdown: CancellationToken, make_service: M)
where
    M: Fn(SocketAddr) -> S,
    S: ConnectionService,
{
    let connections = GracefulShutdown::new();
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1().writev(false);
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let service = make_service(peer);
        let connection = auto
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        spawn_connection(connections.watch(connection), peer);
    }
    connections.shutdown().await;
}

/// The next connection, set to send without Nagle's delay; `None` at shutdown.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return None,
        };
        match accepted {
            Ok((stream, peer)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY not set on a connection from {peer}: {e}");
                }
                return Some((stream, peer));
            }
            Err(e) => {
                // Out of file descriptors, typically: wait rather than spin.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
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
