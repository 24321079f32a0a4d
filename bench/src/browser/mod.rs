//! `tokenwire-bench browser`: the approaches from a real browser. Launches headless
//! Chromium (the system's), opens the SSE relay's page (`GET /`, docs/browser.md) and
//! drives it over the DevTools protocol (chromiumoxide): each prompt is one call of the
//! page's `tokenwire.run(approach, prompt)`, which streams with the browser's own fetch or
//! WebTransport and measures with `performance.now()`. The results become the same
//! [`ApproachRun`]s as `run`'s, so the tables, JSON, CSV and the probe's wire figures are
//! the same too.
//!
//! Trust: WebTransport pins the certificate by hash (`serverCertificateHashes`, from the
//! page); raw and SSE are trusted by the certificate's key alone
//! (`--ignore-certificate-errors-spki-list`), with verification left on for the rest.

mod chromium;

use crate::approach::Approach;
use crate::record::{Failure, RequestRecord};
use crate::runner::ApproachRun;
use crate::workload::Job;
use chromium::{Chromium, NetResponse, Tab, eval};
use chromiumoxide::Page;
use chromiumoxide::cdp::browser_protocol::page::CaptureScreenshotFormat;
use chromiumoxide::cdp::browser_protocol::target::CreateBrowserContextParams;
use chromiumoxide::page::ScreenshotParams;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The window the page is laid out (and screenshotted) in.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 620;
/// Tokens every panel shows before the mid-stream screenshot is taken.
const SCREENSHOT_TOKENS: u64 = 15;

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error(
        "no Chromium found (tried {tried}): install the Debian package `chromium` (apt-get install chromium; `cargo xtask setup` does), or pass --chromium PATH"
    )]
    NotFound { tried: String },
    #[error("--chromium {0}: no such file")]
    Missing(PathBuf),
    #[error("the certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("starting Chromium ({exe}): {reason}")]
    Launch { exe: PathBuf, reason: String },
    #[error(
        "the page at {url} did not load: {reason} (is `tokenwire-servers all` serving there, with the certificate --cert names?)"
    )]
    Page { url: String, reason: String },
    #[error("the DevTools protocol: {0}")]
    Cdp(String),
    #[error("writing the screenshot {path}: {source}")]
    Screenshot {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn cdp(e: impl std::fmt::Display) -> BrowserError {
    BrowserError::Cdp(e.to_string())
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    /// The SSE relay's page, e.g. `https://127.0.0.1:8080/`; the probe's address is added
    /// as `?probe=`.
    pub page_url: String,
    pub approaches: Vec<Approach>,
    pub jobs: Vec<Job>,
    /// One page for every prompt (the browser keeps its connections, one WebTransport
    /// session); otherwise every prompt opens the page in a new browser context (an
    /// incognito profile: new connections for everything, as a first visit).
    pub reuse: bool,
    pub timeout: Duration,
    /// One uncounted prompt per approach first (with reuse, it also opens the connection).
    pub warmup: bool,
    /// Chromium's executable; default: the first of [`CANDIDATES`] on PATH.
    pub chromium: Option<PathBuf>,
    /// The companions' certificate (PEM), trusted by its key.
    pub cert: PathBuf,
    /// `HOST:PORT` origins Chromium reaches over QUIC (HTTP/3) from the first request
    /// (`--origin-to-force-quic-on`): the sse-h3 companion's.
    pub quic_origins: Vec<String>,
    /// The probe's API, for the page's live wire figures.
    pub probe: Option<std::net::SocketAddr>,
    /// Where to write a PNG of the page mid-stream (all three panels at once, after the
    /// measured prompts).
    pub screenshot: Option<PathBuf>,
}

/// What the browser did, beyond the records.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BrowserFacts {
    /// Chromium's product string, e.g. `Chrome/156.0.8078.108` (headless).
    pub product: String,
    pub user_agent: String,
    /// Per approach, what the browser chose for the measured requests.
    pub approaches: Vec<ApproachFacts>,
}

/// How the browser carried one approach's measured requests: from the DevTools protocol's
/// Network events for fetch (they see cross-origin connections the page cannot), from the
/// page for WebTransport sessions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApproachFacts {
    pub approach: Approach,
    /// HTTP versions negotiated (ALPN), e.g. `http/1.1`; WebTransport: `h3`.
    pub protocols: Vec<String>,
    /// TLS versions, e.g. `TLS 1.3` (QUIC's is always 1.3).
    pub tls: Vec<String>,
    /// Connections (WebTransport: sessions) the measured requests used.
    pub connections: u64,
}

/// The browser run: one [`ApproachRun`] per approach, and the facts.
pub struct BrowserRun {
    pub runs: Vec<ApproachRun>,
    pub facts: BrowserFacts,
    /// Each panel when the screenshot was taken.
    pub screenshot: Option<BTreeMap<String, Progress>>,
}

