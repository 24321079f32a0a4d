//! How the client trusts the companions' self-signed certificate: pinned (the default:
//! certs/cert.pem as the only root) or not verified at all (`--insecure`, what the
//! reference's InsecureSkipVerify did).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// Which certificate the client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only this certificate (DER).
    Pinned(Vec<u8>),
    /// Anything (no verification).
    Insecure,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("reading {path}: {source} (run `tokenwire-servers certs` or pass --insecure)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no PEM certificate in the file")]
    NoCert(String),
}

impl Trust {
    /// Pins the first certificate of a PEM file.
    pub fn from_pem_file(path: &Path) -> Result<Self, TrustError> {
        let pem = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let der = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| TrustError::NoCert(path.display().to_string()))?;
        Ok(Trust::Pinned(der.to_vec()))
    }

    /// SHA-256 of the pinned certificate (WebTransport serverCertificateHashes).
    pub fn sha256(&self) -> Option<[u8; 32]> {
        match self {
            Trust::Pinned(der) => Some(Sha256::digest(der).into()),
            Trust::Insecure => None,
        }
    }

    /// A rustls client configuration offering HTTP/1.1.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        self.client_config_offering(&[b"http/1.1"])
    }

    /// A rustls client configuration offering `alpn` (`[b"h2"]` for `sse-h2`).
    pub fn client_config_offering(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut cfg = match self {
            Trust::Pinned(der) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(CertificateDer::from(der.clone()))?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // Session keys go to $SSLKEYLOGFILE when it is set (nothing otherwise).
        cfg.key_log = Arc::new(rustls::KeyLogFile::new());
        Ok(Arc::new(cfg))
    }
}

/// Accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
