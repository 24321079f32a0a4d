//! The probe's HTTP routes: any method, path and query string maps to a query or a clean
//! error answer (400, 404, 405), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwire_probe::api::route;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (head, query) = match text.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (text, None),
    };
    let (method, path) = head.split_once(' ').unwrap_or(("GET", head));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return };
    if let Err((status, _, body)) = route(&method, path, query) {
        assert!(matches!(status.as_u16(), 400 | 404 | 405), "{status}");
        assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "{body}");
    }
});
