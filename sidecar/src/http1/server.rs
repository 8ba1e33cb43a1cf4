//! Tandem's HTTP/1.x server, behind every port (the API, public, metrics and internal ports).
//!
//! Each connection is one task that reads a request head, calls the handler, and writes the
//! response, in turn. hyper's server runs the handler as a separate future fed through the
//! connection's dispatcher; here nothing sits between the socket and the handler. A request body
//! that arrived with its head (the usual case for the small bodies of API calls and invocations)
//! is handed over as bytes; a longer one is read from the connection as the handler polls it.
//!
//! Connections are kept alive until the client closes them or the server shuts down; a
//! response whose request body was not read to its end says `connection: close`. Requests on
//! one connection are answered in turn (pipelined requests wait in the buffer).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, DATE};
use http::{request, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::wire::{
    self, BodyError, Decoder, Framing, HeaderSpans, Input, WriteError, MAX_HEADERS, WRITE_BUFFER,
};

/// Why a connection ended early.
#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("reading the request failed: {0}")]
    Read(#[source] io::Error),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("writing the response failed: {0}")]
    Write(#[source] WriteError),
}

/// A request head, how its body is framed, and what the client asked of the connection.
struct RequestHead {
    parts: request::Parts,
    decoder: Decoder,
    keep_alive: bool,
    expect_continue: bool,
}

/// Answers requests; failures are responses too.
pub trait Handler: Clone + Send + Sync + 'static {
    fn call(&self, req: Request<Body>) -> impl Future<Output = Response<Body>> + Send;
}

/// Serves requests on `stream` in turn, until the client closes it or `shutdown` comes while it
/// is idle.
pub async fn serve_connection<H: Handler>(
    stream: TcpStream,
    handler: &H,
    shutdown: &CancellationToken,
) -> Result<(), ConnectionError> {
    let (reader, mut writer) = stream.into_split();
    let mut input = Input::new(reader);
    let mut out = Vec::new();
    loop {
        let head = tokio::select! {
            biased;
            head = read_head(&mut input) => head,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(ConnectionError::BadRequest(why)) => {
                out.clear();
                encode_status_line(&mut out, Version::HTTP_11, StatusCode::BAD_REQUEST);
                encode_date(&mut out);
                out.extend_from_slice(b"connection: close\r\ncontent-length: 0\r\n\r\n");
                let _ = writer.write_all(&out).await;
                return Err(ConnectionError::BadRequest(why));
            }
            Err(e) => return Err(e),
        };
        let Some(back) = respond(input, head, &mut writer, &mut out, handler, shutdown).await?
        else {
            let _ = writer.shutdown().await;
            return Ok(());
        };
        input = back;
        if out.capacity() > WRITE_BUFFER {
            out = Vec::new();
        }
    }
}

/// Handles one request; returns the connection's input when it can take another.
async fn respond<H: Handler>(
    mut input: Input,
    head: RequestHead,
    writer: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    handler: &H,
    shutdown: &CancellationToken,
) -> Result<Option<Input>, ConnectionError> {
    let version = head.parts.version;
    let is_head = head.parts.method == Method::HEAD;
    // A body that arrived whole is handed over as bytes; a longer one streams from the socket.
    let (body, kept, streamed) = match head.decoder {
        Decoder::Done => (Body::empty(), Some(input), None),
        Decoder::Length(n) if input.buf.len() as u64 >= n => {
            let whole = input.buf.split_to(n as usize).freeze();
            (Body::from(whole), Some(input), None)
        }
        decoder => {
            // The client holds the body back until told to send it: the `100 Continue` goes
            // out when the handler first reads the body, so a refusal costs no upload.
            let continue_due: &[u8] = if head.expect_continue {
                b"HTTP/1.1 100 Continue\r\n\r\n"
            } else {
                b""
            };
            let streamed = Streamed {
                input,
                decoder,
                continue_due,
            };
            let shared = Arc::new(Mutex::new(Some(streamed)));
            (Body::new(RequestBody(shared.clone())), None, Some(shared))
        }
    };
    let resp = handler.call(Request::from_parts(head.parts, body)).await;
    // Take the input back; the connection goes on only if the request body was read whole.
    let input = match streamed {
        None => kept,
        Some(shared) => shared
            .lock()
            .take()
            .filter(|s| s.decoder == Decoder::Done)
            .map(|s| s.input),
    };
    let input = input.filter(|_| head.keep_alive && !shutdown.is_cancelled());
    let (parts, body) = resp.into_parts();
    out.clear();
    encode_status_line(out, version, parts.status);
    let no_body = is_head
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let framing = match body.size_hint().exact() {
        Some(n) => Framing::Length(n),
        None if version == Version::HTTP_11 => Framing::Chunked,
        None => Framing::UntilClose,
    };
    let input = input.filter(|_| framing != Framing::UntilClose);
    // A HEAD answer keeps the framing headers the handler gave; no body follows.
    wire::encode_headers(out, &parts.headers, !no_body);
    // A HEAD answer without a length gets the body's, which is not sent.
    let head_without_length = is_head && !parts.headers.contains_key(CONTENT_LENGTH);
    if !no_body || (head_without_length && matches!(framing, Framing::Length(_))) {
        framing.encode_header(out);
    }
    if !parts.headers.contains_key(DATE) {
        encode_date(out);
    }
    if input.is_none() {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let body = if no_body { Body::empty() } else { body };
    let framing = if no_body { Framing::Length(0) } else { framing };
    wire::write_body(writer, out, body, framing)
        .await
        .map_err(ConnectionError::Write)?;
    Ok(input)
}

/// A `date` header, as every HTTP/1.1 origin server sends (Go's net/http too); the text is
/// formatted once per second per thread.
fn encode_date(out: &mut Vec<u8>) {
    thread_local! {
        static NOW: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    NOW.with_borrow_mut(|(cached_second, text)| {
        if *cached_second != second || text.is_empty() {
            *cached_second = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

fn encode_status_line(out: &mut Vec<u8>, version: Version, status: StatusCode) {
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Reads the next request head; `None` when the client closed the connection between requests.
async fn read_head(input: &mut Input) -> Result<Option<RequestHead>, ConnectionError> {
    loop {
        if !input.buf.is_empty() {
            if let Some(head) = parse_head(&mut input.buf)? {
                return Ok(Some(head));
            }
        }
        if input.fill().await.map_err(ConnectionError::Read)? == 0 {
            return if input.buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnectionError::BadRequest(
                    "the connection closed inside a request head".into(),
                ))
            };
        }
    }
}

/// Parses a request head at the start of `buf` and removes it; `None` while it is incomplete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<RequestHead>, ConnectionError> {
    let bad = ConnectionError::BadRequest;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let Some(len) = wire::head_length(parsed.parse(buf), buf.len()).map_err(bad)? else {
        return Ok(None);
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|e| bad(e.to_string()))?;
    let version = wire::version(parsed.version);
    let path = parsed.path.unwrap_or("/");
    let base = buf.as_ptr() as usize;
    let path_span = path.as_ptr() as usize - base..path.as_ptr() as usize - base + path.len();
    let (spans, facts) = HeaderSpans::note(parsed.headers, buf.as_ptr()).map_err(bad)?;
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(path_span)).map_err(|e| bad(e.to_string()))?;
    let headers = spans.into_map(&head).map_err(bad)?;
    let decoder = match facts.chunked {
        Some(true) => Decoder::chunked(),
        Some(false) => return Err(bad("a transfer coding other than chunked".into())),
        None => Decoder::length(facts.content_length.unwrap_or(0)),
    };
    let keep_alive = facts.persistent(version);
    let expect_continue = facts.expect_continue;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    let (parts, ()) = req.into_parts();
    Ok(Some(RequestHead {
        parts,
        decoder,
        keep_alive,
        expect_continue,
    }))
}

/// A request body being read from its connection; the connection takes its input back once the
/// response is ready.
struct Streamed {
    input: Input,
    decoder: Decoder,
    /// What is left to send of a `100 Continue` the client asked for, before the first read.
    continue_due: &'static [u8],
}

struct RequestBody(Arc<Mutex<Option<Streamed>>>);

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut streamed = self.0.lock();
        let Some(Streamed {
            input,
            decoder,
            continue_due,
        }) = streamed.as_mut()
        else {
            // The response was sent already: the rest of the body is gone with the connection.
            return Poll::Ready(Some(Err(BodyError::Closed)));
        };
        while !continue_due.is_empty() {
            let stream: &TcpStream = input.reader.as_ref();
            if let Err(e) = ready!(stream.poll_write_ready(cx)) {
                return Poll::Ready(Some(Err(BodyError::Continue(e))));
            }
            match stream.try_write(continue_due) {
                Ok(n) => *continue_due = &continue_due[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(BodyError::Continue(e)))),
            }
        }
        input.poll_body(decoder, cx).map_ok(Frame::data)
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .as_ref()
            .is_none_or(|s| s.decoder == Decoder::Done)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .as_ref()
            .map_or_else(SizeHint::default, |s| s.decoder.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::http_server::serve;

    /// Answers with the method, path, and body length it read; `/ignore` reads no body.
    #[derive(Clone)]
    struct Echo;

    impl Handler for Echo {
        async fn call(&self, req: Request<Body>) -> Response<Body> {
            echo(req).await
        }
    }

    async fn echo(req: Request<Body>) -> Response<Body> {
        let line = format!("{} {}", req.method(), req.uri());
        if req.uri().path() == "/ignore" {
            return Response::new(Body::from(line));
        }
        let read = req.into_body().collect().await.map(|b| b.to_bytes().len());
        Response::new(Body::from(format!("{line} {read:?}")))
    }

    /// A server on a free port; returns its address and its shutdown token.
    async fn start() -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, shutdown.clone(), |_| Echo));
        (addr, shutdown)
    }

    /// Writes `request` and reads what comes back until the server closes the connection or
    /// falls silent; `date` lines are checked and removed.
    async fn raw(stream: &mut TcpStream, request: &[u8]) -> String {
        stream.write_all(request).await.unwrap();
        let mut seen = Vec::new();
        let mut piece = [0u8; 4096];
        loop {
            let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut piece));
            match read.await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => seen.extend_from_slice(&piece[..n]),
                Ok(Err(e)) => panic!("{e}"),
            }
        }
        // Every answer carries a date; the tests compare the rest.
        let seen = String::from_utf8(seen).unwrap();
        let final_answer = seen.trim_start_matches("HTTP/1.1 100 Continue\r\n\r\n");
        assert!(
            final_answer.is_empty() || final_answer.contains("\r\ndate: "),
            "{seen}"
        );
        seen.split("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    #[tokio::test]
    async fn requests_on_one_connection_are_answered_in_turn() {
        let (addr, _shutdown) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let seen = raw(
            &mut stream,
            b"POST /a?x=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n",
        )
        .await;
        assert_eq!(
            seen,
            "HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\nPOST /a?x=1 Ok(3)\
             HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nGET /b Ok(0)"
        );
    }

    #[tokio::test]
    async fn bodies_arriving_after_their_head_and_chunked_bodies_are_read() {
        let (addr, _shutdown) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"PUT /late HTTP/1.1\r\ncontent-length: 10\r\n\r\n01234")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = raw(
            &mut stream,
            b"56789PUT /chunks HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        assert!(seen.contains("PUT /late Ok(10)"), "{seen}");
        assert!(seen.contains("PUT /chunks Ok(5)"), "{seen}");
        assert!(!seen.contains("connection: close"), "{seen}");
    }

    #[tokio::test]
    async fn an_unread_body_closes_the_connection_after_the_answer() {
        let (addr, _shutdown) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let seen = raw(
            &mut stream,
            b"POST /ignore HTTP/1.1\r\ncontent-length: 100000\r\n\r\nonly the start",
        )
        .await;
        assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen}");
        assert!(seen.contains("connection: close\r\n"), "{seen}");
        assert!(seen.ends_with("POST /ignore"), "{seen}");
    }

    #[tokio::test]
    async fn continue_is_sent_only_when_the_body_is_read() {
        let (addr, _shutdown) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = b"POST /read HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n";
        let seen = raw(&mut stream, head).await;
        assert_eq!(seen, "HTTP/1.1 100 Continue\r\n\r\n");
        let seen = raw(&mut stream, b"body").await;
        assert!(seen.ends_with("POST /read Ok(4)"), "{seen}");

        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = b"POST /ignore HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n";
        let seen = raw(&mut stream, head).await;
        assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen}");
        assert!(seen.contains("connection: close\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn head_answers_carry_the_length_without_the_body() {
        let (addr, _shutdown) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let seen = raw(&mut stream, b"HEAD /h HTTP/1.1\r\n\r\n").await;
        assert_eq!(
            seen,
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                "HEAD /h Ok(0)".len()
            )
        );
    }

    #[tokio::test]
    async fn http_1_0_clients_get_http_1_0_answers_and_a_close() {
        let (addr, _shutdown) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let seen = raw(&mut stream, b"GET /old HTTP/1.0\r\n\r\n").await;
        assert!(seen.starts_with("HTTP/1.0 200 OK\r\n"), "{seen}");
        assert!(seen.contains("connection: close\r\n"), "{seen}");
    }

    #[tokio::test]
    async fn malformed_requests_get_a_400_and_a_close() {
        let (addr, _shutdown) = start().await;
        for request in [
            &b"NOT HTTP\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ] {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let seen = raw(&mut stream, request).await;
            assert!(seen.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{seen}");
        }
    }

    #[tokio::test]
    async fn the_pooled_client_talks_to_it_with_kept_alive_connections() {
        let (addr, _shutdown) = start().await;
        let authority = http::uri::Authority::try_from(addr.to_string()).unwrap();
        let pool = super::super::pool::Http1Pool::new(super::super::pool::PoolSettings {
            connect_timeout: None,
            idle_timeout: Duration::from_secs(60),
            max_idle_per_authority: 4,
        });
        for n in [0usize, 10, 100_000, 3] {
            let req = Request::post("/p").body(Body::from(vec![b'x'; n])).unwrap();
            let resp = pool.send(&authority, req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, format!("POST /p Ok({n})"));
        }
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, shutdown.clone(), |_| Echo));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let seen = raw(&mut stream, b"GET /one HTTP/1.1\r\n\r\n").await;
        assert!(seen.ends_with("GET /one Ok(0)"), "{seen}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops")
            .unwrap();
        let mut rest = Vec::new();
        assert_eq!(stream.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
