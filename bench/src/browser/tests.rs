//! `browser`'s unit tests.

use super::chromium::find_chromium;
use super::*;

#[test]
fn a_missing_chromium_is_named() {
    let e = find_chromium(Some(Path::new("/nonexistent/chromium"))).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/chromium"), "{e}");
}

#[test]
fn the_h3_origin_is_the_page_host_at_the_registry_port() {
    assert_eq!(
        default_h3_origin("https://127.0.0.1:8080/?x=1"),
        "127.0.0.1:8444"
    );
    assert_eq!(default_h3_origin("https://[::1]:8080/"), "[::1]:8444");
    assert_eq!(
        default_h3_origin("https://example.org/"),
        "example.org:8444"
    );
}

#[test]
fn the_probe_rides_in_the_page_url() {
    let mut cfg = BrowserConfig {
        page_url: "https://127.0.0.1:8080/".into(),
        approaches: vec![],
        jobs: vec![],
        reuse: true,
        timeout: Duration::from_secs(1),
        warmup: false,
        chromium: None,
        cert: PathBuf::new(),
        quic_origins: vec![],
        probe: Some("127.0.0.1:9464".parse().unwrap()),
        screenshot: None,
    };
    assert_eq!(
        page_url(&cfg),
        "https://127.0.0.1:8080/?probe=http://127.0.0.1:9464"
    );
    cfg.page_url.push_str("?wt=https://h:1/wt");
    assert!(page_url(&cfg).ends_with("&probe=http://127.0.0.1:9464"));
}
