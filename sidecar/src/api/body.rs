//! Request body limits: bodies over `--max-body-size` are refused without being read whole.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use http_body_util::{BodyExt, Limited};

use super::error::ApiError;

/// The configured limit, carried in request extensions for handlers that read bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub u64);

/// Rejects a body whose declared length (its Content-Length, which the servers never read
/// past) is over the limit at once, and admits it as it is when within; caps bodies of unknown
/// length (chunked) so reading stops at the limit.
pub fn cap(limit: u64, req: Request) -> Result<Request, ApiError> {
    match http_body::Body::size_hint(req.body()).exact() {
        Some(len) if len > limit => return Err(ApiError::body_too_large(limit)),
        Some(_) => return Ok(req),
        None => {}
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
