//! A small client for the Kubernetes API, as seen from inside a pod.
//!
//! The API server comes from `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT`; the pod's
//! service account gives the bearer token, the cluster CA and the namespace, in
//! `/var/run/secrets/kubernetes.io/serviceaccount` (`TANDEM_SERVICEACCOUNT_DIR` points elsewhere,
//! for tests and for running outside a pod). The token file is read on every request because
//! the kubelet rotates it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use thiserror::Error;

/// Where Kubernetes mounts a pod's service account.
pub const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Overrides [`SERVICEACCOUNT_DIR`].
pub const SERVICEACCOUNT_DIR_ENV: &str = "TANDEM_SERVICEACCOUNT_DIR";
/// One API call, connection included, gives up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("not running inside Kubernetes: {0} is not set")]
    NotInCluster(&'static str),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cluster CA in {path} is unusable: {message}")]
    Ca { path: PathBuf, message: String },
    #[error("Kubernetes API {method} {path}: {message}")]
    Transport {
        method: Method,
        path: String,
        message: String,
    },
    #[error("Kubernetes API {method} {path} answered {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
}

impl KubeError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, KubeError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, KubeError::Status { status, .. } if *status == StatusCode::CONFLICT)
    }
}

/// The in-cluster API server, authenticated as the pod's service account.
#[derive(Clone)]
pub struct KubeApi {
    base: Arc<str>,
    token_file: Arc<Path>,
    namespace: Option<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl KubeApi {
    pub fn in_cluster() -> Result<Self, KubeError> {
        let env = |name: &'static str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or(KubeError::NotInCluster(name))
        };
        let host = env("KUBERNETES_SERVICE_HOST")?;
        let port = env("KUBERNETES_SERVICE_PORT")?;
        let dir = std::env::var_os(SERVICEACCOUNT_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SERVICEACCOUNT_DIR));
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let namespace = std::fs::read_to_string(dir.join("namespace"))
            .ok()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty());
        let client = https_client(&dir.join("ca.crt"))?;
        Ok(Self {
            base: format!("https://{host}:{port}").into(),
            token_file: dir.join("token").into(),
            namespace,
            client,
        })
    }

    /// The service account's namespace, when the service account directory names one.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub async fn get(&self, path: &str) -> Result<Value, KubeError> {
        self.request(Method::GET, path, None).await
    }

    /// POSTs `body` to a collection; an object that already exists is [`KubeError::is_conflict`].
    pub async fn create(&self, path: &str, body: &Value) -> Result<Value, KubeError> {
        self.request(Method::POST, path, Some(body)).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, KubeError> {
        let transport = |message: String| KubeError::Transport {
            method: method.clone(),
            path: path.to_string(),
            message,
        };
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| KubeError::Read {
                path: self.token_file.to_path_buf(),
                source,
            })?;
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| transport(crate::error_chain(&e)))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(e.to_string()))?
                .to_bytes();
            Ok::<_, KubeError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| transport(format!("no answer within {REQUEST_TIMEOUT:?}")))??;
        if !status.is_success() {
            return Err(KubeError::Status {
                method,
                path: path.to_string(),
                status,
                message: status_message(&bytes),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| transport(format!("answer is not JSON: {e}")))
    }
}

/// A Kubernetes object name (a DNS subdomain): nothing that could change a request path.
pub fn is_object_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// The `message` of a Kubernetes `Status` answer, else the body as text.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

fn https_client(
    ca_file: &Path,
) -> Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>, KubeError> {
    let ca_error = |message: String| KubeError::Ca {
        path: ca_file.to_path_buf(),
        message,
    };
    let pem = std::fs::read(ca_file).map_err(|source| KubeError::Read {
        path: ca_file.to_path_buf(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ca_error(format!("not PEM certificates: {e}")))?;
        roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_error("holds no certificate".into()));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ca_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_cannot_leave_the_path() {
        assert!(is_object_name("redis-secret.v1"));
        assert!(!is_object_name("../nodes"));
        assert!(!is_object_name("a/b"));
        assert!(!is_object_name("A"));
        assert!(!is_object_name(""));
    }

    #[test]
    fn status_message_prefers_the_kubernetes_status_message() {
        assert_eq!(
            status_message(br#"{"kind":"Status","message":"secrets \"x\" not found"}"#),
            "secrets \"x\" not found"
        );
        assert_eq!(status_message(b"plain failure\n"), "plain failure");
    }
}
