//! JSON exactly as Go's `encoding/json` writes it, which is what Ollama sends: serde_json's
//! output plus Go's HTML-safe escapes (`<` `>` `&` as `\u003c` `\u003e` `\u0026`) and the
//! JavaScript line terminators U+2028 and U+2029 as `\u2028` `\u2029`. Both libraries write
//! `\n` `\r` `\t` `\b` `\f` short and other control characters as lowercase `\u00XX`
//! (Go since 1.22). Field order is the struct's declaration order in both.

use serde::Serialize;
use serde_json::ser::Formatter;
use std::io::{self, Write};

#[derive(Clone, Copy, Default)]
struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let esc: &[u8] = match c {
                '<' => b"\\u003c",
                '>' => b"\\u003e",
                '&' => b"\\u0026",
                '\u{2028}' => b"\\u2028",
                '\u{2029}' => b"\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(esc)?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serialises `value` as Go would, without a trailing newline.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // Our response types are plain structs of strings and numbers: serialising them to
    // memory cannot fail (no maps with non-string keys, no I/O).
    if value.serialize(&mut ser).is_err() {
        out.clear();
        out.extend_from_slice(br#"{"error":"internal serialisation error"}"#);
    }
    out
}

/// Like [`to_vec`] with the `\n` Go's `json.Encoder` appends (one NDJSON line).
pub fn to_line<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = to_vec(value);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_go() {
        let s = "a<b>&c\u{2028}\u{2029}\"\\\n\r\t\u{8}\u{c}\u{1}\u{7f}é😀";
        assert_eq!(
            String::from_utf8(to_vec(s)).unwrap(),
            r#""a\u003cb\u003e\u0026c\u2028\u2029\"\\\n\r\t\b\f\u0001"#.to_owned() + "\u{7f}é😀\""
        );
    }
}
