//! Ollama's stream formats as the relays and the bench read them: NDJSON lines of
//! /api/chat and `data:` payloads of /v1/chat/completions. Arbitrary bytes never panic the
//! parsers, and the line splitter gives the same lines however the bytes are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwire_servers::protocol::ollama_stream::{LineSplitter, parse_ndjson_line, parse_openai_data};

fn lines(chunks: &[&[u8]]) -> Result<(Vec<Vec<u8>>, Vec<u8>), ()> {
    let mut s = LineSplitter::new(4096);
    let mut out = Vec::new();
    for c in chunks {
        s.feed(c, |l| out.push(l.to_vec())).map_err(|_| ())?;
    }
    Ok((out, s.remainder().to_vec()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let _ = parse_ndjson_line(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = parse_openai_data(text);
    }
    let cut = usize::from(sel) % (bytes.len() + 1);
    if let (Ok(a), Ok(b)) = (lines(&[bytes]), lines(&[&bytes[..cut], &bytes[cut..]])) {
        assert_eq!(a, b, "split at {cut}");
    }
    if let Ok((ls, _)) = lines(&[bytes]) {
        for l in ls {
            let _ = parse_ndjson_line(&l);
        }
    }
});
