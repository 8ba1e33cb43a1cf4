//! Resiliency policies: the Resiliency resources turned into the timeout, retry and
//! circuit-breaker settings each target uses. One module serves invocation (apps), component
//! calls (outbound) and pub/sub delivery (inbound).

pub mod circuit_breaker;
pub mod layers;
pub mod retry;
pub mod trip;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tandem_components::spec::resiliency::{CircuitBreakerSpec, TargetPolicies};
use tandem_components::spec::ResiliencySpec;
use thiserror::Error;

pub use circuit_breaker::{BreakerRejection, BreakerSettings, BreakerState, CircuitBreaker};
pub use retry::RetryPolicy;
pub use trip::{Counts, TripExpression};

/// An invalid policy found at start-up (beyond what the resource loader checks).
#[derive(Debug, Error)]
#[error("{origin}: field `{field}`: {message}")]
pub struct ResiliencyError {
    pub origin: tandem_components::spec::Origin,
    pub field: String,
    pub message: String,
}

/// At most this many breakers are kept per policy (Dapr's `circuitBreakerCacheSize` default);
/// past it, breakers of other targets are dropped and start closed again.
pub const DEFAULT_BREAKER_CACHE_SIZE: usize = 100;

/// The policies that apply to one call path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetPolicy {
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// The breaker's settings and its policy name (breakers are shared per name and target).
    pub circuit_breaker: Option<(String, CircuitBreakerSpec)>,
}

/// Which building block a component target belongs to, for Dapr's default policy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentKind {
    Statestore,
    Pubsub,
    Secretstore,
    Binding,
    Configuration,
    Lock,
}

impl ComponentKind {
    fn prefix(self) -> &'static str {
        match self {
            ComponentKind::Statestore => "Statestore",
            ComponentKind::Pubsub => "Pubsub",
            ComponentKind::Secretstore => "Secretstore",
            ComponentKind::Binding => "Binding",
            ComponentKind::Configuration => "Configuration",
            ComponentKind::Lock => "Lock",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "Inbound",
            Direction::Outbound => "Outbound",
        }
    }
}

/// All loaded Resiliency resources, merged (the first definition of a name wins). Clones share
/// the running circuit breakers.
#[derive(Debug, Clone, Default)]
pub struct Resiliency {
    timeouts: BTreeMap<String, Duration>,
    retries: BTreeMap<String, RetryPolicy>,
    circuit_breakers: BTreeMap<String, CircuitBreakerSpec>,
    trips: BTreeMap<String, TripExpression>,
    apps: BTreeMap<String, TargetPolicies>,
    components: BTreeMap<String, (TargetPolicies, TargetPolicies)>,
    breakers: Arc<Mutex<BreakersByPolicy>>,
}

/// Policy name → target → its running breaker.
type BreakersByPolicy = HashMap<String, HashMap<String, Arc<CircuitBreaker>>>;

impl Resiliency {
    /// Like `from_specs`, but an invalid trip expression is an error naming its field.
    pub fn try_from_specs(specs: &[ResiliencySpec]) -> Result<Self, ResiliencyError> {
        for spec in specs {
            for (name, cb) in &spec.circuit_breakers {
                TripExpression::parse(&cb.trip).map_err(|e| ResiliencyError {
                    origin: spec.origin.clone(),
                    field: format!("spec.policies.circuitBreakers.{name}.trip"),
                    message: e.to_string(),
                })?;
            }
        }
        Ok(Self::from_specs(specs))
    }

    /// Merges the specs. An invalid trip expression (which `try_from_specs` refuses) falls back
    /// to Dapr's default `consecutiveFailures > 5`.
    pub fn from_specs(specs: &[ResiliencySpec]) -> Self {
        let mut r = Resiliency::default();
        for spec in specs {
            for (name, d) in &spec.timeouts {
                r.timeouts.entry(name.clone()).or_insert(*d);
            }
            for (name, p) in &spec.retries {
                r.retries
                    .entry(name.clone())
                    .or_insert_with(|| RetryPolicy::from_spec(p));
            }
            for (name, cb) in &spec.circuit_breakers {
                if r.circuit_breakers.contains_key(name) {
                    continue;
                }
                let trip = TripExpression::parse(&cb.trip).unwrap_or_else(|e| {
                    tracing::error!("circuit breaker {name}: {e}; using the default trip");
                    default_trip()
                });
                r.trips.insert(name.clone(), trip);
                r.circuit_breakers.insert(name.clone(), cb.clone());
            }
            for (id, t) in &spec.apps {
                r.apps.entry(id.clone()).or_insert_with(|| t.clone());
            }
            for (name, t) in &spec.components {
                r.components
                    .entry(name.clone())
                    .or_insert_with(|| (t.inbound.clone(), t.outbound.clone()));
            }
        }
        r
    }

