//! Ollama's HTTP routes over [`super::generation`]: request parsing and validation with
//! Ollama's status codes and error bodies; the running generation, written by
//! [`super::encode`]'s encoders.

use super::api::{self, Message};
use super::cors::{self, Cors};
use super::encode::{Encoder, Summary, nanos};
use super::generation::{Clock, Plan, Timing, prompt_tokens};
use crate::gojson;
use crate::http::{Body, BodyError, ConnInfo, read_body, response};
use crate::stats::{Active, Stats};
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use rand::Rng;
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;

const NDJSON: &str = "application/x-ndjson";
const JSON: &str = "application/json; charset=utf-8";
const EVENT_STREAM: &str = "text/event-stream";

/// Request header choosing `/v1/chat/completions`' chunk format for one request:
/// `legacy` (role and `created` in every chunk, Ollama <= 0.32.5) or `current`.
pub const OPENAI_FORMAT_HEADER: &str = "x-tokenwire-openai-format";

/// Which `/v1/chat/completions` chunk format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OpenAiFormat {
    /// Ollama 0.32.6 and later: role on the first chunk only, `"delta":{}` to finish,
    /// finish + usage + `[DONE]` in one flush.
    Current,
    /// Ollama 0.32.5 and earlier (what the reference study ran): role and content on
    /// every chunk, `created` per chunk.
    Legacy,
}

/// Everything the model can be told.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Model names it answers to (the first is listed first by /api/tags).
    pub models: Vec<String>,
    /// Seed used when a request does not set one.
    pub seed: u64,
    pub timing: Timing,
    pub openai_format: OpenAiFormat,
    /// What /api/version reports.
    pub version: String,
    /// Largest request body accepted.
    pub max_body: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            models: vec!["gemma3:12b".to_owned()],
            seed: 0,
            timing: Timing::default(),
            openai_format: OpenAiFormat::Current,
            version: "0.32.6".to_owned(),
            max_body: 8 << 20,
        }
    }
}

/// The model server's request handler.
#[derive(Clone)]
pub struct Model {
    cfg: Arc<ModelConfig>,
    stats: Arc<Stats>,
    started: OffsetDateTime,
}

/// Which native endpoint a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Native {
    Chat,
    Generate,
}

