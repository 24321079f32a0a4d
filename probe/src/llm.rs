//! What a request was, in the LLM field's terms: where the probe learnt of it (the
//! server's spans, or its packets alone), which API endpoint family it used, and what the
//! API said (usage) and the packets showed (token timing) when it was read passively.
//! The OpenTelemetry GenAI names the metrics use come from here. Platform-free.

use serde::Serialize;

/// Where a request record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The server sent spans (docs/spans.md).
    Spans,
    /// Read from the connection's packets (docs/passive.md).
    Passive,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Spans => "spans",
            Source::Passive => "passive",
        }
    }
}

/// An LLM API endpoint family the passive reader knows, by request path. Its label is the
/// record's (and the metrics') `approach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    OllamaChat,
    OllamaGenerate,
    OpenAiChat,
    OpenAiCompletions,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::OllamaChat,
        Family::OllamaGenerate,
        Family::OpenAiChat,
        Family::OpenAiCompletions,
    ];

    /// The family of a request path (without its query), if it is one.
    pub fn of_path(path: &str) -> Option<Family> {
        let path = path.trim_end_matches('/');
        match path {
            "/api/chat" => Some(Family::OllamaChat),
            "/api/generate" => Some(Family::OllamaGenerate),
            "/v1/chat/completions" => Some(Family::OpenAiChat),
            "/v1/completions" => Some(Family::OpenAiCompletions),
            _ => None,
        }
    }

    /// The record's `approach`, a bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Family::OllamaChat => "ollama_chat",
            Family::OllamaGenerate => "ollama_generate",
            Family::OpenAiChat => "openai_chat",
            Family::OpenAiCompletions => "openai_completions",
        }
    }

    /// The family whose label is `label`.
    pub fn from_label(label: &str) -> Option<Family> {
        Self::ALL.into_iter().find(|f| f.label() == label)
    }

    /// `gen_ai.operation.name` and `gen_ai.provider.name` of its API.
    pub fn gen_ai_names(self) -> (&'static str, &'static str) {
        match self {
            Family::OllamaChat => ("chat", "ollama"),
            Family::OllamaGenerate => ("text_completion", "ollama"),
            Family::OpenAiChat => ("chat", "openai"),
            Family::OpenAiCompletions => ("text_completion", "openai"),
        }
    }
}

/// `gen_ai.operation.name` and `gen_ai.provider.name` (OpenTelemetry GenAI semantic
/// conventions) for a record's approach: a passive record's by its family's API. A span-fed
/// record's approach is its server's own label (the companions' registry labels, or any
/// other server's), which names no API: every companion relays Ollama's `/api/chat`, so
/// span-fed records count as Ollama chat.
pub fn gen_ai_names(approach: &str) -> (&'static str, &'static str) {
    Family::from_label(approach)
        .unwrap_or(Family::OllamaChat)
        .gen_ai_names()
}

/// What a passively read request showed beyond the fields every record has.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PassiveDetail {
    /// The request's method and path.
    pub method: String,
    pub path: String,
    /// The response's status code and media type, once its head was read.
    pub status: Option<u16>,
    pub content_type: Option<String>,
    /// The model the answer named (records only: never a metric label).
    pub model: Option<String>,
    /// Output tokens as the server reported them (`eval_count`, `usage.completion_tokens`);
    /// `tokens` is what the probe counted (pieces with content).
    pub server_output_tokens: Option<u64>,
    /// Prompt tokens as the server reported them.
    pub server_input_tokens: Option<u64>,
    /// When the request's last packet left the client (TTFT counts from here).
    pub request_end_unix_ns: Option<u64>,
    /// When the last token's packet passed.
    pub last_token_unix_ns: Option<u64>,
    /// Times between successive tokens' packets (tokens in one packet are 0 apart).
    pub gap_p50_ms: Option<f64>,
    pub gap_p99_ms: Option<f64>,
    pub gap_max_ms: Option<f64>,
    /// From the request's first packet to the answer's last byte.
    pub total_ms: Option<f64>,
    /// Why the token count may be short (payload the capture lost, framing lost); absent
    /// when every byte of the answer was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<&'static str>,
}

/// P50, P99 and the largest of `gaps` (nanoseconds) in milliseconds, nearest rank.
pub fn gap_stats(gaps: &mut [u64]) -> (Option<f64>, Option<f64>, Option<f64>) {
    if gaps.is_empty() {
        return (None, None, None);
    }
    gaps.sort_unstable();
    let rank = |q: f64| {
        let i = ((q * gaps.len() as f64).ceil() as usize).clamp(1, gaps.len()) - 1;
        gaps[i] as f64 / 1e6
    };
    (
        Some(rank(0.5)),
        Some(rank(0.99)),
        gaps.last().map(|g| *g as f64 / 1e6),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_by_path_and_their_names() {
        assert_eq!(Family::of_path("/api/chat"), Some(Family::OllamaChat));
        assert_eq!(
            Family::of_path("/v1/chat/completions/"),
            Some(Family::OpenAiChat)
        );
        assert_eq!(Family::of_path("/api/tags"), None);
        for f in Family::ALL {
            let (op, provider) = gen_ai_names(f.label());
            assert!(!op.is_empty() && !provider.is_empty());
        }
    }

    #[test]
    fn gap_quantiles_by_nearest_rank() {
        let mut g: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        assert_eq!(gap_stats(&mut g), (Some(50.0), Some(99.0), Some(100.0)));
        assert_eq!(gap_stats(&mut []), (None, None, None));
    }
}
