//! What an LLM answer's body says, whatever its format: the tokens counted as they arrive
//! and the counts the server reported. Each format (`ollama`, `openai`, `whole`) is a
//! [`Decoder`], fed body bytes in whatever pieces the packets bring; `stream` picks one.

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
