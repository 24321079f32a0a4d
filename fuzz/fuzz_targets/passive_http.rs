//! The passive HTTP/1.1 reader (probe/src/passive/http.rs): arbitrary bytes on either side
//! never panic it, and what it reads (heads, body bytes, ends, where and why it stopped)
//! does not depend on how the bytes are split into packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwire_probe::passive::http::{HttpEvent, HttpReader, Side};

#[derive(Debug, PartialEq)]
enum Read {
    Head(String),
    Body(Vec<u8>),
    Gap(u64),
    End,
}

fn read(side: Side, pieces: &[&[u8]], gap_after: Option<(usize, u64)>) -> (Vec<Read>, String) {
    let mut r = HttpReader::new(side);
    let mut out: Vec<Read> = Vec::new();
    let mut push = |e: HttpEvent<'_>| match e {
        HttpEvent::Request(h) => out.push(Read::Head(format!("{} {}", h.method, h.path))),
        HttpEvent::Response(h) => out.push(Read::Head(format!("{} {}", h.status, h.content_type))),
        HttpEvent::Body(b) => match out.last_mut() {
            Some(Read::Body(v)) => v.extend_from_slice(b),
            _ if b.is_empty() => {}
            _ => out.push(Read::Body(b.to_vec())),
        },
        HttpEvent::BodyGap(n) => match out.last_mut() {
            Some(Read::Gap(g)) => *g += n,
            _ => out.push(Read::Gap(n)),
        },
        HttpEvent::End => out.push(Read::End),
    };
    for (i, p) in pieces.iter().enumerate() {
        r.feed(p, &mut push);
        if let Some((at, n)) = gap_after
            && at == i
        {
            r.gap(n, &mut push);
        }
    }
    r.close(&mut push);
    (out, format!("{:?}", r.broken()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let side = if sel & 1 == 0 { Side::Requests } else { Side::Responses };
    let cut = usize::from(sel >> 1) * 7 % (bytes.len() + 1);
    let cut2 = (cut + usize::from(sel)) % (bytes.len() + 1);
    let (a, b) = (cut.min(cut2), cut.max(cut2));
    let whole = read(side, &[bytes], None);
    let split = read(side, &[&bytes[..a], &bytes[a..b], &bytes[b..]], None);
    assert_eq!(whole, split, "split at {a}, {b}");
    // A gap never panics, whatever the state.
    let _ = read(side, &[&bytes[..a], &bytes[a..]], Some((0, u64::from(sel) + 1)));
});
