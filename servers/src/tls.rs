//! TLS configuration of the companions from the certificate in `certs/`.

use crate::certs::Identity;
use std::sync::Arc;

/// ALPN names: HTTP/1.1 only (every TLS companion but `sse-h2` and `grpc`).
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
/// HTTP/2 first, HTTP/1.1 for clients without it (`sse-h2`).
pub const ALPN_H2: &[&[u8]] = &[b"h2", b"http/1.1"];
/// HTTP/2 only (`grpc`: gRPC has no HTTP/1.1 form).
pub const ALPN_H2_ONLY: &[&[u8]] = &[b"h2"];

/// A rustls server configuration offering `alpn` (ring provider).
pub fn server_config(
    id: &Identity,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(id.key_der.clone().into());
    let cert = rustls::pki_types::CertificateDer::from(id.cert_der.clone());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
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
