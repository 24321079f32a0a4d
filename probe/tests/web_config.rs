//! `--web-config`: a probe whose endpoints want TLS with a client certificate and basic
//! auth, scraped by a real TLS client (rustls). With the right client certificate and
//! password: 200. Without a client certificate: the handshake fails. Without basic auth,
//! or with a wrong password or user: 401. `--metrics-only` answers /api/* with 404. And
//! promtool (Debian's prometheus package) accepts the web configuration deploy/ ships.
//! Runs as root.

mod common;

use common::live::{Probe, spans_path};
use common::require_root;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// A CA, the probe's certificate and a client's, as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
    ca_der: Vec<u8>,
    client_cert: String,
    client_key: String,
}

fn pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "tokenwire test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        vec!["prometheus".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), server_cert).unwrap();
    std::fs::write(dir.join("tls.key"), server_key).unwrap();
    Pki {
        dir: dir.to_owned(),
        ca_der: ca.der().to_vec(),
        client_cert,
        client_key,
    }
}

/// GET `path` over TLS, with the client certificate if `with_cert` and the header
/// `Authorization` if given: the status, or the TLS error.
fn get(
    api: SocketAddr,
    pki: &Pki,
    with_cert: bool,
    authorization: Option<&str>,
    path: &str,
) -> Result<u16, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(pki.ca_der.clone()))
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = if with_cert {
        let certs = rustls_pemfile::certs(&mut pki.client_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut pki.client_key.as_bytes())
            .unwrap()
            .unwrap();
        builder.with_client_auth_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(api).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: probe\r\n{auth}Connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    match tls.read_to_end(&mut resp) {
        Ok(_) => {}
        // The server's close_notify may race the TCP close; what was read is the answer.
        Err(_) if !resp.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&resp);
    text.get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))
}

fn basic(user_password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

#[test]
fn endpoints_want_the_client_certificate_and_the_password() {
    require_root();
    let dir = std::env::temp_dir().join(format!("tokenwire-webcfg-test-{}", std::process::id()));
    let pki = pki(&dir);
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let web = pki.dir.join("web-config.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: {hash}\n"
        ),
    )
    .unwrap();
    let spans = spans_path("webcfg");
    let args = ["--web-config".to_owned(), web.display().to_string()];
    let probe = Probe::start_with("ebpf", &spans, &[], &args);
    let ok = basic("prometheus:s3cret");

    assert_eq!(get(probe.api, &pki, true, Some(&ok), "/metrics"), Ok(200));
    assert_eq!(
        get(probe.api, &pki, true, Some(&ok), "/api/requests"),
        Ok(200)
    );
    assert_eq!(get(probe.api, &pki, true, None, "/metrics"), Ok(401));
    for wrong in ["prometheus:guess", "someone:s3cret", "prometheus"] {
        assert_eq!(
            get(probe.api, &pki, true, Some(&basic(wrong)), "/metrics"),
            Ok(401),
            "{wrong}"
        );
    }
    let no_cert = get(probe.api, &pki, false, Some(&ok), "/metrics");
    assert!(no_cert.is_err(), "no client certificate: {no_cert:?}");
    // Plain HTTP to a TLS port gets no answer.
    let mut plain = std::net::TcpStream::connect(probe.api).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = plain.write_all(b"GET /metrics HTTP/1.1\r\nHost: probe\r\n\r\n");
    let mut got = String::new();
    let _ = plain.read_to_string(&mut got);
    assert!(!got.contains("tokenwire_"), "{got}");
    drop(probe);

    // --metrics-only: /metrics answers, /api/* does not.
    let args = [
        "--web-config".to_owned(),
        web.display().to_string(),
        "--metrics-only".to_owned(),
    ];
    let probe = Probe::start_with("ebpf", &spans, &[], &args);
    assert_eq!(get(probe.api, &pki, true, Some(&ok), "/metrics"), Ok(200));
    for path in ["/api/requests", "/api/connections", "/api/flows"] {
        assert_eq!(
            get(probe.api, &pki, true, Some(&ok), path),
            Ok(404),
            "{path}"
        );
    }
    drop(probe);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn promtool_accepts_the_web_config_deploy_ships() {
    // The file names its certificate, key and CA relative to itself (the Secret's keys,
    // mounted beside it): here, beside a copy of it, a test PKI's.
    let dir = std::env::temp_dir().join(format!("tokenwire-webcfg-deploy-{}", std::process::id()));
    pki(&dir);
    let file = dir.join("web-config.yml");
    std::fs::copy(Path::new(ROOT).join("deploy/web-config.yml"), &file).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "web-config"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The probe reads the same file, and builds its TLS from it.
    let cfg = tokenwire_probe::web_config::WebConfig::read(&file).unwrap();
    assert!(cfg.needs_auth());
    let tls = cfg.tls_server_config.as_ref().unwrap();
    tokenwire_probe::web_tls::acceptor(tls, &file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
