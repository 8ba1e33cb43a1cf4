//! A throwaway certificate authority for tests: certificates it signs, and rustls server
//! configurations that present them (optionally requiring client certificates).

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct TestCa {
    pub cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Self { cert, key }
    }

    /// The CA certificate in PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by this CA, and its key.
    pub fn issue(&self, names: &[&str]) -> (Certificate, KeyPair) {
        let key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .expect("leaf parameters")
            .signed_by(&key, &self.cert, &self.key)
            .expect("leaf certificate");
        (cert, key)
    }

    /// Issues a certificate for `names` and writes it and its key as `<stem>.crt` and
    /// `<stem>.key` in `dir`.
    pub fn issue_files(&self, names: &[&str], dir: &Path, stem: &str) {
        let (cert, key) = self.issue(names);
        std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).expect("write certificate");
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write key");
    }

    /// A TLS server configuration presenting a certificate for `names` signed by this CA; with
    /// `clients_from`, clients must show a certificate signed by that CA.
    pub fn server_config(
        &self,
        names: &[&str],
        clients_from: Option<&TestCa>,
    ) -> rustls::ServerConfig {
        let (cert, key) = self.issue(names);
        let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match clients_from {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::clone(ca.cert.der()))
                    .expect("client CA");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        builder
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server certificate")
    }
}
