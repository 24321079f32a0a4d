//! Which [`Decoder`] reads an answer's body (by its media type: Ollama NDJSON, OpenAI SSE,
//! one JSON body), and feeding one in arbitrary pieces.

use super::decoder::{Decoder, Usage};
use super::{ollama::OllamaNdjson, openai::OpenAiSse, whole::WholeJson};

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
