//! WebTransport framing (`<len>:<bytes>`): arbitrary bytes, fed in two pieces, never panic
//! the decoder; the frames come out the same however the bytes are split; and a frame the
//! encoder made decodes to its payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwire_servers::protocol::framing::{FrameDecoder, encode};

/// Every frame of `chunks`, and the error that stopped them, if any.
fn decode(chunks: &[&[u8]], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut d = FrameDecoder::new(max);
    let mut frames = Vec::new();
    for c in chunks {
        d.extend(c);
        loop {
            match d.next_frame() {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let max = 1 + usize::from(sel) * 4;
    let cut = usize::from(sel) % (bytes.len() + 1);
    let whole = decode(&[bytes], max);
    assert_eq!(decode(&[&bytes[..cut], &bytes[cut..]], max), whole, "split at {cut}");
    if bytes.len() <= max {
        let (frames, failed) = decode(&[&encode(bytes)], max);
        assert!(!failed && frames == [bytes.to_vec()]);
    }
});