impl Model {
    pub fn new(cfg: ModelConfig, stats: Arc<Stats>) -> Self {
        Self {
            cfg: Arc::new(cfg),
            stats,
            started: OffsetDateTime::now_utc(),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The text this model answers to a single-message chat (or a generate prompt) with
    /// `prompt` and `seed`, and no token limit: what a client must rebuild from any stream.
    pub fn expected_text(&self, prompt: &str, seed: Option<u64>) -> String {
        Plan::new(
            prompt,
            seed.unwrap_or(self.cfg.seed),
            self.cfg.timing.mean_tokens,
            None,
        )
        .text()
    }

    pub async fn handle(&self, req: Request<Incoming>, _conn: ConnInfo) -> Response<Body> {
        self.stats.add_request();
        let cors = cors::check(req.headers());
        match cors {
            Cors::Forbidden => return response(StatusCode::FORBIDDEN, "text/plain", ""),
            Cors::Allowed(origin) if *req.method() == Method::OPTIONS => {
                return cors::preflight(origin);
            }
            _ => {}
        }
        let mut r = self.route(req).await;
        if let Cors::Allowed(origin) = cors {
            cors::allow(r.headers_mut(), origin);
        }
        r
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        match (req.method().clone(), path.as_str()) {
            (Method::GET | Method::HEAD, "/") => response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "Ollama is running",
            ),
            (Method::GET, "/api/version") => json(
                StatusCode::OK,
                &api::Version {
                    version: &self.cfg.version,
                },
            ),
            (Method::GET, "/api/tags") => self.tags(),
            (Method::GET, "/v1/models") => self.models(),
            // tokenwire's own: the pace and length settings, for benchmark reports.
            (Method::GET, "/tokenwire/model") => self.settings(),
            (Method::POST, "/api/chat") => self.native(req, Native::Chat).await,
            (Method::POST, "/api/generate") => self.native(req, Native::Generate).await,
            (Method::POST, "/v1/chat/completions") => self.openai(req).await,
            // Ollama's router (gin) answers unknown routes and methods alike.
            _ => response(StatusCode::NOT_FOUND, "text/plain", "404 page not found"),
        }
    }

    fn tags(&self) -> Response<Body> {
        let modified = api::rfc3339_nano(self.started);
        let models = self
            .cfg
            .models
            .iter()
            .map(|name| {
                let family = name.split(':').next().unwrap_or(name);
                api::TagModel {
                    name,
                    model: name,
                    modified_at: &modified,
                    size: 8_149_190_253,
                    digest: hex_digest(name),
                    details: api::TagDetails {
                        parent_model: "",
                        format: "gguf",
                        family,
                        families: [family],
                        parameter_size: "12.2B",
                        quantization_level: "Q4_K_M",
                    },
                }
            })
            .collect();
        json(StatusCode::OK, &api::Tags { models })
    }

    fn models(&self) -> Response<Body> {
        let created = self.started.unix_timestamp();
        let data = self
            .cfg
            .models
            .iter()
            .map(|id| api::ModelEntry {
                id,
                object: "model",
                created,
                owned_by: "library",
            })
            .collect();
        json(
            StatusCode::OK,
            &api::ModelList {
                object: "list",
                data,
            },
        )
    }

    fn settings(&self) -> Response<Body> {
        let t = &self.cfg.timing;
        let body = serde_json::json!({
            "models": self.cfg.models,
            "seed": self.cfg.seed,
            "ttft_ms": t.ttft.as_secs_f64() * 1e3,
            "tbt_ms": t.tbt.as_secs_f64() * 1e3,
            "jitter": t.jitter,
            "speed": t.speed,
            "mean_tokens": t.mean_tokens,
            "openai_format": match self.cfg.openai_format {
                OpenAiFormat::Current => "current",
                OpenAiFormat::Legacy => "legacy",
            },
        });
        response(StatusCode::OK, JSON, body.to_string())
    }

    fn knows(&self, model: &str) -> bool {
        self.cfg.models.iter().any(|m| m == model)
    }

    async fn native(&self, req: Request<Incoming>, kind: Native) -> Response<Body> {
        let body = match read_body(req, self.cfg.max_body).await {
            Ok(b) => b,
            Err(e) => return native_error(body_status(&e), &e.to_string()),
        };
        if body.is_empty() {
            return native_error(StatusCode::BAD_REQUEST, "missing request body");
        }
        // Normalise both endpoints to (model, prompt key, prompt token count, stream, options).
        let (model, messages, stream, options, context_prompt) = match kind {
            Native::Chat => match serde_json::from_slice::<api::ChatRequest>(&body) {
                Ok(r) => (
                    r.model,
                    r.messages.unwrap_or_default(),
                    r.stream,
                    r.options,
                    None,
                ),
                Err(e) => return native_error(StatusCode::BAD_REQUEST, &go_json_error(&body, &e)),
            },
            Native::Generate => match serde_json::from_slice::<api::GenerateRequest>(&body) {
                Ok(r) => {
                    let mut msgs = Vec::new();
                    if !r.system.is_empty() {
                        msgs.push(Message {
                            role: "system".into(),
                            content: r.system,
                        });
                    }
                    if !r.prompt.is_empty() {
                        msgs.push(Message {
                            role: "user".into(),
                            content: r.prompt.clone(),
                        });
                    }
                    (r.model, msgs, r.stream, r.options, Some(r.prompt))
                }
                Err(e) => return native_error(StatusCode::BAD_REQUEST, &go_json_error(&body, &e)),
            },
        };
        if model.is_empty() {
            return native_error(StatusCode::BAD_REQUEST, "model is required");
        }
        if !self.knows(&model) {
            return native_error(StatusCode::NOT_FOUND, &format!("model '{model}' not found"));
        }
        let created_at = api::rfc3339_nano(OffsetDateTime::now_utc());
        if messages.is_empty() {
            // Ollama loads the model and answers at once with done_reason "load".
            let bytes = match kind {
                Native::Chat => gojson::to_vec(&api::ChatResponse {
                    model: &model,
                    created_at: &created_at,
                    message: api::OutMessage {
                        role: "assistant",
                        content: "",
                    },
                    done: true,
                    done_reason: "load",
                    metrics: api::Metrics::default(),
                }),
                Native::Generate => gojson::to_vec(&api::GenerateResponse {
                    model: &model,
                    created_at: &created_at,
                    response: "",
                    done: true,
                    done_reason: "load",
                    context: &[],
                    metrics: api::Metrics::default(),
                }),
            };
            return response(StatusCode::OK, JSON, bytes);
        }
        let key = prompt_key(&messages);
        let seed = options.seed.map(|s| s as u64).unwrap_or(self.cfg.seed);
        let plan = Plan::new(&key, seed, self.cfg.timing.mean_tokens, options.num_predict);
        let prompt_count = prompt_tokens(messages.iter().map(|m| m.content.as_str()));
        let generation = Generation::new(
            plan,
            self.cfg.timing.clone(),
            seed,
            prompt_count,
            &self.stats,
        );
        let mut enc = match kind {
            Native::Chat => Encoder::Chat,
            Native::Generate => Encoder::Generate {
                prompt: context_prompt.unwrap_or_default(),
            },
        };
        if stream.unwrap_or(true) {
            stream_response(NDJSON, generation, model, enc)
        } else {
            let (text, summary) = generation.collect().await;
            response(StatusCode::OK, JSON, enc.whole(&model, &text, &summary))
        }
    }

    async fn openai(&self, req: Request<Incoming>) -> Response<Body> {
        // A client may ask for the chunk format of its request (the bench's reference mode:
        // the Ollama the reference study ran). A tokenwire extension; Ollama ignores it.
        let legacy = match req
            .headers()
            .get(OPENAI_FORMAT_HEADER)
            .and_then(|v| v.to_str().ok())
        {
            Some("legacy") => true,
            Some("current") => false,
            _ => self.cfg.openai_format == OpenAiFormat::Legacy,
        };
        let body = match read_body(req, self.cfg.max_body).await {
            Ok(b) => b,
            Err(e) => return openai_error(body_status(&e), &e.to_string()),
        };
        if body.is_empty() {
            return openai_error(StatusCode::BAD_REQUEST, "missing request body");
        }
        let r: api::OpenAiChatRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return openai_error(StatusCode::BAD_REQUEST, &go_json_error(&body, &e)),
        };
        if r.messages.is_empty() {
            return openai_error(StatusCode::BAD_REQUEST, "[] is too short - 'messages'");
        }
        if r.model.is_empty() {
            return openai_error(StatusCode::BAD_REQUEST, "model is required");
        }
        if !self.knows(&r.model) {
            return openai_error(
                StatusCode::NOT_FOUND,
                &format!("model '{}' not found", r.model),
            );
        }
        let seed = r.seed.map(|s| s as u64).unwrap_or(self.cfg.seed);
        let limit = r.max_completion_tokens.or(r.max_tokens);
        let plan = Plan::new(
            &prompt_key(&r.messages),
            seed,
            self.cfg.timing.mean_tokens,
            limit,
        );
        let prompt_count = prompt_tokens(r.messages.iter().map(|m| m.content.as_str()));
        let generation = Generation::new(
            plan,
            self.cfg.timing.clone(),
            seed,
            prompt_count,
            &self.stats,
        );
        let mut enc = Encoder::OpenAi {
            id: format!("chatcmpl-{}", rand::rng().random_range(0..999)),
            created: OffsetDateTime::now_utc().unix_timestamp(),
            include_usage: r.stream_options.is_some_and(|o| o.include_usage),
            legacy,
            sent_role: false,
        };
        if r.stream {
            stream_response(EVENT_STREAM, generation, r.model, enc)
        } else {
            let (text, summary) = generation.collect().await;
            response(
                StatusCode::OK,
                "application/json",
                enc.whole(&r.model, &text, &summary),
            )
        }
    }
}

