//! The one place that turns failures into Dapr's error JSON (`{"errorCode","message"}`) and
//! status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// An API failure as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Dapr's rich error `details` (google.rpc ErrorInfo etc.), when the API has them.
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// Adds a google.rpc ErrorInfo detail with `reason` (domain dapr.io), as Dapr's newer APIs do.
    pub fn with_reason(mut self, reason: &str, metadata: Value) -> Self {
        let info = json!({
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "dapr.io",
            "metadata": metadata,
        });
        match &mut self.details {
            Some(Value::Array(items)) => items.push(info),
            _ => self.details = Some(Value::Array(vec![info])),
        }
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, message)
    }

    pub fn malformed_request(message: impl Into<String>) -> Self {
        Self::bad_request("ERR_MALFORMED_REQUEST", message)
    }

    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ERR_BODY_TOO_LARGE",
            format!("request body exceeds the limit of {limit} bytes (--max-body-size)"),
        )
    }

    pub fn body_read(err: impl std::fmt::Display) -> Self {
        Self::bad_request(
            "ERR_BODY_READ",
            format!("failed to read the request body: {err}"),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "errorCode": self.code, "message": self.message });
        if let Some(details) = self.details {
            body["details"] = details;
        }
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the request body was never read, so this connection cannot carry
            // another request: tell the client not to reuse it.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

// --- secrets -------------------------------------------------------------------------------

impl From<tandem_components::secretstores::SecretError> for ApiError {
    fn from(e: tandem_components::secretstores::SecretError) -> Self {
        ApiError::internal("ERR_SECRET_GET", format!("failed getting secret: {e}"))
    }
}

// --- invocation ----------------------------------------------------------------------------

impl From<crate::invoke::InvokeFailure> for ApiError {
    fn from(failure: crate::invoke::InvokeFailure) -> Self {
        use crate::invoke::InvokeError;
        match &failure.error {
            InvokeError::NoAppId => Self::new(
                StatusCode::NOT_FOUND,
                "ERR_DIRECT_INVOKE",
                failure.error.to_string(),
            ),
            InvokeError::BodyTooLarge(limit) => Self::body_too_large(*limit),
            InvokeError::BodyRead(e) => Self::body_read(e),
            _ => Self::internal("ERR_DIRECT_INVOKE", failure.to_string()),
        }
    }
}

// --- state ---------------------------------------------------------------------------------

/// A state store failure under the API's error `code` (ERR_STATE_SAVE, ERR_STATE_GET, …): a stale
/// etag is 409, a malformed one 400, a missing capability 500 ERR_STATE_STORE_NOT_SUPPORTED, too
/// many operations 400, anything else 500.
pub fn state_error(
    code: &'static str,
    context: &str,
    err: &tandem_components::state::StateError,
) -> ApiError {
    use tandem_components::state::StateError;
    let message = format!("{context}: {err}");
    match err {
        StateError::EtagMismatch(_) => ApiError::new(StatusCode::CONFLICT, code, message),
        StateError::InvalidEtag(_) => ApiError::new(StatusCode::BAD_REQUEST, code, message),
        StateError::NotSupported(_) => ApiError::internal("ERR_STATE_STORE_NOT_SUPPORTED", message),
        StateError::TooManyOperations { count, max } => {
            ApiError::bad_request("ERR_STATE_STORE_TOO_MANY_TRANSACTIONS", message).with_reason(
                "DAPR_STATE_TOO_MANY_TRANSACTIONS",
                json!({
                    "currentOpsTransaction": count.to_string(),
                    "maxOpsPerTransaction": max.to_string(),
                }),
            )
        }
        StateError::Backend(_) => ApiError::internal(code, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_dapr_error_json() {
        let resp = ApiError::bad_request("ERR_MALFORMED_REQUEST", "bad")
            .with_reason("DAPR_STATE_ILLEGAL_KEY", json!({}))
            .into_response();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errorCode"], "ERR_MALFORMED_REQUEST");
        assert_eq!(v["message"], "bad");
        assert_eq!(v["details"][0]["reason"], "DAPR_STATE_ILLEGAL_KEY");
    }
}
