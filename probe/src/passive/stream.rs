//! What an LLM answer's body says, whatever its format: the tokens counted as they arrive
//! and the counts the server reported. Each format is a [`Decoder`] (Ollama NDJSON, OpenAI
//! SSE, one JSON body), fed body bytes in whatever pieces the packets bring.

use super::{ollama::OllamaNdjson, openai::OpenAiSse, whole::WholeJson};

/// The counts a server reported about an answer (usage), and its model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Output tokens as the server counted them (`eval_count`, `completion_tokens`).
    pub output_tokens: Option<u64>,
    /// Prompt tokens (`prompt_eval_count`, `prompt_tokens`).
    pub input_tokens: Option<u64>,
    pub model: Option<String>,
    /// The answer said it ended (`done: true`, `[DONE]`, a whole body parsed).
    pub done: bool,
    /// The answer carried an error object.
    pub error: bool,
}

/// A body format's decoder.
pub trait Decoder: Send {
    /// Reads body bytes; how many tokens (pieces with content) they completed.
    fn feed(&mut self, data: &[u8]) -> u64;
    /// Body bytes are missing: what they held is lost.
    fn gap(&mut self);
    /// The body ended; the tokens its last piece completed.
    fn finish(&mut self) -> u64;
    fn usage(&self) -> &Usage;
    /// Units (lines, events, the body) that could not be read: too long, cut, or not JSON.
    fn lost(&self) -> u64;
    /// Whether tokens are counted as they arrive (a stream); a whole body has only the
    /// server's count.
    fn streams(&self) -> bool {
        true
    }
}

/// The decoder for a response's media type, if it is an LLM answer format.
pub fn decoder_for(content_type: &str) -> Option<Box<dyn Decoder>> {
    match content_type {
        "application/x-ndjson" => Some(Box::new(OllamaNdjson::default())),
        "text/event-stream" => Some(Box::new(OpenAiSse::default())),
        "application/json" => Some(Box::new(WholeJson::default())),
        _ => None,
    }
}

/// Splits `data` at `cuts` and feeds the pieces (then finishes): the tokens and usage. For
/// the split-invariance checks (tests and fuzz targets): any split must give the same.
pub fn decode_split(content_type: &str, data: &[u8], cuts: &[usize]) -> Option<(u64, Usage, u64)> {
    let mut d = decoder_for(content_type)?;
    let mut tokens = 0;
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| (*c).min(data.len())).collect();
    cuts.sort_unstable();
    for c in cuts.into_iter().chain([data.len()]) {
        tokens += d.feed(&data[at..c.max(at)]);
        at = c.max(at);
    }
    tokens += d.finish();
    Some((tokens, d.usage().clone(), d.lost()))
}
