//! Cross-origin requests, answered as Ollama answers them with its default settings
//! (`OLLAMA_ORIGINS` unset; Ollama uses gin-contrib/cors): browser pages served from
//! localhost, 127.0.0.1 or 0.0.0.0 on any port may call the API, a few app schemes too;
//! any other origin gets 403. The browser page (docs/browser.md) reaches the model this
//! way, through the raw proxy, which passes `Origin` and the answer's headers through.

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

/// Hosts Ollama allows by default, each over http and https, with or without a port.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "0.0.0.0"];
/// Schemes whose every origin is allowed (Ollama's app schemes, and browser extensions).
const ANY_ORIGIN_SCHEMES: [&str; 8] = [
    "app://",
    "file://",
    "tauri://",
    "vscode-webview://",
    "vscode-file://",
    "chrome-extension://",
    "moz-extension://",
    "safari-web-extension://",
];
const ALLOW_METHODS: &str = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS";
const ALLOW_HEADERS: &str = "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,OpenAI-Beta,x-stainless-arch,x-stainless-async,x-stainless-custom-poll-interval,x-stainless-helper-method,x-stainless-lang,x-stainless-os,x-stainless-package-version,x-stainless-poll-helper,x-stainless-retry-count,x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout";
/// Preflight answers are cached for 12 hours (gin-contrib/cors's default).
const MAX_AGE: &str = "43200";

/// What a request's `Origin` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No `Origin`, or the server's own: not a cross-origin request.
    None,
    /// An allowed origin: answer with it in `Access-Control-Allow-Origin`.
    Allowed(HeaderValue),
    /// Any other origin: 403, before the request is handled.
    Forbidden,
}

/// Whether Ollama's default origin list admits `origin`.
pub fn origin_allowed(origin: &str) -> bool {
    if ANY_ORIGIN_SCHEMES.iter().any(|s| origin.starts_with(s)) {
        return true;
    }
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    LOOPBACK_HOSTS.iter().any(|h| match rest.strip_prefix(h) {
        Some("") => true,
        Some(port) => port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    })
}

/// Classifies a request by its `Origin` and `Host` headers.
pub fn check(headers: &HeaderMap) -> Cors {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Cors::None;
    };
    let Ok(o) = origin.to_str() else {
        return Cors::Forbidden;
    };
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok())
        && (o.strip_prefix("http://") == Some(host) || o.strip_prefix("https://") == Some(host))
    {
        return Cors::None;
    }
    if origin_allowed(o) {
        Cors::Allowed(origin.clone())
    } else {
        Cors::Forbidden
    }
}

/// The answer to a preflight from an allowed origin: 204 with what may be sent.
pub fn preflight<B: Default>(origin: HeaderValue) -> Response<B> {
    let mut r = Response::new(B::default());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(ALLOW_METHODS),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOW_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    allow(h, origin);
    r
}

/// Adds the allowed origin to an answer.
pub fn allow(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    #[test]
    fn admits_what_ollama_admits_by_default() {
        for o in [
            "https://127.0.0.1:8080",
            "http://localhost",
            "https://localhost:3000",
            "http://0.0.0.0:1",
            "app://anything",
            "chrome-extension://abc",
        ] {
            assert!(origin_allowed(o), "{o}");
        }
        for o in [
            "https://example.com",
            "https://127.0.0.1.example.com",
            "https://localhost:",
            "https://localhost:80x",
            "https://[::1]:8080",
            "null",
            "",
        ] {
            assert!(!origin_allowed(o), "{o}");
        }
    }

    #[test]
    fn classifies_requests() {
        assert_eq!(check(&HeaderMap::new()), Cors::None);
        assert_eq!(
            check(&headers("http://127.0.0.1:11434", "127.0.0.1:11434")),
            Cors::None
        );
        assert_eq!(
            check(&headers("https://127.0.0.1:8080", "127.0.0.1:11434")),
            Cors::Allowed(HeaderValue::from_static("https://127.0.0.1:8080"))
        );
        assert_eq!(
            check(&headers("https://evil.example", "127.0.0.1:11434")),
            Cors::Forbidden
        );
        let r: Response<()> = preflight(HeaderValue::from_static("https://localhost:8080"));
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://localhost:8080"
        );
    }
}
