//! Reading the token content out of Ollama's streams: NDJSON lines of `/api/chat` and
//! `/api/generate`, and the `data:` payloads of `/v1/chat/completions`. The SSE relay reads
//! its upstream with this, the TLS proxy counts what it relays, and the bench reads replies.

use serde::Deserialize;

/// What one line or event of an Ollama stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// A piece of generated text (never empty).
    Token(String),
    /// The end of the generation, with the token count when the stream states it.
    Done { tokens: Option<u64> },
    /// The server reported an error inside the stream.
    Error(String),
    /// Nothing for us (a role-only chunk, an empty content chunk).
    Other,
}

#[derive(Deserialize)]
struct NdjsonLine {
    created_at: Option<String>,
    message: Option<NdjsonMessage>,
    response: Option<String>,
    #[serde(default)]
    done: bool,
    eval_count: Option<u64>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct NdjsonMessage {
    #[serde(default)]
    content: String,
}

/// Parses one NDJSON line of `/api/chat` or `/api/generate`.
pub fn parse_ndjson_line(line: &[u8]) -> Result<StreamItem, serde_json::Error> {
    parse_ndjson_line_timed(line).map(|(item, _)| item)
}

/// Parses one NDJSON line, with its `created_at` (when the server sent it, RFC 3339 with
/// nanoseconds) in nanoseconds since the Unix epoch, when present and valid.
pub fn parse_ndjson_line_timed(
    line: &[u8],
) -> Result<(StreamItem, Option<u64>), serde_json::Error> {
    let l: NdjsonLine = serde_json::from_slice(line)?;
    let created = l.created_at.as_deref().and_then(|s| {
        let t =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        u64::try_from(t.unix_timestamp_nanos()).ok()
    });
    Ok((item(l), created))
}

fn item(l: NdjsonLine) -> StreamItem {
    if let Some(e) = l.error {
        return StreamItem::Error(e);
    }
    let content = l
        .message
        .map(|m| m.content)
        .or(l.response)
        .unwrap_or_default();
    if l.done {
        return StreamItem::Done {
            tokens: l.eval_count,
        };
    }
    if content.is_empty() {
        StreamItem::Other
    } else {
        StreamItem::Token(content)
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    completion_tokens: u64,
}

/// Parses the data of one `/v1/chat/completions` stream event. `[DONE]` is `Done` without
/// a count; the usage chunk (with `stream_options.include_usage`) is `Done` with one.
pub fn parse_openai_data(data: &str) -> Result<StreamItem, serde_json::Error> {
    if data == "[DONE]" {
        return Ok(StreamItem::Done { tokens: None });
    }
    let c: Chunk = serde_json::from_str(data)?;
    if let Some(e) = c.error {
        let msg = e
            .get("message")
            .and_then(|m| m.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| e.to_string());
        return Ok(StreamItem::Error(msg));
    }
    if let Some(u) = c.usage {
        return Ok(StreamItem::Done {
            tokens: Some(u.completion_tokens),
        });
    }
    let Some(choice) = c.choices.into_iter().next() else {
        return Ok(StreamItem::Other);
    };
    match choice.delta.and_then(|d| d.content) {
        Some(content) if !content.is_empty() => Ok(StreamItem::Token(content)),
        // Role-only first chunks (legacy format) and the finish chunk carry no text.
        _ => Ok(StreamItem::Other),
    }
}

/// Splits a byte stream into LF-terminated lines (without the LF), refusing lines longer
/// than a limit so a peer cannot grow memory without bound.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

/// A line longer than the splitter's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream line longer than {0} bytes")]
pub struct LineTooLong(pub usize);

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self {
            pending: Vec::new(),
            max,
        }
    }

    /// Feeds bytes; calls `f` with each complete line.
    pub fn feed(&mut self, mut input: &[u8], mut f: impl FnMut(&[u8])) -> Result<(), LineTooLong> {
        while let Some(i) = input.iter().position(|&b| b == b'\n') {
            if self.pending.is_empty() {
                f(&input[..i]);
            } else {
                self.pending.extend_from_slice(&input[..i]);
                f(&self.pending);
                self.pending.clear();
            }
            input = &input[i + 1..];
        }
        if self.pending.len() + input.len() > self.max {
            return Err(LineTooLong(self.max));
        }
        self.pending.extend_from_slice(input);
        Ok(())
    }

    /// Bytes after the last LF (a final line without its newline).
    pub fn remainder(&self) -> &[u8] {
        &self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_design_notes_lines() {
        let tok = br#"{"model":"gemma3:12b","created_at":"2025-01-01T12:00:00.123456789Z","message":{"role":"assistant","content":"The"},"done":false}"#;
        assert_eq!(
            parse_ndjson_line(tok).unwrap(),
            StreamItem::Token("The".into())
        );
        assert_eq!(
            parse_ndjson_line_timed(tok).unwrap().1,
            Some(1_735_732_800_123_456_789)
        );
        let done = br#"{"model":"gemma3:12b","created_at":"2025-01-01T12:00:04.9Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}"#;
        assert_eq!(
            parse_ndjson_line(done).unwrap(),
            StreamItem::Done { tokens: Some(282) }
        );
        let gen_tok = br#"{"model":"m","created_at":"x","response":"\u003cb\u003e","done":false}"#;
        assert_eq!(parse_ndjson_line_timed(gen_tok).unwrap().1, None);
        assert_eq!(
            parse_ndjson_line(gen_tok).unwrap(),
            StreamItem::Token("<b>".into())
        );
        assert_eq!(
            parse_ndjson_line(br#"{"error":"boom"}"#).unwrap(),
            StreamItem::Error("boom".into())
        );
        assert!(parse_ndjson_line(b"{not json").is_err());
    }

    #[test]
    fn reads_openai_chunks() {
        let first = r#"{"id":"chatcmpl-875","object":"chat.completion.chunk","created":1749989023,"model":"gemma3:12b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{"role":"assistant","content":"The"},"finish_reason":null}]}"#;
        assert_eq!(
            parse_openai_data(first).unwrap(),
            StreamItem::Token("The".into())
        );
        let finish = r#"{"id":"chatcmpl-875","object":"chat.completion.chunk","created":1749989023,"model":"gemma3:12b","system_fingerprint":"fp_ollama","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(parse_openai_data(finish).unwrap(), StreamItem::Other);
        let usage = r#"{"id":"chatcmpl-875","object":"chat.completion.chunk","created":1749989023,"model":"gemma3:12b","system_fingerprint":"fp_ollama","choices":[],"usage":{"prompt_tokens":26,"completion_tokens":282,"total_tokens":308}}"#;
        assert_eq!(
            parse_openai_data(usage).unwrap(),
            StreamItem::Done { tokens: Some(282) }
        );
        assert_eq!(
            parse_openai_data("[DONE]").unwrap(),
            StreamItem::Done { tokens: None }
        );
    }

    #[test]
    fn splits_lines_across_chunks_and_limits_them() {
        let mut s = LineSplitter::new(10);
        let mut lines = Vec::new();
        s.feed(b"ab", |l| lines.push(l.to_vec())).unwrap();
        s.feed(b"c\nd\n\ne", |l| lines.push(l.to_vec())).unwrap();
        assert_eq!(lines, vec![b"abc".to_vec(), b"d".to_vec(), b"".to_vec()]);
        assert_eq!(s.remainder(), b"e");
        assert_eq!(s.feed(b"0123456789", |_| {}), Err(LineTooLong(10)));
    }
}
