//! A circuit breaker with gobreaker's semantics (what Dapr uses): closed → open when the trip
//! condition holds after a failure; open answers at once until `timeout` has passed; then
//! half-open lets `maxRequests` probes through, closing after that many successes in a row and
//! re-opening on any failure. In the closed state the counts reset every `interval` (0: never).

use std::time::Duration;

use parking_lot::Mutex;
use thiserror::Error;
use tokio::time::Instant;

use super::trip::{Counts, TripExpression};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BreakerRejection {
    #[error("circuit breaker is open")]
    Open,
    #[error("too many requests while the circuit breaker is half-open")]
    TooManyProbes,
}

#[derive(Debug, Clone)]
pub struct BreakerSettings {
    pub max_requests: u32,
    pub interval: Duration,
    pub timeout: Duration,
    pub trip: TripExpression,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    generation: u64,
    counts: Counts,
    /// Closed: when the counts reset (None: never). Open: when half-open begins.
    expiry: Option<Instant>,
}

/// One breaker (per policy and target).
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

/// Permission to make one call; report how it went with `success` or `failure`. Dropping it
/// unreported counts as neither (e.g. a cancelled call).
#[must_use]
#[derive(Debug)]
pub struct BreakerTicket {
    generation: u64,
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, settings: BreakerSettings) -> Self {
        let now = Instant::now();
        let expiry = (!settings.interval.is_zero()).then(|| now + settings.interval);
        Self {
            name: name.into(),
            settings,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                generation: 0,
                counts: Counts::default(),
                expiry,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> BreakerState {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, Instant::now());
        inner.state
    }

    /// Asks to make a call.
    pub fn try_acquire(&self) -> Result<BreakerTicket, BreakerRejection> {
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, Instant::now());
        match inner.state {
            BreakerState::Open => return Err(BreakerRejection::Open),
            BreakerState::HalfOpen
                if inner.counts.requests >= self.settings.max_requests.max(1) =>
            {
                return Err(BreakerRejection::TooManyProbes)
            }
            _ => {}
        }
        inner.counts.requests = inner.counts.requests.saturating_add(1);
        Ok(BreakerTicket {
            generation: inner.generation,
        })
    }

    pub fn success(&self, ticket: BreakerTicket) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, now);
        if inner.generation != ticket.generation {
            return;
        }
        let c = &mut inner.counts;
        c.total_successes = c.total_successes.saturating_add(1);
        c.consecutive_successes = c.consecutive_successes.saturating_add(1);
        c.consecutive_failures = 0;
        if inner.state == BreakerState::HalfOpen
            && inner.counts.consecutive_successes >= self.settings.max_requests.max(1)
        {
            self.set_state(&mut inner, BreakerState::Closed, now);
        }
    }

    pub fn failure(&self, ticket: BreakerTicket) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        self.refresh(&mut inner, now);
        if inner.generation != ticket.generation {
            return;
        }
        let c = &mut inner.counts;
        c.total_failures = c.total_failures.saturating_add(1);
        c.consecutive_failures = c.consecutive_failures.saturating_add(1);
        c.consecutive_successes = 0;
        match inner.state {
            BreakerState::Closed if self.settings.trip.trips(&inner.counts) => {
                self.set_state(&mut inner, BreakerState::Open, now)
            }
            BreakerState::HalfOpen => self.set_state(&mut inner, BreakerState::Open, now),
            _ => {}
        }
    }

    /// Applies the passage of time: closed windows reset, open turns half-open.
    fn refresh(&self, inner: &mut Inner, now: Instant) {
        match inner.state {
            BreakerState::Closed => {
                if inner.expiry.is_some_and(|e| e <= now) {
                    self.new_generation(inner, now);
                }
            }
            BreakerState::Open => {
                if inner.expiry.is_some_and(|e| e <= now) {
                    self.set_state(inner, BreakerState::HalfOpen, now);
                }
            }
            BreakerState::HalfOpen => {}
        }
    }

    fn set_state(&self, inner: &mut Inner, state: BreakerState, now: Instant) {
        if inner.state == state {
            return;
        }
        let from = inner.state;
        inner.state = state;
        self.new_generation(inner, now);
        match state {
            BreakerState::Open => {
                tracing::warn!(breaker = %self.name, "circuit breaker opened ({from:?} → Open)")
            }
            _ => tracing::info!(breaker = %self.name, "circuit breaker {from:?} → {state:?}"),
        }
    }

    fn new_generation(&self, inner: &mut Inner, now: Instant) {
        inner.generation = inner.generation.wrapping_add(1);
        inner.counts = Counts::default();
        inner.expiry = match inner.state {
            BreakerState::Closed => {
                (!self.settings.interval.is_zero()).then(|| now + self.settings.interval)
            }
            BreakerState::Open => Some(now + self.settings.timeout),
            BreakerState::HalfOpen => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(trip: &str, max_requests: u32) -> CircuitBreaker {
        CircuitBreaker::new(
            "test",
            BreakerSettings {
                max_requests,
                interval: Duration::ZERO,
                timeout: Duration::from_secs(10),
                trip: TripExpression::parse(trip).unwrap(),
            },
        )
    }

    fn fail(b: &CircuitBreaker) {
        let t = b.try_acquire().unwrap();
        b.failure(t);
    }

    fn succeed(b: &CircuitBreaker) {
        let t = b.try_acquire().unwrap();
        b.success(t);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_fails_fast_half_opens_and_closes() {
        let b = breaker("consecutiveFailures > 2", 2);
        fail(&b);
        succeed(&b);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.try_acquire().unwrap_err(), BreakerRejection::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p1 = b.try_acquire().unwrap();
        let p2 = b.try_acquire().unwrap();
        assert_eq!(
            b.try_acquire().unwrap_err(),
            BreakerRejection::TooManyProbes
        );
        b.success(p1);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.success(p2);
        assert_eq!(b.state(), BreakerState::Closed);
        succeed(&b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens() {
        let b = breaker("consecutiveFailures >= 1", 1);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(11)).await;
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn results_from_an_old_generation_are_ignored() {
        let b = breaker("consecutiveFailures >= 1", 1);
        let stale = b.try_acquire().unwrap();
        fail(&b);
        tokio::time::advance(Duration::from_secs(11)).await;
        let probe = b.try_acquire().unwrap();
        b.failure(stale);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.success(probe);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn interval_resets_closed_counts() {
        let mut b = breaker("totalFailures >= 2", 1);
        b.settings.interval = Duration::from_secs(5);
        let b = CircuitBreaker::new("t", b.settings.clone());
        fail(&b);
        tokio::time::advance(Duration::from_secs(6)).await;
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }
}
