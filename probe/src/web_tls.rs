//! The TLS side of `--web-config` (rustls, ring): the server's certificate chain and key,
//! the protocol versions, and the verifier of client certificates. Behind the `web-tls`
//! feature (on by default): ring's C part needs the target's SDK, which the macOS lint of
//! this crate does without.

use crate::web_config::{TlsServerConfig, WebConfigError};
use std::path::Path;
use tokio::net::TcpStream;

/// What accepts TLS connections (nothing, in a build without TLS).
#[cfg(feature = "web-tls")]
pub type Acceptor = tokio_rustls::TlsAcceptor;
#[cfg(not(feature = "web-tls"))]
pub type Acceptor = std::convert::Infallible;

/// The TLS handshake on an accepted connection, bounded in time; `None` when it fails (a
/// client without the right certificate, or one that says nothing).
#[cfg(feature = "web-tls")]
pub async fn handshake(
    acceptor: &Acceptor,
    tcp: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed on the API listener");
            None
        }
        Err(_) => None,
    }
}

#[cfg(not(feature = "web-tls"))]
pub async fn handshake(acceptor: &Acceptor, _tcp: TcpStream) -> Option<TcpStream> {
    match *acceptor {}
}

/// The TLS acceptor `tls` describes (`path`: the web configuration file, for errors).
#[cfg(feature = "web-tls")]
pub fn acceptor(tls: &TlsServerConfig, path: &Path) -> Result<Acceptor, WebConfigError> {
    use crate::web_config::{ClientAuth, TlsVersion};
    use rustls::pki_types::CertificateDer;
    use std::sync::Arc;
    let fail = |reason: String| WebConfigError::Tls {
        path: path.to_owned(),
        reason,
    };
    let open = |p: &Path| {
        std::fs::File::open(p)
            .map(std::io::BufReader::new)
            .map_err(|e| fail(format!("{}: {e}", p.display())))
    };
    let certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
        let list: Vec<_> = rustls_pemfile::certs(&mut open(p)?)
            .collect::<Result<_, _>>()
            .map_err(|e| fail(format!("{}: {e}", p.display())))?;
        if list.is_empty() {
            return Err(fail(format!("{}: no PEM certificate", p.display())));
        }
        Ok(list)
    };
    let chain = certs(&tls.cert_file)?;
    let key = rustls_pemfile::private_key(&mut open(&tls.key_file)?)
        .map_err(|e| fail(format!("{}: {e}", tls.key_file.display())))?
        .ok_or_else(|| fail(format!("{}: no PEM private key", tls.key_file.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        Some(TlsVersion::TLS13) => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS12, &rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| fail(e.to_string()))?;
    let builder = match (tls.client_auth_type, &tls.client_ca_file) {
        (
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert,
            Some(ca),
        ) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| fail(format!("{}: {e}", ca.display())))?;
            }
            let mut v =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            if tls.client_auth_type == ClientAuth::VerifyClientCertIfGiven {
                v = v.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(v.build().map_err(|e| fail(e.to_string()))?)
        }
        // `WebConfig::read` refuses the others.
        _ => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| fail(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// This build has no TLS: a web configuration asking for it is refused.
#[cfg(not(feature = "web-tls"))]
pub fn acceptor(_tls: &TlsServerConfig, path: &Path) -> Result<Acceptor, WebConfigError> {
    Err(WebConfigError::Tls {
        path: path.to_owned(),
        reason: "this build of the probe has no TLS (built without the web-tls feature)".into(),
    })
}
