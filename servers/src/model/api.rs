//! Ollama's request and response bodies. Response structs declare their fields in the
//! order of Ollama's Go structs, with Go's `omitempty` as `skip_serializing_if`, so
//! [`crate::gojson`] writes the same bytes Ollama does.

use serde::{Deserialize, Serialize};

// ---- requests (unknown fields are ignored, as Go's decoder does) ----

#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub content: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Options {
    pub seed: Option<i64>,
    pub num_predict: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: String,
    pub messages: Option<Vec<Message>>,
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Options,
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub system: String,
    pub stream: Option<bool>,
    #[serde(default)]
    pub options: Options,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct OpenAiChatRequest {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub seed: Option<i64>,
}

// ---- native responses ----

#[derive(Debug, Serialize)]
pub struct OutMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// Ollama's `api.Metrics`, all `omitempty`.
#[derive(Debug, Default, Serialize)]
pub struct Metrics {
    #[serde(skip_serializing_if = "is_zero")]
    pub total_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub load_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub prompt_eval_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub prompt_eval_duration: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub eval_count: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub eval_duration: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Serialize)]
pub struct ChatResponse<'a> {
    pub model: &'a str,
    pub created_at: &'a str,
    pub message: OutMessage<'a>,
    pub done: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub done_reason: &'a str,
    #[serde(flatten)]
    pub metrics: Metrics,
}

#[derive(Debug, Serialize)]
pub struct GenerateResponse<'a> {
    pub model: &'a str,
    pub created_at: &'a str,
    pub response: &'a str,
    pub done: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub done_reason: &'a str,
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    pub context: &'a [u32],
    #[serde(flatten)]
    pub metrics: Metrics,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Version<'a> {
    pub version: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Tags<'a> {
    pub models: Vec<TagModel<'a>>,
}

#[derive(Debug, Serialize)]
pub struct TagModel<'a> {
    pub name: &'a str,
    pub model: &'a str,
    pub modified_at: &'a str,
    pub size: u64,
    pub digest: String,
    pub details: TagDetails<'a>,
}

#[derive(Debug, Serialize)]
pub struct TagDetails<'a> {
    pub parent_model: &'a str,
    pub format: &'a str,
    pub family: &'a str,
    pub families: [&'a str; 1],
    pub parameter_size: &'a str,
    pub quantization_level: &'a str,
}

// ---- OpenAI-compatible responses ----

#[derive(Debug, Serialize)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    pub finish_reason: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'a str,
    pub created: i64,
    pub model: &'a str,
    pub system_fingerprint: &'a str,
    pub choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice<'a> {
    pub index: u32,
    pub message: OutMessage<'a>,
    pub finish_reason: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'a str,
    pub created: i64,
    pub model: &'a str,
    pub system_fingerprint: &'a str,
    pub choices: Vec<CompletionChoice<'a>>,
    pub usage: Usage,
}

#[derive(Debug, Serialize)]
pub struct OpenAiError<'a> {
    pub error: OpenAiErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct OpenAiErrorDetail<'a> {
    pub message: &'a str,
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub param: Option<&'a str>,
    pub code: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct ModelList<'a> {
    pub object: &'a str,
    pub data: Vec<ModelEntry<'a>>,
}

#[derive(Debug, Serialize)]
pub struct ModelEntry<'a> {
    pub id: &'a str,
    pub object: &'a str,
    pub created: i64,
    pub owned_by: &'a str,
}

/// `time.RFC3339Nano` in UTC: nanoseconds with trailing zeros dropped, no fraction at all
/// when they are zero, and `Z`.
pub fn rfc3339_nano(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let ns = t.nanosecond();
    if ns != 0 {
        let frac = format!("{ns:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_timestamps_like_go() {
        assert_eq!(
            rfc3339_nano(datetime!(2025-01-01 12:00:00.123456789 UTC)),
            "2025-01-01T12:00:00.123456789Z"
        );
        assert_eq!(
            rfc3339_nano(datetime!(2025-01-01 12:00:04.9 UTC)),
            "2025-01-01T12:00:04.9Z"
        );
        assert_eq!(
            rfc3339_nano(datetime!(2025-01-01 12:00:04 UTC)),
            "2025-01-01T12:00:04Z"
        );
    }
}
