//! JSON and JavaScript string escapes (`\n`, `\t`, `\"`, `\\`, `\/`, `\uXXXX` with surrogate pairs,
//! `\u{...}`, `\xXX`). A token right after `\n` in a JSON string has no word boundary in the raw
//! bytes (`\nghp_...` reads as `nghp_...`), and one written with a `\u0041` inside is not there at
//! all until the escape is read.
//!
//! Only the string literals that hold an escape are decoded: from the opening quote before the
//! escape (same line, at most [`MAX_BACK`] bytes back) to the closing quote after it (at most
//! [`MAX_FORWARD`] bytes on). Everything else of the buffer was already scanned raw.

use memchr::{memchr, memrchr, memrchr3};

use super::span_map::ViewBuilder;

/// How far back the opening quote of a literal is looked for.
pub const MAX_BACK: usize = 64 << 10;
/// How far a literal is decoded past its first escape.
pub const MAX_FORWARD: usize = 1 << 20;

/// An escape at the start of `s` (which starts with a backslash): how many raw bytes it takes and
/// the UTF-8 it stands for. `None` for a backslash that starts no escape.
fn escape(s: &[u8]) -> Option<(usize, [u8; 4], usize)> {
    let byte = |c: u8| Some((2, [c, 0, 0, 0], 1));
    match *s.get(1)? {
        b'n' => byte(b'\n'),
        b't' => byte(b'\t'),
        b'r' => byte(b'\r'),
        b'b' => byte(0x08),
        b'f' => byte(0x0c),
        b'v' => byte(0x0b),
        b'0' if !s.get(2).is_some_and(u8::is_ascii_digit) => byte(0),
        c @ (b'"' | b'\'' | b'`' | b'\\' | b'/') => byte(c),
        b'x' => {
            let v = hex(s.get(2..4)?)?;
            Some(utf8(4, v))
        }
        b'u' if s.get(2) == Some(&b'{') => {
            let close = memchr(b'}', s.get(3..s.len().min(10))?)?;
            let v = hex(&s[3..3 + close])?;
            char::from_u32(v)?;
            Some(utf8(4 + close, v))
        }
        b'u' => {
            let unit = hex(s.get(2..6)?)?;
            if (0xD800..0xDC00).contains(&unit) {
                // A high surrogate: joined with a following low one, else a replacement character.
                if s.get(6..8) == Some(b"\\u")
                    && let Some(low) = s.get(8..12).and_then(hex)
                    && (0xDC00..0xE000).contains(&low)
                {
                    return Some(utf8(12, 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)));
                }
                return Some(utf8(6, 0xFFFD));
            }
            Some(utf8(6, unit))
        }
        _ => None,
    }
}

fn hex(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n << 4 | v)
    })
}

fn utf8(raw_len: usize, code: u32) -> (usize, [u8; 4], usize) {
    if code < 0x80 {
        return (raw_len, [code as u8, 0, 0, 0], 1);
    }
    let c = char::from_u32(code).unwrap_or('\u{FFFD}');
    let mut out = [0u8; 4];
    let n = c.encode_utf8(&mut out).len();
    (raw_len, out, n)
}

