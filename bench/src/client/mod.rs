//! Streaming one prompt through each approach and recording what arrives.

pub mod delayed_ack;
pub mod grpc;
pub mod h3;
pub mod https;
pub mod tls;
pub mod ws;
pub mod wt;

use crate::approach::Approach;
use crate::record::{Failure, Recorder, RequestRecord};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokenwire_servers::protocol::framing::{FrameDecoder, MAX_FRAME, encode};
use tokenwire_servers::protocol::ollama_stream::{StreamItem, parse_openai_data};
use tokenwire_servers::protocol::sse;
use tokenwire_servers::tuning::{Knob, Tuning};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("connecting to {target}: no connection within {after:?}")]
    ConnectTimeout { target: String, after: Duration },
    #[error("{target} refused: {reason}")]
    Refused { target: String, reason: String },
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls { addr: SocketAddr, reason: String },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("server answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("stream: {0}")]
    Stream(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("server reported: {0}")]
    Reported(String),
    #[error("the server reset the stream (code {code:#x})")]
    Reset { code: u64 },
    #[error("WebTransport: {0}")]
    Wt(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// The kind of failure, for counting.
    pub fn failure(&self) -> Failure {
        match self {
            ClientError::Connect { .. } | ClientError::Wt(_) => Failure::Connect,
            ClientError::ConnectTimeout { .. } => Failure::ConnectTimeout,
            ClientError::Refused { .. } => Failure::Refused,
            ClientError::Tls { .. } => Failure::Tls,
            ClientError::Http(_) | ClientError::Lost(_) => Failure::ConnectionLost,
            ClientError::Status { .. } => Failure::HttpStatus,
            ClientError::Stream(_) => Failure::Malformed,
            ClientError::Reported(_) => Failure::ServerReported,
            ClientError::Reset { .. } => Failure::Reset,
            ClientError::Timeout(_) => Failure::Timeout,
        }
    }
}

/// Where the companions are and how to reach them.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Companions away from their registry defaults ([`Approach::default_addr`]); the
    /// path is always the registry's.
    pub addrs: BTreeMap<Approach, SocketAddr>,
    /// TLS server name and Host header for the HTTPS companions.
    pub host: String,
    /// Model name for the raw approach.
    pub model: String,
    /// What the client does as the reference study's did (docs/reference.md).
    pub reference: ReferenceClient,
    /// The client's transport knobs (docs/wire-efficiency.md).
    pub tuning: Tuning,
}

impl Targets {
    /// The companions of a stack started in-process.
    pub fn of(stack: &tokenwire_servers::stack::Stack) -> Self {
        Self {
            addrs: stack.addrs(),
            ..Self::default()
        }
    }

    /// These targets with `approach`'s companion at `addr`.
    pub fn with(mut self, approach: Approach, addr: SocketAddr) -> Self {
        self.addrs.insert(approach, addr);
        self
    }

    /// Where `approach`'s companion listens.
    pub fn addr(&self, approach: Approach) -> SocketAddr {
        self.addrs
            .get(&approach)
            .copied()
            .unwrap_or(approach.default_addr())
    }

    /// The URL a client of `approach` asks for.
    pub fn url(&self, approach: Approach) -> String {
        format!("https://{}{}", self.addr(approach), approach.path())
    }
}

/// The reference study's client behaviours, each on its own (`--reference` sets them all;
/// docs/reference.md measures each one's effect).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReferenceClient {
    /// raw: no `stream_options.include_usage` (no usage chunk; tokens counted from chunks).
    pub no_usage: bool,
    /// raw: ask the model for `/v1` chunks in the legacy format (role in every chunk), as
    /// the Ollama the reference ran sent them.
    pub legacy_chunks: bool,
    /// wt: count the `0:` end frame as a token.
    pub count_end_frame: bool,
    /// raw and sse without --reuse: send `Connection: close`.
    pub connection_close: bool,
    /// wt: 4-byte QUIC connection IDs for the client (quic-go's; quinn's are 8). Every
    /// short-header packet the server sends carries the client's.
    pub short_cids: bool,
    /// wt: no keep-alive PINGs from the client (the reference's client sent none).
    pub no_keepalive: bool,
    /// wt: the client neither reads nor reports ECN marks (quic-go on macOS did neither).
    pub no_ecn: bool,
}