    /// Policies for invoking app `app_id`: its target, else `DefaultApp*Policy`, else
    /// `Default*Policy`.
    pub fn app(&self, app_id: &str) -> TargetPolicy {
        let target = self.apps.get(app_id);
        self.resolve(target, &["App", ""])
    }

    /// Policies for a component call in `direction`, with Dapr's default-name fallbacks
    /// (`DefaultPubsubComponentInboundRetryPolicy`, `DefaultComponentInboundRetryPolicy`,
    /// `DefaultComponentRetryPolicy`, `DefaultRetryPolicy`).
    pub fn component(&self, name: &str, kind: ComponentKind, direction: Direction) -> TargetPolicy {
        let target = self
            .components
            .get(name)
            .map(|(inbound, outbound)| match direction {
                Direction::Inbound => inbound,
                Direction::Outbound => outbound,
            });
        let specific = format!("{}Component{}", kind.prefix(), direction.name());
        let general = format!("Component{}", direction.name());
        self.resolve(target, &[&specific, &general, "Component", ""])
    }

    fn resolve(&self, target: Option<&TargetPolicies>, default_infixes: &[&str]) -> TargetPolicy {
        let named = |explicit: Option<&String>, kind: &str| -> Option<String> {
            if let Some(name) = explicit {
                return Some(name.clone());
            }
            default_infixes
                .iter()
                .map(|infix| format!("Default{infix}{kind}Policy"))
                .find(|name| self.has_policy(kind, name))
        };
        let timeout = named(target.and_then(|t| t.timeout.as_ref()), "Timeout")
            .and_then(|n| self.timeouts.get(&n).copied());
        let retry = named(target.and_then(|t| t.retry.as_ref()), "Retry")
            .and_then(|n| self.retries.get(&n).cloned());
        let circuit_breaker = named(
            target.and_then(|t| t.circuit_breaker.as_ref()),
            "CircuitBreaker",
        )
        .and_then(|n| self.circuit_breakers.get(&n).map(|cb| (n, cb.clone())));
        TargetPolicy {
            timeout,
            retry,
            circuit_breaker,
        }
    }

    /// The resiliency stack for calls to component `name` in `direction` (state and pub/sub
    /// outbound calls, pub/sub inbound delivery): its timeout, retry (with a budget), breaker
    /// and a concurrency limit around `inner`. Build it once per component and reuse it; the
    /// breaker is shared with every other stack of the same policy and component.
    pub fn component_stack<S, Req, Res, E>(
        &self,
        name: &str,
        kind: ComponentKind,
        direction: Direction,
        classify: layers::Classify<Res, E>,
        inner: S,
    ) -> tower::util::BoxCloneService<Req, Res, E>
    where
        S: tower::Service<Req, Response = Res, Error = E> + Clone + Send + 'static,
        S::Future: Send + 'static,
        Req: layers::Replay + Send + 'static,
        Res: Send + 'static,
        E: layers::PolicyError + Send + 'static,
    {
        let policy = self.component(name, kind, direction);
        let breaker = self.breaker(&policy, name);
        layers::build_stack(
            layers::StackSettings {
                policy,
                breaker,
                budget: layers::retry_budget(),
                concurrency: layers::DEFAULT_TARGET_CONCURRENCY,
                classify,
            },
            inner,
        )
    }

    /// The running breaker of `policy` for `target` (an app id, a component name), created
    /// closed on first use.
    pub fn breaker(&self, policy: &TargetPolicy, target: &str) -> Option<Arc<CircuitBreaker>> {
        let (name, spec) = policy.circuit_breaker.as_ref()?;
        let trip = self.trips.get(name).cloned().unwrap_or_else(default_trip);
        let mut all = self.breakers.lock();
        let per_target = all.entry(name.clone()).or_default();
        if let Some(b) = per_target.get(target) {
            return Some(b.clone());
        }
        if per_target.len() >= DEFAULT_BREAKER_CACHE_SIZE {
            // Drop closed breakers first: they carry the least information.
            let victim = per_target
                .iter()
                .find(|(_, b)| b.state() == BreakerState::Closed)
                .or_else(|| per_target.iter().next())
                .map(|(k, _)| k.clone());
            if let Some(victim) = victim {
                per_target.remove(&victim);
            }
        }
        let breaker = Arc::new(CircuitBreaker::new(
            format!("{name}/{target}"),
            BreakerSettings {
                max_requests: spec.max_requests,
                interval: spec.interval,
                timeout: spec.timeout,
                trip,
            },
        ));
        per_target.insert(target.to_string(), breaker.clone());
        Some(breaker)
    }

