//! What the client and the server share: reading bytes into a buffer, header maps built over
//! the received head, body framing (length, chunked, until close) both ways, and the errors.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Body as _;
use http_body_util::BodyExt;
use thiserror::Error;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;

/// Longest head accepted (start line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers accepted in one head.
pub const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Free space ensured in the read buffer before a read: the first, and the most a read that
/// filled it grows it to (bodies streaming through get larger reads, idle connections keep small
/// buffers).
const FIRST_READ: usize = 8 * 1024;
const LARGEST_READ: usize = 64 * 1024;
/// Bytes gathered before they are written; larger body chunks are written directly.
pub const WRITE_BUFFER: usize = 64 * 1024;

/// How reading a message body failed.
#[derive(Debug, Error)]
pub enum BodyError {
    #[error("reading the body failed: {0}")]
    Read(#[source] io::Error),
    #[error("the connection closed before the body ended")]
    Closed,
    #[error("invalid chunked body: {0}")]
    InvalidChunk(&'static str),
    #[error("sending 100 Continue failed: {0}")]
    Continue(#[source] io::Error),
}

/// How writing a message failed.
#[derive(Debug, Error)]
pub enum WriteError {
    #[error("reading the body to send failed: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the body to send ended after {sent} of its {declared} declared bytes")]
    Length { declared: u64, sent: u64 },
    #[error("writing failed: {0}")]
    Io(#[source] io::Error),
}

/// The read side of a connection and the bytes received but not consumed yet.
#[derive(Debug)]
pub struct Input {
    pub reader: OwnedReadHalf,
    pub buf: BytesMut,
    read_size: usize,
}

impl Input {
    pub fn new(reader: OwnedReadHalf) -> Self {
        Self {
            reader,
            buf: BytesMut::new(),
            read_size: FIRST_READ,
        }
    }

    /// Reads more bytes into the buffer; `0` at the end of the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(self.read_size);
        let room = self.buf.capacity() - self.buf.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.reader),
            cx,
            &mut self.buf
        ));
        if matches!(read, Ok(n) if n == room) {
            self.read_size = (self.read_size * 2).min(LARGEST_READ);
        }
        Poll::Ready(read)
    }

    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// The next piece of a body framed by `decoder`, reading as needed.
    pub fn poll_body(
        &mut self,
        decoder: &mut Decoder,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            match decoder.decode(&mut self.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if *decoder == Decoder::UntilClose => {
                    *decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(BodyError::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(BodyError::Read(e)))),
            }
        }
    }
}

