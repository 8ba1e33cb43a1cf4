//! Pooled keep-alive HTTP/1.1 connections over plain TCP, for the two hops every invocation
//! makes: the caller's sidecar to the callee's internal port, and a sidecar to its app.
//!
//! A request takes the most recently used idle connection of its authority (see
//! `client` for how it is driven), and the connection goes back to the pool when the
//! response body has been read to its end. A response body dropped early closes its
//! connection, as HTTP/1.1 cannot reuse it.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use fnv::FnvHasher;
use http::uri::Authority;
use http::{HeaderValue, Request, Response};
use http_body::Frame;
use hyper::body::Incoming;
use parking_lot::Mutex;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::client::{Connection, ExchangeError, ResponseBody};
use super::wire::BodyError;

/// Past this many authorities, adding one first drops those without an idle connection.
const MAX_AUTHORITIES: usize = 64;

#[derive(Debug, Error)]
pub enum Http1Error {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: Authority,
        source: std::io::Error,
    },
    #[error("cannot connect to {authority}: no connection within {after:?}")]
    ConnectTimeout {
        authority: Authority,
        after: Duration,
    },
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
}

impl Http1Error {
    /// The request was not sent: no connection could be made.
    pub fn is_connect(&self) -> bool {
        !matches!(self, Http1Error::Exchange(_))
    }
}

#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Option<Duration>,
    /// Idle connections older than this are closed instead of reused.
    pub idle_timeout: Duration,
    pub max_idle_per_authority: usize,
}

struct IdleConnection {
    conn: Connection,
    since: Instant,
}

/// Authorities are hashed on every lookup: FNV costs a few instructions per byte where the
/// default SipHash costs dozens (`Authority` feeds its hasher one byte at a time).
type Destinations = HashMap<Authority, Arc<Destination>, BuildHasherDefault<FnvHasher>>;

pub struct Http1Pool {
    settings: PoolSettings,
    destinations: Mutex<Destinations>,
}

/// One authority: its idle connections and the Host header its requests carry. A caller that
/// always talks to one authority (the app channel) keeps it and skips the lookup.
pub struct Destination {
    authority: Authority,
    host: Option<HeaderValue>,
    settings: PoolSettings,
    idle: Mutex<Vec<IdleConnection>>,
}

impl Http1Pool {
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            settings,
            destinations: Mutex::new(Destinations::default()),
        }
    }

    /// The pool's entry for `authority`, created on first use.
    pub fn destination(&self, authority: &Authority) -> Arc<Destination> {
        let mut destinations = self.destinations.lock();
        if let Some(found) = destinations.get(authority) {
            return found.clone();
        }
        // Authorities come and go with instances: when a new one arrives, forget those without
        // an idle connection (and no request under way, which would hold the entry too).
        if destinations.len() >= MAX_AUTHORITIES {
            destinations.retain(|_, d| Arc::strong_count(d) > 1 || !d.idle.lock().is_empty());
        }
        let destination = Arc::new(Destination {
            authority: authority.clone(),
            host: HeaderValue::from_str(authority.as_str()).ok(),
            settings: self.settings.clone(),
            idle: Mutex::new(Vec::new()),
        });
        destinations.insert(authority.clone(), destination.clone());
        destination
    }

    /// Sends `req` (origin-form URI) to `authority`; see `Destination::send`.
    pub async fn send(
        &self,
        authority: &Authority,
        req: Request<Body>,
    ) -> Result<Response<PooledBody>, Http1Error> {
        self.destination(authority).send(req).await
    }
}

