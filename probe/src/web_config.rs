//! `--web-config FILE`: TLS, client certificates and basic auth for the probe's HTTP
//! endpoints, in the file format of the Prometheus exporter toolkit (`--web.config.file`),
//! so that operators reuse theirs and `promtool check web-config` checks it. The default,
//! with no file, stays plain HTTP on loopback and open.
//!
//! Supported: `tls_server_config` (`cert_file`, `key_file`, `client_auth_type`
//! `NoClientCert`, `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert`,
//! `client_ca_file`, `min_version`) and `basic_auth_users` (bcrypt hashes). Anything else
//! in the file is refused with its name, rather than silently not applied.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: TLS: {reason}")]
    Tls { path: PathBuf, reason: String },
}

/// How the probe asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ClientAuth {
    NoClientCert,
    /// A client may present a certificate; one it presents must verify.
    VerifyClientCertIfGiven,
    /// A client must present a certificate that verifies against `client_ca_file`.
    RequireAndVerifyClientCert,
    /// The toolkit's modes that take a certificate without verifying it: refused.
    RequestClientCert,
    RequireAnyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    TLS12,
    TLS13,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default = "no_client_cert")]
    pub client_auth_type: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    pub min_version: Option<TlsVersion>,
}

fn no_client_cert() -> ClientAuth {
    ClientAuth::NoClientCert
}

/// The file, as read.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    pub tls_server_config: Option<TlsServerConfig>,
    /// User name to bcrypt hash.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
}

impl WebConfig {
    /// Reads and checks `path`: relative file names in it are relative to its directory,
    /// as the toolkit has them.
    pub fn read(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |reason: String| WebConfigError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let mut cfg: WebConfig = if text.trim().is_empty() {
            WebConfig::default()
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| invalid(e.to_string()))?
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        if let Some(tls) = &mut cfg.tls_server_config {
            for f in [&mut tls.cert_file, &mut tls.key_file]
                .into_iter()
                .chain(tls.client_ca_file.as_mut())
            {
                if f.is_relative() {
                    *f = dir.join(&*f);
                }
            }
            match tls.client_auth_type {
                ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
                    return Err(invalid(format!(
                        "client_auth_type {:?} takes certificates without verifying them; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file",
                        tls.client_auth_type
                    )));
                }
                ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
                    if tls.client_ca_file.is_none() =>
                {
                    return Err(invalid(format!(
                        "client_auth_type {:?} needs client_ca_file",
                        tls.client_auth_type
                    )));
                }
                _ => {}
            }
        }
        for (user, hash) in &cfg.basic_auth_users {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(invalid(format!(
                    "basic_auth_users: {user:?}'s password is not a bcrypt hash (make one with `tokenwire-probe hash-password`)"
                )));
            }
        }
        Ok(cfg)
    }

    /// Whether requests must carry basic auth.
    pub fn needs_auth(&self) -> bool {
        !self.basic_auth_users.is_empty()
    }

    /// Whether an `Authorization` header's value names a user with the right password
    /// (bcrypt: tens of milliseconds; call it off the capture loop).
    pub fn authorized(&self, authorization: Option<&str>) -> bool {
        use base64::Engine;
        let Some(creds) = authorization.and_then(|h| h.strip_prefix("Basic ")) else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(creds.trim()) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = decoded.split_once(':') else {
            return false;
        };
        self.basic_auth_users
            .get(user)
            .is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("web.yml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_the_toolkit_format_and_refuses_what_it_cannot_honour() {
        let dir = std::env::temp_dir().join(format!("tokenwire-webcfg-{}", std::process::id()));
        let hash = bcrypt::hash("secret", 4).unwrap();
        let p = write(
            &dir,
            &format!(
                "tls_server_config:\n  cert_file: tls.crt\n  key_file: /abs/tls.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\nbasic_auth_users:\n  alice: {hash}\n"
            ),
        );
        let cfg = WebConfig::read(&p).unwrap();
        let tls = cfg.tls_server_config.as_ref().unwrap();
        assert_eq!(tls.cert_file, dir.join("tls.crt"));
        assert_eq!(tls.key_file, PathBuf::from("/abs/tls.key"));
        use base64::Engine;
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(cfg.authorized(Some(&basic("alice:secret"))));
        assert!(!cfg.authorized(Some(&basic("alice:wrong"))));
        assert!(!cfg.authorized(Some(&basic("bob:secret"))));
        assert!(!cfg.authorized(Some("Basic !!!")));
        assert!(!cfg.authorized(None));

        for (bad, says) in [
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [X]\n",
                "cipher_suites",
            ),
            (
                "http_server_config:\n  http2: false\n",
                "http_server_config",
            ),
            ("basic_auth_users:\n  alice: plain\n", "bcrypt"),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
                "without verifying",
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
                "client_ca_file",
            ),
            (": [", ""),
        ] {
            let e = WebConfig::read(&write(&dir, bad)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
        assert!(
            WebConfig::read(&write(&dir, ""))
                .unwrap()
                .tls_server_config
                .is_none()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
