//! `kind: Resiliency` (dapr.io/v1alpha1): named timeout, retry and circuit-breaker policies and the
//! targets (apps, components, actors) they apply to. Durations and references are validated here;
//! the sidecar turns these specs into running policies.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{duration_field, from_value, stringify_value, FieldError, ObjectMeta, Origin};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffKind {
    Constant,
    Exponential,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicySpec {
    pub policy: BackoffKind,
    /// Constant: the wait between attempts. Exponential: the initial interval.
    pub duration: Duration,
    pub max_interval: Duration,
    /// `None` retries forever (`maxRetries: -1`); `Some(0)` makes a single attempt.
    pub max_retries: Option<u32>,
    /// HTTP statuses that count as retriable failures (`None`: every failure is retried).
    pub http_status_codes: Option<Vec<(u16, u16)>>,
    /// gRPC codes, kept for compatibility; Tandem only speaks HTTP.
    pub grpc_status_codes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreakerSpec {
    pub max_requests: u32,
    pub interval: Duration,
    pub timeout: Duration,
    /// A boolean expression over `requests`, `totalSuccesses`, `totalFailures`,
    /// `consecutiveSuccesses` and `consecutiveFailures`.
    pub trip: String,
}

/// The policy names one target uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicies {
    pub timeout: Option<String>,
    pub retry: Option<String>,
    pub circuit_breaker: Option<String>,
    pub circuit_breaker_cache_size: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentTargets {
    pub inbound: TargetPolicies,
    pub outbound: TargetPolicies,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResiliencySpec {
    pub name: String,
    pub timeouts: BTreeMap<String, Duration>,
    pub retries: BTreeMap<String, RetryPolicySpec>,
    pub circuit_breakers: BTreeMap<String, CircuitBreakerSpec>,
    pub apps: BTreeMap<String, TargetPolicies>,
    pub components: BTreeMap<String, ComponentTargets>,
    pub actors: BTreeMap<String, TargetPolicies>,
    pub scopes: Vec<String>,
    pub origin: Origin,
}

pub const DEFAULT_RETRY_DURATION: Duration = Duration::from_secs(5);
pub const DEFAULT_RETRY_MAX_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_EXPONENTIAL_INITIAL: Duration = Duration::from_millis(500);
pub const DEFAULT_CB_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_CB_TRIP: &str = "consecutiveFailures > 5";

#[derive(Deserialize)]
struct RawResiliency {
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: RawSpec,
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
struct RawSpec {
    #[serde(default)]
    policies: RawPolicies,
    #[serde(default)]
    targets: RawTargets,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPolicies {
    #[serde(default)]
    timeouts: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    retries: Option<BTreeMap<String, RawRetry>>,
    #[serde(default)]
    circuit_breakers: Option<BTreeMap<String, RawCircuitBreaker>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRetry {
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    duration: Option<Value>,
    #[serde(default)]
    max_interval: Option<Value>,
    #[serde(default)]
    max_retries: Option<i64>,
    #[serde(default)]
    matching: Option<RawMatching>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMatching {
    #[serde(default)]
    http_status_codes: Option<Value>,
    #[serde(default, rename = "gRPCStatusCodes", alias = "grpcStatusCodes")]
    grpc_status_codes: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCircuitBreaker {
    #[serde(default)]
    max_requests: Option<u32>,
    #[serde(default)]
    interval: Option<Value>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(default)]
    trip: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawTargets {
    #[serde(default)]
    apps: Option<BTreeMap<String, RawTarget>>,
    #[serde(default)]
    actors: Option<BTreeMap<String, RawTarget>>,
    #[serde(default)]
    components: Option<BTreeMap<String, RawComponentTarget>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawTarget {
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retry: Option<String>,
    #[serde(default)]
    circuit_breaker: Option<String>,
    #[serde(default)]
    circuit_breaker_cache_size: Option<u32>,
}

#[derive(Deserialize, Default)]
struct RawComponentTarget {
    #[serde(default)]
    inbound: Option<RawTarget>,
    #[serde(default)]
    outbound: Option<RawTarget>,
}

fn duration_value(
    field: &str,
    value: Option<&Value>,
    default: Duration,
) -> Result<Duration, FieldError> {
    let text = value.map(stringify_value);
    duration_field(field, text.as_deref(), default)
}

/// Parses `"500-599,429"` into inclusive ranges.
pub fn parse_status_ranges(field: &str, text: &str) -> Result<Vec<(u16, u16)>, FieldError> {
    let bad = |part: &str| {
        FieldError::new(
            field,
            format!("{part:?} is not an HTTP status or range such as 500-599"),
        )
    };
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let lo: u16 = lo.trim().parse().map_err(|_| bad(part))?;
            let hi: u16 = hi.trim().parse().map_err(|_| bad(part))?;
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err(bad(part));
            }
            Ok((lo, hi))
        })
        .collect()
}

fn convert_target(
    raw: RawTarget,
    field: &str,
    spec: &ResiliencySpec,
) -> Result<TargetPolicies, FieldError> {
    let check = |kind: &str, name: &Option<String>, known: bool| match name {
        Some(n) if !known && !is_builtin_policy_name(n) => Err(FieldError::new(
            format!("{field}.{kind}"),
            format!("refers to a policy {n:?} that is not defined under spec.policies"),
        )),
        _ => Ok(()),
    };
    check(
        "timeout",
        &raw.timeout,
        raw.timeout
            .as_ref()
            .is_some_and(|n| spec.timeouts.contains_key(n)),
    )?;
    check(
        "retry",
        &raw.retry,
        raw.retry
            .as_ref()
            .is_some_and(|n| spec.retries.contains_key(n)),
    )?;
    check(
        "circuitBreaker",
        &raw.circuit_breaker,
        raw.circuit_breaker
            .as_ref()
            .is_some_and(|n| spec.circuit_breakers.contains_key(n)),
    )?;
    Ok(TargetPolicies {
        timeout: raw.timeout,
        retry: raw.retry,
        circuit_breaker: raw.circuit_breaker,
        circuit_breaker_cache_size: raw.circuit_breaker_cache_size,
    })
}

/// Dapr's reserved names (`DefaultRetryPolicy`, `DaprBuiltInServiceRetries`, …) may be referenced
/// without being defined.
fn is_builtin_policy_name(name: &str) -> bool {
    name.starts_with("Default") || name.starts_with("DaprBuiltIn")
}

pub(crate) fn parse(value: Value, origin: Origin) -> Result<ResiliencySpec, FieldError> {
    let raw: RawResiliency = from_value(value)?;
    let mut spec = ResiliencySpec {
        name: raw.metadata.name.unwrap_or_default(),
        scopes: raw.scopes.unwrap_or_default(),
        origin,
        ..Default::default()
    };
    let policies = raw.spec.policies;
    for (name, value) in policies.timeouts.unwrap_or_default() {
        let field = format!("spec.policies.timeouts.{name}");
        let d = duration_value(&field, Some(&value), Duration::ZERO)?;
        if d.is_zero() {
            return Err(FieldError::new(field, "must be a positive duration"));
        }
        spec.timeouts.insert(name, d);
    }
    for (name, r) in policies.retries.unwrap_or_default() {
        let field = format!("spec.policies.retries.{name}");
        let policy = match r.policy.as_deref().map(str::trim) {
            None | Some("") | Some("constant") => BackoffKind::Constant,
            Some("exponential") => BackoffKind::Exponential,
            Some(other) => {
                return Err(FieldError::new(
                    format!("{field}.policy"),
                    format!("{other:?} is not constant or exponential"),
                ))
            }
        };
        let default_duration = match policy {
            BackoffKind::Constant => DEFAULT_RETRY_DURATION,
            BackoffKind::Exponential => DEFAULT_EXPONENTIAL_INITIAL,
        };
        let duration = duration_value(
            &format!("{field}.duration"),
            r.duration.as_ref(),
            default_duration,
        )?;
        let max_interval = duration_value(
            &format!("{field}.maxInterval"),
            r.max_interval.as_ref(),
            DEFAULT_RETRY_MAX_INTERVAL,
        )?;
        let max_retries = match r.max_retries {
            None | Some(-1) => None,
            Some(n) if n >= 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            Some(n) => {
                return Err(FieldError::new(
                    format!("{field}.maxRetries"),
                    format!("{n} is not -1 (forever) or a non-negative count"),
                ))
            }
        };
        let (http_status_codes, grpc_status_codes) = match r.matching {
            None => (None, None),
            Some(m) => {
                let http = match m.http_status_codes.as_ref().map(stringify_value) {
                    Some(text) if !text.trim().is_empty() => Some(parse_status_ranges(
                        &format!("{field}.matching.httpStatusCodes"),
                        &text,
                    )?),
                    _ => None,
                };
                (http, m.grpc_status_codes.as_ref().map(stringify_value))
            }
        };
        spec.retries.insert(
            name,
            RetryPolicySpec {
                policy,
                duration,
                max_interval,
                max_retries,
                http_status_codes,
                grpc_status_codes,
            },
        );
    }
    for (name, cb) in policies.circuit_breakers.unwrap_or_default() {
        let field = format!("spec.policies.circuitBreakers.{name}");
        let trip = cb
            .trip
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_CB_TRIP.to_string());
        spec.circuit_breakers.insert(
            name,
            CircuitBreakerSpec {
                max_requests: cb.max_requests.filter(|n| *n > 0).unwrap_or(1),
                interval: duration_value(
                    &format!("{field}.interval"),
                    cb.interval.as_ref(),
                    Duration::ZERO,
                )?,
                timeout: duration_value(
                    &format!("{field}.timeout"),
                    cb.timeout.as_ref(),
                    DEFAULT_CB_TIMEOUT,
                )?,
                trip,
            },
        );
    }
    let targets = raw.spec.targets;
    for (id, t) in targets.apps.unwrap_or_default() {
        let policies = convert_target(t, &format!("spec.targets.apps.{id}"), &spec)?;
        spec.apps.insert(id, policies);
    }
    for (id, t) in targets.actors.unwrap_or_default() {
        let policies = convert_target(t, &format!("spec.targets.actors.{id}"), &spec)?;
        spec.actors.insert(id, policies);
    }
    for (name, t) in targets.components.unwrap_or_default() {
        let field = format!("spec.targets.components.{name}");
        let inbound = convert_target(
            t.inbound.unwrap_or_default(),
            &format!("{field}.inbound"),
            &spec,
        )?;
        let outbound = convert_target(
            t.outbound.unwrap_or_default(),
            &format!("{field}.outbound"),
            &spec,
        )?;
        spec.components
            .insert(name, ComponentTargets { inbound, outbound });
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_yaml(yaml: &str) -> Result<ResiliencySpec, FieldError> {
        parse(serde_saphyr::from_str(yaml).unwrap(), Origin::default())
    }

    #[test]
    fn parses_the_reference_example() {
        let spec = parse_yaml(
            r#"
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata: {name: myresiliency}
spec:
  policies:
    timeouts: {general: 5s, important: 60s}
    retries:
      pubsubRetry: {policy: constant, duration: 5s, maxRetries: 10}
      retryForever: {policy: exponential, maxInterval: 15s, maxRetries: -1,
                     matching: {httpStatusCodes: "500-599,429", gRPCStatusCodes: "1-4,8-11"}}
    circuitBreakers:
      simpleCB: {maxRequests: 1, interval: 8s, timeout: 45s, trip: consecutiveFailures > 8}
  targets:
    apps:   {appB: {timeout: general, retry: retryForever, circuitBreaker: simpleCB}}
    components:
      pubsub: {inbound: {retry: pubsubRetry}}
scopes: [app1]
"#,
        )
        .unwrap();
        assert_eq!(spec.timeouts["general"], Duration::from_secs(5));
        assert_eq!(spec.retries["pubsubRetry"].max_retries, Some(10));
        let forever = &spec.retries["retryForever"];
        assert_eq!(forever.max_retries, None);
        assert_eq!(forever.duration, DEFAULT_EXPONENTIAL_INITIAL);
        assert_eq!(
            forever.http_status_codes,
            Some(vec![(500, 599), (429, 429)])
        );
        assert_eq!(
            spec.circuit_breakers["simpleCB"].trip,
            "consecutiveFailures > 8"
        );
        assert_eq!(spec.apps["appB"].retry.as_deref(), Some("retryForever"));
        assert_eq!(
            spec.components["pubsub"].inbound.retry.as_deref(),
            Some("pubsubRetry")
        );
        assert_eq!(spec.scopes, vec!["app1"]);
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let err = parse_yaml("spec: {policies: {retries: {r: {policy: linear}}}}").unwrap_err();
        assert_eq!(err.field, "spec.policies.retries.r.policy");
        let err = parse_yaml("spec: {policies: {timeouts: {t: forever}}}").unwrap_err();
        assert_eq!(err.field, "spec.policies.timeouts.t");
        let err = parse_yaml("spec: {targets: {apps: {a: {retry: missing}}}}").unwrap_err();
        assert_eq!(err.field, "spec.targets.apps.a.retry");
        let err =
            parse_yaml("spec: {policies: {retries: {r: {matching: {httpStatusCodes: '5xx'}}}}}")
                .unwrap_err();
        assert_eq!(
            err.field,
            "spec.policies.retries.r.matching.httpStatusCodes"
        );
        assert!(parse_yaml("spec: {targets: {apps: {a: {retry: DefaultRetryPolicy}}}}").is_ok());
    }
}
