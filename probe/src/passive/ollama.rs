//! Ollama's streamed answers (`/api/chat`, `/api/generate`): one JSON object per line,
//! a token per line with content (`message.content` or `message.thinking`, or `response`),
//! and a final line with `done: true` and the server's counts.

use super::decoder::{Decoder, Usage};
use super::lines::Lines;
use serde::Deserialize;

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Message<'a>>,
    #[serde(borrow)]
    response: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    done: bool,
    eval_count: Option<u64>,
    prompt_eval_count: Option<u64>,
    error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<std::borrow::Cow<'a, str>>,
}

/// Reads one line into `usage`; whether it carried a token.
fn read_line(line: &Line<'_>, usage: &mut Usage) -> bool {
    if let Some(m) = &line.model
        && usage.model.is_none()
    {
        usage.model = Some(m.to_string());
    }
    if line.done {
        usage.done = true;
        usage.output_tokens = line.eval_count.or(usage.output_tokens);
        usage.input_tokens = line.prompt_eval_count.or(usage.input_tokens);
    }
    if line.error.is_some() {
        usage.error = true;
    }
    line.message.as_ref().is_some_and(|m| {
        m.content.as_deref().is_some_and(|c| !c.is_empty())
            || m.thinking.as_deref().is_some_and(|c| !c.is_empty())
    }) || line.response.as_deref().is_some_and(|c| !c.is_empty())
}

/// Parses one JSON object as an Ollama line into `usage`: `Some(token?)`, or `None` when it
/// is not one.
pub(super) fn parse(bytes: &[u8], usage: &mut Usage) -> Option<bool> {
    let line: Line<'_> = serde_json::from_slice(bytes).ok()?;
    Some(read_line(&line, usage))
}

#[derive(Debug, Default)]
pub struct OllamaNdjson {
    lines: Lines,
    usage: Usage,
    bad: u64,
}

impl OllamaNdjson {
    fn line(&mut self, l: &[u8]) -> u64 {
        if l.iter().all(u8::is_ascii_whitespace) {
            return 0;
        }
        match parse(l, &mut self.usage) {
            Some(token) => u64::from(token),
            None => {
                self.bad += 1;
                0
            }
        }
    }
}

impl Decoder for OllamaNdjson {
    fn feed(&mut self, data: &[u8]) -> u64 {
        let mut tokens = 0;
        let mut lines = std::mem::take(&mut self.lines);
        lines.feed(data, &mut |l| tokens += self.line(l));
        self.lines = lines;
        tokens
    }

    fn gap(&mut self) {
        self.lines.gap();
    }

    fn finish(&mut self) -> u64 {
        let mut tokens = 0;
        let mut lines = std::mem::take(&mut self.lines);
        lines.finish(&mut |l| tokens += self.line(l));
        self.lines = lines;
        tokens
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

    const CHAT: &[u8] = b"{\"model\":\"gemma3:12b\",\"created_at\":\"2025-01-01T12:00:00.1Z\",\"message\":{\"role\":\"assistant\",\"content\":\"The\"},\"done\":false}\n{\"model\":\"gemma3:12b\",\"created_at\":\"2025-01-01T12:00:00.2Z\",\"message\":{\"role\":\"assistant\",\"content\":\" sky \\u003c\"},\"done\":false}\n{\"model\":\"gemma3:12b\",\"created_at\":\"2025-01-01T12:00:04.9Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":4883583458,\"prompt_eval_count\":26,\"eval_count\":2}\n";

    #[test]
    fn chat_lines_give_tokens_and_the_final_counts_in_any_split() {
        let (tokens, usage, lost) = decode_split("application/x-ndjson", CHAT, &[]).unwrap();
        assert_eq!((tokens, lost), (2, 0));
        assert_eq!(usage.output_tokens, Some(2));
        assert_eq!(usage.input_tokens, Some(26));
        assert_eq!(usage.model.as_deref(), Some("gemma3:12b"));
        assert!(usage.done);
        for i in 0..CHAT.len() {
            for j in (i..CHAT.len()).step_by(7) {
                assert_eq!(
                    decode_split("application/x-ndjson", CHAT, &[i, j]).unwrap(),
                    (tokens, usage.clone(), lost)
                );
            }
        }
    }

    #[test]
    fn generate_lines_and_bad_lines() {
        let body = b"{\"model\":\"m\",\"response\":\"a\",\"done\":false}\nnot json\n{\"error\":\"boom\"}\n";
        let (tokens, usage, lost) = decode_split("application/x-ndjson", body, &[3]).unwrap();
        assert_eq!((tokens, lost, usage.error), (1, 1, true));
    }
}
