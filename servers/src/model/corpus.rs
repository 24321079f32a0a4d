//! The built-in English text the embedded model "generates", as real o200k_base BPE pieces
//! (tiktoken-rs), so token sizes on the wire are those of a real model's output.

use std::sync::OnceLock;
use tiktoken_rs::CoreBPE;

const TEXT: &str = include_str!("corpus.txt");

/// The tokenised corpus: each piece is one BPE token decoded to text.
pub struct Corpus {
    pub ids: Vec<u32>,
    pub pieces: Vec<String>,
    /// Indices of tokens that begin a paragraph: where responses start.
    pub starts: Vec<usize>,
}

/// The o200k_base tokenizer (loaded once; about half a second).
pub fn bpe() -> &'static CoreBPE {
    tiktoken_rs::o200k_base_singleton()
}

/// The corpus, tokenised on first use.
pub fn corpus() -> &'static Corpus {
    static CORPUS: OnceLock<Corpus> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let bpe = bpe();
        let raw = bpe.encode_ordinary(TEXT);
        let mut ids = Vec::with_capacity(raw.len());
        let mut pieces: Vec<String> = Vec::with_capacity(raw.len());
        // A BPE token may end inside a multi-byte character; Ollama holds such bytes back
        // until the character is complete, and so do we (the corpus is ASCII today).
        let mut held: Vec<u8> = Vec::new();
        for id in raw {
            held.extend(bpe.decode_bytes(&[id]).unwrap_or_default());
            if let Ok(s) = std::str::from_utf8(&held) {
                ids.push(id);
                pieces.push(s.to_owned());
                held.clear();
            }
        }
        let mut starts = vec![0];
        let mut text_len = 0;
        for (i, p) in pieces.iter().enumerate() {
            text_len += p.len();
            if p.ends_with("\n\n") && i + 1 < pieces.len() {
                starts.push(i + 1);
            }
        }
        debug_assert_eq!(text_len, TEXT.len());
        Corpus {
            ids,
            pieces,
            starts,
        }
    })
}

/// Number of o200k_base tokens in `text`.
pub fn count_tokens(text: &str) -> usize {
    bpe().encode_ordinary(text).len()
}

/// Token ids of `text` (for `/api/generate`'s `context`).
pub fn encode(text: &str) -> Vec<u32> {
    bpe().encode_ordinary(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_rebuild_the_text() {
        let c = corpus();
        assert_eq!(c.pieces.concat(), TEXT);
        assert!(c.pieces.len() > 1200, "{}", c.pieces.len());
        assert!(c.starts.len() > 10);
        // Real BPE: most pieces are a short word with its leading space.
        assert!(c.pieces.iter().any(|p| p == " token"));
    }
}
