//! What an app's answer to a delivery means (Dapr's table, `postman/http`).

use serde_json::Value;

/// The app's verdict on one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Deliver again (RETRY, an unknown status, a non-2xx status other than 404, a transport
    /// failure or a timeout). `status` is 0 for a transport failure.
    Retry {
        status: u16,
        reason: String,
    },
    /// `{"status":"DROP"}`: acknowledged without processing (dead-lettered if configured).
    Drop,
    /// 404: the route does not exist; dropped (dead-lettered if configured).
    NotFound {
        reason: String,
    },
}

/// At most this much of a failing response is kept for logs and `dlqerror`.
pub const MAX_ERROR_TEXT: usize = 1024;

/// Cuts `text` to at most [`MAX_ERROR_TEXT`] bytes on a character boundary.
pub fn truncate_error(text: &str) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text.to_string();
    }
    let mut end = MAX_ERROR_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Classifies a single-event delivery's HTTP answer.
pub fn classify(status: u16, body: &[u8]) -> Verdict {
    let text = || truncate_error(&String::from_utf8_lossy(body));
    if (200..300).contains(&status) {
        return match app_status(body) {
            None => Verdict::Success,
            Some(s) => match s.to_ascii_uppercase().as_str() {
                "" | "SUCCESS" => Verdict::Success,
                "DROP" => Verdict::Drop,
                "RETRY" => Verdict::Retry {
                    status,
                    reason: "app returned RETRY".into(),
                },
                other => Verdict::Retry {
                    status,
                    reason: format!("unknown status {other:?} returned by the app"),
                },
            },
        };
    }
    if status == 404 {
        return Verdict::NotFound { reason: text() };
    }
    Verdict::Retry {
        status,
        reason: text(),
    }
}

/// The `status` member of a JSON object body; None for empty, non-JSON or status-less bodies.
fn app_status(body: &[u8]) -> Option<String> {
    // Most apps answer with an empty or plain body: no need to try parsing it.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    match value.get("status")? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// A bulk entry's status as the app wrote it (missing or empty means RETRY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    Success,
    Retry,
    Drop,
}

pub fn entry_status(status: Option<&str>) -> EntryStatus {
    match status.map(str::to_ascii_uppercase).as_deref() {
        Some("SUCCESS") => EntryStatus::Success,
        Some("DROP") => EntryStatus::Drop,
        _ => EntryStatus::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_outcome_table() {
        assert_eq!(classify(200, b""), Verdict::Success);
        assert_eq!(classify(204, b"plain text"), Verdict::Success);
        assert_eq!(classify(200, br#"{"other":1}"#), Verdict::Success);
        assert_eq!(classify(200, br#"{"status":"SUCCESS"}"#), Verdict::Success);
        assert_eq!(classify(200, br#"{"status":"success"}"#), Verdict::Success);
        assert!(matches!(
            classify(200, br#"{"status":"RETRY"}"#),
            Verdict::Retry { status: 200, .. }
        ));
        assert!(matches!(
            classify(200, br#"{"status":"BOGUS"}"#),
            Verdict::Retry { .. }
        ));
        assert_eq!(classify(200, br#"{"status":"DROP"}"#), Verdict::Drop);
        assert!(matches!(classify(404, b"nope"), Verdict::NotFound { .. }));
        assert!(matches!(
            classify(500, b"x"),
            Verdict::Retry { status: 500, .. }
        ));
        assert!(matches!(
            classify(400, b""),
            Verdict::Retry { status: 400, .. }
        ));
        assert!(matches!(
            classify(301, b""),
            Verdict::Retry { status: 301, .. }
        ));
    }

    #[test]
    fn error_text_is_bounded() {
        let long = "é".repeat(2000);
        let cut = truncate_error(&long);
        assert!(cut.len() <= MAX_ERROR_TEXT);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn bulk_entry_statuses() {
        assert_eq!(entry_status(Some("SUCCESS")), EntryStatus::Success);
        assert_eq!(entry_status(Some("DROP")), EntryStatus::Drop);
        assert_eq!(entry_status(Some("")), EntryStatus::Retry);
        assert_eq!(entry_status(None), EntryStatus::Retry);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any 2xx whose body names no status is a success; any other status than 2xx and 404
        /// is retried with that status; 404 always drops.
        #[test]
        fn statuses_follow_the_table(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let has_status = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("status").cloned())
                .is_some_and(|s| !s.is_null());
            let verdict = classify(status, &body);
            if (200..300).contains(&status) {
                if !has_status {
                    prop_assert_eq!(verdict, Verdict::Success);
                }
            } else if status == 404 {
                prop_assert!(matches!(verdict, Verdict::NotFound { .. }), "404 must not be retried");
            } else {
                let retried_with_status = matches!(verdict, Verdict::Retry { status: s, .. } if s == status);
                prop_assert!(retried_with_status, "status {} must be retried", status);
            }
        }

        #[test]
        fn named_statuses_in_any_case(word in prop::sample::select(vec!["success", "retry", "drop"]), upper in any::<bool>()) {
            let word = if upper { word.to_ascii_uppercase() } else { word.to_string() };
            let body = serde_json::to_vec(&serde_json::json!({"status": word})).unwrap();
            let expected = match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => Verdict::Success,
                "DROP" => Verdict::Drop,
                _ => Verdict::Retry { status: 200, reason: "app returned RETRY".into() },
            };
            prop_assert_eq!(classify(200, &body), expected);
        }
    }
}
