//! The passive LLM stream decoders (Ollama NDJSON, OpenAI SSE, a whole JSON body):
//! arbitrary bytes never panic them, and the tokens, usage and lost units they report do
//! not depend on how the bytes are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwire_probe::passive::stream::decode_split;

const TYPES: [&str; 3] = ["application/x-ndjson", "text/event-stream", "application/json"];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let media = TYPES[usize::from(sel) % TYPES.len()];
    let n = bytes.len() + 1;
    let cuts = [
        usize::from(sel) * 13 % n,
        usize::from(sel) * 31 % n,
        usize::from(sel) * 97 % n,
    ];
    let whole = decode_split(media, bytes, &[]);
    let split = decode_split(media, bytes, &cuts);
    assert_eq!(whole, split, "{media} split at {cuts:?}");
});
