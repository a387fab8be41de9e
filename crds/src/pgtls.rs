//! TLS for Ordinal's own PostgreSQL connections (tokio-postgres over
//! rustls), trusting only the cluster's CA and checking the name, as
//! libpq's `sslmode=verify-full` does: `ordinal-init` dials its primary by
//! name; the operator dials a pod's address and verifies the pod's name
//! under the headless Service (libpq's `host` with `hostaddr`).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
pub use tokio_postgres_rustls::MakeRustlsConnect;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the CA file holds no PEM certificate")]
    NoCertificate,
    #[error("the CA certificate is not usable: {0}")]
    Certificate(String),
    #[error("cannot set up TLS: {0}")]
    Setup(#[from] rustls::Error),
}

/// A tokio-postgres connector that trusts the CA certificates in `ca_pem`.
pub fn connector(ca_pem: &[u8]) -> Result<MakeRustlsConnect, TlsError> {
    Ok(MakeRustlsConnect::new(client_config(ca_pem)?))
}

/// The rustls client configuration of [`connector`]: the CA certificates
/// in `ca_pem` as the only roots, and WebPKI's checks (chain, validity,
/// the name dialled).
pub fn client_config(ca_pem: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsError::Certificate(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        assert!(matches!(
            connector(b"not a certificate"),
            Err(TlsError::NoCertificate)
        ));
    }
}
