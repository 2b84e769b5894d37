//! The server's TLS: its certificate and key, and, with `client_ca_file`, the verification of
//! client certificates against those authorities (rustls's WebPKI verifier: the chain, the
//! validity dates, the client-authentication usage, and with `client_crl_file` revocation). What a verified certificate says is
//! read per connection by [`super::connections`]; what it is required to say is the policies'.

use std::path::Path;
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::StartError;
use crate::config::{ClientAuth, Tls};

/// The TLS settings of `tls`, or what is wrong with its files.
pub fn config(tls: &Tls) -> Result<RustlsConfig, StartError> {
    // One process-wide crypto provider; a second install is harmless and ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let problem = |file: &Path, what: String| StartError::Tls {
        file: file.display().to_string(),
        problem: what,
    };
    let chain = certificates(&tls.cert_file).map_err(|e| problem(&tls.cert_file, e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| {
        problem(
            &tls.key_file,
            format!("no private key could be read ({e}): give key_file a PEM private key"),
        )
    })?;
    let builder = ServerConfig::builder();
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca_file).map_err(|e| problem(ca_file, e))? {
                roots.add(cert).map_err(|e| {
                    problem(
                        ca_file,
                        format!("a certificate is not a usable authority: {e}"),
                    )
                })?;
            }
            let mut verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            if let Some(crl_file) = &tls.client_crl_file {
                let crls = CertificateRevocationListDer::pem_file_iter(crl_file)
                    .and_then(|crls| crls.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        problem(crl_file, format!("cannot read its revocation lists: {e}"))
                    })?;
                if crls.is_empty() {
                    return Err(problem(
                        crl_file,
                        "it holds no PEM revocation list (-----BEGIN X509 CRL-----)".into(),
                    ));
                }
                // A certificate of an authority the lists do not cover is refused: its
                // revocation cannot be told.
                verifier = verifier.with_crls(crls);
            }
            let verifier = match tls.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| problem(ca_file, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        problem(
            &tls.cert_file,
            format!("the certificate and key_file do not make a usable pair: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

/// The PEM certificates of `file`: at least one.
fn certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read its certificates: {e}"))?;
    if certs.is_empty() {
        return Err("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}
