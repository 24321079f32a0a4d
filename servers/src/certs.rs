//! The companions' TLS identity: `certs/cert.pem` and `certs/key.pem`.
//!
//! Generated with rcgen when absent: ECDSA P-256, SAN localhost, 127.0.0.1 and ::1, valid
//! for 14 days — the longest validity a browser accepts for a certificate pinned by hash
//! (WebTransport `serverCertificateHashes`). An expired (or nearly expired) certificate is
//! replaced with a warning rather than served. The key file is written with mode 0600.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use time::OffsetDateTime;

/// Validity of a generated certificate.
pub const VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);
/// A certificate with less than this left is renewed at start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(3600);
/// Subject alternative names of a generated certificate.
pub const SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no PEM CERTIFICATE block in the file")]
    NoCertificate(PathBuf),
    #[error("{0}: no PEM private key block in the file")]
    NoKey(PathBuf),
    #[error("{path}: not a parseable X.509 certificate: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error(
        "{present} exists but {missing} does not; remove {present} to have a new pair generated, or supply both"
    )]
    HalfPair { present: PathBuf, missing: PathBuf },
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A loaded certificate and key, in DER.
pub struct Identity {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
    pub not_after: OffsetDateTime,
    /// True when this call generated the pair.
    pub generated: bool,
}

impl Identity {
    /// SHA-256 of the certificate's DER: the value for WebTransport `serverCertificateHashes`.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.cert_der).into()
    }

    /// Expiry in RFC 3339.
    pub fn not_after_rfc3339(&self) -> String {
        self.not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| self.not_after.to_string())
    }

    /// The SHA-256 as colon-separated hex, as browsers and openssl show it.
    pub fn sha256_hex(&self) -> String {
        self.sha256()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo: the pin Chromium's
/// `--ignore-certificate-errors-spki-list` takes (base64), which trusts this key alone
/// rather than turning verification off.
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], String> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| e.to_string())?;
    Ok(Sha256::digest(x509.tbs_certificate.subject_pki.raw).into())
}

/// Paths of the pair inside `dir`.
pub fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Loads the pair from `dir`, generating it when absent or replacing it when it expires
/// within [`RENEW_BEFORE`].
pub fn ensure(dir: &Path) -> Result<Identity, CertError> {
    let (cert_path, key_path) = paths(dir);
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => return generate(dir),
        (true, false) => {
            return Err(CertError::HalfPair {
                present: cert_path,
                missing: key_path,
            });
        }
        (false, true) => {
            return Err(CertError::HalfPair {
                present: key_path,
                missing: cert_path,
            });
        }
        (true, true) => {}
    }
    let id = load(&cert_path, &key_path)?;
    let left = id.not_after - OffsetDateTime::now_utc();
    if left < RENEW_BEFORE {
        tracing::warn!(
            cert = %cert_path.display(),
            not_after = %id.not_after,
            "certificate expired or about to expire; generating a new one"
        );
        return generate(dir);
    }
    Ok(id)
}

/// Generates a new pair in `dir` (replacing any), key file mode 0600.
pub fn generate(dir: &Path) -> Result<Identity, CertError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CertError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let (cert_path, key_path) = paths(dir);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params =
        rcgen::CertificateParams::new(SANS.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "tokenwire localhost");
    params.distinguished_name = dn;
    // Back-date a minute for clock skew; the whole period stays within 14 days.
    let not_before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    params.not_before = not_before;
    params.not_after = not_before + VALIDITY;
    let cert = params.self_signed(&key)?;

    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io(&cert_path))?;
    tracing::info!(cert = %cert_path.display(), "generated a new self-signed certificate (valid 14 days)");
    let mut id = load(&cert_path, &key_path)?;
    id.generated = true;
    Ok(id)
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    let _ = fs::remove_file(&tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, CertError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|source| CertError::Io {
            path: p.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let cert_der = rustls_pemfile::certs(&mut &cert_pem[..])
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| CertError::NoCertificate(cert_path.to_owned()))?
        .to_vec();
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| CertError::NoKey(key_path.to_owned()))?
        .secret_der()
        .to_vec();
    let (_, x509) =
        x509_parser::parse_x509_certificate(&cert_der).map_err(|e| CertError::BadCertificate {
            path: cert_path.to_owned(),
            reason: e.to_string(),
        })?;
    let not_after = x509.validity().not_after.to_datetime();
    Ok(Identity {
        cert_path: cert_path.to_owned(),
        key_path: key_path.to_owned(),
        cert_der,
        key_der,
        not_after,
        generated: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tokenwire-certs-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempdir("reuse");
        let a = ensure(&dir).unwrap();
        assert!(a.generated);
        let b = ensure(&dir).unwrap();
        assert!(!b.generated);
        assert_eq!(a.sha256(), b.sha256());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&a.key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (_, x) = x509_parser::parse_x509_certificate(&a.cert_der).unwrap();
        let v = x.validity();
        assert!(v.not_after.timestamp() - v.not_before.timestamp() <= 14 * 24 * 3600);
        let sans = x.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(x.public_key().algorithm.algorithm.to_id_string() == "1.2.840.10045.2.1"); // id-ecPublicKey
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replaces_an_expired_certificate() {
        let dir = tempdir("expired");
        fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = OffsetDateTime::now_utc() - time::Duration::days(20);
        params.not_after = OffsetDateTime::now_utc() - time::Duration::days(6);
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = paths(&dir);
        fs::write(&c, cert.pem()).unwrap();
        fs::write(&k, key.serialize_pem()).unwrap();
        let id = ensure(&dir).unwrap();
        assert!(id.generated);
        assert!(id.not_after > OffsetDateTime::now_utc() + time::Duration::days(13));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_half_a_pair_and_garbage() {
        let dir = tempdir("half");
        fs::create_dir_all(&dir).unwrap();
        let (c, k) = paths(&dir);
        fs::write(&c, "not a pem").unwrap();
        assert!(matches!(ensure(&dir), Err(CertError::HalfPair { .. })));
        fs::write(&k, "not a pem").unwrap();
        assert!(matches!(ensure(&dir), Err(CertError::NoCertificate(_))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