impl ReferenceClient {
    /// Every one of the reference's behaviours (`--reference`).
    pub const ALL: Self = Self {
        no_usage: true,
        legacy_chunks: true,
        count_end_frame: true,
        connection_close: true,
        short_cids: true,
        no_keepalive: true,
        no_ecn: true,
    };
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            addrs: BTreeMap::new(),
            host: "localhost".to_owned(),
            model: "gemma3:12b".to_owned(),
            reference: ReferenceClient::default(),
            tuning: Tuning::standard(),
        }
    }
}

/// One client per approach, holding its connection between prompts in reuse mode.
pub enum ApproachClient {
    Raw(https::HttpsClient, String, ReferenceClient),
    /// `sse` over HTTP/1.1 or `sse-h2` over HTTP/2 (the client's ALPN says which).
    Sse(Approach, https::HttpsClient),
    SseH3(h3::H3Client),
    Ws(ws::WsClient),
    Grpc(grpc::GrpcClient),
    Wt(wt::WtClient, ReferenceClient),
}

impl ApproachClient {
    pub fn new(
        approach: Approach,
        targets: &Targets,
        trust: &tls::Trust,
    ) -> Result<Self, ClientError> {
        let cfg = || {
            trust
                .client_config()
                .map_err(|e| ClientError::Http(format!("TLS configuration: {e}")))
        };
        let reference = targets.reference;
        let https = |addr, cfg| -> Result<https::HttpsClient, ClientError> {
            let mut c = https::HttpsClient::new(addr, &targets.host, cfg);
            c.close_when_fresh = reference.connection_close;
            c.delayed_acks = targets.tuning.has(Knob::DelayedAcks);
            Ok(c)
        };
        Ok(match approach {
            Approach::Raw => {
                let mut c = https(targets.addr(Approach::Raw), cfg()?)?;
                if reference.legacy_chunks {
                    c.extra_headers.push((
                        http::HeaderName::from_static(
                            tokenwire_servers::model::OPENAI_FORMAT_HEADER,
                        ),
                        http::HeaderValue::from_static("legacy"),
                    ));
                }
                ApproachClient::Raw(c, targets.model.clone(), reference)
            }
            Approach::Sse => {
                let c = https(targets.addr(approach), cfg()?)?;
                ApproachClient::Sse(approach, c)
            }
            Approach::SseH2 => {
                let h2 = trust
                    .client_config_offering(&[b"h2"])
                    .map_err(|e| ClientError::Http(format!("TLS configuration: {e}")))?;
                ApproachClient::Sse(approach, https(targets.addr(approach), h2)?)
            }
            Approach::SseH3 => {
                let h3 = trust
                    .client_config_offering(&[b"h3"])
                    .map_err(|e| ClientError::Http(format!("TLS configuration: {e}")))?;
                ApproachClient::SseH3(h3::H3Client::new(
                    targets.addr(approach),
                    &targets.host,
                    h3,
                )?)
            }
            Approach::Ws => {
                let addr = targets.addr(approach);
                let mut c =
                    ws::WsClient::new(addr, &targets.host, approach.path(), cfg()?, MAX_FRAME);
                c.delayed_acks = targets.tuning.has(Knob::DelayedAcks);
                ApproachClient::Ws(c)
            }
            Approach::Grpc => {
                let h2 = trust
                    .client_config_offering(&[b"h2"])
                    .map_err(|e| ClientError::Http(format!("TLS configuration: {e}")))?;
                let mut c =
                    grpc::GrpcClient::new(targets.addr(approach), &targets.host, h2, MAX_FRAME);
                c.delayed_acks = targets.tuning.has(Knob::DelayedAcks);
                ApproachClient::Grpc(c)
            }
            Approach::Wt => {
                let tuning = &targets.tuning;
                let cid_len = if tuning.has(Knob::ClientCid0) {
                    Some(0)
                } else {
                    reference.short_cids.then_some(4)
                };
                let opts = wt::WtOptions {
                    cid_len,
                    keep_alive: (!reference.no_keepalive).then_some(wt::KEEP_ALIVE),
                    ecn: !(reference.no_ecn || tuning.has(Knob::NoEcn)),
                };
                let client = wt::WtClient::with_options(&targets.url(Approach::Wt), trust, opts)?;
                ApproachClient::Wt(client, reference)
            }
        })
    }