fn body_status(e: &BodyError) -> StatusCode {
    match e {
        BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        BodyError::Read(_) => StatusCode::BAD_REQUEST,
    }
}

/// The text a generation is keyed on: the messages' contents joined by newlines, so a chat
/// with one user message and a generate call with the same prompt answer alike.
fn prompt_key(messages: &[Message]) -> String {
    messages
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex_digest(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    response(status, JSON, gojson::to_vec(v))
}

fn native_error(status: StatusCode, msg: &str) -> Response<Body> {
    json(status, &api::ErrorBody { error: msg })
}

fn openai_error(status: StatusCode, msg: &str) -> Response<Body> {
    let kind = match status {
        StatusCode::BAD_REQUEST => "invalid_request_error",
        StatusCode::NOT_FOUND => "not_found_error",
        _ => "api_error",
    };
    let body = api::OpenAiError {
        error: api::OpenAiErrorDetail {
            message: msg,
            kind,
            param: None,
            code: None,
        },
    };
    response(status, "application/json", gojson::to_vec(&body))
}

/// Go's `encoding/json` wording for the common failures (Ollama returns it verbatim).
fn go_json_error(body: &[u8], e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected EOF".to_owned(),
        Category::Syntax => {
            let offset = line_col_offset(body, e.line(), e.column());
            match offset.and_then(|o| std::str::from_utf8(&body[o..]).ok()?.chars().next()) {
                Some(c) => format!("invalid character '{c}' looking for beginning of value"),
                None => "unexpected end of JSON input".to_owned(),
            }
        }
        Category::Data => format!("json: cannot unmarshal: {e}"),
        Category::Io => e.to_string(),
    }
}

