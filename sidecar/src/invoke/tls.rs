//! TLS towards external services: the system's root certificates (`SSL_CERT_FILE` /
//! `SSL_CERT_DIR` override them) plus, per HTTPEndpoint, `spec.clientTLS` — an extra `rootCA`
//! and a client `certificate` / `privateKey` for mutual TLS (PEM).

use std::time::Duration;

use axum::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
pub use tandem_components::tls::{client_config, TlsFields, TlsMaterial};

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Idle keep-alive connections to external services are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per external host.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// How an HTTPEndpoint names its TLS settings.
pub const HTTP_ENDPOINT_TLS: TlsFields = TlsFields {
    section: "clientTLS",
    root_ca: "clientTLS.rootCA",
    certificate: "clientTLS.certificate",
    private_key: "clientTLS.privateKey",
};

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
    fn errors_name_the_http_endpoint_fields() {
        let only_cert = TlsMaterial {
            certificate: Some("x".into()),
            ..Default::default()
        };
        let err = client_config(Some(&only_cert), &HTTP_ENDPOINT_TLS).unwrap_err();
        assert!(err.to_string().contains("clientTLS"), "{err}");
        let bad_root = TlsMaterial {
            root_ca: Some("not pem".into()),
            ..Default::default()
        };
        let err = client_config(Some(&bad_root), &HTTP_ENDPOINT_TLS).unwrap_err();
        assert!(err.to_string().contains("clientTLS.rootCA"), "{err}");
    }
}
