//! One client-side HTTP/1.1 connection, driven by the request that uses it.
//!
//! hyper's client runs each connection as a task of its own, and hands requests and responses to
//! it over channels: every request wakes two tasks and crosses two queues. The two hops of an
//! invocation (to the peer sidecar, and to the app) send one request at a time per connection,
//! so here the request's own task writes the request, reads the response head, and then the
//! response body reads the rest from the socket as it is polled. Once the body has been read to
//! its end, the connection can take the next request.
//!
//! The request is written while the response head is awaited, so a peer that answers early
//! (refusing a body too large, say) is heard even when it stops reading the request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use bytes::{Buf, Bytes};
use http::header::CONTENT_LENGTH;
use http::{request, response, Method, Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use thiserror::Error;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use super::wire::{
    self, BodyError, Decoder, Framing, HeaderSpans, Input, WriteError, MAX_HEADERS, WRITE_BUFFER,
};

/// How sending a request, or reading its response head, failed.
#[derive(Debug, Error)]
pub enum ExchangeError {
    #[error("sending the request failed: {0}")]
    Send(#[source] WriteError),
    #[error("reading the response failed: {0}")]
    Read(#[source] io::Error),
    #[error("the connection closed before a response arrived")]
    ClosedBeforeResponse,
    #[error("invalid response: {0}")]
    InvalidResponse(String),
}

/// An open connection, idle between requests.
#[derive(Debug)]
pub struct Connection {
    input: Input,
    writer: OwnedWriteHalf,
    /// The request being written; reused by the next.
    write_buf: Vec<u8>,
}

/// A response head, how its body is framed, and whether the connection outlives it.
struct ResponseHead {
    parts: response::Parts,
    decoder: Decoder,
    keep_alive: bool,
}

/// Which half of an exchange finished first.
enum FirstDone {
    Written(Result<(), WriteError>),
    Answered(Result<ResponseHead, ExchangeError>),
}

impl Connection {
    pub fn new(stream: TcpStream) -> Self {
        let (reader, writer) = stream.into_split();
        Self {
            input: Input::new(reader),
            writer,
            write_buf: Vec::new(),
        }
    }

    /// Whether an idle connection can take a request: the peer has neither closed it nor sent
    /// anything unasked. Costs a system call only when the socket reports something to read.
    pub fn is_open(&self) -> bool {
        let stream: &TcpStream = self.input.reader.as_ref();
        let mut cx = Context::from_waker(Waker::noop());
        match stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Sends `req` (its URI's path and query are the request target) and reads the response
    /// head. The response body reads from this connection as it is polled.
    pub async fn exchange(
        mut self,
        req: http::Request<Body>,
    ) -> Result<Response<ResponseBody>, ExchangeError> {
        let (parts, body) = req.into_parts();
        let framing = body
            .size_hint()
            .exact()
            .map_or(Framing::Chunked, Framing::Length);
        let is_head = parts.method == Method::HEAD;
        let (head, request_complete) = {
            let Connection {
                input,
                writer,
                write_buf,
            } = &mut self;
            write_buf.clear();
            encode_head(write_buf, &parts, framing);
            let writing = wire::write_body(writer, write_buf, body, framing);
            let reading = read_head(input, is_head);
            tokio::pin!(writing, reading);
            let first = tokio::select! {
                biased;
                written = &mut writing => FirstDone::Written(written),
                head = &mut reading => FirstDone::Answered(head),
            };
            match first {
                FirstDone::Written(Ok(())) => (reading.await?, true),
                // The peer may have answered, then stopped reading: its answer stands.
                FirstDone::Written(Err(WriteError::Io(e))) => match reading.await {
                    Ok(head) => (head, false),
                    Err(_) => return Err(ExchangeError::Send(WriteError::Io(e))),
                },
                FirstDone::Written(Err(e)) => return Err(ExchangeError::Send(e)),
                // Answered before the whole request was sent: the rest of it is not sent.
                FirstDone::Answered(head) => (head?, false),
            }
        };
        if self.write_buf.capacity() > WRITE_BUFFER {
            self.write_buf = Vec::new();
        }
        let body = ResponseBody {
            keep_alive: head.keep_alive && request_complete,
            decoder: head.decoder,
            conn: Some(self),
        };
        Ok(Response::from_parts(head.parts, body))
    }
}

/// The request line and headers, with the body's framing.
fn encode_head(buf: &mut Vec<u8>, parts: &request::Parts, framing: Framing) {
    buf.extend_from_slice(parts.method.as_str().as_bytes());
    buf.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    buf.extend_from_slice(target.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    wire::encode_headers(buf, &parts.headers, true);
    // Methods without a body send no length, unless the client gave one.
    let bodiless = framing == Framing::Length(0)
        && !parts.headers.contains_key(CONTENT_LENGTH)
        && !matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if !bodiless {
        framing.encode_header(buf);
    }
    buf.extend_from_slice(b"\r\n");
}

/// Reads until a final (non-1xx) response head has arrived, skipping interim responses.
async fn read_head(input: &mut Input, is_head: bool) -> Result<ResponseHead, ExchangeError> {
    loop {
        if !input.buf.is_empty() {
            let before = input.buf.len();
            if let Some(head) = parse_head(&mut input.buf, is_head)? {
                return Ok(head);
            }
            if input.buf.len() < before {
                // An interim response was removed; the final one may be buffered already.
                continue;
            }
        }
        if input.fill().await.map_err(ExchangeError::Read)? == 0 {
            return Err(if input.buf.is_empty() {
                ExchangeError::ClosedBeforeResponse
            } else {
                ExchangeError::InvalidResponse("the connection closed inside the head".into())
            });
        }
    }
}

/// Parses a response head at the start of `buf` and removes it: `None` while it is incomplete,
/// or when it was an interim (1xx) response.
fn parse_head(
    buf: &mut bytes::BytesMut,
    is_head: bool,
) -> Result<Option<ResponseHead>, ExchangeError> {
    let invalid = ExchangeError::InvalidResponse;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let Some(len) = wire::head_length(parsed.parse(buf), buf.len()).map_err(invalid)? else {
        return Ok(None);
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|e| invalid(e.to_string()))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(None);
    }
    let version = wire::version(parsed.version);
    let (spans, facts) = HeaderSpans::note(parsed.headers, buf.as_ptr()).map_err(invalid)?;
    let headers = spans
        .into_map(&buf.split_to(len).freeze())
        .map_err(invalid)?;
    let no_body = is_head
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS;
    let decoder = match (no_body, facts.chunked, facts.content_length) {
        (true, _, _) => Decoder::Done,
        (false, Some(true), _) => Decoder::chunked(),
        (false, Some(false), _) | (false, None, None) => Decoder::UntilClose,
        (false, None, Some(length)) => Decoder::length(length),
    };
    let keep_alive = facts.persistent(version)
        && status != StatusCode::SWITCHING_PROTOCOLS
        && decoder != Decoder::UntilClose;
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    let (parts, ()) = resp.into_parts();
    Ok(Some(ResponseHead {
        parts,
        decoder,
        keep_alive,
    }))
}

/// A response body, read from its connection as it is polled.
#[derive(Debug)]
pub struct ResponseBody {
    /// `None` once the body failed, or its connection was taken back.
    conn: Option<Connection>,
    decoder: Decoder,
    /// The connection can take another request once this body has ended.
    keep_alive: bool,
}

impl ResponseBody {
    /// The connection, once this body has been read to its end, if it can be reused.
    pub fn reusable_connection(&mut self) -> Option<Connection> {
        if self.decoder != Decoder::Done || !self.keep_alive {
            return None;
        }
        // Bytes beyond the response were not asked for: the connection is not trusted.
        self.conn.take().filter(|conn| conn.input.buf.is_empty())
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let until_close = this.decoder == Decoder::UntilClose;
        let polled = conn.input.poll_body(&mut this.decoder, cx);
        match polled {
            Poll::Ready(Some(Err(_))) => {
                this.conn = None;
                this.decoder = Decoder::Done;
                this.keep_alive = false;
            }
            // A body delimited by the close leaves nothing to reuse.
            Poll::Ready(None) if until_close => this.keep_alive = false,
            _ => {}
        }
        polled.map_ok(Frame::data)
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == Decoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        self.decoder.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that runs `script` on its first accepted connection; returns a connection to it.
    async fn scripted<F, Fut>(script: F) -> Connection
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            script(stream).await;
        });
        Connection::new(TcpStream::connect(addr).await.unwrap())
    }

    /// Reads one request head (and nothing more) from `stream`.
    async fn read_request_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    fn get(path: &str) -> http::Request<Body> {
        http::Request::get(path).body(Body::empty()).unwrap()
    }

    async fn read_all(body: &mut ResponseBody) -> Result<Vec<u8>, BodyError> {
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                all.extend_from_slice(&data);
            }
        }
        Ok(all)
    }

    #[tokio::test]
    async fn a_chunked_response_arriving_in_pieces_is_decoded_and_frees_the_connection() {
        let conn = scripted(|mut stream| async move {
            for _ in 0..2 {
                read_request_head(&mut stream).await;
                for piece in [
                    &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r"[..],
                    b"\nhello\r\n",
                    b"6\r\n world\r\n0\r\nx-trailer: t\r\n",
                    b"\r\n",
                ] {
                    stream.write_all(piece).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        })
        .await;
        let mut resp = conn.exchange(get("/a")).await.unwrap();
        assert_eq!(read_all(resp.body_mut()).await.unwrap(), b"hello world");
        let conn = resp.body_mut().reusable_connection().expect("reusable");
        assert!(conn.is_open());
        let mut resp = conn.exchange(get("/b")).await.unwrap();
        assert_eq!(read_all(resp.body_mut()).await.unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let conn = scripted(|mut stream| async move {
            read_request_head(&mut stream).await;
            stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\nx-a: b\r\n\r\nok")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        })
        .await;
        let mut resp = conn.exchange(get("/")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["x-a"], "b");
        assert_eq!(resp.body().size_hint().exact(), Some(2));
        assert_eq!(read_all(resp.body_mut()).await.unwrap(), b"ok");
        assert!(resp.body().is_end_stream());
        assert!(resp.body_mut().reusable_connection().is_some());
    }

    #[tokio::test]
    async fn head_and_no_content_responses_have_no_body() {
        let conn = scripted(|mut stream| async move {
            read_request_head(&mut stream).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
                .await
                .unwrap();
            read_request_head(&mut stream).await;
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        })
        .await;
        let head = http::Request::head("/").body(Body::empty()).unwrap();
        let mut resp = conn.exchange(head).await.unwrap();
        assert_eq!(resp.headers()["content-length"], "10");
        assert!(resp.body().is_end_stream());
        let conn = resp.body_mut().reusable_connection().expect("reusable");
        let mut resp = conn.exchange(get("/")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(resp.body().is_end_stream());
        assert!(resp.body_mut().reusable_connection().is_some());
    }

    #[tokio::test]
    async fn a_body_without_length_ends_when_the_peer_closes() {
        let conn = scripted(|mut stream| async move {
            read_request_head(&mut stream).await;
            stream
                .write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
                .await
                .unwrap();
        })
        .await;
        let mut resp = conn.exchange(get("/")).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_10);
        assert_eq!(read_all(resp.body_mut()).await.unwrap(), b"until the end");
        assert!(resp.body_mut().reusable_connection().is_none());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let conn = scripted(|mut stream| async move {
            read_request_head(&mut stream).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
                .await
                .unwrap();
        })
        .await;
        let mut resp = conn.exchange(get("/")).await.unwrap();
        assert!(matches!(
            read_all(resp.body_mut()).await,
            Err(BodyError::Closed)
        ));
    }

    #[tokio::test]
    async fn an_answer_before_the_request_body_ended_is_returned() {
        let conn = scripted(|mut stream| async move {
            read_request_head(&mut stream).await;
            stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        })
        .await;
        // A body that never ends: only the early answer can finish the exchange.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(1);
        let body = Body::new(http_body_util::StreamBody::new(tokio_stream_from(rx)));
        let req = http::Request::post("/").body(body).unwrap();
        let mut resp = conn.exchange(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(resp.body_mut().reusable_connection().is_none());
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_sent_chunked() {
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let conn = scripted(|mut stream| async move {
            let mut seen = Vec::new();
            while !seen.ends_with(b"0\r\n\r\n") {
                let mut piece = [0u8; 1024];
                let n = stream.read(&mut piece).await.unwrap();
                seen.extend_from_slice(&piece[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            let _ = seen_tx.send(String::from_utf8(seen).unwrap());
        })
        .await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = Body::new(http_body_util::StreamBody::new(tokio_stream_from(rx)));
        let sender = tokio::spawn(async move {
            for piece in ["first", "", "second piece"] {
                tx.send(Ok(Frame::data(Bytes::from(piece)))).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let req = http::Request::put("/up").body(body).unwrap();
        let resp = conn.exchange(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        sender.await.unwrap();
        let seen = seen_rx.await.unwrap();
        assert!(seen.starts_with("PUT /up HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen}");
        assert!(
            seen.ends_with("\r\n\r\n5\r\nfirst\r\nC\r\nsecond piece\r\n0\r\n\r\n"),
            "{seen}"
        );
    }

    /// A body that declares more bytes than it yields.
    struct Liar;

    impl http_body::Body for Liar {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            Poll::Ready(None)
        }

        fn size_hint(&self) -> SizeHint {
            SizeHint::with_exact(10)
        }
    }

    #[tokio::test]
    async fn a_request_body_shorter_than_declared_is_an_error() {
        let conn = scripted(|mut stream| async move {
            read_request_head(&mut stream).await;
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        })
        .await;
        let req = http::Request::post("/").body(Body::new(Liar)).unwrap();
        let err = conn.exchange(req).await.unwrap_err();
        assert!(
            matches!(
                err,
                ExchangeError::Send(WriteError::Length {
                    declared: 10,
                    sent: 0
                })
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn malformed_responses_are_errors() {
        for reply in [
            &b"HTTP/1.1 2000 Huge\r\n\r\n"[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
        ] {
            let conn = scripted(move |mut stream| async move {
                read_request_head(&mut stream).await;
                stream.write_all(reply).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            })
            .await;
            let err = conn.exchange(get("/")).await.unwrap_err();
            assert!(matches!(err, ExchangeError::InvalidResponse(_)), "{err}");
        }
    }

    #[tokio::test]
    async fn a_peer_closing_without_answer_is_reported() {
        let conn = scripted(|mut stream| async move {
            read_request_head(&mut stream).await;
        })
        .await;
        let err = conn.exchange(get("/")).await.unwrap_err();
        assert!(matches!(err, ExchangeError::ClosedBeforeResponse), "{err}");
    }
}
