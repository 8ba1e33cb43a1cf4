//! The resiliency policies as tower layers, shared by every call path (service invocation,
//! component calls, pub/sub delivery):
//!
//! ```text
//! retry (with a budget) → circuit breaker → timeout (per attempt) → concurrency limit → call
//! ```
//!
//! The timeout sits inside the breaker so a timed-out attempt counts as a breaker failure and
//! inside the retry so it limits each attempt (as Dapr's policy runner does). A request is
//! retried only if it can be replayed (`Replay`), e.g. its body was small enough to buffer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::limit::ConcurrencyLimit;
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};

use super::circuit_breaker::{BreakerRejection, CircuitBreaker};
use super::{RetryPolicy, TargetPolicy};

/// How a call ended, as far as retries and breakers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// No answer: connection failure, timeout, an open breaker further in.
    Error,
    /// An answer with this HTTP status (or the status a non-HTTP call maps to).
    Status(u16),
}

impl CallResult {
    /// A failure for the circuit breaker: no answer, or a status outside 200–399 (as Dapr,
    /// which hands every such response to its policy runner as an error).
    pub fn is_failure(self) -> bool {
        match self {
            CallResult::Error => true,
            CallResult::Status(s) => !(200..=399).contains(&s),
        }
    }

    /// Whether `policy` retries this result: errors always; failing statuses when listed in
    /// `matching.httpStatusCodes`, or all of them when the policy has no `matching` (Dapr's
    /// "retry on all errors").
    pub fn is_retriable(self, policy: &RetryPolicy) -> bool {
        match self {
            CallResult::Error => true,
            s if !s.is_failure() => false,
            CallResult::Status(s) => policy.retries_status(s),
        }
    }
}

/// Classifies a service's result.
pub type Classify<Res, E> = Arc<dyn Fn(&Result<Res, E>) -> CallResult + Send + Sync>;

/// A request that can be sent again. `None` means it cannot (e.g. a streamed body).
pub trait Replay: Sized {
    fn replay(&self) -> Option<Self>;
}

/// The errors the layers themselves produce.
pub trait PolicyError {
    fn timed_out(after: Duration) -> Self;
    fn circuit_open(breaker: &str, rejection: BreakerRejection) -> Self;
}

/// Retries beyond this share of recent requests (plus `RETRY_BUDGET_MIN_PER_SEC`) are refused,
/// so a failing target is not hammered by every caller's retries at once.
pub const RETRY_BUDGET_PERCENT: f32 = 0.2;
pub const RETRY_BUDGET_MIN_PER_SEC: u32 = 10;
pub const RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);

pub fn retry_budget() -> Arc<TpsBudget> {
    Arc::new(TpsBudget::new(
        RETRY_BUDGET_WINDOW,
        RETRY_BUDGET_MIN_PER_SEC,
        RETRY_BUDGET_PERCENT,
    ))
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

// --- timeout --------------------------------------------------------------------------------

/// Fails an attempt whose response has not arrived within `after`. (For HTTP the response's
/// body may stream on afterwards: a long download is not cut off.)
#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req> + Send,
    S::Future: Send + 'static,
    S::Error: PolicyError,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        let after = self.after;
        Box::pin(async move {
            match tokio::time::timeout(after, fut).await {
                Ok(result) => result,
                Err(_) => Err(S::Error::timed_out(after)),
            }
        })
    }
}

// --- circuit breaker ------------------------------------------------------------------------

/// Answers at once while the breaker is open; reports every outcome to it.
pub struct Breaker<S, Res, E> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
    classify: Classify<Res, E>,
}

impl<S: Clone, Res, E> Clone for Breaker<S, Res, E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<S, Req, Res, E> Service<Req> for Breaker<S, Res, E>
where
    S: Service<Req, Response = Res, Error = E> + Send,
    S::Future: Send + 'static,
    E: PolicyError + Send + 'static,
    Res: Send + 'static,
{
    type Response = Res;
    type Error = E;
    type Future = BoxFuture<Result<Res, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let ticket = match self.breaker.try_acquire() {
            Ok(ticket) => ticket,
            Err(rejection) => {
                let err = E::circuit_open(self.breaker.name(), rejection);
                return Box::pin(async move { Err(err) });
            }
        };
        let fut = self.inner.call(req);
        let breaker = self.breaker.clone();
        let classify = self.classify.clone();
        Box::pin(async move {
            let result = fut.await;
            if classify(&result).is_failure() {
                breaker.failure(ticket);
            } else {
                breaker.success(ticket);
            }
            result
        })
    }
}

