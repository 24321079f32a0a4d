//! One direction of an HTTP/1.1 connection, read incrementally from whatever pieces the
//! packets bring: message heads (parsed by `httparse`), then bodies in any framing
//! (`Content-Length`, `Transfer-Encoding: chunked`, or until the connection closes),
//! message after message (keep-alive, pipelining).
//!
//! State is bounded: a head may be at most [`MAX_HEAD`] bytes and a chunk-size line
//! [`MAX_CHUNK_LINE`]. Bytes the capture did not get (a copy limit, a lost packet) arrive as
//! a gap: inside a body of known length the reader skips them and says so; anywhere else it
//! can no longer tell where messages start, so it stops ([`Broken`]) and says why. Nothing
//! here panics on input, and every outcome is a value the caller counts.

use std::collections::VecDeque;

/// Most bytes of a message head (request or status line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of a chunk-size line (with extensions) or a trailer line.
pub const MAX_CHUNK_LINE: usize = 1024;
/// Bytes within which a request line's method must end (and a status line's `HTTP/`).
const METHOD_MAX: usize = 16;
/// Most headers a head may carry.
const MAX_HEADERS: usize = 64;

/// Why a direction stopped being read: the rest of the connection is not decoded (its
/// packets are still counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Broken {
    /// A head that `httparse` refuses, or a framing header that makes no sense.
    MalformedHead,
    /// A head longer than [`MAX_HEAD`].
    HeadTooLarge,
    /// A chunk-size line that does not parse or is too long.
    MalformedChunk,
    /// Bytes missing where the framing is read (a head, a chunk-size line).
    LostSync,
    /// Not HTTP/1.x (TLS, HTTP/2's preface, anything else).
    NotHttp,
}

impl Broken {
    pub fn as_str(self) -> &'static str {
        match self {
            Broken::MalformedHead => "malformed_head",
            Broken::HeadTooLarge => "head_too_large",
            Broken::MalformedChunk => "malformed_chunk",
            Broken::LostSync => "lost_sync",
            Broken::NotHttp => "not_http",
        }
    }
}

/// A request's head, what the decoders and the records need of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without the query.
    pub path: String,
}

/// A response's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// The media type, lower case, without parameters.
    pub content_type: String,
}

/// What reading gives, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum HttpEvent<'a> {
    Request(RequestHead),
    Response(ResponseHead),
    /// Body bytes (chunked framing removed).
    Body(&'a [u8]),
    /// Body bytes the capture did not get.
    BodyGap(u64),
    /// The message (head and body) is complete.
    End,
}

/// Which side this direction carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Requests,
    Responses,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data; how many of its 2 bytes are still due.
    ChunkEnd(u8),
    Trailers,
    UntilClose,
    Broken(Broken),
}

/// One direction's reader.
#[derive(Debug)]
pub struct HttpReader {
    side: Side,
    state: State,
    /// A head or line being gathered.
    buf: Vec<u8>,
    /// For responses: whether each pending request expects no body (HEAD), oldest first.
    no_body: VecDeque<bool>,
    /// The head being gathered begins like a message.
    started: bool,
}

impl HttpReader {
    pub fn new(side: Side) -> Self {
        Self {
            side,
            state: State::Head,
            buf: Vec::new(),
            no_body: VecDeque::new(),
            started: false,
        }
    }

    /// For a response reader: one more request is waiting for its answer (`head` for a HEAD
    /// request, whose answer has no body).
    pub fn expect(&mut self, head: bool) {
        self.no_body.push_back(head);
    }

    /// Why reading stopped, if it did.
    pub fn broken(&self) -> Option<Broken> {
        match self.state {
            State::Broken(b) => Some(b),
            _ => None,
        }
    }

    /// Reads afresh from a message's start after the direction stopped (a gap where the
    /// framing is read, or a connection the capture joined in its middle): the caller saw
    /// its next bytes begin a message ([`starts_message`]).
    pub fn resync(&mut self) {
        self.state = State::Head;
        self.started = false;
        self.buf.clear();
        self.no_body.clear();
    }