/// Whether the byte at `at` is preceded by an odd number of backslashes (so it is escaped).
fn escaped(buf: &[u8], at: usize) -> bool {
    buf[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// Where the literal holding the escape at `at` starts, and its quote (if one was found).
fn literal_start(buf: &[u8], at: usize, floor: usize) -> (usize, Option<u8>) {
    let mut low = floor.max(at.saturating_sub(MAX_BACK));
    if let Some(nl) = memrchr(b'\n', &buf[low..at]) {
        low += nl + 1;
    }
    let mut end = at;
    while let Some(q) = memrchr3(b'"', b'\'', b'`', &buf[low..end]) {
        let q = low + q;
        if !escaped(buf, q) {
            return (q + 1, Some(buf[q]));
        }
        end = q;
    }
    (low, None)
}

/// Appends the decoded view of every literal of `buf` that holds an escape to `out` (which stays
/// empty when there is none).
pub fn decode(buf: &[u8], out: &mut ViewBuilder) {
    let mut pos = 0;
    while let Some(i) = memchr(b'\\', &buf[pos..]) {
        let at = pos + i;
        if escape(&buf[at..]).is_none() {
            pos = at + 2;
            if pos >= buf.len() {
                break;
            }
            continue;
        }
        let (start, quote) = literal_start(buf, at, pos);
        if !out.is_empty() {
            out.separator(start);
        }
        let end = decode_literal(buf, start, at, quote, out);
        pos = end.max(at + 1);
        if pos >= buf.len() {
            break;
        }
    }
}

/// Decodes the literal that starts at `start` and holds its first escape at `at` (nothing between
/// them is a backslash) into `out`, in one pass: up to its closing quote (`quote`, or any quote when
/// the opening one was not found), a line break, or [`MAX_FORWARD`] bytes past `at`. Returns where
/// it ends. A backslash that starts no escape keeps the byte after it in the literal (a
/// line continuation, `\d` in a regex).
fn decode_literal(
    buf: &[u8],
    start: usize,
    at: usize,
    quote: Option<u8>,
    out: &mut ViewBuilder,
) -> usize {
    let limit = buf.len().min(at + MAX_FORWARD);
    let mut copied = start;
    let mut i = at;
    while i < limit {
        match buf[i] {
            b'\\' => match escape(&buf[i..limit]) {
                Some((raw_len, bytes, n)) => {
                    out.literal(buf, copied..i);
                    out.atomic(i..i + raw_len, &bytes[..n]);
                    i += raw_len;
                    copied = i;
                }
                None => i += 2,
            },
            b'\n' => break,
            b @ (b'"' | b'\'' | b'`') if quote.is_none_or(|q| q == b) => break,
            _ => i += 1,
        }
    }
    let end = i.min(limit);
    out.literal(buf, copied..end.max(copied));
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(buf: &[u8]) -> Option<ViewBuilder> {
        let mut v = ViewBuilder::default();
        decode(buf, &mut v);
        (!v.is_empty()).then_some(v)
    }

    fn view(s: &str) -> Option<String> {
        decoded(s.as_bytes()).map(|v| String::from_utf8(v.finish().0).unwrap())
    }

    #[test]
    fn decodes_only_the_literals_with_escapes() {
        assert_eq!(view(r#"{"a":"plain","b":"x\nghp_1"}"#).unwrap(), "x\nghp_1");
        assert_eq!(view(r#"no escapes "here""#), None);
        assert_eq!(view(r"C:\path\dir"), None);
        assert_eq!(
            view(r#"a = 'it\'s', b = "\u0041\u00e9\ud83d\ude00\u{1F600}\x41\/""#).unwrap(),
            "it's\nAé😀😀A/"
        );
    }

    #[test]
    fn escaped_quotes_do_not_end_a_literal() {
        assert_eq!(
            view(r#"{"msg":"say \"hi\" \tghp_x","n":1}"#).unwrap(),
            "say \"hi\" \tghp_x"
        );
        // An escaped backslash before a quote leaves the quote unescaped.
        assert_eq!(view(r#""a\\" "b\tc""#).unwrap(), "a\\\nb\tc");
    }

    #[test]
    fn spans_map_back_over_whole_escapes() {
        let raw = br#"{"v":"k\u0041Y"}"#;
        let (bytes, map) = decoded(raw).unwrap().finish();
        assert_eq!(bytes, b"kAY");
        // `AY` in the view is `\u0041Y` in the raw body.
        assert_eq!(&raw[map.to_raw(1..3)], br"\u0041Y");
    }

    #[test]
    fn lone_surrogates_and_truncated_escapes_do_not_panic() {
        assert_eq!(view(r#""\ud800x""#).unwrap(), "\u{FFFD}x");
        assert_eq!(view(r#""\u12"#), None);
        assert_eq!(view("\\"), None);
        assert_eq!(view("\"\\n"), Some("\n".into()));
    }
}
