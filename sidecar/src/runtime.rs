//! Start-up sequence, shared runtime state and graceful shutdown.
//!
//! Order (as daprd): load resources and build components, serve the API (`/v1.0/healthz/outbound`
//! turns 204), wait for the app's port, pass a first health probe if enabled, then report ready
//! (`/v1.0/healthz` turns 204). SIGTERM, SIGINT or `POST /v1.0/shutdown` stop intake, let
//! in-flight requests finish within `--dapr-graceful-shutdown-seconds`, then close components.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tandem_components::spec::configuration::SecretScope;
use tandem_components::spec::template::TemplateContext;
use tandem_components::spec::{
    load_resources, ComponentSpec, HttpEndpointSpec, Origin, SubscriptionSpec,
};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{AppChannel, AppChannelConfig, HealthCheck};
use crate::cli::flags::SidecarArgs;
use crate::component_set::{ComponentSet, ComponentSetError};
use crate::http_server;
use crate::metrics::Metrics;
use crate::resiliency::Resiliency;

pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Error)]
pub enum StartupError {
    #[error("{0}")]
    Resources(#[from] tandem_components::spec::LoadError),
    #[error("{0}")]
    Components(#[from] ComponentSetError),
    #[error("outbox: {0}")]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("{0}")]
    AppChannel(#[from] crate::app::AppChannelError),
    #[error("--app-protocol {0} is not supported; use http or h2c")]
    AppProtocol(String),
    #[error("{0}")]
    Resiliency(#[from] crate::resiliency::ResiliencyError),
    #[error("name resolution: {0}")]
    NameResolution(#[from] crate::naming::NameResolutionError),
    #[error("{0}")]
    HttpEndpoint(String),
    #[error("cannot register in the local registry: {0}")]
    Registry(#[from] crate::naming::local_registry::RegistryError),
    #[error("the local registry task failed: {0}")]
    RegistryTask(tokio::task::JoinError),
    #[error("{0}")]
    Kubernetes(#[from] crate::kubernetes::KubernetesError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Settings derived from the command line and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub app_id: String,
    pub http_port: u16,
    pub public_port: Option<u16>,
    pub listen_addresses: Vec<String>,
    pub internal_listen_addresses: Vec<String>,
    pub public_listen_addresses: Vec<String>,
    pub body_limit: u64,
    pub graceful_shutdown: Duration,
    pub mode: String,
    pub api_token: Option<String>,
    pub app: Option<AppChannelConfig>,
    pub app_protocol: String,
    pub namespace: Option<String>,
    /// `(address, port)` of the metrics endpoint, when enabled.
    pub metrics: Option<(String, u16)>,
    /// `--dapr-internal-grpc-port`: where peer sidecars forward invocations (None: a free port).
    pub internal_port: Option<u16>,
}

impl Settings {
    pub fn kubernetes_mode(&self) -> bool {
        self.mode == "kubernetes"
    }

    pub fn from_args(args: &SidecarArgs) -> Result<Self, StartupError> {
        let http2 = match args.app_protocol.as_str() {
            "http" => false,
            "h2c" => true,
            other => return Err(StartupError::AppProtocol(other.to_string())),
        };
        let non_empty_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let app = args.app_port.map(|port| AppChannelConfig {
            address: args.app_channel_address.clone(),
            port,
            http2,
            max_concurrency: usize::try_from(args.app_max_concurrency)
                .ok()
                .filter(|n| *n > 0),
            token: non_empty_env("APP_API_TOKEN"),
            health_check: args.enable_app_health_check.then(|| HealthCheck {
                path: args.app_health_check_path.clone(),
                interval: args.health_probe_interval(),
                timeout: args.health_probe_timeout(),
                threshold: args.app_health_threshold,
            }),
        });
        Ok(Self {
            app_id: args.app_id.clone(),
            http_port: args.http_port(),
            public_port: args.dapr_public_port,
            listen_addresses: args.listen_addresses(),
            internal_listen_addresses: args
                .side_listen_addresses(args.dapr_internal_grpc_listen_address.as_deref()),
            public_listen_addresses: args
                .side_listen_addresses(args.dapr_public_listen_address.as_deref()),
            body_limit: args.body_limit(),
            graceful_shutdown: args.graceful_shutdown(),
            mode: args.mode.clone(),
            api_token: non_empty_env("DAPR_API_TOKEN"),
            app,
            app_protocol: args.app_protocol.clone(),
            namespace: non_empty_env("NAMESPACE"),
            metrics: args.enable_metrics.then(|| {
                (
                    args.metrics_listen_address
                        .clone()
                        .unwrap_or_else(|| "0.0.0.0".to_string()),
                    args.metrics_port
                        .unwrap_or(crate::cli::flags::DEFAULT_METRICS_PORT),
                )
            }),
            internal_port: args.dapr_internal_grpc_port,
        })
    }
}

/// Everything the API handlers and background tasks share.
pub struct Runtime {
    pub settings: Settings,
    pub components: ComponentSet,
    pub subscriptions: RwLock<Vec<SubscriptionSpec>>,
    pub resiliency: Resiliency,
    pub http_endpoints: Vec<HttpEndpointSpec>,
    pub secret_scopes: Vec<SecretScope>,
    pub app: Option<Arc<AppChannel>>,
    /// Pub/sub deliveries to the app.
    pub delivery: crate::delivery::Delivery,
    /// Service invocation (caller side).
    pub invoker: crate::invoke::Invoker,
    /// Values set through `PUT /v1.0/metadata/{key}`.
    pub extended_metadata: RwLock<BTreeMap<String, String>>,
    outbound_ready: AtomicBool,
    app_ready: AtomicBool,
    pub shutdown: CancellationToken,
    pub started: Instant,
    pub metrics: Arc<Metrics>,
    /// Transactional outboxes, by state store name.
    pub outboxes: BTreeMap<String, crate::outbox::OutboxConfig>,
}

impl Runtime {
    pub fn outbound_ready(&self) -> bool {
        self.outbound_ready.load(Ordering::Acquire)
    }

    /// Components loaded, API up and the app channel ready (or no app).
    pub fn ready(&self) -> bool {
        self.app_ready.load(Ordering::Acquire)
    }
}

/// The resource directories to read: the flags, else `~/.tandem/components`, else
/// `~/.dapr/components`; `None` means the built-in defaults. In kubernetes mode only the flags
/// count: the rest comes from the Kubernetes API.
fn resources_paths(args: &SidecarArgs) -> Option<Vec<PathBuf>> {
    if !args.resources_path.is_empty() || args.kubernetes_mode() {
        return Some(args.resources_path.clone());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    [".tandem/components", ".dapr/components"]
        .iter()
        .map(|p| home.join(p))
        .find(|p| p.is_dir())
        .map(|p| vec![p])
}

/// A component defined by Tandem itself rather than a resource file.
pub(crate) fn builtin_component(name: &str, component_type: &str) -> ComponentSpec {
    ComponentSpec {
        name: name.to_string(),
        namespace: None,
        component_type: component_type.to_string(),
        version: "v1".to_string(),
        init_timeout: tandem_components::spec::component::DEFAULT_INIT_TIMEOUT,
        ignore_errors: false,
        metadata: Vec::new(),
        secret_store: None,
        scopes: Vec::new(),
        origin: Origin {
            file: PathBuf::from("(built-in)"),
            document: 1,
        },
    }
}

/// The embedded defaults: an in-memory state store and an in-memory pub/sub.
fn builtin_components() -> Vec<ComponentSpec> {
    vec![
        builtin_component("statestore", "state.in-memory"),
        builtin_component("pubsub", "pubsub.in-memory"),
    ]
}

/// Loads resources and builds components: everything before the API is served.
pub async fn initialise(args: &SidecarArgs) -> Result<Arc<Runtime>, StartupError> {
    let started = Instant::now();
    let settings = Settings::from_args(args)?;
    let given = args.accepted.given();
    if !given.is_empty() {
        tracing::info!(
            "accepted for compatibility, without effect in Tandem: {}",
            given.join(", ")
        );
    }
    let mut resources = match resources_paths(args) {
        Some(paths) if paths.is_empty() => tandem_components::spec::Resources::default(),
        Some(paths) => {
            tracing::info!(
                "loading resources from {}",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            load_resources(&paths, &settings.app_id)?
        }
        None => {
            tracing::info!(
                "no resources path given and none in ~/.tandem/components or ~/.dapr/components: \
                 using the built-in components statestore (state.in-memory) and pubsub (pubsub.in-memory)"
            );
            tandem_components::spec::Resources {
                components: builtin_components(),
                ..Default::default()
            }
        }
    };
    // In kubernetes mode a --config that is not a file names a Configuration resource.
    let (config_files, config_names): (Vec<PathBuf>, Vec<PathBuf>) = args
        .config
        .iter()
        .cloned()
        .partition(|c| !settings.kubernetes_mode() || c.is_file());
    if !config_files.is_empty() {
        let configs = load_resources(&config_files, &settings.app_id)?;
        resources.configurations = configs.configurations;
    }
    if settings.kubernetes_mode() {
        crate::kubernetes::load_resources(args, &settings, &config_names, &mut resources).await?;
    }
    let templates = TemplateContext {
        app_id: settings.app_id.clone(),
        namespace: settings.namespace.clone(),
        pod_name: std::env::var("POD_NAME").ok().filter(|v| !v.is_empty()),
    };
    let components = ComponentSet::build(&resources.components, &templates).await?;
    let outboxes = crate::outbox::configure(&components)?;
    let secret_scopes = resources
        .configurations
        .iter()
        .flat_map(|c| c.secret_scopes.clone())
        .collect();
    let app = settings
        .app
        .clone()
        .map(AppChannel::new)
        .transpose()?
        .map(Arc::new);
    let settings_app_id = settings.app_id.clone();
    let resiliency = Resiliency::try_from_specs(&resources.resiliencies)?;
    let name_resolution = resources
        .configurations
        .iter()
        .find_map(|c| c.name_resolution.as_ref());
    let resolver = crate::naming::Resolver::from_config(
        name_resolution,
        settings.kubernetes_mode(),
        settings.namespace.as_deref(),
    )?;
    tracing::info!("name resolution: {}", resolver.name());
    let endpoints = crate::invoke::target::load_endpoints(&resources.http_endpoints, &components)
        .await
        .map_err(StartupError::HttpEndpoint)?;
    let invoker = crate::invoke::Invoker::new(
        settings.app_id.clone(),
        settings.namespace.clone(),
        resolver,
        resiliency.clone(),
        endpoints,
        settings.body_limit,
    );
    Ok(Arc::new(Runtime {
        settings,
        components,
        subscriptions: RwLock::new(resources.subscriptions),
        resiliency,
        invoker,
        http_endpoints: resources.http_endpoints,
        secret_scopes,
        app,
        delivery: crate::delivery::Delivery::new(),
        extended_metadata: RwLock::new(BTreeMap::new()),
        outbound_ready: AtomicBool::new(false),
        app_ready: AtomicBool::new(false),
        shutdown: CancellationToken::new(),
        started,
        metrics: Arc::new(Metrics::new(&settings_app_id)),
        outboxes,
    }))
}

/// Listens on `port` of every address. An address this host does not have (`[::1]` where IPv6
/// is off) is skipped with a warning as long as another one works; any other failure, such as
/// a port in use, is an error.
async fn bind_all(addresses: &[String], port: u16) -> Result<Vec<TcpListener>, StartupError> {
    let mut listeners = Vec::new();
    let mut unavailable = None;
    for addr in addresses {
        let text = if addr.contains(':') {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        };
        let bind = async {
            let sock: SocketAddr = text.parse().map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}"))
            })?;
            TcpListener::bind(sock).await
        };
        match bind.await {
            Ok(listener) => listeners.push(listener),
            Err(source) if is_unavailable(&source) && addresses.len() > 1 => {
                tracing::warn!("not listening on {text}: {source}");
                unavailable = Some(StartupError::Bind { addr: text, source });
            }
            Err(source) => return Err(StartupError::Bind { addr: text, source }),
        }
    }
    match unavailable {
        Some(error) if listeners.is_empty() => Err(error),
        _ => Ok(listeners),
    }
}

/// The address does not exist here, or its family is switched off.
fn is_unavailable(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::AddrNotAvailable
        || error.raw_os_error() == Some(nix::libc::EAFNOSUPPORT)
}

/// Runs the sidecar until a shutdown signal, then shuts down gracefully.
pub async fn run(args: SidecarArgs) -> Result<(), StartupError> {
    let rt = initialise(&args).await?;
    let settings = rt.settings.clone();

    let mut servers = tokio::task::JoinSet::new();
    let api = crate::api::ApiPort::new(rt.clone());
    for listener in bind_all(&settings.listen_addresses, settings.http_port).await? {
        let api = api.clone();
        servers.spawn(http_server::serve(
            listener,
            rt.shutdown.clone(),
            move |peer| api.handler(peer),
        ));
    }
    let internal_port = serve_internal(&rt, &mut servers).await?;
    if let Some(port) = settings.public_port {
        let public = crate::api::public_router(rt.clone());
        for listener in bind_all(&settings.public_listen_addresses, port).await? {
            spawn_server(&mut servers, listener, public.clone(), &rt.shutdown);
        }
    }
    if let Some((addr, port)) = &settings.metrics {
        // Several sidecars on one machine would all want 9090: a taken port costs the
        // metrics endpoint, not the sidecar.
        match bind_all(std::slice::from_ref(addr), *port).await {
            Ok(listeners) => {
                for listener in listeners {
                    spawn_server(
                        &mut servers,
                        listener,
                        rt.metrics.clone().router(),
                        &rt.shutdown,
                    );
                }
                tracing::info!("metrics served on {addr}:{port}/metrics");
            }
            Err(e) => tracing::warn!("metrics endpoint disabled: {e}"),
        }
    }
    // Registered before outbound readiness, so a sidecar that answers is also findable.
    let registration = register_locally(&rt, internal_port).await?;
    rt.outbound_ready.store(true, Ordering::Release);
    tracing::info!(
        "HTTP API listening on port {} ({})",
        settings.http_port,
        settings.listen_addresses.join(", ")
    );

    tokio::spawn(watch_signals(rt.shutdown.clone()));
    tokio::spawn(become_ready(rt.clone()));
    let mut outbox_relays = crate::outbox::start_relays(&rt);

    rt.shutdown.cancelled().await;
    if let Some((registry, entry)) = registration {
        // First, so peers stop choosing this instance while in-flight work drains.
        let _ = tokio::task::spawn_blocking(move || registry.unregister(&entry)).await;
    }
    tracing::info!(
        "shutting down: waiting up to {:?} for in-flight work",
        settings.graceful_shutdown
    );
    let graceful_deadline = tokio::time::Instant::now() + settings.graceful_shutdown;
    // Deliveries stop pulling and settle their messages while the components are still open.
    if !rt.delivery.drain(settings.graceful_shutdown).await {
        tracing::warn!("graceful shutdown period elapsed with deliveries still in flight");
    }
    // Outbox relays stop reading and finish the events they hold (unfinished ones stay with
    // the broker).
    let relays_done = tokio::time::timeout_at(graceful_deadline, async {
        while outbox_relays.join_next().await.is_some() {}
    })
    .await;
    if relays_done.is_err() {
        outbox_relays.abort_all();
    }
    let drained = tokio::time::timeout_at(graceful_deadline, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("graceful shutdown period elapsed; abandoning remaining requests");
        servers.abort_all();
    }
    rt.components.close().await;
    tracing::info!("dapr shutdown complete");
    Ok(())
}

/// Serves `router` on `listener` until shutdown, then lets in-flight requests finish.
fn spawn_server(
    servers: &mut tokio::task::JoinSet<()>,
    listener: TcpListener,
    router: axum::Router,
    shutdown: &CancellationToken,
) {
    servers.spawn(http_server::serve(
        listener,
        shutdown.clone(),
        move |peer| http_server::RouterHandler {
            router: router.clone(),
            peer,
        },
    ));
}

/// Serves the internal (sidecar-to-sidecar) port on every listen address; returns its number.
async fn serve_internal(
    rt: &Arc<Runtime>,
    servers: &mut tokio::task::JoinSet<()>,
) -> Result<u16, StartupError> {
    let addresses = &rt.settings.internal_listen_addresses;
    let (first, rest) = addresses
        .split_first()
        .map(|(f, r)| (f.clone(), r.to_vec()))
        .unwrap_or_else(|| ("0.0.0.0".to_string(), Vec::new()));
    // As daprd: a free port unless given (on Kubernetes the injector passes 50002, which the
    // kubernetes resolver expects).
    let requested = rt.settings.internal_port.unwrap_or(0);
    let mut listeners = bind_all(&[first], requested).await?;
    let port = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
        .unwrap_or_default();
    // Other addresses share the port the first one got.
    listeners.extend(bind_all(&rest, port).await?);
    for listener in listeners {
        let shutdown = rt.shutdown.clone();
        let rt = rt.clone();
        servers.spawn(http_server::serve(listener, shutdown, move |_| {
            crate::invoke::internal::InternalPort(rt.clone())
        }));
    }
    tracing::info!("internal invocation port {port} (HTTP)");
    Ok(port)
}

/// Announces this sidecar in the local registry (with the `local` resolver, or whenever an app
/// id is set, so `tandem list` sees it).
async fn register_locally(
    rt: &Arc<Runtime>,
    internal_port: u16,
) -> Result<
    Option<(
        crate::naming::local_registry::LocalRegistry,
        crate::naming::local_registry::RegistryEntry,
    )>,
    StartupError,
> {
    use crate::naming::local_registry::{LocalRegistry, RegistryEntry};
    let settings = &rt.settings;
    if settings.app_id.is_empty() || settings.kubernetes_mode() {
        return Ok(None);
    }
    let registry = match rt.invoker.resolver() {
        crate::naming::Resolver::Local(local) => local.registry().clone(),
        _ => LocalRegistry::from_env(),
    };
    let address = settings
        .internal_listen_addresses
        .iter()
        .find(|a| {
            !matches!(
                a.as_str(),
                "0.0.0.0" | "::" | "127.0.0.1" | "::1" | "localhost"
            )
        })
        .cloned()
        .unwrap_or_else(|| "127.0.0.1".to_string());
    let entry = RegistryEntry {
        app_id: settings.app_id.clone(),
        pid: std::process::id(),
        address,
        http_port: settings.http_port,
        internal_port,
        app_port: settings.app.as_ref().map(|a| a.port),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let (reg, e) = (registry.clone(), entry.clone());
    let path = tokio::task::spawn_blocking(move || reg.register(&e))
        .await
        .map_err(StartupError::RegistryTask)??;
    tracing::info!("registered in the local registry: {}", path.display());
    Ok(Some((registry, entry)))
}

/// Waits for the app, then marks the sidecar ready.
async fn become_ready(rt: Arc<Runtime>) {
    if let Some(app) = &rt.app {
        if !app.wait_until_listening(&rt.shutdown).await {
            return;
        }
        if app.config().health_check.is_some() {
            tokio::spawn(app.clone().run_health_checks(rt.shutdown.clone()));
            let mut health = app.health_watch();
            if health.wait_for(|healthy| *healthy).await.is_err() {
                return;
            }
        }
    }
    // As daprd: subscriptions are read and opened before the sidecar reports ready.
    rt.delivery.start(&rt).await;
    rt.app_ready.store(true, Ordering::Release);
    tracing::info!(
        "dapr initialized. Status: Running. Init Elapsed {}ms",
        rt.started.elapsed().as_millis()
    );
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
pub(crate) async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
        _ = shutdown.cancelled() => return,
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_address_the_host_lacks_is_skipped_while_another_works() {
        // 192.0.2.1 (TEST-NET-1) is on no interface here.
        let both = ["192.0.2.1".to_string(), "127.0.0.1".to_string()];
        let listeners = bind_all(&both, 0).await.expect("loopback binds");
        assert_eq!(listeners.len(), 1);
        let only_missing = ["192.0.2.1".to_string()];
        assert!(matches!(
            bind_all(&only_missing, 0).await,
            Err(StartupError::Bind { .. })
        ));
    }

    #[tokio::test]
    async fn a_port_in_use_is_an_error_even_with_other_addresses() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port();
        let addresses = ["192.0.2.1".to_string(), "127.0.0.1".to_string()];
        assert!(bind_all(&addresses, port).await.is_err());
    }
}
