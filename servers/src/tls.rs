//! TLS configuration of the companions from the certificate in `certs/`.

use crate::certs::Identity;
use std::sync::Arc;

/// A rustls server configuration offering HTTP/1.1 by ALPN (ring provider).
pub fn server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(id.key_der.clone().into());
    let cert = rustls::pki_types::CertificateDer::from(id.cert_der.clone());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The same identity for wtransport.
pub fn wt_identity(
    id: &Identity,
) -> Result<wtransport::Identity, wtransport::tls::error::InvalidCertificate> {
    let cert = wtransport::tls::Certificate::from_der(id.cert_der.clone())?;
    let key = wtransport::tls::PrivateKey::from_der_pkcs8(id.key_der.clone());
    Ok(wtransport::Identity::new(
        wtransport::tls::CertificateChain::single(cert),
        key,
    ))
}
