//! TLS for the host's own connections: outgoing HTTPS to providers and the links to
//! PostgreSQL. rustls with the Mozilla roots, plus CA files an operator names (a provider
//! or a database behind a private CA). Certificates are always verified, names included.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// The Mozilla roots and every certificate in `ca_files` (PEM).
pub(crate) fn root_store(ca_files: &[PathBuf]) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
    for file in ca_files {
        let unreadable = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", file.display());
        let certificates = CertificateDer::pem_file_iter(file).map_err(|e| unreadable(&e))?;
        let mut added = 0;
        for certificate in certificates {
            roots.add(certificate.map_err(|e| unreadable(&e))?).map_err(|e| unreadable(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(unreadable(&"holds no PEM certificate"));
        }
    }
    Ok(roots)
}

/// A client configuration trusting [`root_store`]`(ca_files)`.
pub(crate) fn client_config(ca_files: &[PathBuf]) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(root_store(ca_files)?)
        .with_no_client_auth())
}
