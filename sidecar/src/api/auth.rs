//! `DAPR_API_TOKEN`: every API except the two healthz routes needs header `dapr-api-token`.

use axum::extract::Request;
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};

/// A constant, so looking it up costs a comparison rather than parsing the name every request.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("dapr-api-token");

/// Compares without an early exit, so response time does not reveal how much of a guess matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

fn is_exempt(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    path == "/v1.0/healthz" || path == "/v1.0/healthz/outbound"
}

/// A request without the right token: 401 with Dapr's plain-text body.
#[derive(Debug)]
pub struct InvalidToken;

impl IntoResponse for InvalidToken {
    fn into_response(self) -> Response {
        (StatusCode::UNAUTHORIZED, "invalid api token").into_response()
    }
}

/// Checks the token when one is configured (healthz is exempt), and removes it from the request:
/// it is for this sidecar only and is never forwarded.
pub fn admit(expected: Option<&str>, req: &mut Request) -> Result<(), InvalidToken> {
    if let Some(expected) = expected {
        if !is_exempt(req.uri().path()) {
            let given = req
                .headers()
                .get(&TOKEN_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !constant_time_eq(given, expected.as_bytes()) {
                return Err(InvalidToken);
            }
        }
    }
    req.headers_mut().remove(&TOKEN_HEADER);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn only_healthz_is_exempt() {
        assert!(is_exempt("/v1.0/healthz"));
        assert!(is_exempt("/v1.0/healthz/outbound"));
        assert!(!is_exempt("/v1.0/metadata"));
    }
}
