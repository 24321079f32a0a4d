//! `grpc`: gRPC server-streaming, as serving stacks stream between router and model.
//! `tokenwire.v1.Chat/Stream` (servers/proto/chat.proto) takes a `ChatRequest` and answers
//! one `Token` message per token (with `--coalesce-ms`, per batch of tokens,
//! [`crate::coalesce`]); the answer ends with the call's status in the HTTP/2 trailers
//! (`grpc-status: 0`), as gRPC streams end, not with a message of its own.
//!
//! tonic's generated service does the gRPC part (framing, status, message limits); it runs
//! inside the companions' own accept loop ([`crate::http::serve`]: TLS offering only `h2`,
//! connection limits, the probe's connection spans), which puts each request's
//! [`ConnInfo`] in its extensions for the span. Failures are gRPC statuses:
//! `INVALID_ARGUMENT` for an empty prompt, `OUT_OF_RANGE` for one over the limit
//! (tonic's), `UNAVAILABLE` when the upstream cannot be reached or fails mid-answer,
//! `UNIMPLEMENTED` for any other method (tonic's).

use crate::coalesce::{Coalescer, Piece};
use crate::http::{Body, BoxError, ConnInfo};
use crate::protocol::grpc::chat_server::{Chat, ChatServer};
use crate::protocol::grpc::{ChatRequest, MESSAGE_PREFIX, Token};
use crate::spans::{Outcome, RequestSpan, SpanSink};
use crate::stats::{Active, Stats};
use crate::upstream::Upstream;
use futures_util::{Stream, StreamExt};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use prost::Message;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokenwire_probe_common::approach::Approach;
use tonic::codegen::Service;
use tonic::{Status, async_trait};

/// The relay's answer: its tokens, or the status that ends it.
type Tokens = Pin<Box<dyn Stream<Item = Result<Token, Status>> + Send>>;

#[derive(Clone)]
pub struct GrpcRelay {
    upstream: Upstream,
    model: String,
    stats: Arc<Stats>,
    spans: SpanSink,
    /// Tokens arriving within this long of the first unsent one leave in one message.
    coalesce: Duration,
}

impl GrpcRelay {
    pub fn new(upstream: Upstream, model: String, stats: Arc<Stats>, spans: SpanSink) -> Self {
        Self {
            upstream,
            model,
            stats,
            spans,
            coalesce: Duration::ZERO,
        }
    }

    /// Sends the tokens that arrive within `window` of the first unsent one as one
    /// message ([`crate::coalesce`]).
    pub fn with_coalescing(mut self, window: Duration) -> Self {
        self.coalesce = window;
        self
    }

    /// The relay as an HTTP handler for [`crate::http::serve`]: tonic's service, refusing
    /// prompts over `max_message` bytes.
    pub fn handler(
        self,
        max_message: usize,
    ) -> impl Fn(Request<Incoming>, ConnInfo) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>
    + Clone
    + Send
    + Sync
    + 'static {
        let service = ChatServer::new(self)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(usize::MAX);
        move |mut req: Request<Incoming>, conn: ConnInfo| {
            let mut service = service.clone();
            req.extensions_mut().insert(conn);
            Box::pin(async move {
                let response = match service.call(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                response.map(|body| body.map_err(|s| Box::new(s) as BoxError).boxed_unsync())
            })
        }
    }
}

#[async_trait]
impl Chat for GrpcRelay {
    type StreamStream = Tokens;

    async fn stream(
        &self,
        request: tonic::Request<ChatRequest>,
    ) -> Result<tonic::Response<Tokens>, Status> {
        self.stats.add_request();
        let Some(conn) = request.extensions().get::<ConnInfo>().copied() else {
            return Err(Status::internal("no connection information"));
        };
        let mut span = self.spans.request(Approach::Grpc, conn.peer, conn.local);
        let message = request.into_inner().message;
        if message.trim().is_empty() {
            span.finish(Outcome::Error);
            return Err(Status::invalid_argument(
                "empty message: send a ChatRequest with some text",
            ));
        }
        let upstream = match self.upstream.chat(&self.model, &message).await {
            Ok(s) => Coalescer::new(s, self.coalesce),
            Err(e) => {
                tracing::warn!(peer = %conn.peer, error = %e, "upstream request failed");
                span.finish(Outcome::Error);
                return Err(Status::unavailable(e.to_string()));
            }
        };
        Ok(tonic::Response::new(tokens(
            upstream,
            Active::new(&self.stats),
            self.stats.clone(),
            span,
        )))
    }
}

/// One message per upstream token (or batch). The span ends at the upstream's end, or as
/// aborted when tonic drops the stream (the client went away).
fn tokens(stream: Coalescer, active: Active, stats: Arc<Stats>, span: RequestSpan) -> Tokens {
    futures_util::stream::unfold(
        (Some(stream), active, stats, span),
        |(stream, mut active, stats, mut span)| async move {
            let mut s = stream?;
            match s.next().await {
                Some(Ok(Piece::Tokens { text, sent_unix_ns })) => {
                    let n = sent_unix_ns.len() as u64;
                    let token = Token { text };
                    stats.add_tokens(n);
                    for sent in sent_unix_ns {
                        stats.relayed_at(sent);
                    }
                    span.tokens(n);
                    span.bytes(MESSAGE_PREFIX + token.encoded_len());
                    Some((Ok(token), (Some(s), active, stats, span)))
                }
                Some(Ok(Piece::Done)) => {
                    active.complete();
                    span.finish(Outcome::Ok);
                    None
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "upstream failed mid-stream");
                    span.finish(Outcome::Error);
                    let status = Status::unavailable(format!("upstream failed: {e}"));
                    Some((Err(status), (None, active, stats, span)))
                }
                None => None,
            }
        },
    )
    .boxed()
}
