//! The SSE parser (the bench's client of the SSE relay and of /v1 streams): arbitrary bytes
//! never panic it, the events do not depend on how the bytes are split, and data the
//! encoder wrote comes back (a lone CR, which SSE cannot carry, as LF).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwire_servers::protocol::sse::{Event, Parser, encode_data};

fn parse(chunks: &[&[u8]]) -> Result<Vec<Event>, ()> {
    let mut p = Parser::with_max_line(4096);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(p.feed(c).map_err(|_| ())?);
    }
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let cut = usize::from(sel) % (bytes.len() + 1);
    let whole = parse(&[bytes]);
    let split = parse(&[&bytes[..cut], &bytes[cut..]]);
    if let (Ok(a), Ok(b)) = (&whole, &split) {
        assert_eq!(a, b, "split at {cut}");
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && text.len() < 4000
    {
        let events = parse(&[&encode_data(text)]).expect("the encoder's own lines fit");
        let expected = text.replace("\r\n", "\n").replace('\r', "\n");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data, expected);
    }
});
