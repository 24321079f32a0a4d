//! The WebTransport relay's framing, taken from the reference study: each message is
//! `<decimal length>:<bytes>`; an empty frame (`0:`) ends a response.

use bytes::{Buf, Bytes, BytesMut};

/// Largest frame either side accepts by default (1 MiB).
pub const MAX_FRAME: usize = 1 << 20;

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame length prefix {0:?}: expected decimal digits then ':'")]
    BadPrefix(String),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// Encodes one frame.
pub fn encode(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 8);
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b":");
    out.extend_from_slice(payload);
    out.freeze()
}

/// Incremental decoder: feed bytes as they arrive, take whole frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        // The prefix of a frame up to `max` bytes has at most this many digits.
        let max_digits = self.max.to_string().len();
        let colon = self
            .buf
            .iter()
            .take(max_digits + 1)
            .position(|&b| b == b':');
        let Some(colon) = colon else {
            let seen = &self.buf[..self.buf.len().min(max_digits + 1)];
            if seen.iter().any(|b| !b.is_ascii_digit()) || seen.len() > max_digits {
                return Err(FrameError::BadPrefix(
                    String::from_utf8_lossy(seen).into_owned(),
                ));
            }
            return Ok(None);
        };
        let digits = &self.buf[..colon];
        if digits.is_empty() || digits.iter().any(|b| !b.is_ascii_digit()) {
            return Err(FrameError::BadPrefix(
                String::from_utf8_lossy(digits).into_owned(),
            ));
        }
        // At most `max_digits` ASCII digits: fits in usize.
        let len = digits
            .iter()
            .fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buf.len() < colon + 1 + len {
            return Ok(None);
        }
        self.buf.advance(colon + 1);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], chunk: usize) -> Result<Vec<Bytes>, FrameError> {
        let mut d = FrameDecoder::new(MAX_FRAME);
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            d.extend(piece);
            while let Some(f) = d.next_frame()? {
                out.push(f);
            }
        }
        Ok(out)
    }

    #[test]
    fn round_trips_in_any_chunking() {
        let payloads: [&[u8]; 4] = [b"hello", b" world\n", b"", "\u{2028}<&>".as_bytes()];
        let wire: Vec<u8> = payloads.iter().flat_map(|p| encode(p).to_vec()).collect();
        assert_eq!(&wire[..8], b"5:hello7");
        for chunk in 1..wire.len() {
            let got = decode_all(&wire, chunk).unwrap();
            assert_eq!(
                got,
                payloads
                    .iter()
                    .map(|p| Bytes::copy_from_slice(p))
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn rejects_bad_prefixes() {
        for bad in [&b"x:abc"[..], b":abc", b"12a:", b"-1:", b"99999999:"] {
            assert!(
                matches!(decode_all(bad, 1), Err(FrameError::BadPrefix(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rejects_oversized_frames_before_reading_them() {
        let mut d = FrameDecoder::new(MAX_FRAME);
        d.extend(b"1048577:");
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
        let mut d = FrameDecoder::new(MAX_FRAME);
        d.extend(b"1048576:");
        assert_eq!(d.next_frame(), Ok(None));
    }
}