/// The length of a head httparse has parsed: `None` while it is incomplete (and within bounds).
pub fn head_length(
    parsed: httparse::Result<usize>,
    buffered: usize,
) -> Result<Option<usize>, String> {
    match parsed {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered > MAX_HEAD_BYTES => {
            Err(format!("head longer than {MAX_HEAD_BYTES} bytes"))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The version httparse read (`0` for HTTP/1.0, `1` for HTTP/1.1).
pub fn version(minor: Option<u8>) -> http::Version {
    match minor {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    }
}

/// What a head's headers say about the message's framing and the connection, gathered while
/// the headers are noted (instead of looking each one up in the map afterwards).
#[derive(Debug, Default)]
pub struct HeadFacts {
    pub content_length: Option<u64>,
    /// Whether the last transfer coding is `chunked`; `None` without `Transfer-Encoding`.
    pub chunked: Option<bool>,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

impl HeadFacts {
    fn learn(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), String> {
        if name == CONTENT_LENGTH {
            for part in value.split(|b| *b == b',') {
                let parsed = std::str::from_utf8(part.trim_ascii())
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok())
                    .ok_or_else(|| {
                        format!(
                            "invalid content-length {:?}",
                            String::from_utf8_lossy(value)
                        )
                    })?;
                if self.content_length.is_some_and(|known| known != parsed) {
                    return Err("differing content-length values".into());
                }
                self.content_length = Some(parsed);
            }
        } else if name == TRANSFER_ENCODING {
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
            self.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == CONNECTION {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == EXPECT {
            self.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }

    /// Whether the connection stays open after this message, by its version's default.
    pub fn persistent(&self, version: http::Version) -> bool {
        if version == http::Version::HTTP_10 {
            self.keep_alive && !self.close
        } else {
            !self.close
        }
    }
}

/// Where each parsed header lies in the received bytes, so that the header map can share them
/// instead of copying each value.
pub struct HeaderSpans(Vec<(HeaderName, Range<usize>)>);

impl HeaderSpans {
    /// Notes `headers`, parsed from the buffer starting at `base`, and what they say about
    /// framing.
    pub fn note(
        headers: &[httparse::Header<'_>],
        base: *const u8,
    ) -> Result<(Self, HeadFacts), String> {
        let base = base as usize;
        let mut spans = Vec::with_capacity(headers.len());
        let mut facts = HeadFacts::default();
        for header in headers {
            let name = match known_name(header.name) {
                Some(name) => name,
                None => HeaderName::from_bytes(header.name.as_bytes())
                    .map_err(|_| format!("invalid header name {:?}", header.name))?,
            };
            facts.learn(&name, header.value)?;
            let from = header.value.as_ptr() as usize - base;
            spans.push((name, from..from + header.value.len()));
        }
        Ok((Self(spans), facts))
    }

    /// The header map, its values slices of `head` (the bytes the spans were noted in).
    pub fn into_map(self, head: &Bytes) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::with_capacity(self.0.len());
        for (name, span) in self.0 {
            let value = HeaderValue::from_maybe_shared(head.slice(span))
                .map_err(|_| format!("invalid value of header {name}"))?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// The names every invocation between sidecars carries beyond `http`'s standard ones, as peers
/// send them (lower case). `HeaderName::from_bytes` would copy each into an allocation of its
/// own, per request.
fn known_name(name: &str) -> Option<HeaderName> {
    use crate::invoke::headers as invoke;
    Some(match name {
        "dapr-caller-app-id" => invoke::CALLER_APP_ID,
        "dapr-callee-app-id" => invoke::CALLEE_APP_ID,
        "dapr-caller-namespace" => invoke::CALLER_NAMESPACE,
        "traceparent" => invoke::TRACEPARENT,
        "x-forwarded-for" => invoke::X_FORWARDED_FOR,
        "x-forwarded-host" => invoke::X_FORWARDED_HOST,
        _ => return None,
    })
}

/// Writes the headers; without the framing ones when `skip_framing` (the writer decides them).
pub fn encode_headers(buf: &mut Vec<u8>, headers: &HeaderMap, skip_framing: bool) {
    for (name, value) in headers {
        if skip_framing && (name == CONTENT_LENGTH || name == TRANSFER_ENCODING) {
            continue;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// How an outgoing body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// By closing the connection (a response to an HTTP/1.0 request of unknown length).
    UntilClose,
}

impl Framing {
    /// The framing header, if any, ending the head.
    pub fn encode_header(self, buf: &mut Vec<u8>) {
        match self {
            Framing::Length(n) => {
                buf.extend_from_slice(b"content-length: ");
                buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                buf.extend_from_slice(b"\r\n");
            }
            Framing::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::UntilClose => {}
        }
    }
}

/// Writes what `buf` holds (an encoded head), then `body` framed as `framing`. Frames the body
/// has ready are gathered into one write; before waiting for more, what was gathered goes out.
pub async fn write_body<W: AsyncWrite + Unpin>(
    writer: &mut W,
    buf: &mut Vec<u8>,
    mut body: Body,
    framing: Framing,
) -> Result<(), WriteError> {
    let chunked = framing == Framing::Chunked;
    let mut sent = 0u64;
    loop {
        let ready = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
        let frame = match ready.await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                flush(writer, buf).await?;
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(WriteError::Body(e.into())),
            // Trailers are not sent.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        sent += data.len() as u64;
        if let Framing::Length(declared) = framing {
            if sent > declared {
                return Err(WriteError::Length { declared, sent });
            }
        }
        if chunked {
            buf.extend_from_slice(format!("{:X}\r\n", data.len()).as_bytes());
        }
        if buf.len() + data.len() <= WRITE_BUFFER {
            buf.extend_from_slice(&data);
        } else {
            flush(writer, buf).await?;
            writer.write_all(&data).await.map_err(WriteError::Io)?;
        }
        if chunked {
            buf.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Length(declared) if sent != declared => {
            return Err(WriteError::Length { declared, sent })
        }
        Framing::Chunked => buf.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    flush(writer, buf).await
}

async fn flush<W: AsyncWrite + Unpin>(writer: &mut W, buf: &mut Vec<u8>) -> Result<(), WriteError> {
    if !buf.is_empty() {
        writer.write_all(buf).await.map_err(WriteError::Io)?;
        buf.clear();
    }
    Ok(())
}

/// Where an incoming body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// The body ends when the peer closes the connection.
    UntilClose,
    Done,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// A chunk-size line comes next.
    Size,
    /// This many bytes of the current chunk are still to come.
    Data(u64),
    /// The CRLF ending a chunk's data comes next.
    DataEnd,
    /// Trailer lines come next, up to an empty line.
    Trailers,
}

/// What decoding found in the buffered bytes.
pub enum Decoded {
    Data(Bytes),
    NeedMore,
    End,
}

impl Decoder {
    pub fn length(length: u64) -> Self {
        if length == 0 {
            Decoder::Done
        } else {
            Decoder::Length(length)
        }
    }

    pub fn chunked() -> Self {
        Decoder::Chunked(Chunk::Size)
    }

    pub fn size_hint(self) -> http_body::SizeHint {
        match self {
            Decoder::Length(left) => http_body::SizeHint::with_exact(left),
            Decoder::Done => http_body::SizeHint::with_exact(0),
            _ => http_body::SizeHint::default(),
        }
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        loop {
            match *self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::UntilClose if buf.is_empty() => return Ok(Decoded::NeedMore),
                Decoder::UntilClose => return Ok(Decoded::Data(buf.split().freeze())),
                Decoder::Length(left) => {
                    let Some(data) = take(buf, left) else {
                        return Ok(Decoded::NeedMore);
                    };
                    *self = Decoder::length(left - data.len() as u64);
                    return Ok(Decoded::Data(data));
                }
                Decoder::Chunked(Chunk::Data(left)) => {
                    let Some(data) = take(buf, left) else {
                        return Ok(Decoded::NeedMore);
                    };
                    let left = left - data.len() as u64;
                    *self = Decoder::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Decoded::Data(data));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(BodyError::InvalidChunk("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Size) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    *self = Decoder::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Decoder::Chunked(Chunk::Trailers) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        *self = Decoder::Done;
                    }
                }
            }
        }
    }
}

/// Up to `left` buffered bytes, or `None` when nothing is buffered.
fn take(buf: &mut BytesMut, left: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
    Some(buf.split_to(n).freeze())
}

/// A CRLF-terminated line without its CRLF, once it has fully arrived.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, BodyError> {
    match memchr::memchr(b'\n', buf) {
        Some(end) if end > MAX_CHUNK_LINE => Err(BodyError::InvalidChunk("line too long")),
        Some(end) => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err(BodyError::InvalidChunk("line too long")),
        None => Ok(None),
    }
}

/// The size on a chunk-size line (hexadecimal, optionally followed by extensions).
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() {
        return Err(BodyError::InvalidChunk("empty chunk size"));
    }
    digits.iter().try_fold(0u64, |size, digit| {
        let value = (*digit as char)
            .to_digit(16)
            .ok_or(BodyError::InvalidChunk("chunk size is not hexadecimal"))?;
        size.checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(value)))
            .ok_or(BodyError::InvalidChunk("chunk size too large"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hexadecimal_and_bounded() {
        assert_eq!(chunk_size(b"1aF").unwrap(), 0x1af);
        assert_eq!(chunk_size(b"10 ; name=value").unwrap(), 16);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"xyz").is_err());
        assert!(chunk_size(b"11112222333344445").is_err());
    }

    #[test]
    fn a_chunked_body_decodes_across_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n";
        for split in 0..wire.len() {
            let mut decoder = Decoder::chunked();
            let mut buf = BytesMut::from(&wire[..split]);
            let mut body = Vec::new();
            let mut drain = |decoder: &mut Decoder, buf: &mut BytesMut| {
                while let Decoded::Data(data) = decoder.decode(buf).unwrap() {
                    body.extend_from_slice(&data);
                }
            };
            drain(&mut decoder, &mut buf);
            buf.extend_from_slice(&wire[split..]);
            drain(&mut decoder, &mut buf);
            assert_eq!(decoder, Decoder::Done, "split at {split}");
            assert_eq!(body, b"hello world", "split at {split}");
            assert!(buf.is_empty());
        }
    }
}