    /// Whether a body is being read until the connection closes.
    pub fn until_close(&self) -> bool {
        self.state == State::UntilClose
    }

    /// Whether the reader is between messages.
    pub fn idle(&self) -> bool {
        self.state == State::Head && self.buf.is_empty()
    }

    /// The connection closed: a body read until close ends here.
    pub fn close(&mut self, out: &mut dyn FnMut(HttpEvent<'_>)) {
        if self.state == State::UntilClose {
            self.state = State::Head;
            out(HttpEvent::End);
        }
    }

    /// `n` bytes the capture did not get.
    pub fn gap(&mut self, n: u64, out: &mut dyn FnMut(HttpEvent<'_>)) {
        if n == 0 {
            return;
        }
        match self.state {
            State::Length(rest) => {
                let skip = n.min(rest);
                out(HttpEvent::BodyGap(skip));
                self.state = State::Length(rest - skip);
                if rest == skip {
                    self.finish(out);
                }
                if n > skip {
                    self.gap(n - skip, out);
                }
            }
            State::ChunkData(rest) if n <= rest => {
                out(HttpEvent::BodyGap(n));
                self.state = if n == rest {
                    State::ChunkEnd(2)
                } else {
                    State::ChunkData(rest - n)
                };
            }
            State::UntilClose => out(HttpEvent::BodyGap(n)),
            State::Broken(_) => {}
            _ => self.state = State::Broken(Broken::LostSync),
        }
    }

    /// Reads `data`, the next bytes of the direction.
    pub fn feed(&mut self, mut data: &[u8], out: &mut dyn FnMut(HttpEvent<'_>)) {
        while !data.is_empty() {
            match self.state {
                State::Broken(_) => return,
                State::Head => {
                    let used = self.head(data, out);
                    data = &data[used..];
                }
                State::Length(rest) => {
                    let n = (rest.min(data.len() as u64)) as usize;
                    out(HttpEvent::Body(&data[..n]));
                    data = &data[n..];
                    self.state = State::Length(rest - n as u64);
                    if rest == n as u64 {
                        self.finish(out);
                    }
                }
                State::ChunkSize => {
                    let used = self.chunk_size(data, out);
                    data = &data[used..];
                }
                State::ChunkData(rest) => {
                    let n = (rest.min(data.len() as u64)) as usize;
                    out(HttpEvent::Body(&data[..n]));
                    data = &data[n..];
                    self.state = if rest == n as u64 {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(rest - n as u64)
                    };
                }
                State::ChunkEnd(due) => {
                    // The CRLF after the data: anything else breaks the framing.
                    let expected: &[u8] = if due == 2 { b"\r\n" } else { b"\n" };
                    let n = data.len().min(due as usize);
                    if data[..n] != expected[..n] {
                        self.state = State::Broken(Broken::MalformedChunk);
                        return;
                    }
                    data = &data[n..];
                    let left = due - n as u8;
                    self.state = if left == 0 {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(left)
                    };
                }
                State::Trailers => {
                    let used = self.trailers(data, out);
                    data = &data[used..];
                }
                State::UntilClose => {
                    out(HttpEvent::Body(data));
                    return;
                }
            }
        }
    }

    fn finish(&mut self, out: &mut dyn FnMut(HttpEvent<'_>)) {
        self.state = State::Head;
        out(HttpEvent::End);
    }

    /// Gathers a head; how many bytes of `data` it took.
    fn head(&mut self, data: &[u8], out: &mut dyn FnMut(HttpEvent<'_>)) -> usize {
        // Bytes between messages: the CRLFs some clients send after a body (RFC 9112 2.2).
        if self.buf.is_empty() {
            let skip = data
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            if skip > 0 {
                return skip;
            }
        }
        let before = self.buf.len();
        // Look for the end of the head in what was gathered plus the new bytes; a head's
        // "\r\n\r\n" may straddle two pieces, so search from a few bytes back.
        let room = MAX_HEAD.saturating_sub(before);
        let take = data.len().min(room);
        self.buf.extend_from_slice(&data[..take]);
        // Whether a message can start so: decided on the first bytes, however they came.
        if !self.started {
            match looks_like_http(self.side, &self.buf) {
                Some(true) => self.started = true,
                Some(false) => {
                    self.state = State::Broken(Broken::NotHttp);
                    self.buf = Vec::new();
                    return data.len();
                }
                None => {}
            }
        }
        let from = before.saturating_sub(3);
        let Some(end) = find(&self.buf[from..], b"\r\n\r\n").map(|i| from + i + 4) else {
            if self.buf.len() >= MAX_HEAD {
                self.state = State::Broken(Broken::HeadTooLarge);
                self.buf = Vec::new();
                return data.len();
            }
            return take;
        };
        let used = end - before;
        let head = std::mem::take(&mut self.buf);
        self.started = false;
        self.parse_head(&head[..end], out);
        used
    }

    fn parse_head(&mut self, head: &[u8], out: &mut dyn FnMut(HttpEvent<'_>)) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let framing = match self.side {
            Side::Requests => {
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(head) {
                    Ok(httparse::Status::Complete(_)) => {}
                    _ => return self.state = State::Broken(Broken::MalformedHead),
                }
                let (Some(method), Some(target)) = (req.method, req.path) else {
                    return self.state = State::Broken(Broken::MalformedHead);
                };
                let path = target.split(['?', '#']).next().unwrap_or(target);
                let framing = framing(req.headers, false);
                out(HttpEvent::Request(RequestHead {
                    method: method.to_string(),
                    path: path.to_string(),
                }));
                // A request without framing headers has no body (RFC 9112 6.3).
                match framing {
                    Framing::Close => Framing::Length(0),
                    f => f,
                }
            }
            Side::Responses => {
                let mut res = httparse::Response::new(&mut headers);
                match res.parse(head) {
                    Ok(httparse::Status::Complete(_)) => {}
                    _ => return self.state = State::Broken(Broken::MalformedHead),
                }
                let Some(status) = res.code else {
                    return self.state = State::Broken(Broken::MalformedHead);
                };
                let content_type = res
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-type"))
                    .map(|h| media_type(h.value))
                    .unwrap_or_default();
                out(HttpEvent::Response(ResponseHead {
                    status,
                    content_type,
                }));
                if (100..200).contains(&status) {
                    // Informational: the real answer follows, for the same request.
                    out(HttpEvent::End);
                    return self.state = State::Head;
                }
                let head_request = self.no_body.pop_front().unwrap_or(false);
                if head_request || status == 204 || status == 304 {
                    Framing::Length(0)
                } else {
                    framing(res.headers, true)
                }
            }
        };
        self.state = match framing {
            Framing::Length(0) => return self.finish(out),
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::UntilClose,
            Framing::Invalid => State::Broken(Broken::MalformedHead),
        };
    }

    /// Gathers a chunk-size line; how many bytes of `data` it took.
    fn chunk_size(&mut self, data: &[u8], out: &mut dyn FnMut(HttpEvent<'_>)) -> usize {
        let (line_end, used) = match gather_line(&mut self.buf, data) {
            Some(x) => x,
            None if self.buf.len() > MAX_CHUNK_LINE => {
                self.state = State::Broken(Broken::MalformedChunk);
                return data.len();
            }
            None => return data.len(),
        };
        let line = std::mem::take(&mut self.buf);
        if line_end > MAX_CHUNK_LINE {
            self.state = State::Broken(Broken::MalformedChunk);
            return data.len();
        }
        match httparse::parse_chunk_size(&line[..line_end]) {
            Ok(httparse::Status::Complete((_, 0))) => self.state = State::Trailers,
            Ok(httparse::Status::Complete((_, n))) => self.state = State::ChunkData(n),
            _ => self.state = State::Broken(Broken::MalformedChunk),
        }
        let _ = out;
        used
    }

    /// Skips trailer lines up to the empty one that ends the message.
    fn trailers(&mut self, data: &[u8], out: &mut dyn FnMut(HttpEvent<'_>)) -> usize {
        let (line_end, used) = match gather_line(&mut self.buf, data) {
            Some(x) => x,
            None if self.buf.len() > MAX_CHUNK_LINE => {
                self.state = State::Broken(Broken::MalformedChunk);
                return data.len();
            }
            None => return data.len(),
        };
        let line = std::mem::take(&mut self.buf);
        if line_end > MAX_CHUNK_LINE {
            self.state = State::Broken(Broken::MalformedChunk);
            return data.len();
        }
        if line_end <= 2 && line[..line_end].iter().all(|b| *b == b'\r' || *b == b'\n') {
            self.finish(out);
        }
        used
    }
}

/// Appends `data` to `buf` up to and including the first LF; `(line length in buf with
/// its LF, bytes of data used)` once a line is whole.
fn gather_line(buf: &mut Vec<u8>, data: &[u8]) -> Option<(usize, usize)> {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => {
            buf.extend_from_slice(&data[..=i]);
            Some((buf.len(), i + 1))
        }
        None => {
            // Bounded by the caller's check: stop growing once past the limit.
            if buf.len() <= MAX_CHUNK_LINE {
                let room = MAX_CHUNK_LINE + 1 - buf.len();
                buf.extend_from_slice(&data[..data.len().min(room)]);
            }
            None
        }
    }
}

enum Framing {
    Length(u64),
    Chunked,
    Close,
    Invalid,
}

/// A message's framing from its headers (RFC 9112 6.3): chunked wins over a length; two
/// different lengths are invalid.
fn framing(headers: &[httparse::Header<'_>], response: bool) -> Framing {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value);
            match v.rsplit(',').next().map(str::trim) {
                Some(last) if last.eq_ignore_ascii_case("chunked") => chunked = true,
                // Another final coding: a response runs until close, a request is invalid.
                _ if response => return Framing::Close,
                _ => return Framing::Invalid,
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            else {
                return Framing::Invalid;
            };
            if length.is_some_and(|l| l != n) {
                return Framing::Invalid;
            }
            length = Some(n);
        }
    }
    match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Close,
    }
}

/// `type/subtype`, lower case, parameters dropped.
fn media_type(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(v);
    s.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `data` plainly begins a message of `side`: a request line's method, a space and
/// a `/`, or a status line's `HTTP/1.` — where reading may start again after it stopped.
pub fn starts_message(side: Side, data: &[u8]) -> bool {
    match side {
        Side::Responses => data.starts_with(b"HTTP/1."),
        Side::Requests => {
            let m = data
                .iter()
                .take_while(|b| b.is_ascii_uppercase())
                .take(METHOD_MAX)
                .count();
            m > 0 && data.get(m..m + 2) == Some(b" /")
        }
    }
}

/// Whether a message can start with these bytes: a request line's method (1 to
/// [`METHOD_MAX`] uppercase letters and a space) or a status line's `HTTP/`; `None` while
/// the bytes so far do not decide it. Decided on the same bytes however they came.
fn looks_like_http(side: Side, data: &[u8]) -> Option<bool> {
    match side {
        Side::Responses => {
            let n = data.len().min(5);
            if data[..n] != b"HTTP/"[..n] {
                Some(false)
            } else {
                (n == 5).then_some(true)
            }
        }
        Side::Requests => match data.iter().position(|b| !b.is_ascii_uppercase()) {
            Some(i) if i <= METHOD_MAX => Some(i > 0 && data[i] == b' '),
            Some(_) => Some(false),
            None if data.len() > METHOD_MAX => Some(false),
            None => None,
        },
    }
}

#[cfg(test)]
mod tests;
