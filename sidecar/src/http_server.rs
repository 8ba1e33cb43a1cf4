//! The accept loop behind every port Tandem serves (API, public, metrics, internal): connections send
//! without Nagle's delay, each gets the handler made for its peer address, and shutdown stops
//! accepting and lets in-flight requests finish. HTTP/1.x connections are served by
//! `http1::server`; a client that opens with HTTP/2's preface (h2c, prior knowledge) is served
//! by hyper.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::http1::server::Handler;

/// What every HTTP/2 connection opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `listener` until `shutdown`, then waits for open requests to finish (the caller
/// bounds the wait).
pub async fn serve<M, H>(listener: TcpListener, shutdown: CancellationToken, make_handler: M)
where
    M: Fn(SocketAddr) -> H,
    H: Handler,
{
    let connections = TaskTracker::new();
    let http2 = GracefulShutdown::new();
    while let Some((stream, peer)) = accept(&listener, &shutdown).await {
        let handler = make_handler(peer);
        let shutdown = shutdown.clone();
        let http2 = http2.watcher();
        connections.spawn(async move {
            let served = match opens_with_h2_preface(&stream).await {
                Ok(false) => crate::http1::server::serve_connection(stream, &handler, &shutdown)
                    .await
                    .map_err(|e| e.to_string()),
                Ok(true) => {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler.call(req.map(Body::new)).await) }
                    });
                    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service);
                    http2.watch(connection).await.map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = served {
                tracing::debug!("connection from {peer} closed: {e}");
            }
        });
    }
    connections.close();
    tokio::join!(connections.wait(), http2.shutdown());
}

/// Whether the client's first bytes are HTTP/2's preface; nothing is consumed.
async fn opens_with_h2_preface(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 || first[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface: peeking again returns the same bytes until more arrive.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The next connection, set to send without Nagle's delay; `None` at shutdown.
async fn accept(
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

/// The handler for one connection to an axum router: handlers see the peer address
/// (`ConnectInfo`), which invocation stamps as X-Forwarded-For.
#[derive(Clone)]
pub struct RouterHandler {
    pub router: axum::Router,
    pub peer: SocketAddr,
}

impl Handler for RouterHandler {
    async fn call(&self, mut req: Request<Body>) -> Response {
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        match tower::ServiceExt::oneshot(self.router.clone(), req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A router answering `/who` with the protocol version of the request.
    async fn start() -> (SocketAddr, CancellationToken) {
        let router = axum::Router::new().route(
            "/who",
            axum::routing::get(|req: Request<Body>| async move { format!("{:?}", req.version()) }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, shutdown.clone(), move |peer| {
            RouterHandler {
                router: router.clone(),
                peer,
            }
        }));
        (addr, shutdown)
    }

    #[tokio::test]
    async fn http_1_and_http_2_prior_knowledge_share_the_port() {
        let (addr, _shutdown) = start().await;

        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/who")
            .header("host", "x")
            .body(Body::empty())
            .unwrap();
        let resp = h1.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "HTTP/1.1");

        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("http://{addr}/who"))
            .body(Body::empty())
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "HTTP/2.0");
    }
}
