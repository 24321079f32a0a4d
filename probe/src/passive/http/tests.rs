//! `http`'s unit tests.

use super::*;

#[derive(Debug, Default, PartialEq, Eq)]
struct Seen {
    heads: Vec<String>,
    body: Vec<u8>,
    gaps: u64,
    ends: usize,
}

fn run(side: Side, pieces: &[&[u8]]) -> (Seen, Option<Broken>) {
    let mut r = HttpReader::new(side);
    let mut seen = Seen::default();
    for p in pieces {
        r.feed(p, &mut |e| match e {
            HttpEvent::Request(h) => seen.heads.push(format!("{} {}", h.method, h.path)),
            HttpEvent::Response(h) => seen.heads.push(format!("{} {}", h.status, h.content_type)),
            HttpEvent::Body(b) => seen.body.extend_from_slice(b),
            HttpEvent::BodyGap(n) => seen.gaps += n,
            HttpEvent::End => seen.ends += 1,
        });
    }
    r.close(&mut |e| {
        if e == HttpEvent::End {
            seen.ends += 1
        }
    });
    (seen, r.broken())
}

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n1\r\n\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nabc";

#[test]
fn chunked_then_length_in_any_split() {
    let (whole, broken) = run(Side::Responses, &[CHUNKED]);
    assert_eq!(broken, None);
    assert_eq!(whole.heads, ["200 application/x-ndjson", "200 text/plain"]);
    assert_eq!(whole.body, b"{\"a\":1\nabc");
    assert_eq!(whole.ends, 2);
    for i in 0..CHUNKED.len() {
        for j in i..CHUNKED.len() {
            let (a, b) = CHUNKED.split_at(i);
            let (b, c) = b.split_at(j - i);
            assert_eq!(
                run(Side::Responses, &[a, b, c]),
                (whole_again(), None),
                "{i} {j}"
            );
        }
    }
    fn whole_again() -> Seen {
        run(Side::Responses, &[CHUNKED]).0
    }
}

#[test]
fn requests_keep_alive_and_pipelined() {
    let two = b"POST /api/chat?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}GET /api/tags HTTP/1.1\r\nHost: a\r\n\r\n";
    let (seen, broken) = run(Side::Requests, &[two]);
    assert_eq!(broken, None);
    assert_eq!(seen.heads, ["POST /api/chat", "GET /api/tags"]);
    assert_eq!(seen.body, b"{}");
    assert_eq!(seen.ends, 2);
}

#[test]
fn body_until_close_and_head_without_body() {
    let (seen, _) = run(
        Side::Responses,
        &[
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"x\":",
            b"1}",
        ],
    );
    assert_eq!((seen.body.as_slice(), seen.ends), (&b"{\"x\":1}"[..], 1));
    let mut r = HttpReader::new(Side::Responses);
    r.expect(true);
    let mut ends = 0;
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", &mut |e| {
        ends += usize::from(e == HttpEvent::End)
    });
    assert_eq!((ends, r.idle()), (1, true));
}

#[test]
fn gaps_inside_known_lengths_are_skipped_elsewhere_they_break() {
    let mut r = HttpReader::new(Side::Responses);
    let mut gaps = 0;
    let mut ends = 0;
    let mut out = |e: HttpEvent<'_>| match e {
        HttpEvent::BodyGap(n) => gaps += n,
        HttpEvent::End => ends += 1,
        _ => {}
    };
    r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", &mut out);
    r.gap(5, &mut out);
    r.feed(b"cde", &mut out);
    assert_eq!(r.broken(), None);
    r.gap(3, &mut out);
    assert_eq!(r.broken(), Some(Broken::LostSync));
    assert_eq!((gaps, ends), (5, 1));
}

#[test]
fn reading_starts_again_at_a_message_after_it_stopped() {
    let mut r = HttpReader::new(Side::Requests);
    let mut heads = 0;
    r.feed(b"{\"tail of a body\"}", &mut |_| {});
    assert_eq!(r.broken(), Some(Broken::NotHttp));
    let next = b"POST /api/chat HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    assert!(starts_message(Side::Requests, next));
    assert!(!starts_message(Side::Requests, b"{\"POST /x"));
    assert!(starts_message(Side::Responses, b"HTTP/1.1 200 OK\r\n"));
    r.resync();
    r.feed(next, &mut |e| {
        heads += usize::from(matches!(e, HttpEvent::Request(_)))
    });
    assert_eq!((heads, r.broken()), (1, None));
}

/// Found by the fuzz target: a method of exactly 16 letters was a message whole and not
/// one when its first piece ended after those letters.
#[test]
fn the_method_check_does_not_depend_on_the_split() {
    for head in [
        &b"UUUUUUUUUUHTTHHZ *\xff\r\n\r\n"[..],
        b"UUUUUUUUUUHTTHHZZ / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let whole = run(Side::Requests, &[head]);
        for i in 0..head.len() {
            assert_eq!(run(Side::Requests, &[&head[..i], &head[i..]]), whole, "{i}");
        }
    }
}

#[test]
fn bad_input_is_an_outcome() {
    assert_eq!(
        run(Side::Requests, &[b"\x16\x03\x01\x02"]).1,
        Some(Broken::NotHttp)
    );
    assert_eq!(
        run(Side::Responses, &[b"PRI * HTTP/2.0"]).1,
        Some(Broken::NotHttp)
    );
    assert_eq!(
        run(
            Side::Requests,
            &[b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"]
        )
        .1,
        Some(Broken::MalformedHead)
    );
    let big = vec![b'a'; MAX_HEAD + 10];
    let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
    head.extend(&big);
    assert_eq!(run(Side::Requests, &[&head]).1, Some(Broken::HeadTooLarge));
    assert_eq!(
        run(
            Side::Responses,
            &[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]
        )
        .1,
        Some(Broken::MalformedChunk)
    );
}
