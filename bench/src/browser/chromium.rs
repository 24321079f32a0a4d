//! The Chromium end of `tokenwire-bench browser`: finding and launching headless Chromium
//! with a profile of its own and the certificate's key trusted, its DevTools connection,
//! tabs with their Network events, and evaluating the page's JavaScript. The page logic
//! (what to run, the records, the facts) is the parent module's.

use super::{BrowserConfig, BrowserError, HEIGHT, WIDTH, cdp};
use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::browser::BrowserContextId;
use chromiumoxide::cdp::browser_protocol::network::EventResponseReceived;
use chromiumoxide::cdp::browser_protocol::target::CreateTargetParams;
use chromiumoxide::cdp::js_protocol::runtime::EvaluateParams;
use chromiumoxide::handler::viewport::Viewport;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Executable names tried, in order, when `--chromium` is not given.
pub(super) const CANDIDATES: [&str; 4] = [
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];
/// One HTTP response as the browser's network stack reported it.
#[derive(Debug, Clone)]
pub(super) struct NetResponse {
    pub(super) url: String,
    pub(super) protocol: Option<String>,
    pub(super) tls: Option<String>,
    pub(super) connection_id: u64,
}

/// A page and the Network events of its requests (chromiumoxide enables the domain).
pub(super) struct Tab {
    pub(super) page: Page,
    /// Tells this tab's connection ids from another context's.
    pub(super) serial: u64,
    pub(super) responses: std::sync::Arc<std::sync::Mutex<Vec<NetResponse>>>,
    pub(super) listener: tokio::task::JoinHandle<()>,
}

impl Tab {
    /// The responses since the last call.
    pub(super) fn take(&self) -> Vec<NetResponse> {
        std::mem::take(
            &mut *self
                .responses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The executable to launch.
pub fn find_chromium(explicit: Option<&Path>) -> Result<PathBuf, BrowserError> {
    if let Some(p) = explicit {
        return if p.exists() {
            Ok(p.to_owned())
        } else {
            Err(BrowserError::Missing(p.to_owned()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in CANDIDATES {
        for dir in std::env::split_paths(&path) {
            let exe = dir.join(name);
            if exe.is_file() {
                return Ok(exe);
            }
        }
    }
    Err(BrowserError::NotFound {
        tried: CANDIDATES.join(", "),
    })
}

/// The base64 SHA-256 of the certificate's public key, for Chromium's SPKI list.
pub fn spki_pin(cert: &Path) -> Result<String, BrowserError> {
    use base64::Engine as _;
    let bad = |reason: String| BrowserError::Certificate {
        path: cert.to_owned(),
        reason,
    };
    let pem = std::fs::read(cert).map_err(|e| bad(e.to_string()))?;
    let der = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| bad("no PEM CERTIFICATE block".into()))?;
    let hash = tokenwire_servers::certs::spki_sha256(&der).map_err(bad)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(hash))
}

/// A profile directory of our own (the SPKI list is honoured only with one), removed at
/// the end.
pub(super) struct Profile(PathBuf);

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Headless Chromium and the task that drives its DevTools connection.
pub(super) struct Chromium {
    pub(super) browser: chromiumoxide::Browser,
    handler: tokio::task::JoinHandle<()>,
    _profile: Profile,
}

impl Chromium {
    pub(super) async fn launch(cfg: &BrowserConfig) -> Result<Self, BrowserError> {
        let exe = find_chromium(cfg.chromium.as_deref())?;
        let pin = spki_pin(&cfg.cert)?;
        let profile = Profile(std::env::temp_dir().join(format!(
            "tokenwire-chromium-{}-{}",
            std::process::id(),
            crate::runner::unix_ns()
        )));
        let launch_err = |reason: String| BrowserError::Launch {
            exe: exe.clone(),
            reason,
        };
        let mut builder = chromiumoxide::BrowserConfig::builder()
            .chrome_executable(&exe)
            .new_headless_mode()
            .respect_https_errors()
            .user_data_dir(&profile.0)
            .window_size(WIDTH, HEIGHT)
            .viewport(Viewport {
                width: WIDTH,
                height: HEIGHT,
                ..Viewport::default()
            })
            .launch_timeout(Duration::from_secs(30))
            // One call of the page's run() lasts as long as its stream.
            .request_timeout(cfg.timeout + Duration::from_secs(30))
            .arg(format!("ignore-certificate-errors-spki-list={pin}"));
        if !cfg.quic_origins.is_empty() {
            builder = builder.arg("enable-quic").arg(format!(
                "origin-to-force-quic-on={}",
                cfg.quic_origins.join(",")
            ));
        }
        if running_as_root() {
            // Chromium's sandbox refuses to run as root.
            builder = builder.no_sandbox();
        }
        let config = builder.build().map_err(launch_err)?;
        let (browser, mut handler) = chromiumoxide::Browser::launch(config)
            .await
            .map_err(|e| launch_err(e.to_string()))?;
        let handler = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                if let Err(e) = event {
                    tracing::debug!(error = %e, "DevTools connection");
                }
            }
        });
        Ok(Self {
            browser,
            handler,
            _profile: profile,
        })
    }

    /// Opens the page (in `context`, or the default one) and waits for it to be ready.
    pub(super) async fn open(
        &self,
        url: &str,
        context: Option<BrowserContextId>,
        serial: u64,
    ) -> Result<Tab, BrowserError> {
        let page_err = |reason: String| BrowserError::Page {
            url: url.to_owned(),
            reason,
        };
        let mut params = CreateTargetParams::new(url);
        params.browser_context_id = context;
        let page = self
            .browser
            .new_page(params)
            .await
            .map_err(|e| page_err(e.to_string()))?;
        let mut events = page
            .event_listener::<EventResponseReceived>()
            .await
            .map_err(cdp)?;
        let responses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = responses.clone();
        let listener = tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                let r = &ev.response;
                let item = NetResponse {
                    url: r.url.clone(),
                    protocol: r.protocol.clone(),
                    tls: r.security_details.as_ref().map(|s| s.protocol.clone()),
                    connection_id: r.connection_id as u64,
                };
                log.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(item);
            }
        });
        let tab = Tab {
            page,
            serial,
            responses,
            listener,
        };
        let page = &tab.page;
        let ours: bool = eval(page, "typeof window.tokenwire === 'object'")
            .await
            .map_err(|e| page_err(e.to_string()))?;
        if !ours {
            let title: String = eval(page, "document.title").await.unwrap_or_default();
            return Err(page_err(format!(
                "it is not tokenwire's page (title {title:?})"
            )));
        }
        let _probe_up: bool = eval(page, "window.tokenwireReady").await?;
        Ok(tab)
    }

    pub(super) async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.browser.close()).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.browser.wait()).await;
        self.handler.abort();
    }
}

#[cfg(target_os = "linux")]
pub(super) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn running_as_root() -> bool {
    false
}

/// Evaluates `js` in the page, awaiting a promise, and returns its value.
pub(super) async fn eval<T: DeserializeOwned>(page: &Page, js: &str) -> Result<T, BrowserError> {
    let params = EvaluateParams::builder()
        .expression(js)
        .await_promise(true)
        .return_by_value(true)
        .build()
        .map_err(cdp)?;
    page.evaluate_expression(params)
        .await
        .map_err(cdp)?
        .into_value()
        .map_err(cdp)
}
