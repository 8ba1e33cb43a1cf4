//! Dead-letter copies: the original CloudEvent plus `dlq*` extensions saying why it failed.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::envelope::rfc3339;
use super::outcome::truncate_error;

/// Why a message went to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    Drop,
    NotFound,
    RetriesExhausted,
    NoRoute,
    Expired,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Drop => "DROP",
            DeadLetterReason::NotFound => "NOT_FOUND",
            DeadLetterReason::RetriesExhausted => "RETRIES_EXHAUSTED",
            DeadLetterReason::NoRoute => "NO_ROUTE",
            DeadLetterReason::Expired => "EXPIRED",
        }
    }
}

/// What the delivery attempts left behind.
#[derive(Debug, Clone)]
pub struct FailureRecord<'a> {
    pub reason: DeadLetterReason,
    /// Last HTTP status; 0 for a transport error or no attempt.
    pub status: u16,
    pub error: &'a str,
    pub attempts: u32,
    pub pubsub: &'a str,
    pub topic: &'a str,
    pub subscriber: &'a str,
    pub route: &'a str,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
    pub position: &'a str,
}

/// The dead-letter copy of `event`. An expired event loses its `expiration`, so the
/// dead-letter subscriber can still receive it.
pub fn dead_letter_event(event: &Value, failure: &FailureRecord<'_>) -> Value {
    let mut copy = event.clone();
    let Value::Object(map) = &mut copy else {
        return copy;
    };
    if failure.reason == DeadLetterReason::Expired {
        map.remove("expiration");
    }
    let fields: [(&str, Value); 11] = [
        ("dlqreason", failure.reason.as_str().into()),
        ("dlqstatus", failure.status.into()),
        ("dlqerror", truncate_error(failure.error).into()),
        ("dlqattempts", failure.attempts.into()),
        ("dlqpubsub", failure.pubsub.into()),
        ("dlqtopic", failure.topic.into()),
        ("dlqsubscriber", failure.subscriber.into()),
        ("dlqroute", failure.route.into()),
        ("dlqfirstfailure", rfc3339(failure.first_failure).into()),
        ("dlqlastfailure", rfc3339(failure.last_failure).into()),
        ("dlqposition", failure.position.into()),
    ];
    for (k, v) in fields {
        map.insert(k.into(), v);
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adds_every_extension_and_keeps_the_event() {
        let now = Utc::now();
        let event =
            json!({"id": "1", "source": "s", "data": {"a": 1}, "custom": true, "expiration": "x"});
        let long = "e".repeat(5000);
        let f = FailureRecord {
            reason: DeadLetterReason::Expired,
            status: 0,
            error: &long,
            attempts: 0,
            pubsub: "pubsub",
            topic: "orders",
            subscriber: "app",
            route: "/orders",
            first_failure: now,
            last_failure: now,
            position: "1-0",
        };
        let dl = dead_letter_event(&event, &f);
        assert_eq!(dl["id"], "1");
        assert_eq!(dl["data"], json!({"a": 1}));
        assert_eq!(dl["custom"], true);
        assert!(dl.get("expiration").is_none());
        assert_eq!(dl["dlqreason"], "EXPIRED");
        assert_eq!(dl["dlqstatus"], 0);
        assert_eq!(dl["dlqerror"].as_str().unwrap().len(), 1024);
        assert_eq!(dl["dlqattempts"], 0);
        assert_eq!(dl["dlqpubsub"], "pubsub");
        assert_eq!(dl["dlqtopic"], "orders");
        assert_eq!(dl["dlqsubscriber"], "app");
        assert_eq!(dl["dlqroute"], "/orders");
        assert_eq!(dl["dlqposition"], "1-0");
        assert_eq!(dl["dlqfirstfailure"], rfc3339(now));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Map;

    proptest! {
        /// A dead letter keeps every field of the original event (except `expiration` for
        /// EXPIRED) and adds exactly the eleven `dlq*` extensions.
        #[test]
        fn keeps_the_original_event(fields in proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,16}", 0..12)) {
            let original: Map<String, Value> = fields
                .into_iter()
                .filter(|(k, _)| !k.starts_with("dlq") && k != "expiration")
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let now = Utc::now();
            let f = FailureRecord {
                reason: DeadLetterReason::RetriesExhausted,
                status: 500,
                error: "x",
                attempts: 4,
                pubsub: "p",
                topic: "t",
                subscriber: "s",
                route: "/r",
                first_failure: now,
                last_failure: now,
                position: "1-0",
            };
            let copy = dead_letter_event(&Value::Object(original.clone()), &f);
            let copy = copy.as_object().unwrap();
            for (k, v) in &original {
                prop_assert_eq!(copy.get(k), Some(v));
            }
            prop_assert_eq!(copy.len(), original.len() + 11);
        }
    }
}