impl Destination {
    /// Sends `req` (origin-form URI) as HTTP/1.1 on an idle connection, or a new one. A missing
    /// Host header is set to the authority.
    pub async fn send(
        self: Arc<Self>,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, Http1Error> {
        if let Some(host) = &self.host {
            if let http::header::Entry::Vacant(slot) = req.headers_mut().entry(http::header::HOST) {
                slot.insert(host.clone());
            }
        }
        let conn = match self.checkout() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let mut resp = conn.exchange(req).await?;
        // A body already at its end (empty, or a HEAD response) frees the connection now.
        if let Some(conn) = resp.body_mut().reusable_connection() {
            self.checkin(conn);
        }
        Ok(resp.map(|body| PooledBody {
            source: Source::Pooled {
                body,
                destination: self,
            },
            permit: None,
        }))
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock();
        while let Some(idle_conn) = idle.pop() {
            if idle_conn.since.elapsed() < self.settings.idle_timeout && idle_conn.conn.is_open() {
                return Some(idle_conn.conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Connection) {
        let mut idle = self.idle.lock();
        let timeout = self.settings.idle_timeout;
        idle.retain(|c| c.since.elapsed() < timeout);
        if idle.len() < self.settings.max_idle_per_authority {
            idle.push(IdleConnection {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Connection, Http1Error> {
        let authority = &self.authority;
        let connecting = TcpStream::connect(authority.as_str());
        let stream = match self.settings.connect_timeout {
            Some(after) => tokio::time::timeout(after, connecting).await.map_err(|_| {
                Http1Error::ConnectTimeout {
                    authority: authority.clone(),
                    after,
                }
            })?,
            None => connecting.await,
        }
        .map_err(|source| Http1Error::Connect {
            authority: authority.clone(),
            source,
        })?;
        // Requests and responses go out in one write each; no reason to wait for ACKs.
        let _ = stream.set_nodelay(true);
        Ok(Connection::new(stream))
    }
}

/// How a response body failed.
#[derive(Debug, Error)]
pub enum PooledBodyError {
    #[error(transparent)]
    Http1(#[from] BodyError),
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

/// A response body that returns its connection to the pool once read to its end, and holds a
/// concurrency permit (of the app channel) until it is dropped.
pub struct PooledBody {
    source: Source,
    permit: Option<OwnedSemaphorePermit>,
}

enum Source {
    Pooled {
        body: ResponseBody,
        destination: Arc<Destination>,
    },
    /// HTTP/2 to the app, whose connection hyper manages.
    Unpooled(Incoming),
}

impl PooledBody {
    /// A body whose connection is not pooled here (HTTP/2 to the app).
    pub fn unpooled(inner: Incoming) -> Self {
        Self {
            source: Source::Unpooled(inner),
            permit: None,
        }
    }

    pub fn holding(mut self, permit: Option<OwnedSemaphorePermit>) -> Self {
        self.permit = permit;
        self
    }
}

impl http_body::Body for PooledBody {
    type Data = bytes::Bytes;
    type Error = PooledBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.source {
            Source::Pooled { body, destination } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Some(conn) = body.reusable_connection() {
                    destination.checkin(conn);
                }
                polled.map_err(PooledBodyError::from)
            }
            Source::Unpooled(body) => Pin::new(body).poll_frame(cx).map_err(PooledBodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Pooled { body, .. } => body.is_end_stream(),
            Source::Unpooled(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.source {
            Source::Pooled { body, .. } => body.size_hint(),
            Source::Unpooled(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body::Body as _;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// A server answering `/?n=BYTES` with that many bytes; `close` answers with
    /// `Connection: close`. Returns its authority and the count of accepted connections.
    async fn server(close: bool) -> (Authority, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req: Request<Incoming>| async move {
                            let n: usize = req
                                .uri()
                                .query()
                                .and_then(|q| q.strip_prefix("n="))
                                .and_then(|n| n.parse().ok())
                                .unwrap_or(0);
                            let mut resp = Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(vec![b'x'; n]),
                            ));
                            if close {
                                resp.headers_mut()
                                    .insert("connection", HeaderValue::from_static("close"));
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (authority, accepted)
    }

    fn pool() -> Http1Pool {
        Http1Pool::new(PoolSettings {
            connect_timeout: Some(Duration::from_secs(5)),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_authority: 8,
        })
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    async fn read(pool: &Http1Pool, authority: &Authority, path: &str) -> usize {
        let resp = pool.send(authority, get(path)).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    #[tokio::test]
    async fn reuses_a_connection_once_its_response_was_read() {
        let (authority, accepted) = server(false).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(read(&pool, &authority, "/?n=1000").await, 1000);
        }
        // Empty bodies end at once and return the connection without being polled.
        for _ in 0..3 {
            let resp = pool.send(&authority, get("/")).await.unwrap();
            assert!(resp.body().is_end_stream());
        }
        assert_eq!(read(&pool, &authority, "/?n=10").await, 10);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_does_not_return_its_connection() {
        let (authority, accepted) = server(false).await;
        let pool = pool();
        let unread = pool.send(&authority, get("/?n=100000")).await.unwrap();
        drop(unread);
        assert_eq!(read(&pool, &authority, "/?n=5").await, 5);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_peer_closed_are_replaced() {
        let (authority, accepted) = server(true).await;
        let pool = pool();
        for _ in 0..3 {
            assert_eq!(read(&pool, &authority, "/?n=7").await, 7);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_requests_open_their_own_connections() {
        let (authority, accepted) = server(false).await;
        let pool = pool();
        let first = pool.send(&authority, get("/?n=3")).await.unwrap();
        let second = pool.send(&authority, get("/?n=4")).await.unwrap();
        assert_eq!(
            first.into_body().collect().await.unwrap().to_bytes().len(),
            3
        );
        assert_eq!(
            second.into_body().collect().await.unwrap().to_bytes().len(),
            4
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(read(&pool, &authority, "/?n=1").await, 1);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_closed_while_idle_are_not_reused() {
        // Answers one request per connection, then closes it without saying so (as servers do
        // when their keep-alive timeout passes).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority = Authority::try_from(listener.local_addr().unwrap().to_string()).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut byte)
                        .await
                        .unwrap();
                    head.push(byte[0]);
                }
                tokio::io::AsyncWriteExt::write_all(
                    &mut stream,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                )
                .await
                .unwrap();
            }
        });
        let pool = pool();
        for _ in 0..3 {
            assert_eq!(read(&pool, &authority, "/").await, 2);
            // Time for the close to reach this side.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = Authority::try_from(free.local_addr().unwrap().to_string()).unwrap();
        drop(free);
        let Err(err) = pool().send(&authority, get("/")).await else {
            panic!("a request to a closed port was answered");
        };
        assert!(err.is_connect(), "{err}");
    }
}