/// What the page's `tokenwire.run` resolves to.
#[derive(Debug, Deserialize)]
struct PageResult {
    started_unix_ms: f64,
    ttft_ms: Option<f64>,
    gaps_ms: Vec<f64>,
    total_ms: f64,
    tokens: u64,
    tokens_reported: Option<u64>,
    app_bytes: u64,
    text: String,
    error: Option<String>,
    failure: Option<String>,
    /// The WebTransport session (numbered by the page) that carried the request.
    session: Option<u64>,
    /// The URL the page streamed from (which tells `sse` from `sse-h2`: one path, two
    /// ports).
    #[serde(default)]
    url: Option<String>,
}

/// The sse-h3 companion's origin by default: the page's host at the registry's port.
pub fn default_h3_origin(page_url: &str) -> String {
    let host = page_url
        .split_once("://")
        .map_or(page_url, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    // Drop the page's port (the host may be a bracketed IPv6 address).
    let host = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    format!("{host}:{}", Approach::SseH3.port())
}

/// The page's URL with the probe's address for its wire figures.
fn page_url(cfg: &BrowserConfig) -> String {
    match cfg.probe {
        Some(addr) => {
            let sep = if cfg.page_url.contains('?') { '&' } else { '?' };
            format!("{}{sep}probe=http://{addr}", cfg.page_url)
        }
        None => cfg.page_url.clone(),
    }
}

/// One prompt through `page`.
async fn run_one(
    page: &Page,
    approach: Approach,
    job: &Job,
    reuse: bool,
    timeout: Duration,
) -> Result<PageResult, BrowserError> {
    let js = format!(
        "window.tokenwire.run({}, {}, {{ reuse: {reuse}, timeout_ms: {} }})",
        serde_json::to_string(approach.as_str()).map_err(cdp)?,
        serde_json::to_string(&job.prompt).map_err(cdp)?,
        timeout.as_millis()
    );
    eval(page, &js).await
}

fn record(approach: Approach, job: &Job, r: PageResult, from_unix_ns: u64) -> RequestRecord {
    let ms = |v: f64| Duration::from_secs_f64(v.max(0.0) / 1e3);
    let started_ns = (r.started_unix_ms * 1e6) as u64;
    RequestRecord {
        approach,
        prompt_index: job.prompt_index,
        round: job.round,
        start_offset_s: started_ns.saturating_sub(from_unix_ns) as f64 / 1e9,
        start_unix_ns: started_ns,
        ttft: r.ttft_ms.map(ms),
        gaps: r.gaps_ms.into_iter().map(ms).collect(),
        total: Some(ms(r.total_ms)),
        tokens_counted: r.tokens,
        tokens_reported: r.tokens_reported,
        app_bytes: r.app_bytes,
        text: r.text,
        failure: r.error.as_ref().map(|_| {
            r.failure
                .as_deref()
                .and_then(Failure::from_name)
                .unwrap_or(Failure::Malformed)
        }),
        error: r.error,
    }
}

/// Runs every approach's prompts in the browser, then the screenshot, then closes it.
pub async fn run(cfg: &BrowserConfig) -> Result<BrowserRun, BrowserError> {
    let chromium = Chromium::launch(cfg).await?;
    let result = drive(&chromium, cfg).await;
    chromium.close().await;
    result
}

async fn drive(chromium: &Chromium, cfg: &BrowserConfig) -> Result<BrowserRun, BrowserError> {
    let url = page_url(cfg);
    let version = chromium.browser.version().await.map_err(cdp)?;
    let mut facts = BrowserFacts {
        product: version.product.clone(),
        user_agent: version.user_agent.clone(),
        approaches: Vec::new(),
    };
    // With reuse, one page for everything; fresh, a page per prompt in its own context.
    let shared = if cfg.reuse {
        Some(chromium.open(&url, None, 0).await?)
    } else {
        None
    };
    let mut serial = 0;
    let mut runs = Vec::new();
    for &approach in &cfg.approaches {
        if cfg.warmup {
            let job = cfg.jobs.first().cloned().unwrap_or(Job {
                prompt_index: 0,
                round: 0,
                prompt: "warm-up".into(),
            });
            serial += 1;
            let (r, _) =
                prompt(chromium, shared.as_ref(), &url, approach, &job, cfg, serial).await?;
            if let Some(e) = r.error {
                runs.push(ApproachRun::not_run(
                    &cfg.jobs,
                    approach,
                    format!("warm-up request failed: {e}"),
                ));
                continue;
            }
        }
        if let Some(tab) = &shared {
            tab.take();
        }
        let measured_from_unix_ns = crate::runner::unix_ns();
        let mut records = Vec::new();
        let mut seen = Seen::default();
        for job in &cfg.jobs {
            serial += 1;
            let (r, responses) =
                prompt(chromium, shared.as_ref(), &url, approach, job, cfg, serial).await?;
            let tab = if shared.is_some() { 0 } else { serial };
            seen.add(approach, tab, &r, &responses);
            records.push(record(approach, job, r, measured_from_unix_ns));
        }
        let measured_to_unix_ns = crate::runner::unix_ns();
        let f = seen.facts(approach);
        runs.push(ApproachRun {
            approach,
            connections: f.connections,
            unreachable: None,
            records,
            measured_from_unix_ns,
            measured_to_unix_ns,
        });
        facts.approaches.push(f);
    }
    let mut at_screenshot = None;
    if let Some(path) = &cfg.screenshot {
        let tab = match shared {
            Some(t) => t,
            None => chromium.open(&url, None, serial + 1).await?,
        };
        at_screenshot = Some(screenshot(&tab.page, cfg, path).await?);
    }
    Ok(BrowserRun {
        runs,
        facts,
        screenshot: at_screenshot,
    })
}

/// What the measured requests of one approach went over.
#[derive(Default)]
struct Seen {
    protocols: Vec<String>,
    tls: Vec<String>,
    connections: std::collections::BTreeSet<(u64, u64)>,
}

impl Seen {
    fn add(
        &mut self,
        approach: Approach,
        serial: u64,
        r: &PageResult,
        responses: &[(u64, NetResponse)],
    ) {
        let note = |list: &mut Vec<String>, v: &str| {
            if !list.iter().any(|x| x == v) {
                list.push(v.to_owned());
            }
        };
        if approach == Approach::Wt {
            note(&mut self.protocols, "h3");
            note(&mut self.tls, "TLS 1.3");
            // The page numbers its sessions; a fresh page starts again at 1.
            if let Some(s) = r.session {
                self.connections.insert((serial, s));
            }
            return;
        }
        let path = approach.path();
        let mine = |n: &NetResponse| match &r.url {
            Some(url) => n.url == *url,
            None => n.url.ends_with(path),
        };
        for (serial, n) in responses.iter().filter(|(_, n)| mine(n)) {
            if let Some(p) = &n.protocol {
                note(&mut self.protocols, p);
            }
            if let Some(t) = &n.tls {
                note(&mut self.tls, t);
            }
            self.connections.insert((*serial, n.connection_id));
        }
    }

    fn facts(self, approach: Approach) -> ApproachFacts {
        ApproachFacts {
            approach,
            protocols: self.protocols,
            tls: self.tls,
            connections: self.connections.len() as u64,
        }
    }
}

/// One prompt: on the shared page, or on a new page in a new browser context; with the
/// network responses the browser reported meanwhile (tagged with the tab's serial).
async fn prompt(
    chromium: &Chromium,
    shared: Option<&Tab>,
    url: &str,
    approach: Approach,
    job: &Job,
    cfg: &BrowserConfig,
    serial: u64,
) -> Result<(PageResult, Vec<(u64, NetResponse)>), BrowserError> {
    let tagged = |tab: &Tab| tab.take().into_iter().map(|r| (tab.serial, r)).collect();
    if let Some(tab) = shared {
        let r = run_one(&tab.page, approach, job, true, cfg.timeout).await?;
        return Ok((r, tagged(tab)));
    }
    let context = chromium
        .browser
        .create_browser_context(CreateBrowserContextParams::default())
        .await
        .map_err(cdp)?;
    let result = async {
        let tab = chromium.open(url, Some(context.clone()), serial).await?;
        let r = run_one(&tab.page, approach, job, false, cfg.timeout).await;
        let responses = tagged(&tab);
        let _ = tab.page.clone().close().await;
        r.map(|r| (r, responses))
    }
    .await;
    // Disposing of the context closes its connections.
    let _ = chromium.browser.dispose_browser_context(context).await;
    result
}

/// A panel's state, as the page reports it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Progress {
    /// idle, streaming, done or failed.
    pub state: String,
    pub tokens: u64,
    /// The probe's figures for the request are on the panel.
    pub wire: bool,
}

