//! Request body limits: bodies over `--max-body-size` are refused without being read whole.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use http_body_util::{BodyExt, Limited};

use super::error::ApiError;

/// The configured limit, carried in request extensions for handlers that read bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

/// Rejects a declared Content-Length over the limit at once; caps streamed bodies so reading
/// stops at the limit. A body whose exact length the server knows (from its Content-Length,
/// which hyper never reads past) needs no cap.
pub fn cap(limit: u64, req: Request) -> Result<Request, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    if http_body::Body::size_hint(req.body())
        .exact()
        .is_some_and(|len| len <= limit)
    {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let capped = Body::new(Limited::new(
        body,
        usize::try_from(limit).unwrap_or(usize::MAX),
    ));
    Ok(Request::from_parts(parts, capped))
}

/// Reads a (limited) request body into memory.
pub async fn read_body(body: Body, limit: Option<BodyLimit>) -> Result<Bytes, ApiError> {
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(classify_body_error(&e, limit)),
    }
}

/// Maps a body error to 413 when it came from the size cap, else to ERR_BODY_READ.
pub fn classify_body_error(err: &axum::Error, limit: Option<BodyLimit>) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return ApiError::body_too_large(limit.map(|l| l.0).unwrap_or_default());
        }
        source = e.source();
    }
    ApiError::body_read(err)
}
