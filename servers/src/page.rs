//! The browser page the SSE relay serves at `GET /`: a prompt box and a panel per approach
//! a browser can use, each streaming the same prompt, with the probe's wire figures per
//! request (docs/browser.md). One self-contained HTML file (`assets/page.html`, no CDN, no
//! build step); the server fills in the approaches from the registry, where their
//! companions are and the certificate hash WebTransport pins.

use serde::Serialize;
use std::collections::BTreeMap;
use tokenwire_probe_common::approach::Approach;

const TEMPLATE: &str = include_str!("../assets/page.html");
const PLACEHOLDER: &str = "/*TOKENWIRE_CONFIG*/";

/// The approach whose companion serves the page: the page calls it on its own origin.
pub const ORIGIN: Approach = Approach::Sse;

/// The probe's API port (`tokenwire-probe run --listen`'s default).
pub const DEFAULT_PROBE_PORT: u16 = 9464;

/// Where the page finds the other companions and the probe: ports on the page's own host
/// name, so one page works as localhost, 127.0.0.1 or ::1 (`?raw=`, `?wt=`, ... and
/// `?probe=` override the URLs in the browser).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageLinks {
    /// Each approach's companion port.
    pub ports: BTreeMap<Approach, u16>,
    pub probe_port: u16,
}

impl Default for PageLinks {
    /// The companions' and the probe's default ports.
    fn default() -> Self {
        Self {
            ports: Approach::ALL.map(|a| (a, a.port())).into(),
            probe_port: DEFAULT_PROBE_PORT,
        }
    }
}

/// One approach as the page shows it: the registry's entry.
#[derive(Debug, Clone, Serialize)]
pub struct PageApproach {
    /// The registry's name: the page's panel and streamer for it.
    pub id: Approach,
    pub title: &'static str,
    /// The probe's label, to ask for the request's record.
    pub probe: &'static str,
    pub path: &'static str,
}

/// Everything the page is told.
#[derive(Debug, Clone, Serialize)]
pub struct PageConfig {
    #[serde(flatten)]
    pub links: PageLinks,
    /// The approaches a browser can use, in the registry's order.
    pub approaches: Vec<PageApproach>,
    /// The approach whose companion serves the page (its own origin).
    pub origin: Approach,
    /// Hex SHA-256 of the certificate's DER, for `serverCertificateHashes`.
    pub cert_sha256: String,
    /// Model the raw panel asks for.
    pub model: String,
}

impl PageConfig {
    pub fn new(links: PageLinks, cert_sha256: String, model: String) -> Self {
        let approaches = Approach::ALL
            .into_iter()
            .filter(|a| a.spec().browser)
            .map(|a| PageApproach {
                id: a,
                title: a.title(),
                probe: a.label(),
                path: a.path(),
            })
            .collect();
        Self {
            links,
            approaches,
            origin: ORIGIN,
            cert_sha256,
            model,
        }
    }

    /// The page with this configuration in it.
    pub fn html(&self) -> String {
        // Inside <script type="application/json">: no `<` may end the element early.
        let json = serde_json::to_string(self)
            .unwrap_or_else(|_| "{}".to_owned())
            .replace('<', "\\u003c");
        TEMPLATE.replacen(PLACEHOLDER, &json, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_in_the_config_once_and_safely() {
        let mut cfg = PageConfig::new(PageLinks::default(), "ab".repeat(32), "gemma3:12b".into());
        cfg.model = "</script><script>alert(1)".into();
        let html = cfg.html();
        assert!(!html.contains(PLACEHOLDER));
        assert!(!html.contains("</script><script>alert"));
        let start = html.find("type=\"application/json\">").unwrap() + 24;
        let end = start + html[start..].find("</script>").unwrap();
        let back: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
        assert_eq!(back["model"], "</script><script>alert(1)");
        assert_eq!(back["ports"]["raw"], 11435);
        let wt = back["approaches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == "wt")
            .unwrap();
        assert_eq!(wt["probe"], "webtransport");
        assert_eq!(
            back["approaches"].as_array().unwrap().len(),
            Approach::ALL.iter().filter(|a| a.spec().browser).count()
        );
        assert_eq!(back["cert_sha256"], "ab".repeat(32));
    }
}
