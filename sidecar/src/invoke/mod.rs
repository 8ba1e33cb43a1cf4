//! Service invocation: resolve the target, run the call through its resiliency stack, and
//! forward it — to a peer sidecar's internal port (which hands it to its app) or to an external
//! HTTP service. Bodies stream both ways; a request body is buffered only when it is small
//! enough to replay (for retries and failover).

pub mod forward;
pub mod headers;
pub mod internal;
pub mod target;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use thiserror::Error;
use tower::util::BoxCloneService;

use crate::naming::{Balancer, NameResolutionError, Resolver};
use crate::resiliency::layers::{
    self, build_stack, CallResult, PolicyError, Replay, StackSettings, DEFAULT_TARGET_CONCURRENCY,
};
use crate::resiliency::{BreakerRejection, Resiliency};

pub use target::{ExternalEndpoint, InvokeTarget};

/// Request bodies up to this size (with a declared Content-Length) are buffered so the call can
/// be retried or fail over to another instance; larger or chunked bodies stream and are sent once.
pub const MAX_REPLAY_BODY: u64 = 1024 * 1024;
/// At most this many targets keep a resiliency stack (breaker state lives in `Resiliency`, so
/// dropping a stack loses nothing but its concurrency slots).
const MAX_STACKS: usize = 1024;

#[derive(Debug, Error)]
pub enum InvokeError {
    #[error("failed getting app id either from the URL path or the header dapr-app-id")]
    NoAppId,
    #[error("invalid app id {0:?}: use app-id or app-id.namespace")]
    InvalidAppId(String),
    #[error("{0}")]
    Resolution(#[from] NameResolutionError),
    #[error("{0}")]
    Unreachable(String),
    #[error("app is not in a healthy state")]
    AppUnhealthy,
    #[error("no app channel: the sidecar of this app was started without --app-port")]
    NoAppChannel,
    #[error("timeout: no response within {0:?} (resiliency timeout policy)")]
    Timeout(Duration),
    #[error("{rejection} ({breaker})")]
    CircuitOpen {
        breaker: String,
        rejection: BreakerRejection,
    },
    #[error("request body exceeds the limit of {0} bytes (--max-body-size)")]
    BodyTooLarge(u64),
    #[error("failed to read the request body: {0}")]
    BodyRead(String),
    #[error("{0} endpoints are not supported; use http or https")]
    UnsupportedScheme(String),
    #[error("https is unavailable: no trusted root certificates were found (install ca-certificates or set SSL_CERT_FILE)")]
    NoTrustedRoots,
    #[error("{0}")]
    InvalidRequest(String),
}

impl PolicyError for InvokeError {
    fn timed_out(after: Duration) -> Self {
        InvokeError::Timeout(after)
    }

    fn circuit_open(breaker: &str, rejection: BreakerRejection) -> Self {
        InvokeError::CircuitOpen {
            breaker: breaker.to_string(),
            rejection,
        }
    }
}

/// An invocation failure with the id it was for (for Dapr's `failed to invoke, id: …` message).
#[derive(Debug, Error)]
#[error("failed to invoke, id: {app_id}, err: {error}")]
pub struct InvokeFailure {
    pub app_id: String,
    pub error: InvokeError,
}

/// A request body: buffered (replayable) or streaming (sent once).
pub enum CallBody {
    Buffered(Bytes),
    Streaming(Body),
}

/// One invocation as it passes through the resiliency stack.
pub struct Call {
    pub target: Arc<InvokeTarget>,
    pub method: Method,
    /// The method path (starting with `/`) and query.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: CallBody,
}

impl Replay for Call {
    fn replay(&self) -> Option<Self> {
        match &self.body {
            CallBody::Buffered(bytes) => Some(Call {
                target: self.target.clone(),
                method: self.method.clone(),
                path_and_query: self.path_and_query.clone(),
                headers: self.headers.clone(),
                body: CallBody::Buffered(bytes.clone()),
            }),
            CallBody::Streaming(_) => None,
        }
    }
}

type Stack = BoxCloneService<Call, Response<Body>, InvokeError>;

/// The resiliency stacks built so far, by target name (apps and external endpoints apart).
#[derive(Default)]
struct Stacks {
    apps: HashMap<String, Stack>,
    external: HashMap<String, Stack>,
}

/// A target as the invoker keeps it between calls: parsed once, with its resiliency stack and
/// the `dapr-callee-app-id` value naming it. A clone is one call's copy (the stack keeps its
/// concurrency slot per clone).
#[derive(Clone)]
struct Route {
    target: Arc<InvokeTarget>,
    stack: Stack,
    callee: HeaderValue,
}

/// The caller side of service invocation, shared by all API requests.
pub struct Invoker {
    /// This sidecar's app id and namespace, as the headers that carry them (`None` for text
    /// that cannot be a header value).
    caller_id: Option<HeaderValue>,
    caller_namespace: Option<HeaderValue>,
    resiliency: Resiliency,
    endpoints: BTreeMap<String, ExternalEndpoint>,
    forward: forward::Forward,
    stacks: Mutex<Stacks>,
    /// By the target as the request spelled it.
    routes: Mutex<HashMap<String, Route>>,
    body_limit: u64,
}

/// An API request to invoke something.
pub struct InvokeRequest {
    pub target: String,
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Body,
    pub client: Option<SocketAddr>,
}

impl Invoker {
    pub fn new(
        app_id: String,
        namespace: Option<String>,
        resolver: Resolver,
        resiliency: Resiliency,
        endpoints: target::LoadedEndpoints,
        body_limit: u64,
    ) -> Self {
        Self {
            caller_id: HeaderValue::try_from(app_id).ok(),
            caller_namespace: namespace.and_then(|ns| HeaderValue::try_from(ns).ok()),
            resiliency,
            endpoints: endpoints.endpoints,
            forward: forward::Forward::new(
                Arc::new(resolver),
                Arc::new(Balancer::default()),
                endpoints.clients,
                body_limit,
            ),
            stacks: Mutex::new(Stacks::default()),
            routes: Mutex::new(HashMap::new()),
            body_limit,
        }
    }

