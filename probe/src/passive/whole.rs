//! A non-streamed answer: one JSON body (`stream: false`), Ollama's or OpenAI's, whose
//! usage is read when it ends. Bounded: a body over [`MAX_BODY`] is not kept.

use super::decoder::{Decoder, Usage};

/// Most bytes of a non-streamed answer kept to read its usage.
pub const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Default)]
pub struct WholeJson {
    body: Vec<u8>,
    /// Too large, or bytes missing: not read.
    spoiled: bool,
    usage: Usage,
    lost: u64,
}

impl Decoder for WholeJson {
    fn feed(&mut self, data: &[u8]) -> u64 {
        if !self.spoiled {
            if self.body.len() + data.len() > MAX_BODY {
                self.spoiled = true;
                self.body = Vec::new();
            } else {
                self.body.extend_from_slice(data);
            }
        }
        0
    }

    fn gap(&mut self) {
        self.spoiled = true;
        self.body = Vec::new();
    }

    fn finish(&mut self) -> u64 {
        let body = std::mem::take(&mut self.body);
        if self.spoiled || body.is_empty() {
            self.lost += u64::from(self.spoiled);
            return 0;
        }
        // Ollama's answer has `done`, OpenAI's `choices`: whichever reads.
        let mut ollama = Usage::default();
        let mut openai = Usage::default();
        if super::ollama::parse(&body, &mut ollama).is_some() && ollama.done {
            self.usage = ollama;
        } else if super::openai::parse(&body, &mut openai).is_some() {
            openai.done = true;
            self.usage = openai;
        } else if super::ollama::parse(&body, &mut ollama).is_some() {
            self.usage = ollama;
        } else {
            self.lost += 1;
        }
        0
    }

    fn usage(&self) -> &Usage {
        &self.usage
    }

    fn lost(&self) -> u64 {
        self.lost
    }

    fn streams(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::stream::decode_split;

    #[test]
    fn ollama_and_openai_bodies() {
        let ollama = br#"{"model":"m","created_at":"x","message":{"role":"assistant","content":"hi there"},"done":true,"prompt_eval_count":5,"eval_count":3}"#;
        let (_, u, lost) = decode_split("application/json", ollama, &[10]).unwrap();
        assert_eq!(
            (u.output_tokens, u.input_tokens, lost),
            (Some(3), Some(5), 0)
        );
        let openai = br#"{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":9,"total_tokens":16}}"#;
        let (_, u, _) = decode_split("application/json", openai, &[1, 50]).unwrap();
        assert_eq!(
            (u.output_tokens, u.input_tokens, u.done),
            (Some(9), Some(7), true)
        );
        assert_eq!(
            decode_split("application/json", b"{nope", &[]).unwrap().2,
            1
        );
    }
}