    pub fn approach(&self) -> Approach {
        match self {
            ApproachClient::Raw(..) => Approach::Raw,
            ApproachClient::Sse(approach, _) => *approach,
            ApproachClient::SseH3(_) => Approach::SseH3,
            ApproachClient::Ws(_) => Approach::Ws,
            ApproachClient::Grpc(_) => Approach::Grpc,
            ApproachClient::Wt(..) => Approach::Wt,
        }
    }

    /// Connections (or sessions) opened so far.
    pub fn connections(&self) -> u64 {
        match self {
            ApproachClient::Raw(c, ..) | ApproachClient::Sse(_, c) => c.connections,
            ApproachClient::Ws(c) => c.connections,
            ApproachClient::SseH3(c) => c.connections,
            ApproachClient::Grpc(c) => c.connections,
            ApproachClient::Wt(c, _) => c.connections,
        }
    }

    /// Closes what the client holds open (a WebTransport session and a WebSocket are
    /// closed explicitly; HTTP connections close when dropped).
    pub async fn shutdown(self) {
        match self {
            ApproachClient::Wt(mut c, _) => c.shutdown().await,
            ApproachClient::Ws(mut c) => c.shutdown().await,
            ApproachClient::Raw(..)
            | ApproachClient::Sse(..)
            | ApproachClient::SseH3(_)
            | ApproachClient::Grpc(_) => {}
        }
    }

    /// Streams one prompt to its end and records it. Never panics on what the server
    /// sends; failures end up in the record's `error`. `timeout` bounds the whole request.
    pub async fn stream(
        &mut self,
        prompt: &str,
        index: usize,
        reuse: bool,
        timeout: Duration,
    ) -> RequestRecord {
        self.stream_due(prompt, index, reuse, timeout, Instant::now())
            .await
    }

    /// Like [`Self::stream`], with TTFT and total time counted from `due` (an open-loop
    /// run's scheduled send time, so client-side queueing is included).
    pub async fn stream_due(
        &mut self,
        prompt: &str,
        index: usize,
        reuse: bool,
        timeout: Duration,
        due: Instant,
    ) -> RequestRecord {
        let approach = self.approach();
        let mut rec = Recorder::new(approach, index, due);
        let result = tokio::time::timeout(timeout, async {
            match self {
                ApproachClient::Raw(c, model, reference) => {
                    let mut body = serde_json::json!({
                        "model": model,
                        "messages": [{"role": "user", "content": prompt}],
                        "stream": true,
                    });
                    if !reference.no_usage {
                        body["stream_options"] = serde_json::json!({"include_usage": true});
                    }
                    let resp = c
                        .post_json(Approach::Raw.path(), body.to_string(), reuse)
                        .await?;
                    read_sse(resp, &mut rec, SseKind::OpenAi).await
                }
                ApproachClient::Sse(approach, c) => {
                    let body = serde_json::json!({ "message": prompt });
                    let resp = c
                        .post_json(approach.path(), body.to_string(), reuse)
                        .await?;
                    read_sse(resp, &mut rec, SseKind::Relay).await
                }
                ApproachClient::SseH3(c) => c.stream(prompt, reuse, &mut rec).await,
                ApproachClient::Ws(c) => c.stream(prompt, reuse, &mut rec).await,
                ApproachClient::Grpc(c) => c.stream(prompt, reuse, &mut rec).await,
                ApproachClient::Wt(c, reference) => {
                    let count_end = reference.count_end_frame;
                    let r = wt_stream(c, prompt, reuse, count_end, &mut rec).await;
                    if !reuse {
                        c.close();
                    }
                    r
                }
            }
        })
        .await;
        match result {
            Ok(Ok(())) => rec.finish(),
            Ok(Err(e)) => rec.fail(e.failure(), e),
            Err(_) => rec.fail(Failure::Timeout, ClientError::Timeout(timeout)),
        }
    }
}

#[derive(Clone, Copy)]
enum SseKind {
    /// `/v1/chat/completions` chunks.
    OpenAi,
    /// The SSE relay's plain-text tokens.
    Relay,
}

/// Reads an SSE response to its very end (so a kept-alive connection is reusable).
async fn read_sse(
    resp: hyper::Response<Incoming>,
    rec: &mut Recorder,
    kind: SseKind,
) -> Result<(), ClientError> {
    let status = resp.status();
    let mut body = resp.into_body();
    if status != StatusCode::OK {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(status_error(status, &bytes));
    }
    let mut reader = SseReader::new(kind);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Lost(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        reader.feed(&data, rec)?;
    }
    reader.end()
}

