//! Server-Sent Events as the SSE relay writes them and as clients read them
//! (WHATWG HTML, "Server-sent events": lines end in LF, CR or CRLF; `data:` lines of one
//! event are joined with LF; one space after the colon is dropped).

use bytes::{Bytes, BytesMut};

/// Encodes `data` as one event. Each line of `data` becomes its own `data:` line, so a
/// standard client rebuilds the text exactly (a lone CR comes back as LF: SSE cannot carry it).
pub fn encode_data(data: &str) -> Bytes {
    encode_event(None, data)
}

/// Encodes an event with an `event:` type line, e.g. `error`.
pub fn encode_event(event: Option<&str>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.extend_from_slice(b"\n");
    }
    for line in split_lines(data) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.freeze()
}

/// Splits on LF, CR and CRLF; `"a\n"` gives `["a", ""]`, `""` gives `[""]`.
fn split_lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let cur = rest?;
        match cur.find(['\n', '\r']) {
            Some(i) => {
                let skip = if cur[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&cur[i + skip..]);
                Some(&cur[..i])
            }
            None => {
                rest = None;
                Some(cur)
            }
        }
    })
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, `message` when absent.
    pub event: String,
    pub data: String,
}

/// Incremental SSE parser: feed bytes, take events.
#[derive(Debug, Default)]
pub struct Parser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    /// The previous chunk ended in CR: a following LF belongs to it.
    after_cr: bool,
    /// Longest line accepted, so a peer cannot grow the buffer without bound.
    max_line: Option<usize>,
}

/// A line longer than the parser's limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SSE line longer than {0} bytes")]
pub struct LineTooLong(pub usize);

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser that refuses lines longer than `max` bytes.
    pub fn with_max_line(max: usize) -> Self {
        Self {
            max_line: Some(max),
            ..Self::default()
        }
    }

    /// Feeds bytes and returns the events they complete.
    pub fn feed(&mut self, mut input: &[u8]) -> Result<Vec<Event>, LineTooLong> {
        let mut events = Vec::new();
        if self.after_cr && input.first() == Some(&b'\n') {
            input = &input[1..];
        }
        self.after_cr = false;
        while let Some(i) = input.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.pending.extend_from_slice(&input[..i]);
            let line = std::mem::take(&mut self.pending);
            self.line(&line, &mut events);
            let mut skip = 1;
            if input[i] == b'\r' {
                match input.get(i + 1) {
                    Some(b'\n') => skip = 2,
                    None => self.after_cr = true,
                    _ => {}
                }
            }
            input = &input[i + skip..];
        }
        self.pending.extend_from_slice(input);
        if let Some(max) = self.max_line
            && self.pending.len() > max
        {
            return Err(LineTooLong(max));
        }
        Ok(events)
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<Event>) {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                events.push(Event {
                    event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return; // comment
        }
        let (field, value) = match line.find(':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (&line[..], ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            _ => {} // id, retry and unknown fields carry nothing we use
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_tokens_round_trip() {
        let tokens = ["The", " cat", ".\n\n", "\n", " ", "", "a\r\nb", "x\n"];
        let wire: Vec<u8> = tokens
            .iter()
            .flat_map(|t| encode_data(t).to_vec())
            .collect();
        for chunk in 1..=wire.len() {
            let mut p = Parser::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                got.extend(p.feed(piece).unwrap().into_iter().map(|e| e.data));
            }
            let want: Vec<String> = tokens.iter().map(|t| t.replace("\r\n", "\n")).collect();
            assert_eq!(got, want, "chunk size {chunk}");
        }
    }

    #[test]
    fn literal_wire_format() {
        assert_eq!(&encode_data(" cat")[..], b"data:  cat\n\n");
        assert_eq!(&encode_data("a\nb")[..], b"data: a\ndata: b\n\n");
        assert_eq!(
            &encode_event(Some("error"), "boom")[..],
            b"event: error\ndata: boom\n\n"
        );
    }

    #[test]
    fn parses_fields_comments_and_crlf() {
        let mut p = Parser::new();
        let ev = p
            .feed(b": hi\r\nevent: error\r\ndata:x\r\nid: 3\r\n\r\ndata\r\n\r\n")
            .unwrap();
        assert_eq!(
            ev,
            vec![
                Event {
                    event: "error".into(),
                    data: "x".into()
                },
                Event {
                    event: "message".into(),
                    data: String::new()
                },
            ]
        );
    }

    #[test]
    fn limits_line_length() {
        let mut p = Parser::with_max_line(8);
        assert!(p.feed(b"data: 0123456789").is_err());
    }
}
