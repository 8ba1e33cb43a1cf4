//! `tandem injector`: the mutating admission webhook that adds the sidecar to pods annotated
//! `dapr.io/enabled: "true"`, as Dapr's sidecar injector does. It serves HTTPS:
//! `POST /mutate` (AdmissionReview v1) and `GET /healthz`. The Helm chart in `charts/tandem`
//! deploys it with its certificate and webhook configuration.

pub mod admission;
pub mod cluster;
pub mod patch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Args;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tandem_components::kube_api::KubeApi;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use admission::Injector;
use patch::SidecarTemplate;

/// Admission reviews are small; a pod spec larger than this is refused.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
/// A client that does not finish the TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Args)]
pub struct InjectorArgs {
    /// Port of the webhook's HTTPS server.
    #[arg(long, env = "TANDEM_INJECTOR_PORT", default_value_t = 4000)]
    pub port: u16,

    /// Address the webhook listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: String,

    /// PEM certificate chain the webhook serves.
    #[arg(long, env = "TANDEM_INJECTOR_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,

    /// PEM private key of that certificate.
    #[arg(long, env = "TANDEM_INJECTOR_TLS_KEY_FILE")]
    pub tls_key_file: PathBuf,

    /// Image of the injected sidecar container.
    #[arg(long, env = "TANDEM_SIDECAR_IMAGE")]
    pub sidecar_image: String,

    /// imagePullPolicy of the injected sidecar container.
    #[arg(
        long,
        env = "TANDEM_SIDECAR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub sidecar_image_pull_policy: String,

    /// ClusterRole bound to each injected pod's service account in its namespace ("" binds
    /// none; then grant it yourself).
    #[arg(
        long,
        env = "TANDEM_SIDECAR_CLUSTER_ROLE",
        default_value = "tandem-sidecar"
    )]
    pub sidecar_cluster_role: String,

    /// Create `<app-id>-dapr` Services and RoleBindings (needs the Kubernetes API).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "true", action = clap::ArgAction::Set)]
    pub manage_cluster_objects: bool,

    /// Log level: debug, info, warn or error.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Log as JSON lines.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false", action = clap::ArgAction::Set)]
    pub log_as_json: bool,
}

#[derive(Debug, Error)]
pub enum InjectorError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Kubernetes(#[from] tandem_components::kube_api::KubeError),
}

/// Serves the webhook until SIGTERM or SIGINT.
pub async fn run(args: InjectorArgs) -> Result<(), InjectorError> {
    let tls = TlsAcceptor::from(Arc::new(server_config(
        &args.tls_cert_file,
        &args.tls_key_file,
    )?));
    let api = if args.manage_cluster_objects {
        Some(KubeApi::in_cluster()?)
    } else {
        None
    };
    let injector = Arc::new(Injector {
        template: SidecarTemplate {
            image: args.sidecar_image.clone(),
            pull_policy: args.sidecar_image_pull_policy.clone(),
        },
        api,
        sidecar_cluster_role: Some(args.sidecar_cluster_role.clone()).filter(|r| !r.is_empty()),
    });
    let router = Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { StatusCode::NO_CONTENT }))
        .with_state(injector);
    let addr = if args.listen_address.contains(':') {
        format!("[{}]:{}", args.listen_address, args.port)
    } else {
        format!("{}:{}", args.listen_address, args.port)
    };
    let bind = |source| InjectorError::Bind {
        addr: addr.clone(),
        source,
    };
    let sock: SocketAddr = addr.parse().map_err(|e| {
        bind(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{e}"),
        ))
    })?;
    let listener = TcpListener::bind(sock).await.map_err(bind)?;
    tracing::info!(
        "tandem injector serving https://{addr}/mutate (sidecar image {})",
        args.sidecar_image
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::runtime::watch_signals(shutdown.clone()));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: wait rather than spin.
                        tracing::warn!("webhook accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let tls = tls.clone();
                let service = TowerToHyperService::new(router.clone());
                tokio::spawn(async move {
                    let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await else {
                        return;
                    };
                    let served = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!("webhook connection: {e}");
                    }
                });
            }
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!("tandem injector stopped");
    Ok(())
}

async fn mutate(State(injector): State<Arc<Injector>>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_REVIEW_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot read the review: {e}"),
            )
                .into_response()
        }
    };
    match injector.review(&bytes).await {
        Ok(answer) => (
            [(header::CONTENT_TYPE, "application/json")],
            answer.to_string(),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, InjectorError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| InjectorError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let pem_error = |path: &Path, message: String| InjectorError::Pem {
        path: path.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(cert, "holds no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| pem_error(key, format!("not a PEM private key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
