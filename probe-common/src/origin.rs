//! Which browser pages may read a local server's answers across origins: pages served from
//! this machine's loopback (the SSE relay's browser page, docs/browser.md). The probe's API
//! (what it knows of this machine's connections) and the companions on other ports than
//! the page's (`sse-h2`) answer those with `Access-Control-Allow-Origin`; a site on the
//! network gets nothing it can read.

/// Whether `origin` (an `Origin` header's value) is `http(s)://localhost`, `127.0.0.1` or
/// `[::1]`, with any port.
pub fn loopback(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .any(|h| match rest.strip_prefix(h) {
            Some("") => true,
            Some(port) => port
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
            None => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_pages_may_read() {
        for o in [
            "https://127.0.0.1:8080",
            "http://localhost",
            "https://[::1]:8080",
        ] {
            assert!(loopback(o), "{o}");
        }
        for o in [
            "https://example.com",
            "https://localhost.example.com",
            "https://127.0.0.1:",
            "null",
            "file://",
        ] {
            assert!(!loopback(o), "{o}");
        }
    }
}
