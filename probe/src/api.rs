//! The probe's HTTP endpoints: GET /metrics (Prometheus), /api/requests, /api/connections,
//! /api/flows (JSON) and /healthz. Handlers own nothing: each request becomes a [`Query`]
//! for the capture loop, which owns the flow table and answers with fresh figures.

use crate::web_config::WebConfig;
use crate::web_tls::{self, Acceptor};
use bytes::Bytes;
use http::{Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Metrics,
    /// The last requests; `limit` newest, optionally one approach, optionally only those
    /// that started at or after a time.
    Requests {
        limit: usize,
        approach: Option<String>,
        since_unix_ns: Option<u64>,
    },
    Connections {
        approach: Option<String>,
        since_unix_ns: Option<u64>,
    },
    Flows,
    Health,
}

/// An answer: status, content type, body.
pub type Answer = (StatusCode, &'static str, String);

/// A query on its way to the capture loop.
pub struct Ask {
    pub query: Query,
    pub reply: oneshot::Sender<Answer>,
}

pub const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const JSON_TYPE: &str = "application/json";

/// Default number of requests /api/requests returns.
pub const DEFAULT_LIMIT: usize = 100;

fn json_error(status: StatusCode, msg: &str) -> Answer {
    (
        status,
        JSON_TYPE,
        serde_json::json!({ "error": msg }).to_string(),
    )
}

/// Maps a method, path and query string to a [`Query`], or the error answer.
pub fn route(method: &Method, path: &str, query: Option<&str>) -> Result<Query, Answer> {
    if method != Method::GET && method != Method::HEAD {
        return Err(json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: the probe's endpoints are GET only",
        ));
    }
    let mut limit = DEFAULT_LIMIT;
    let mut approach = None;
    let mut since_unix_ns = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| {
            json_error(
                StatusCode::BAD_REQUEST,
                &format!("query parameter {k}: {what}"),
            )
        };
        match k {
            "limit" => limit = v.parse().map_err(|_| bad("expected a count"))?,
            "approach" => approach = Some(v.to_owned()),
            "since_unix_ns" => {
                since_unix_ns = Some(v.parse().map_err(|_| bad("expected nanoseconds"))?)
            }
            _ => return Err(bad("unknown (limit, approach, since_unix_ns)")),
        }
    }
    match path {
        "/metrics" => Ok(Query::Metrics),
        "/api/requests" => Ok(Query::Requests {
            limit,
            approach,
            since_unix_ns,
        }),
        "/api/connections" => Ok(Query::Connections {
            approach,
            since_unix_ns,
        }),
        "/api/flows" => Ok(Query::Flows),
        "/healthz" => Ok(Query::Health),
        _ => Err(json_error(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /api/requests, /api/connections, /api/flows, /healthz",
        )),
    }
}

/// Who may ask what: the web configuration's basic auth, and whether /api/* is served.
pub struct Gate {
    pub web: WebConfig,
    /// Serve /api/requests, /api/connections and /api/flows (off: `--metrics-only`).
    pub api: bool,
    /// `Authorization` values that verified (bcrypt is slow; a scraper sends the same one
    /// every time). Bounded.
    verified: Mutex<HashSet<String>>,
}

/// Verified `Authorization` values kept.
const VERIFIED_MAX: usize = 64;

impl Gate {
    pub fn new(web: WebConfig, api: bool) -> Self {
        Self {
            web,
            api,
            verified: Mutex::new(HashSet::new()),
        }
    }

    /// Open: no basic auth, every endpoint.
    pub fn open() -> Self {
        Self::new(WebConfig::default(), true)
    }

    /// Whether a request with this `Authorization` header may be answered.
    async fn allows(self: &Arc<Self>, authorization: Option<String>) -> bool {
        if !self.web.needs_auth() {
            return true;
        }
        let Some(value) = authorization else {
            return false;
        };
        let known = |g: &Gate| {
            g.verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&value)
        };
        if known(self) {
            return true;
        }
        let (gate, v) = (self.clone(), value.clone());
        // Off the capture loop's thread: a bcrypt check takes tens of milliseconds.
        let ok = tokio::task::spawn_blocking(move || gate.web.authorized(Some(&v)))
            .await
            .unwrap_or(false);
        if ok {
            let mut set = self
                .verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if set.len() >= VERIFIED_MAX {
                set.clear();
            }
            set.insert(value);
        }
        ok
    }
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(
        b"{\"error\":\"unauthorized\"}",
    )));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"tokenwire-probe\""),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(JSON_TYPE),
    );
    r
}

async fn handle(
    req: http::Request<Incoming>,
    tx: mpsc::Sender<Ask>,
    gate: Arc<Gate>,
) -> Response<Full<Bytes>> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if !gate.allows(authorization).await {
        return unauthorized();
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| {
            o.to_str()
                .is_ok_and(tokenwire_probe_common::origin::loopback)
        })
        .cloned();
    let routed = route(req.method(), req.uri().path(), req.uri().query());
    let answer = match routed {
        Err(a) => a,
        Ok(Query::Requests { .. } | Query::Connections { .. } | Query::Flows) if !gate.api => {
            json_error(
                StatusCode::NOT_FOUND,
                "this probe serves /metrics and /healthz only (--metrics-only)",
            )
        }
        Ok(query) => {
            let (reply, rx) = oneshot::channel();
            if tx.send(Ask { query, reply }).await.is_err() {
                json_error(StatusCode::SERVICE_UNAVAILABLE, "the probe is stopping")
            } else {
                match tokio::time::timeout(Duration::from_secs(10), rx).await {
                    Ok(Ok(a)) => a,
                    _ => json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the capture loop did not answer",
                    ),
                }
            }
        }
    };
    let (status, content_type, body) = answer;
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    if let Some(o) = origin {
        r.headers_mut()
            .insert(header::VARY, header::HeaderValue::from_static("Origin"));
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    }
    r
}

/// Serves until the task is dropped. Each connection gets its own task; slow or broken
/// clients affect nobody else.
pub async fn serve(
    listener: TcpListener,
    tx: mpsc::Sender<Ask>,
    tls: Option<Acceptor>,
    gate: Arc<Gate>,
) {
    let tls = tls.map(Arc::new);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on the API listener");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (tx, gate, tls) = (tx.clone(), gate.clone(), tls.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (tx, gate) = (tx.clone(), gate.clone());
                async move { Ok::<_, Infallible>(handle(req, tx, gate).await) }
            });
            let http = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .clone();
            let done = match &tls {
                None => http.serve_connection(TokioIo::new(tcp), svc).await,
                Some(a) => match web_tls::handshake(a, tcp).await {
                    Some(s) => http.serve_connection(TokioIo::new(s), svc).await,
                    None => Ok(()),
                },
            };
            if let Err(e) = done {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_refuses() {
        assert_eq!(route(&Method::GET, "/metrics", None), Ok(Query::Metrics));
        assert_eq!(
            route(
                &Method::GET,
                "/api/requests",
                Some("limit=5&approach=sse&since_unix_ns=7")
            ),
            Ok(Query::Requests {
                limit: 5,
                approach: Some("sse".into()),
                since_unix_ns: Some(7)
            })
        );
        assert_eq!(
            route(&Method::POST, "/metrics", None).unwrap_err().0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            route(&Method::GET, "/nope", None).unwrap_err().0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&Method::GET, "/api/requests", Some("limit=x"))
                .unwrap_err()
                .0,
            StatusCode::BAD_REQUEST
        );
    }
}
