//! How a generation goes on the wire for each endpoint: Ollama's NDJSON lines
//! (`/api/chat`, `/api/generate`), OpenAI's SSE chunks (`/v1/chat/completions`, current and
//! legacy), and the whole answers of non-streamed requests, in Go's JSON as Ollama writes
//! them.

use super::api;
use super::generation::DoneReason;
use crate::gojson;
use bytes::Bytes;
use time::OffsetDateTime;

/// The final figures of a generation, for Ollama's metrics and OpenAI's usage.
pub(super) struct Summary {
    pub(super) reason: DoneReason,
    pub(super) eval_count: u64,
    pub(super) prompt_eval_count: u64,
    pub(super) total_ns: u64,
    pub(super) load_ns: u64,
    pub(super) prompt_eval_ns: u64,
    pub(super) eval_ns: u64,
    pub(super) ids: Vec<u32>,
}

pub(super) fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How pieces and the end are written for each endpoint.
pub(super) enum Encoder {
    Chat,
    Generate {
        prompt: String,
    },
    OpenAi {
        id: String,
        created: i64,
        include_usage: bool,
        legacy: bool,
        sent_role: bool,
    },
}

impl Encoder {
    fn metrics(s: &Summary) -> api::Metrics {
        api::Metrics {
            total_duration: s.total_ns,
            load_duration: s.load_ns,
            prompt_eval_count: s.prompt_eval_count,
            prompt_eval_duration: s.prompt_eval_ns,
            eval_count: s.eval_count,
            eval_duration: s.eval_ns,
        }
    }

    fn usage(s: &Summary) -> api::Usage {
        api::Usage {
            prompt_tokens: s.prompt_eval_count,
            completion_tokens: s.eval_count,
            total_tokens: s.prompt_eval_count + s.eval_count,
        }
    }

    /// One streamed piece, as one flush.
    pub(super) fn token(&mut self, model: &str, piece: &str) -> Bytes {
        let created_at = api::rfc3339_nano(OffsetDateTime::now_utc());
        match self {
            Encoder::Chat => gojson::to_line(&api::ChatResponse {
                model,
                created_at: &created_at,
                message: api::OutMessage {
                    role: "assistant",
                    content: piece,
                },
                done: false,
                done_reason: "",
                metrics: api::Metrics::default(),
            }),
            Encoder::Generate { .. } => gojson::to_line(&api::GenerateResponse {
                model,
                created_at: &created_at,
                response: piece,
                done: false,
                done_reason: "",
                context: &[],
                metrics: api::Metrics::default(),
            }),
            Encoder::OpenAi {
                id,
                created,
                legacy,
                sent_role,
                ..
            } => {
                let role = (*legacy || !*sent_role).then_some("assistant");
                *sent_role = true;
                let created = if *legacy {
                    OffsetDateTime::now_utc().unix_timestamp()
                } else {
                    *created
                };
                sse(&chunk(
                    id,
                    created,
                    model,
                    api::Delta {
                        role,
                        content: Some(piece),
                    },
                    None,
                    None,
                ))
            }
        }
        .into()
    }

    /// The closing line(s), as one flush.
    pub(super) fn done(&mut self, model: &str, s: &Summary) -> Bytes {
        match self {
            // Ollama's final line is the non-streaming answer with empty content.
            Encoder::Chat | Encoder::Generate { .. } => {
                let mut line = self.whole(model, "", s);
                line.push(b'\n');
                line
            }
            Encoder::OpenAi {
                id,
                created,
                include_usage,
                legacy,
                ..
            } => {
                let (created, delta) = if *legacy {
                    let now = OffsetDateTime::now_utc().unix_timestamp();
                    (
                        now,
                        api::Delta {
                            role: Some("assistant"),
                            content: Some(""),
                        },
                    )
                } else {
                    (
                        *created,
                        api::Delta {
                            role: None,
                            content: None,
                        },
                    )
                };
                let mut out = sse(&chunk(
                    id,
                    created,
                    model,
                    delta,
                    Some(s.reason.as_str()),
                    None,
                ));
                if *include_usage {
                    out.extend(sse(&api::ChatCompletionChunk {
                        choices: Vec::new(),
                        usage: Some(Self::usage(s)),
                        ..chunk(
                            id,
                            created,
                            model,
                            api::Delta {
                                role: None,
                                content: None,
                            },
                            None,
                            None,
                        )
                    }));
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                out
            }
        }
        .into()
    }

    /// A non-streaming answer.
    pub(super) fn whole(&mut self, model: &str, text: &str, s: &Summary) -> Vec<u8> {
        let created_at = api::rfc3339_nano(OffsetDateTime::now_utc());
        match self {
            Encoder::Chat => gojson::to_vec(&api::ChatResponse {
                model,
                created_at: &created_at,
                message: api::OutMessage {
                    role: "assistant",
                    content: text,
                },
                done: true,
                done_reason: s.reason.as_str(),
                metrics: Self::metrics(s),
            }),
            Encoder::Generate { prompt } => {
                let mut context = super::corpus::encode(prompt);
                context.extend_from_slice(&s.ids);
                gojson::to_vec(&api::GenerateResponse {
                    model,
                    created_at: &created_at,
                    response: text,
                    done: true,
                    done_reason: s.reason.as_str(),
                    context: &context,
                    metrics: Self::metrics(s),
                })
            }
            Encoder::OpenAi { id, created, .. } => gojson::to_vec(&api::ChatCompletion {
                id,
                object: "chat.completion",
                created: *created,
                model,
                system_fingerprint: "fp_ollama",
                choices: vec![api::CompletionChoice {
                    index: 0,
                    message: api::OutMessage {
                        role: "assistant",
                        content: text,
                    },
                    finish_reason: Some(s.reason.as_str()),
                }],
                usage: Self::usage(s),
            }),
        }
    }
}

fn chunk<'a>(
    id: &'a str,
    created: i64,
    model: &'a str,
    delta: api::Delta<'a>,
    finish_reason: Option<&'a str>,
    usage: Option<api::Usage>,
) -> api::ChatCompletionChunk<'a> {
    api::ChatCompletionChunk {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        system_fingerprint: "fp_ollama",
        choices: vec![api::ChunkChoice {
            index: 0,
            delta,
            finish_reason,
        }],
        usage,
    }
}

fn sse<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend(gojson::to_vec(v));
    out.extend_from_slice(b"\n\n");
    out
}
