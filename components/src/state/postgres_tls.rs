//! TLS to PostgreSQL as libpq (and so Dapr's pgx driver) reads `sslmode` and its files:
//!
//! | `sslmode` | TLS | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | when the server offers it | no (against `sslrootcert`, if given) |
//! | `require` | always | no (against `sslrootcert`, if given) |
//! | `verify-ca` | always | chain against `sslrootcert` (else the system roots) |
//! | `verify-full` | always | chain and host name |
//!
//! `sslcert` and `sslkey` (PEM files) give a client certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::registry::BuildError;
use crate::tls::parse_certs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<Self, BuildError> {
        match text {
            "disable" => Ok(Self::Disable),
            "allow" | "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            other => Err(BuildError::Init(format!(
                "connectionString: sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ))),
        }
    }

    /// The `sslmode` tokio-postgres reads (it knows whether to use TLS, not how to verify).
    pub fn for_driver(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require | Self::VerifyCa | Self::VerifyFull => "require",
        }
    }
}

/// `sslmode` and the certificate files named in the connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslSettings {
    pub mode: SslMode,
    pub root_cert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// What the server certificate is checked for.
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// The connector for `settings`.
pub fn connector(settings: &SslSettings) -> Result<MakeRustlsConnect, BuildError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = match (settings.mode, &settings.root_cert) {
        (SslMode::VerifyFull, _) => Check::ChainAndName,
        (SslMode::VerifyCa, _) | (_, Some(_)) => Check::Chain,
        _ => Check::Nothing,
    };
    let roots = match &settings.root_cert {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in parse_certs("sslrootcert", &read("sslrootcert", path)?).map_err(init)? {
                roots
                    .add(cert)
                    .map_err(|e| init(format!("sslrootcert {path}: {e}")))?;
            }
            roots
        }
        None => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            roots
        }
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(NoCheck(provider.clone())),
        Check::Chain | Check::ChainAndName => {
            if roots.is_empty() {
                return Err(init(
                    "no root certificates to verify the server with: give sslrootcert or install ca-certificates",
                ));
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| init(format!("server verification: {e}")))?;
            if matches!(check, Check::Chain) {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| init(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&settings.cert, &settings.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = parse_certs("sslcert", &read("sslcert", cert)?).map_err(init)?;
            let key = PrivateKeyDer::from_pem_slice(read("sslkey", key)?.as_bytes())
                .map_err(|e| init(format!("sslkey {key}: not a PEM private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| init(format!("sslcert: {e}")))?
        }
        _ => return Err(init("sslcert and sslkey must be given together")),
    };
    Ok(MakeRustlsConnect::new(config))
}

fn init(message: impl std::fmt::Display) -> BuildError {
    BuildError::Init(format!("connectionString: {message}"))
}

fn read(field: &str, path: &str) -> Result<String, BuildError> {
    std::fs::read_to_string(path).map_err(|e| init(format!("{field} {path}: {e}")))
}

/// `require` and `prefer` without `sslrootcert`: the connection is encrypted and the server's
/// handshake signature checked, but its certificate is taken as it is (libpq's behaviour).
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the certificate must chain to a trusted root; the name in it is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_map_to_the_driver() {
        assert_eq!(SslMode::parse("allow").unwrap(), SslMode::Prefer);
        assert_eq!(SslMode::parse("verify-ca").unwrap().for_driver(), "require");
        assert_eq!(SslMode::parse("disable").unwrap().for_driver(), "disable");
        assert!(SslMode::parse("sometimes").is_err());
    }

    #[test]
    fn missing_files_and_half_identities_are_named() {
        let missing = SslSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some("/nonexistent/root.crt".into()),
            ..Default::default()
        };
        let err = connector(&missing).err().expect("no file").to_string();
        assert!(err.contains("sslrootcert /nonexistent/root.crt"), "{err}");
        let half = SslSettings {
            mode: SslMode::Require,
            cert: Some("/nonexistent/client.crt".into()),
            ..Default::default()
        };
        let err = connector(&half).err().expect("half").to_string();
        assert!(err.contains("sslcert and sslkey"), "{err}");
    }
}
