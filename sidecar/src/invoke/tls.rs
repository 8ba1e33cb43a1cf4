//! TLS towards external services: the system's root certificates (`SSL_CERT_FILE` /
//! `SSL_CERT_DIR` override them) plus, per HTTPEndpoint, `spec.clientTLS` — an extra `rootCA`
//! and a client `certificate` / `privateKey` for mutual TLS (PEM).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Idle keep-alive connections to external services are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per external host.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error(
        "no trusted root certificates were found (install ca-certificates or set SSL_CERT_FILE)"
    )]
    NoRoots,
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// `spec.clientTLS` of an HTTPEndpoint, resolved to PEM text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    pub root_ca: Option<String>,
    pub certificate: Option<String>,
    pub private_key: Option<String>,
}

/// The client configuration: system roots plus `material.root_ca`, with a client certificate
/// when both `certificate` and `privateKey` are given.
pub fn client_config(material: Option<&TlsMaterial>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = material.and_then(|m| m.root_ca.as_deref()) {
        let certs = parse_certs("clientTLS.rootCA", pem)?;
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::Invalid {
                field: "clientTLS.rootCA",
                message: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid {
                field: "clientTLS",
                message: e.to_string(),
            })?
            .with_root_certificates(roots);
    let cert = material.and_then(|m| m.certificate.as_deref());
    let key = material.and_then(|m| m.private_key.as_deref());
    match (cert, key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = parse_certs("clientTLS.certificate", cert)?;
            let key =
                PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| TlsError::Invalid {
                    field: "clientTLS.privateKey",
                    message: format!("not a PEM private key: {e}"),
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Invalid {
                    field: "clientTLS.certificate",
                    message: e.to_string(),
                })
        }
        (Some(_), None) => Err(TlsError::Invalid {
            field: "clientTLS.privateKey",
            message: "is required with clientTLS.certificate".into(),
        }),
        (None, Some(_)) => Err(TlsError::Invalid {
            field: "clientTLS.certificate",
            message: "is required with clientTLS.privateKey".into(),
        }),
    }
}

fn parse_certs(field: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            field,
            message: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            field,
            message: "holds no PEM certificate".into(),
        });
    }
    Ok(certs)
}

/// A pooled client speaking `http` and `https` with `config`.
pub fn https_client(config: ClientConfig) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    // The TLS layer needs the connector to hand it `https` URIs.
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(https)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_half_a_client_identity_and_bad_pem() {
        let only_cert = TlsMaterial {
            certificate: Some("x".into()),
            ..Default::default()
        };
        let err = client_config(Some(&only_cert)).unwrap_err();
        assert!(err.to_string().contains("clientTLS"), "{err}");
        let bad_root = TlsMaterial {
            root_ca: Some("not pem".into()),
            ..Default::default()
        };
        let err = client_config(Some(&bad_root)).unwrap_err();
        assert!(err.to_string().contains("clientTLS.rootCA"), "{err}");
    }
}
