//! Retry policies: how many attempts, how long between them, and which failures count.

use std::time::Duration;

use rand::Rng;
use tandem_components::spec::resiliency::{BackoffKind, RetryPolicySpec};

/// Exponential backoff grows by this factor per attempt (Dapr's, from cenkalti/backoff).
const MULTIPLIER: f64 = 1.5;
/// Each exponential wait is randomised within ±50% of the nominal interval.
const RANDOMIZATION: f64 = 0.5;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub kind: BackoffKind,
    /// Constant: the wait. Exponential: the first nominal interval.
    pub duration: Duration,
    pub max_interval: Duration,
    /// Retries after the first attempt; `None` is forever.
    pub max_retries: Option<u32>,
    /// Inclusive HTTP status ranges that are retried; `None` retries every failure.
    pub http_status_codes: Option<Vec<(u16, u16)>>,
}

impl RetryPolicy {
    pub fn from_spec(spec: &RetryPolicySpec) -> Self {
        Self {
            kind: spec.policy,
            duration: spec.duration,
            max_interval: spec.max_interval,
            max_retries: spec.max_retries,
            http_status_codes: spec.http_status_codes.clone(),
        }
    }

    pub fn constant(duration: Duration, max_retries: Option<u32>) -> Self {
        Self {
            kind: BackoffKind::Constant,
            duration,
            max_interval: duration,
            max_retries,
            http_status_codes: None,
        }
    }

    pub fn exponential(
        initial: Duration,
        max_interval: Duration,
        max_retries: Option<u32>,
    ) -> Self {
        Self {
            kind: BackoffKind::Exponential,
            duration: initial,
            max_interval,
            max_retries,
            http_status_codes: None,
        }
    }

    /// True when another attempt may follow `retries_done` retries.
    pub fn allows_retry(&self, retries_done: u32) -> bool {
        self.max_retries.is_none_or(|max| retries_done < max)
    }

    /// True when a failure with this HTTP status should be retried.
    pub fn retries_status(&self, status: u16) -> bool {
        match &self.http_status_codes {
            None => true,
            Some(ranges) => ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status)),
        }
    }

    /// The wait before retry number `retry` (0-based).
    pub fn delay(&self, retry: u32) -> Duration {
        match self.kind {
            BackoffKind::Constant => self.duration,
            BackoffKind::Exponential => {
                let nominal = self.nominal_exponential(retry);
                let factor =
                    rand::rng().random_range((1.0 - RANDOMIZATION)..=(1.0 + RANDOMIZATION));
                nominal.mul_f64(factor).min(self.max_interval)
            }
        }
    }

    fn nominal_exponential(&self, retry: u32) -> Duration {
        let grown = self.duration.as_secs_f64() * MULTIPLIER.powi(retry.min(64) as i32);
        Duration::try_from_secs_f64(grown)
            .unwrap_or(self.max_interval)
            .min(self.max_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_retries() {
        let p = RetryPolicy::constant(Duration::from_millis(5), Some(2));
        assert!(p.allows_retry(0));
        assert!(p.allows_retry(1));
        assert!(!p.allows_retry(2));
        assert!(RetryPolicy::constant(Duration::ZERO, None).allows_retry(u32::MAX - 1));
        assert!(!RetryPolicy::constant(Duration::ZERO, Some(0)).allows_retry(0));
    }

    #[test]
    fn exponential_grows_within_jitter_and_cap() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1), None);
        for retry in 0..20 {
            let nominal = p.nominal_exponential(retry);
            let d = p.delay(retry);
            assert!(d <= Duration::from_secs(1));
            assert!(
                d >= nominal.mul_f64(0.5) - Duration::from_micros(1),
                "{retry}: {d:?}"
            );
        }
        assert_eq!(p.nominal_exponential(1), Duration::from_millis(150));
        assert_eq!(p.nominal_exponential(30), Duration::from_secs(1));
    }

    #[test]
    fn status_matching() {
        let mut p = RetryPolicy::constant(Duration::ZERO, None);
        assert!(p.retries_status(404));
        p.http_status_codes = Some(vec![(500, 599), (429, 429)]);
        assert!(p.retries_status(503));
        assert!(p.retries_status(429));
        assert!(!p.retries_status(404));
    }
}