    pub fn resolver(&self) -> &Resolver {
        self.forward.resolver()
    }

    /// Runs one invocation; the error names the target as Dapr's messages do.
    pub async fn invoke(&self, req: InvokeRequest) -> Result<Response<Body>, InvokeFailure> {
        let fail = |app_id: &str, error| InvokeFailure {
            app_id: app_id.to_string(),
            error,
        };
        let route = self.route(&req.target).map_err(|e| fail(&req.target, e))?;
        let mut headers = req.headers;
        let caller = headers::CallerInfo {
            app_id: self.caller_id.as_ref(),
            namespace: self.caller_namespace.as_ref(),
            client: req.client,
        };
        headers::stamp_outgoing(&mut headers, &caller, &route.callee);
        let body = self
            .prepare_body(req.body)
            .await
            .map_err(|e| fail(&req.target, e))?;
        let call = Call {
            target: route.target.clone(),
            method: req.method,
            path_and_query: req.path_and_query,
            headers,
            body,
        };
        layers::call(route.stack, call)
            .await
            .map_err(|e| fail(&req.target, e))
    }

    /// The parsed target and its stack, built on first use.
    fn route(&self, raw: &str) -> Result<Route, InvokeError> {
        if let Some(route) = self.routes.lock().get(raw) {
            return Ok(route.clone());
        }
        let target = target::parse_target(raw, &self.endpoints)?;
        let route = Route {
            stack: self.stack_for(&target),
            callee: HeaderValue::from_str(target.policy_name())
                .map_err(|_| InvokeError::InvalidAppId(raw.to_string()))?,
            target: Arc::new(target),
        };
        let mut routes = self.routes.lock();
        if routes.len() >= MAX_STACKS {
            routes.clear();
        }
        routes.insert(raw.to_string(), route.clone());
        Ok(route)
    }

    /// Buffers small bodies of known length (a declared Content-Length, or none at all) so they
    /// can be replayed; streams the rest.
    async fn prepare_body(&self, body: Body) -> Result<CallBody, InvokeError> {
        let known = http_body::Body::size_hint(&body).upper();
        match known {
            Some(len) if len <= MAX_REPLAY_BODY => match body.collect().await {
                Ok(collected) => Ok(CallBody::Buffered(collected.to_bytes())),
                Err(e) => Err(body_error(&e, self.body_limit)),
            },
            _ => Ok(CallBody::Streaming(body)),
        }
    }

    fn stack_for(&self, target: &InvokeTarget) -> Stack {
        let name = target.policy_name();
        let mut stacks = self.stacks.lock();
        let kind = match target {
            InvokeTarget::App { .. } => &mut stacks.apps,
            InvokeTarget::External(_) => &mut stacks.external,
        };
        if let Some(stack) = kind.get(name) {
            return stack.clone();
        }
        if kind.len() >= MAX_STACKS {
            kind.clear();
        }
        let policy = self.resiliency.app(name);
        let breaker = self.resiliency.breaker(&policy, name);
        let stack = build_stack(
            StackSettings {
                policy,
                breaker,
                budget: layers::retry_budget(),
                concurrency: DEFAULT_TARGET_CONCURRENCY,
                classify: Arc::new(classify),
            },
            self.forward.clone(),
        );
        kind.insert(name.to_string(), stack.clone());
        stack
    }
}

fn classify(result: &Result<Response<Body>, InvokeError>) -> CallResult {
    match result {
        Ok(resp) => CallResult::Status(resp.status().as_u16()),
        Err(_) => CallResult::Error,
    }
}

/// Maps a body error to `BodyTooLarge` when it came from the --max-body-size cap.
pub fn body_error(err: &(dyn std::error::Error + 'static), limit: u64) -> InvokeError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return InvokeError::BodyTooLarge(limit);
        }
        source = e.source();
    }
    InvokeError::BodyRead(err.to_string())
}
