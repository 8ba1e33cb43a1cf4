//! The retry and timeout that apply to deliveries from one pub/sub component.
//!
//! The inbound Resiliency policy of the component (`targets.components.<name>.inbound`, else
//! Dapr's default policy names) wins. Without one, unlike Dapr (which tries once and leaves
//! redelivery to the broker), Tandem applies [`builtin_retry`]: a RETRY is redelivered within a
//! second, a few times, with backoff; `maxRetries: 0` in a policy gives Dapr's single attempt.

use std::sync::Arc;
use std::time::Duration;

use crate::resiliency::{CircuitBreaker, ComponentKind, Direction, Resiliency, RetryPolicy};

/// Retries after the first attempt under the built-in policy.
pub const BUILTIN_MAX_RETRIES: u32 = 3;
/// First wait of the built-in exponential backoff (then ×1.5 each retry, ±50% jitter).
pub const BUILTIN_INITIAL_INTERVAL: Duration = Duration::from_millis(100);
pub const BUILTIN_MAX_INTERVAL: Duration = Duration::from_secs(1);
/// One delivery attempt waits at most this long for the app when no timeout policy applies.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn builtin_retry() -> RetryPolicy {
    RetryPolicy::exponential(
        BUILTIN_INITIAL_INTERVAL,
        BUILTIN_MAX_INTERVAL,
        Some(BUILTIN_MAX_RETRIES),
    )
}

#[derive(Clone)]
pub struct DeliveryPolicy {
    pub retry: RetryPolicy,
    pub timeout: Duration,
    /// The inbound circuit breaker of the component, when a policy names one: while it is
    /// open, attempts fail at once (and count against the retry budget) without calling the app.
    pub breaker: Option<Arc<CircuitBreaker>>,
}

impl DeliveryPolicy {
    pub fn for_component(resiliency: &Resiliency, pubsub: &str) -> Self {
        let target = resiliency.component(pubsub, ComponentKind::Pubsub, Direction::Inbound);
        Self {
            breaker: resiliency.breaker(&target, pubsub),
            retry: target.retry.clone().unwrap_or_else(builtin_retry),
            timeout: target.timeout.unwrap_or(DEFAULT_DELIVERY_TIMEOUT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_schedule_redelivers_within_a_second() {
        let p = DeliveryPolicy::for_component(&Resiliency::default(), "pubsub");
        assert_eq!(p.retry.max_retries, Some(BUILTIN_MAX_RETRIES));
        assert!(p.retry.delay(0) < Duration::from_secs(1));
        for n in 0..BUILTIN_MAX_RETRIES {
            assert!(p.retry.allows_retry(n));
            assert!(p.retry.delay(n) <= BUILTIN_MAX_INTERVAL);
        }
        assert!(!p.retry.allows_retry(BUILTIN_MAX_RETRIES));
        assert_eq!(p.timeout, DEFAULT_DELIVERY_TIMEOUT);
    }
}
