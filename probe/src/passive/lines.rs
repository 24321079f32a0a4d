//! Lines out of a byte stream that arrives in arbitrary pieces, with a bounded buffer: the
//! framing both LLM stream formats share (NDJSON lines, SSE fields).

/// Longest line kept (an Ollama final line with a long `context`, an SSE chunk with a long
/// content). A longer one is skipped whole and counted.
pub const MAX_LINE: usize = 256 * 1024;

#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    /// Dropping bytes up to the next LF (after a gap or an overlong line).
    skipping: bool,
    /// Lines lost: overlong, or cut by a gap.
    pub lost: u64,
}

impl Lines {
    /// Calls `line` with each complete line (without its LF or CRLF).
    pub fn feed(&mut self, mut data: &[u8], line: &mut dyn FnMut(&[u8])) {
        while !data.is_empty() {
            let Some(i) = data.iter().position(|b| *b == b'\n') else {
                if !self.skipping {
                    if self.buf.len() + data.len() > MAX_LINE {
                        self.buf.clear();
                        self.skipping = true;
                        self.lost += 1;
                    } else {
                        self.buf.extend_from_slice(data);
                    }
                }
                return;
            };
            let (piece, rest) = (&data[..i], &data[i + 1..]);
            data = rest;
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.buf.len() + piece.len() > MAX_LINE {
                self.buf.clear();
                self.lost += 1;
            } else if self.buf.is_empty() {
                line(trim_cr(piece));
            } else {
                self.buf.extend_from_slice(piece);
                let whole = std::mem::take(&mut self.buf);
                line(trim_cr(&whole));
                self.buf = whole;
                self.buf.clear();
            }
        }
    }

    /// Bytes are missing: the line they were in is lost, reading resumes at the next LF.
    pub fn gap(&mut self) {
        if !self.skipping {
            self.lost += 1;
        }
        self.buf.clear();
        self.skipping = true;
    }

    /// The stream ended: a last line without its LF.
    pub fn finish(&mut self, line: &mut dyn FnMut(&[u8])) {
        if !self.skipping && !self.buf.is_empty() {
            let whole = std::mem::take(&mut self.buf);
            line(trim_cr(&whole));
        }
        self.buf.clear();
        self.skipping = false;
    }
}

fn trim_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(pieces: &[&[u8]]) -> (Vec<String>, u64) {
        let mut l = Lines::default();
        let mut out = Vec::new();
        for p in pieces {
            l.feed(p, &mut |x| {
                out.push(String::from_utf8_lossy(x).into_owned())
            });
        }
        l.finish(&mut |x| out.push(String::from_utf8_lossy(x).into_owned()));
        (out, l.lost)
    }

    #[test]
    fn any_split_gives_the_same_lines() {
        let text = b"a\r\nbb\n\nccc";
        let whole = lines(&[text]);
        assert_eq!(whole.0, ["a", "bb", "", "ccc"]);
        for i in 0..text.len() {
            let (x, y) = text.split_at(i);
            assert_eq!(lines(&[x, y]), whole);
        }
    }

    #[test]
    fn overlong_lines_are_skipped_and_counted() {
        let long = vec![b'x'; MAX_LINE + 1];
        let (out, lost) = lines(&[&long, b"\nok\n"]);
        assert_eq!((out, lost), (vec!["ok".to_string()], 1));
    }
}
