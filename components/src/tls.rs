//! TLS client settings shared by the backends and the sidecar: the system's root certificates
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` override them) plus an optional extra root CA, and an optional
//! client certificate and key for mutual TLS, all PEM. Errors name the setting they come from.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;

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

/// PEM text for an extra root CA and a client identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    pub root_ca: Option<String>,
    pub certificate: Option<String>,
    pub private_key: Option<String>,
}

/// What the user calls each part of [`TlsMaterial`], for error messages.
#[derive(Debug, Clone, Copy)]
pub struct TlsFields {
    /// The settings as a whole.
    pub section: &'static str,
    pub root_ca: &'static str,
    pub certificate: &'static str,
    pub private_key: &'static str,
}

/// The client configuration: system roots plus `material.root_ca`, with a client certificate
/// when both `certificate` and `private_key` are given.
pub fn client_config(
    material: Option<&TlsMaterial>,
    fields: &TlsFields,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = material.and_then(|m| m.root_ca.as_deref()) {
        for cert in parse_certs(fields.root_ca, pem)? {
            roots.add(cert).map_err(|e| TlsError::Invalid {
                field: fields.root_ca,
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
                field: fields.section,
                message: e.to_string(),
            })?
            .with_root_certificates(roots);
    let cert = material.and_then(|m| m.certificate.as_deref());
    let key = material.and_then(|m| m.private_key.as_deref());
    match (cert, key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = parse_certs(fields.certificate, cert)?;
            let key =
                PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| TlsError::Invalid {
                    field: fields.private_key,
                    message: format!("not a PEM private key: {e}"),
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Invalid {
                    field: fields.certificate,
                    message: e.to_string(),
                })
        }
        (Some(_), None) => Err(TlsError::Invalid {
            field: fields.private_key,
            message: format!("is required with {}", fields.certificate),
        }),
        (None, Some(_)) => Err(TlsError::Invalid {
            field: fields.certificate,
            message: format!("is required with {}", fields.private_key),
        }),
    }
}

pub(crate) fn parse_certs(
    field: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: TlsFields = TlsFields {
        section: "tls",
        root_ca: "caCert",
        certificate: "clientCert",
        private_key: "clientKey",
    };

    #[test]
    fn rejects_half_a_client_identity_and_bad_pem() {
        let only_cert = TlsMaterial {
            certificate: Some("x".into()),
            ..Default::default()
        };
        let err = client_config(Some(&only_cert), &FIELDS).unwrap_err();
        assert_eq!(err.to_string(), "clientKey: is required with clientCert");
        let bad_root = TlsMaterial {
            root_ca: Some("not pem".into()),
            ..Default::default()
        };
        let err = client_config(Some(&bad_root), &FIELDS).unwrap_err();
        assert!(err.to_string().starts_with("caCert: "), "{err}");
    }
}