/// All three panels stream the first prompt at once; the PNG is taken when each shows
/// [`SCREENSHOT_TOKENS`] tokens and the probe's live figures (or has ended), then the
/// streams are let finish.
async fn screenshot(
    page: &Page,
    cfg: &BrowserConfig,
    path: &Path,
) -> Result<BTreeMap<String, Progress>, BrowserError> {
    let prompt = cfg.jobs.first().map_or("Hello", |j| j.prompt.as_str());
    let js = format!(
        "document.getElementById('prompt').value = {p}; window.tokenwire.runAll({p}, {{ reuse: {} }}); true",
        cfg.reuse,
        p = serde_json::to_string(prompt).map_err(cdp)?
    );
    let _: bool = eval(page, &js).await?;
    let probe_up: bool = eval(page, "window.tokenwire.probeUp()").await?;
    let deadline = Instant::now() + cfg.timeout;
    let at = loop {
        let p: BTreeMap<String, Progress> = eval(page, "window.tokenwire.progress()").await?;
        let ready = p.values().all(|x| {
            (x.tokens >= SCREENSHOT_TOKENS && (x.wire || !probe_up)) || x.state != "streaming"
        });
        if ready || Instant::now() >= deadline {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let png = page
        .screenshot(
            ScreenshotParams::builder()
                .format(CaptureScreenshotFormat::Png)
                .build(),
        )
        .await
        .map_err(cdp)?;
    std::fs::write(path, png).map_err(|source| BrowserError::Screenshot {
        path: path.to_owned(),
        source,
    })?;
    while Instant::now() < deadline {
        let n: u64 = eval(page, "window.tokenwire.running()").await?;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(at)
}

#[cfg(test)]
mod tests;