    fn has_policy(&self, kind: &str, name: &str) -> bool {
        match kind {
            "Timeout" => self.timeouts.contains_key(name),
            "Retry" => self.retries.contains_key(name),
            _ => self.circuit_breakers.contains_key(name),
        }
    }
}

fn default_trip() -> TripExpression {
    TripExpression::dapr_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_components::spec::resiliency::BackoffKind;
    use tandem_components::spec::resiliency::RetryPolicySpec;

    fn retry(max: u32) -> RetryPolicySpec {
        RetryPolicySpec {
            policy: BackoffKind::Constant,
            duration: Duration::from_millis(10),
            max_interval: Duration::from_secs(1),
            max_retries: Some(max),
            http_status_codes: None,
            grpc_status_codes: None,
        }
    }

    #[test]
    fn explicit_targets_win_then_default_names_in_order() {
        let mut spec = ResiliencySpec::default();
        spec.retries.insert("mine".into(), retry(1));
        spec.retries
            .insert("DefaultComponentInboundRetryPolicy".into(), retry(2));
        spec.retries.insert("DefaultRetryPolicy".into(), retry(3));
        spec.timeouts
            .insert("DefaultTimeoutPolicy".into(), Duration::from_secs(7));
        spec.components.insert(
            "orders".into(),
            tandem_components::spec::resiliency::ComponentTargets {
                inbound: TargetPolicies {
                    retry: Some("mine".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let r = Resiliency::from_specs(&[spec]);
        let inbound = |name| r.component(name, ComponentKind::Pubsub, Direction::Inbound);
        assert_eq!(inbound("orders").retry.unwrap().max_retries, Some(1));
        assert_eq!(inbound("other").retry.unwrap().max_retries, Some(2));
        let outbound = r.component("other", ComponentKind::Statestore, Direction::Outbound);
        assert_eq!(outbound.retry.unwrap().max_retries, Some(3));
        assert_eq!(outbound.timeout, Some(Duration::from_secs(7)));
        assert_eq!(r.app("b").retry.unwrap().max_retries, Some(3));
        assert!(Resiliency::default().app("b").retry.is_none());
    }

    #[derive(Debug, PartialEq)]
    enum StoreError {
        Backend,
        Timeout,
        Open,
    }

    impl layers::PolicyError for StoreError {
        fn timed_out(_: Duration) -> Self {
            StoreError::Timeout
        }
        fn circuit_open(_: &str, _: BreakerRejection) -> Self {
            StoreError::Open
        }
    }

    struct Key(&'static str);
    impl layers::Replay for Key {
        fn replay(&self) -> Option<Self> {
            Some(Key(self.0))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn component_stacks_share_breakers_per_component() {
        let mut spec = ResiliencySpec::default();
        spec.retries.insert("twice".into(), retry(2));
        spec.circuit_breakers.insert(
            "cb".into(),
            CircuitBreakerSpec {
                max_requests: 1,
                interval: Duration::ZERO,
                timeout: Duration::from_secs(30),
                trip: "consecutiveFailures >= 3".into(),
            },
        );
        spec.components.insert(
            "store".into(),
            tandem_components::spec::resiliency::ComponentTargets {
                outbound: TargetPolicies {
                    retry: Some("twice".into()),
                    circuit_breaker: Some("cb".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let r = Resiliency::try_from_specs(&[spec]).unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = calls.clone();
        let backend = tower::service_fn(move |_key: Key| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), StoreError>(StoreError::Backend) }
        });
        let classify: layers::Classify<(), StoreError> =
            Arc::new(|r: &Result<(), StoreError>| match r {
                Ok(()) => layers::CallResult::Status(200),
                Err(_) => layers::CallResult::Error,
            });
        let stack = r.component_stack(
            "store",
            ComponentKind::Statestore,
            Direction::Outbound,
            classify.clone(),
            backend.clone(),
        );
        // One call: three attempts (two retries), whose failures trip the breaker.
        assert_eq!(
            layers::call(stack.clone(), Key("k")).await,
            Err(StoreError::Backend)
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        // A second stack for the same component sees the same open breaker.
        let again = r.component_stack(
            "store",
            ComponentKind::Statestore,
            Direction::Outbound,
            classify,
            backend,
        );
        assert_eq!(layers::call(again, Key("k")).await, Err(StoreError::Open));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn invalid_trip_names_its_field() {
        let mut spec = ResiliencySpec::default();
        spec.circuit_breakers.insert(
            "cb".into(),
            CircuitBreakerSpec {
                max_requests: 1,
                interval: Duration::ZERO,
                timeout: Duration::from_secs(1),
                trip: "consecutiveFailures >".into(),
            },
        );
        let err = Resiliency::try_from_specs(&[spec]).unwrap_err();
        assert_eq!(err.field, "spec.policies.circuitBreakers.cb.trip");
    }
}
