//! OpenAI-compatible streamed answers (`/v1/chat/completions`, `/v1/completions`) as
//! server-sent events: one `data:` JSON chunk per token (`choices[].delta.content`, or
//! `choices[].text` for completions), a finish chunk, the `usage` chunk when the client
//! asked for it (`stream_options.include_usage`), and `data: [DONE]`. Both the current
//! chunk format and the legacy one (every chunk with `role`) read the same.

use super::decoder::{Decoder, Usage};
use super::lines::Lines;
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    usage: Option<ChunkUsage>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    /// `/v1/completions`.
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    /// A non-streamed chat answer.
    #[serde(borrow)]
    message: Option<Delta<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// Parses one JSON object as an OpenAI chunk (or whole answer) into `usage`: `Some(token?)`,
/// or `None` when it is not one.
pub(super) fn parse(bytes: &[u8], usage: &mut Usage) -> Option<bool> {
    let c: Chunk<'_> = serde_json::from_slice(bytes).ok()?;
    if let Some(m) = &c.model
        && usage.model.is_none()
    {
        usage.model = Some(m.to_string());
    }
    if let Some(u) = &c.usage {
        usage.output_tokens = u.completion_tokens.or(usage.output_tokens);
        usage.input_tokens = u.prompt_tokens.or(usage.input_tokens);
    }
    if c.error.is_some() {
        usage.error = true;
    }
    let filled = |s: &Option<Cow<'_, str>>| s.as_deref().is_some_and(|t| !t.is_empty());
    Some(c.choices.iter().any(|ch| {
        [&ch.delta, &ch.message]
            .into_iter()
            .flatten()
            .any(|d| filled(&d.content) || filled(&d.reasoning_content))
            || filled(&ch.text)
    }))
}

#[derive(Debug, Default)]
pub struct OpenAiSse {
    lines: Lines,
    /// The event being gathered: its data lines joined by LF.
    data: Vec<u8>,
    has_data: bool,
    usage: Usage,
    bad: u64,
}

impl OpenAiSse {
    fn line(&mut self, l: &[u8]) -> u64 {
        if l.is_empty() {
            return self.dispatch();
        }
        // A field line: "name: value" or "name:value"; comments start with ':'.
        let (name, value) = match l.iter().position(|b| *b == b':') {
            Some(0) => return 0,
            Some(i) => {
                let v = &l[i + 1..];
                (&l[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (l, &b""[..]),
        };
        if name == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            if self.data.len() + value.len() <= super::lines::MAX_LINE {
                self.data.extend_from_slice(value);
            } else {
                self.bad += 1;
            }
            self.has_data = true;
        }
        0
    }

    /// An event is whole (a blank line): one chunk.
    fn dispatch(&mut self) -> u64 {
        if !std::mem::take(&mut self.has_data) {
            return 0;
        }
        let data = std::mem::take(&mut self.data);
        let token = if data == b"[DONE]" {
            self.usage.done = true;
            false
        } else {
            match parse(&data, &mut self.usage) {
                Some(t) => t,
                None => {
                    self.bad += 1;
                    false
                }
            }
        };
        self.data = data;
        self.data.clear();
        u64::from(token)
    }
}

impl Decoder for OpenAiSse {
    fn feed(&mut self, data: &[u8]) -> u64 {
        let mut tokens = 0;
        let mut lines = std::mem::take(&mut self.lines);
        lines.feed(data, &mut |l| tokens += self.line(l));
        self.lines = lines;
        tokens
    }

    fn gap(&mut self) {
        self.lines.gap();
        // The event being gathered may have lost a line: drop it whole.
        if std::mem::take(&mut self.has_data) {
            self.bad += 1;
        }
        self.data.clear();
    }

    fn finish(&mut self) -> u64 {
        let mut tokens = 0;
        let mut lines = std::mem::take(&mut self.lines);
        lines.finish(&mut |l| tokens += self.line(l));
        self.lines = lines;
        tokens + self.dispatch()
    }

    fn usage(&self) -> &Usage {
        &self.usage
    }

    fn lost(&self) -> u64 {
        self.lines.lost + self.bad
    }
}

#[cfg(test)]
mod tests {
    use super::super::stream::decode_split;

    const CURRENT: &[u8] = b"data: {\"id\":\"chatcmpl-875\",\"object\":\"chat.completion.chunk\",\"created\":1749989023,\"model\":\"gemma3:12b\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"The\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"chatcmpl-875\",\"object\":\"chat.completion.chunk\",\"created\":1749989023,\"model\":\"gemma3:12b\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" sky\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"chatcmpl-875\",\"object\":\"chat.completion.chunk\",\"created\":1749989023,\"model\":\"gemma3:12b\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"chatcmpl-875\",\"object\":\"chat.completion.chunk\",\"created\":1749989023,\"model\":\"gemma3:12b\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[],\"usage\":{\"prompt_tokens\":26,\"completion_tokens\":2,\"total_tokens\":28}}\n\ndata: [DONE]\n\n";

    const LEGACY: &[u8] = b"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"a\"},\"finish_reason\":null}]}\r\n\r\ndata: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":\"stop\"}]}\r\n\r\ndata: [DONE]\r\n\r\n";

    #[test]
    fn current_format_with_usage_in_any_split() {
        let whole = decode_split("text/event-stream", CURRENT, &[]).unwrap();
        assert_eq!(whole.0, 2);
        assert_eq!(whole.1.output_tokens, Some(2));
        assert_eq!(whole.1.input_tokens, Some(26));
        assert!(whole.1.done);
        assert_eq!(whole.2, 0);
        for i in 0..CURRENT.len() {
            for j in (i..CURRENT.len()).step_by(11) {
                assert_eq!(
                    decode_split("text/event-stream", CURRENT, &[i, j]).unwrap(),
                    whole
                );
            }
        }
    }

    #[test]
    fn legacy_format_and_completions() {
        let (tokens, usage, lost) = decode_split("text/event-stream", LEGACY, &[5]).unwrap();
        assert_eq!(
            (tokens, usage.output_tokens, usage.done, lost),
            (1, None, true, 0)
        );
        let completions = b"data: {\"choices\":[{\"text\":\"x\",\"index\":0}]}\n\n: comment\n\ndata: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\n";
        assert_eq!(
            decode_split("text/event-stream", completions, &[])
                .unwrap()
                .0,
            1
        );
    }
}