/// Byte offset of serde_json's (1-based line, 1-based column of the last byte read).
fn line_col_offset(body: &[u8], line: usize, col: usize) -> Option<usize> {
    let mut start = 0;
    for _ in 1..line {
        start += body[start..].iter().position(|&b| b == b'\n')? + 1;
    }
    let o = start + col.checked_sub(1)?;
    (o < body.len()).then_some(o)
}

enum Step {
    Token(&'static str),
    Done(Summary),
}

/// One running generation: owns its place in the plan, its clock and its "active" mark,
/// so dropping it (the client went away) ends it at once.
struct Generation {
    plan: Plan,
    next: usize,
    clock: Clock,
    started: Instant,
    first_token: Option<Instant>,
    prompt_eval_count: u64,
    active: Active,
    stats: Arc<Stats>,
    finished: bool,
}

impl Generation {
    fn new(
        plan: Plan,
        timing: Timing,
        seed: u64,
        prompt_eval_count: u64,
        stats: &Arc<Stats>,
    ) -> Self {
        Self {
            plan,
            next: 0,
            clock: Clock::new(timing, seed ^ 0x9e37_79b9_7f4a_7c15),
            started: Instant::now(),
            first_token: None,
            prompt_eval_count,
            active: Active::new(stats),
            stats: stats.clone(),
            finished: false,
        }
    }

    /// Waits for and returns the next step; after `Done`, [`Self::finished`] is true and
    /// `step` must not be called again.
    async fn step(&mut self) -> Step {
        // One tick per token, and one more for the end-of-sequence token.
        self.clock.tick().await;
        if self.next < self.plan.tokens.len() {
            let piece = self.plan.piece(self.next);
            self.next += 1;
            self.first_token.get_or_insert_with(Instant::now);
            self.stats.add_tokens(1);
            return Step::Token(piece);
        }
        self.finished = true;
        self.active.complete();
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        let load_ns = 1_334_875; // the model is always loaded: Ollama's warm figure
        Step::Done(Summary {
            reason: self.plan.reason,
            eval_count: self.plan.tokens.len() as u64,
            prompt_eval_count: self.prompt_eval_count,
            total_ns: nanos(now - self.started) + load_ns,
            load_ns,
            prompt_eval_ns: nanos(first - self.started).max(1),
            eval_ns: nanos(now - first).max(1),
            ids: self.plan.ids().collect(),
        })
    }

    fn finished(&self) -> bool {
        self.finished
    }

    /// Runs to the end (non-streaming requests) and returns the text and figures.
    async fn collect(mut self) -> (String, Summary) {
        let mut text = String::new();
        loop {
            match self.step().await {
                Step::Token(t) => text.push_str(t),
                Step::Done(s) => return (text, s),
            }
        }
    }
}

/// A streaming response: one body frame (one chunk, one flush) per step.
fn stream_response(
    content_type: &str,
    generation: Generation,
    model: String,
    enc: Encoder,
) -> Response<Body> {
    let frames = futures_util::stream::unfold(
        (generation, enc, model),
        |(mut generation, mut enc, model)| async move {
            if generation.finished() {
                return None;
            }
            let bytes = match generation.step().await {
                Step::Token(piece) => enc.token(&model, piece),
                Step::Done(summary) => enc.done(&model, &summary),
            };
            Some((
                Ok::<_, crate::http::BoxError>(Frame::data(bytes)),
                (generation, enc, model),
            ))
        },
    );
    let mut r = Response::new(StreamBody::new(frames.boxed()).boxed_unsync());
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}