/// A response that is not 200, with the start of its body.
fn status_error(status: StatusCode, body: &[u8]) -> ClientError {
    ClientError::Status {
        status,
        body: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    }
}

/// An SSE answer's events as they arrive, whatever carries them (HTTP/1.1, HTTP/2 or
/// HTTP/3 bodies).
struct SseReader {
    parser: sse::Parser,
    kind: SseKind,
    done: bool,
    failure: Option<String>,
}

impl SseReader {
    fn new(kind: SseKind) -> Self {
        Self {
            parser: sse::Parser::with_max_line(MAX_FRAME),
            kind,
            done: false,
            failure: None,
        }
    }

    /// Records the tokens of one piece of the body.
    fn feed(&mut self, data: &[u8], rec: &mut Recorder) -> Result<(), ClientError> {
        rec.bytes(data.len());
        let events = self
            .parser
            .feed(data)
            .map_err(|e| ClientError::Stream(e.to_string()))?;
        for ev in events {
            if ev.event == "error" {
                self.failure.get_or_insert(ev.data);
                continue;
            }
            match self.kind {
                SseKind::Relay if ev.data == "[DONE]" => self.done = true,
                SseKind::Relay => rec.token(&ev.data),
                SseKind::OpenAi => match parse_openai_data(&ev.data) {
                    Ok(StreamItem::Token(t)) => rec.token(&t),
                    Ok(StreamItem::Done { tokens: Some(n) }) => rec.reported(n),
                    Ok(StreamItem::Done { tokens: None }) => self.done = true,
                    Ok(StreamItem::Error(e)) => {
                        self.failure.get_or_insert(e);
                    }
                    Ok(StreamItem::Other) => {}
                    Err(e) => return Err(ClientError::Stream(format!("malformed chunk: {e}"))),
                },
            }
        }
        Ok(())
    }

    /// The body is over: was the answer whole?
    fn end(self) -> Result<(), ClientError> {
        if let Some(f) = self.failure {
            return Err(ClientError::Reported(f));
        }
        if !self.done {
            return Err(ClientError::Stream("stream ended without [DONE]".into()));
        }
        Ok(())
    }
}

async fn wt_stream(
    c: &mut wt::WtClient,
    prompt: &str,
    reuse: bool,
    count_end_frame: bool,
    rec: &mut Recorder,
) -> Result<(), ClientError> {
    let session = c.session(reuse).await?;
    // A stream cut by its session's end says why the session ended.
    let lost = |e: &dyn std::fmt::Display| match session.quic_connection().close_reason() {
        Some(reason) => ClientError::Lost(format!("{e}: the session closed: {reason}")),
        None => ClientError::Lost(e.to_string()),
    };
    let (mut send, mut recv) = session
        .open_bi()
        .await
        .map_err(|e| lost(&e))?
        .await
        .map_err(|e| lost(&e))?;
    let written = match send.write_all(&encode(prompt.as_bytes())).await {
        Ok(()) => send.finish().await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        return Err(match e {
            wtransport::error::StreamWriteError::Stopped(code) => ClientError::Reset {
                code: code.into_inner(),
            },
            e => lost(&e),
        });
    }
    let mut dec = FrameDecoder::new(MAX_FRAME);
    let mut buf = vec![0u8; 16 * 1024];
    let mut done = false;
    let read_error = |e: wtransport::error::StreamReadError| match e {
        wtransport::error::StreamReadError::Reset(code) => ClientError::Reset {
            code: code.into_inner(),
        },
        e => lost(&e),
    };
    while let Some(n) = recv.read(&mut buf).await.map_err(read_error)? {
        rec.bytes(n);
        dec.extend(&buf[..n]);
        while let Some(frame) = dec
            .next_frame()
            .map_err(|e| ClientError::Stream(e.to_string()))?
        {
            if done {
                return Err(ClientError::Stream("data after the end frame".into()));
            }
            if frame.is_empty() {
                done = true;
                if count_end_frame {
                    rec.uncounted_as_text();
                }
            } else {
                let text = std::str::from_utf8(&frame)
                    .map_err(|_| ClientError::Stream("token is not UTF-8".into()))?;
                rec.token(text);
            }
        }
    }
    if !done || dec.buffered() > 0 {
        return Err(ClientError::Stream(
            "stream finished without the end frame".into(),
        ));
    }
    Ok(())
}