// --- retry ----------------------------------------------------------------------------------

/// tower's retry policy for one call: counts attempts, waits the policy's delay, spends the
/// shared budget.
pub struct RetryAttempts<Res, E> {
    policy: Arc<RetryPolicy>,
    retries_done: u32,
    deposited: bool,
    budget: Arc<TpsBudget>,
    classify: Classify<Res, E>,
}

impl<Res, E> Clone for RetryAttempts<Res, E> {
    fn clone(&self) -> Self {
        Self {
            policy: self.policy.clone(),
            retries_done: self.retries_done,
            deposited: self.deposited,
            budget: self.budget.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<Req: Replay, Res, E> tower::retry::Policy<Req, Res, E> for RetryAttempts<Res, E> {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if !self.deposited {
            self.deposited = true;
            self.budget.deposit();
        }
        if !(self.classify)(result).is_retriable(&self.policy)
            || !self.policy.allows_retry(self.retries_done)
        {
            return None;
        }
        if !self.budget.withdraw() {
            tracing::debug!("retry budget exhausted; not retrying");
            return None;
        }
        let delay = self.policy.delay(self.retries_done);
        self.retries_done += 1;
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        req.replay()
    }
}

// --- the stack ------------------------------------------------------------------------------

/// The most calls in flight to one target through one stack; more wait for a slot.
pub const DEFAULT_TARGET_CONCURRENCY: usize = 1024;

/// What to wrap a call path in.
pub struct StackSettings<Res, E> {
    pub policy: TargetPolicy,
    /// The breaker for this target (see `Resiliency::breaker`); `None` when no policy names one.
    pub breaker: Option<Arc<CircuitBreaker>>,
    pub budget: Arc<TpsBudget>,
    pub concurrency: usize,
    pub classify: Classify<Res, E>,
}

/// Wraps `inner` in the layers `settings` call for; layers without a policy are left out.
pub fn build_stack<S, Req, Res, E>(
    settings: StackSettings<Res, E>,
    inner: S,
) -> BoxCloneService<Req, Res, E>
where
    S: Service<Req, Response = Res, Error = E> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Req: Replay + Send + 'static,
    Res: Send + 'static,
    E: PolicyError + Send + 'static,
{
    let limited = ConcurrencyLimit::new(inner, settings.concurrency.max(1));
    let timed: BoxCloneService<Req, Res, E> = match settings.policy.timeout {
        Some(after) => BoxCloneService::new(Timeout {
            inner: limited,
            after,
        }),
        None => BoxCloneService::new(limited),
    };
    let guarded: BoxCloneService<Req, Res, E> = match settings.breaker {
        Some(breaker) => BoxCloneService::new(Breaker {
            inner: timed,
            breaker,
            classify: settings.classify.clone(),
        }),
        None => timed,
    };
    match settings.policy.retry {
        Some(policy) => BoxCloneService::new(tower::retry::Retry::new(
            RetryAttempts {
                policy: Arc::new(policy),
                retries_done: 0,
                deposited: false,
                budget: settings.budget,
                classify: settings.classify,
            },
            guarded,
        )),
        None => guarded,
    }
}

/// Runs one request through (a clone of) a stack.
pub async fn call<Req, Res, E>(stack: BoxCloneService<Req, Res, E>, req: Req) -> Result<Res, E> {
    stack.oneshot(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resiliency::circuit_breaker::BreakerSettings;
    use crate::resiliency::trip::TripExpression;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    enum TestError {
        Timeout,
        Open,
    }

    impl PolicyError for TestError {
        fn timed_out(_: Duration) -> Self {
            TestError::Timeout
        }
        fn circuit_open(_: &str, _: BreakerRejection) -> Self {
            TestError::Open
        }
    }

    #[derive(Clone)]
    struct Req(bool);
    impl Replay for Req {
        fn replay(&self) -> Option<Self> {
            self.0.then(|| self.clone())
        }
    }

    fn classify() -> Classify<u16, TestError> {
        Arc::new(|r: &Result<u16, TestError>| match r {
            Ok(s) => CallResult::Status(*s),
            Err(_) => CallResult::Error,
        })
    }

    /// A service answering the scripted statuses in order, then 200; `0` means "hang".
    fn scripted(
        script: Vec<u16>,
    ) -> (
        impl Service<
                Req,
                Response = u16,
                Error = TestError,
                Future = BoxFuture<Result<u16, TestError>>,
            > + Clone
            + Send,
        Arc<AtomicU32>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let script = Arc::new(script);
        let svc = tower::service_fn(move |_req: Req| {
            let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
            let status = script.get(n).copied().unwrap_or(200);
            Box::pin(async move {
                if status == 0 {
                    std::future::pending::<()>().await;
                }
                Ok::<u16, TestError>(status)
            }) as BoxFuture<Result<u16, TestError>>
        });
        (svc, calls)
    }

    fn settings(
        policy: TargetPolicy,
        breaker: Option<Arc<CircuitBreaker>>,
    ) -> StackSettings<u16, TestError> {
        StackSettings {
            policy,
            breaker,
            budget: retry_budget(),
            concurrency: 4,
            classify: classify(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_within_max_retries() {
        let (svc, calls) = scripted(vec![500, 503]);
        let policy = TargetPolicy {
            retry: Some(RetryPolicy::constant(Duration::from_millis(10), Some(3))),
            ..Default::default()
        };
        let stack = build_stack(settings(policy, None), svc);
        assert_eq!(call(stack.clone(), Req(true)).await, Ok(200));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_retries_and_skips_unreplayable_requests() {
        let (svc, calls) = scripted(vec![500; 10]);
        let policy = TargetPolicy {
            retry: Some(RetryPolicy::constant(Duration::from_millis(10), Some(2))),
            ..Default::default()
        };
        let stack = build_stack(settings(policy, None), svc);
        assert_eq!(call(stack.clone(), Req(true)).await, Ok(500));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(call(stack.clone(), Req(false)).await, Ok(500));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn classification_follows_dapr() {
        let any = RetryPolicy::constant(Duration::ZERO, None);
        let mut only_503 = any.clone();
        only_503.http_status_codes = Some(vec![(503, 503)]);
        for (result, failure, retried_by_any, retried_by_503) in [
            (CallResult::Error, true, true, true),
            (CallResult::Status(200), false, false, false),
            (CallResult::Status(304), false, false, false),
            (CallResult::Status(404), true, true, false),
            (CallResult::Status(503), true, true, true),
        ] {
            assert_eq!(result.is_failure(), failure, "{result:?}");
            assert_eq!(result.is_retriable(&any), retried_by_any, "{result:?}");
            assert_eq!(result.is_retriable(&only_503), retried_by_503, "{result:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn status_matching_limits_what_is_retried() {
        let (svc, calls) = scripted(vec![404, 429]);
        let mut retry = RetryPolicy::constant(Duration::from_millis(1), Some(5));
        retry.http_status_codes = Some(vec![(429, 429)]);
        let policy = TargetPolicy {
            retry: Some(retry),
            ..Default::default()
        };
        let stack = build_stack(settings(policy, None), svc);
        assert_eq!(call(stack.clone(), Req(true)).await, Ok(404));
        assert_eq!(call(stack.clone(), Req(true)).await, Ok(200));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_applies_per_attempt_and_counts_for_the_breaker() {
        let (svc, calls) = scripted(vec![0, 0, 0]);
        let breaker = Arc::new(CircuitBreaker::new(
            "cb",
            BreakerSettings {
                max_requests: 1,
                interval: Duration::ZERO,
                timeout: Duration::from_secs(30),
                trip: TripExpression::parse("consecutiveFailures >= 2").unwrap(),
            },
        ));
        let policy = TargetPolicy {
            timeout: Some(Duration::from_secs(1)),
            retry: None,
            circuit_breaker: None,
        };
        let stack = build_stack(settings(policy, Some(breaker)), svc);
        assert_eq!(
            call(stack.clone(), Req(true)).await,
            Err(TestError::Timeout)
        );
        assert_eq!(
            call(stack.clone(), Req(true)).await,
            Err(TestError::Timeout)
        );
        assert_eq!(call(stack.clone(), Req(true)).await, Err(TestError::Open));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            call(stack.clone(), Req(true)).await,
            Err(TestError::Timeout)
        );
        assert_eq!(call(stack.clone(), Req(true)).await, Err(TestError::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_caps_retries() {
        let (svc, calls) = scripted(vec![500; 1000]);
        let policy = TargetPolicy {
            retry: Some(RetryPolicy::constant(Duration::ZERO, None)),
            ..Default::default()
        };
        let stack = build_stack(settings(policy, None), svc);
        // Retrying forever is still bounded by the budget.
        assert_eq!(call(stack.clone(), Req(true)).await, Ok(500));
        let n = calls.load(Ordering::SeqCst);
        assert!(n > 1 && n < 1000, "{n} calls");
    }
}
