//! JSON and JavaScript string escapes (`\n`, `\t`, `\"`, `\\`, `\/`, `\uXXXX` with surrogate pairs,
//! `\u{...}`, `\xXX`). A token right after `\n` in a JSON string has no word boundary in the raw
//! bytes (`\nghp_...` reads as `nghp_...`), and one written with a `\u0041` inside is not there at
//! all until the escape is read.
//!
//! Only the string literals that hold an escape are decoded: from the opening quote before the
//! escape (same line, at most [`MAX_BACK`] bytes back) to the closing quote after it (at most
//! [`MAX_FORWARD`] bytes on). Everything else of the buffer was already scanned raw.

use std::ops::Range;

use memchr::{memchr, memchr2, memrchr, memrchr3};

use super::span_map::ViewBuilder;

/// How far back the opening quote of a literal is looked for.
pub const MAX_BACK: usize = 64 << 10;
/// How far a literal is decoded past its first escape.
pub const MAX_FORWARD: usize = 1 << 20;

/// What an escape stands for: `len` bytes of UTF-8, packed little-endian in `utf8` (a value kept
/// in a register: built a byte at a time in memory and read back as a word, it showed in the
/// profile as a stall after every call), and how many raw bytes it takes.
#[derive(Debug, Clone, Copy)]
struct Escape {
    utf8: u32,
    len: u8,
    raw_len: u8,
}

impl Escape {
    fn raw_len(self) -> usize {
        usize::from(self.raw_len)
    }

    /// Appends it, standing for `raw`, to `out`.
    fn append(self, raw: Range<usize>, out: &mut ViewBuilder) {
        out.atomic_packed(raw, self.utf8, usize::from(self.len));
    }
}

/// An escape at the start of `s` (which starts with a backslash), or `None` for a backslash that
/// starts no escape.
#[inline]
fn escape(s: &[u8]) -> Option<Escape> {
    let byte = |c: u8| {
        Some(Escape {
            utf8: u32::from(c),
            len: 1,
            raw_len: 2,
        })
    };
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

/// Each byte's value as a hex digit, or 16 when it is not one.
static HEX: [u8; 256] = {
    let mut t = [16u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match (c as u8 as char).to_digit(16) {
            Some(v) => v as u8,
            None => 16,
        };
        c += 1;
    }
    t
};

#[inline]
fn hex(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    let mut n = 0u32;
    let mut bad = 0u8;
    for &d in digits {
        let v = HEX[d as usize];
        bad |= v;
        n = n << 4 | u32::from(v & 15);
    }
    (bad < 16).then_some(n)
}

/// The escape of `raw_len` bytes that stands for code point `code` (U+FFFD where `code` is no
/// character: a surrogate, or past U+10FFFF).
#[inline(always)]
fn utf8(raw_len: usize, code: u32) -> Escape {
    if code >= 0x800 {
        return utf8_wide(raw_len, code);
    }
    // One byte or two, chosen without a branch: escaped bytes (`\x30\x82`) mix both at random.
    let ascii = code < 0x80;
    let two = 0xC0 | code >> 6 | (0x80 | code & 0x3F) << 8;
    Escape {
        utf8: if ascii { code } else { two },
        len: 2 - u8::from(ascii),
        raw_len: raw_len as u8,
    }
}

/// [`utf8`] for code points of three and four bytes (rare: std's encoder, packed).
fn utf8_wide(raw_len: usize, code: u32) -> Escape {
    let mut bytes = [0u8; 4];
    let len = char::from_u32(code)
        .unwrap_or('\u{FFFD}')
        .encode_utf8(&mut bytes)
        .len();
    Escape {
        utf8: u32::from_le_bytes(bytes),
        len: len as u8,
        raw_len: raw_len as u8,
    }
}

/// Whether the byte at `at` is preceded by an odd number of backslashes (so it is escaped).
fn escaped(buf: &[u8], at: usize) -> bool {
    buf[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// Where the literal holding the escape at `at` starts, and its quote (if one was found): after
/// the last unescaped quote before `at` on its line, at most [`MAX_BACK`] bytes back and not before
/// `floor`.
fn literal_start(buf: &[u8], at: usize, floor: usize) -> (usize, Option<u8>) {
    let low = floor.max(at.saturating_sub(MAX_BACK));
    // The quote is nearly always a few bytes back: looked for a byte at a time first, since the
    // searches' set-up cost more than that (a tenth of the escape decoder's time).
    let near = low.max(at.saturating_sub(64));
    for i in (near..at).rev() {
        match buf[i] {
            b'\n' => return (i + 1, None),
            q @ (b'"' | b'\'' | b'`') if !escaped(buf, i) => return (i + 1, Some(q)),
            _ => {}
        }
    }
    literal_start_far(buf, low, near)
}

/// [`literal_start`] in `buf[low..end]` by searches: the last line break, then the last unescaped
/// quote after it.
fn literal_start_far(buf: &[u8], mut low: usize, end: usize) -> (usize, Option<u8>) {
    if let Some(nl) = memrchr(b'\n', &buf[low..end]) {
        low += nl + 1;
    }
    let mut end = end;
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
/// empty when there is none); `backslashes` are where the backslashes of `buf` are, in order.
pub fn decode(buf: &[u8], backslashes: impl Iterator<Item = usize>, out: &mut ViewBuilder) {
    let mut backslashes = backslashes.peekable();
    let mut pos = 0;
    while let Some(at) = backslashes.next() {
        if at < pos {
            continue;
        }
        if escape(&buf[at..]).is_none() {
            pos = at + 2;
            continue;
        }
        let (start, quote) = literal_start(buf, at, pos);
        if !out.is_empty() {
            out.separator(start);
        }
        let end = match quote {
            Some(quote) => decode_quoted(buf, start, at, quote, &mut backslashes, out),
            None => decode_unquoted(buf, start, at, out),
        };
        pos = end.max(at + 1);
    }
}

/// Decodes the literal that starts at `start`, holds its first escape at `at` (nothing between them
/// is a backslash) and opened with `quote` into `out`: up to its closing quote, a line break, or
/// [`MAX_FORWARD`] bytes past `at`. Returns where it ends. The other escapes are the ones
/// `backslashes` (after `at`) holds before that end, which it takes; the text between them is
/// copied, not walked a byte at a time. A backslash that starts no escape keeps the byte after it
/// in the literal (a line continuation, `\d` in a regex).
fn decode_quoted(
    buf: &[u8],
    start: usize,
    at: usize,
    quote: u8,
    backslashes: &mut std::iter::Peekable<impl Iterator<Item = usize>>,
    out: &mut ViewBuilder,
) -> usize {
    let limit = buf.len().min(at + MAX_FORWARD);
    let mut copied = start;
    // Where the next byte not yet part of an escape is.
    let mut i = at;
    let mut first = Some(at);
    let end = loop {
        if i >= limit {
            break limit;
        }
        // The literal ends here unless an escape before it takes this byte.
        let stop = memchr2(quote, b'\n', &buf[i..limit]).map_or(limit, |k| i + k);
        while let Some(b) = first.take().or_else(|| backslashes.next_if(|&b| b < stop)) {
            if b < i {
                // Inside an escape already read (the second backslash of `\\`).
                continue;
            }
            i = step(buf, b, limit, &mut copied, out);
        }
        if i <= stop {
            break stop;
        }
    };
    out.literal(buf, copied..end.max(copied));
    end
}

/// Reads the backslash at `b` (literal text ends at `limit`): an escape is appended to `out` after
/// the text copied from `copied` (which then moves past it); a backslash that starts no escape
/// keeps the byte after it in the literal. Returns where the next byte to read is.
#[inline]
fn step(buf: &[u8], b: usize, limit: usize, copied: &mut usize, out: &mut ViewBuilder) -> usize {
    match escape(&buf[b..limit]) {
        Some(e) => {
            out.literal(buf, *copied..b);
            e.append(b..b + e.raw_len(), out);
            *copied = b + e.raw_len();
            *copied
        }
        None => b + 2,
    }
}

/// [`decode_quoted`] for a literal whose opening quote was not found (same line, [`MAX_BACK`]):
/// it ends at any quote, a byte at a time.
fn decode_unquoted(buf: &[u8], start: usize, at: usize, out: &mut ViewBuilder) -> usize {
    let limit = buf.len().min(at + MAX_FORWARD);
    let mut copied = start;
    let mut i = at;
    while i < limit {
        match buf[i] {
            b'\\' => i = step(buf, i, limit, &mut copied, out),
            b'\n' | b'"' | b'\'' | b'`' => break,
            _ => i += 1,
        }
    }
    let end = i.min(limit);
    out.literal(buf, copied..end.max(copied));
    end
}

#[cfg(test)]
mod tests {
    use super::super::marks::Marks;
    use super::*;

    fn decoded(buf: &[u8]) -> Option<ViewBuilder> {
        let mut v = ViewBuilder::default();
        let mut marks = Marks::default();
        marks.find(buf);
        decode(buf, marks.backslashes(), &mut v);
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

    /// Each code point as UTF-8, U+FFFD for a surrogate or past U+10FFFF.
    #[test]
    fn code_points_encode_as_std_encodes_them() {
        for code in (0..0x11_0000u32).chain([0x11_0000, 0xFFFF_FFFF]) {
            let e = utf8(6, code);
            let c = char::from_u32(code).unwrap_or('\u{FFFD}');
            let mut expected = [0u8; 4];
            let expected = c.encode_utf8(&mut expected).as_bytes();
            let got = &e.utf8.to_le_bytes()[..usize::from(e.len)];
            assert_eq!(got, expected, "U+{code:X}");
            assert_eq!(e.raw_len(), 6);
        }
    }

    /// The literal decoding of the old scanner, a byte at a time, for any quote.
    fn byte_loop(buf: &[u8]) -> ViewBuilder {
        let mut out = ViewBuilder::default();
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
            let limit = buf.len().min(at + MAX_FORWARD);
            let (mut copied, mut i) = (start, at);
            while i < limit {
                match buf[i] {
                    b'\\' => i = step(buf, i, limit, &mut copied, &mut out),
                    b'\n' => break,
                    b @ (b'"' | b'\'' | b'`') if quote.is_none_or(|q| q == b) => break,
                    _ => i += 1,
                }
            }
            let end = i.min(limit);
            out.literal(buf, copied..end.max(copied));
            pos = end.max(at + 1);
            if pos >= buf.len() {
                break;
            }
        }
        out
    }

    #[test]
    fn a_literal_starts_where_the_searches_say_near_or_far() {
        let pieces: [&[u8]; 7] = [b"\"", b"'", b"\\", b"\n", b"abcdefghij", b"x", b"`"];
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5_000 {
            let mut buf = Vec::new();
            while buf.len() < 300 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Mostly letters, so a quote is often more than 64 bytes back.
                let piece = if seed.is_multiple_of(3) {
                    (seed >> 8) % 7
                } else {
                    4
                };
                buf.extend_from_slice(pieces[piece as usize]);
            }
            for at in 0..=buf.len() {
                for floor in [0, at / 2, at] {
                    // The searches alone, over the whole range.
                    let low = floor.max(at.saturating_sub(MAX_BACK));
                    assert_eq!(
                        literal_start(&buf, at, floor),
                        literal_start_far(&buf, low, at),
                        "at {at} floor {floor}: {:?}",
                        String::from_utf8_lossy(&buf)
                    );
                }
            }
        }
    }

    /// Quoted literals are read from escape to escape, not a byte at a time: the same views, and
    /// the same maps, as a byte loop makes of random escapes, quotes and line breaks.
    #[test]
    fn literals_read_from_escape_to_escape_decode_as_a_byte_loop_does() {
        let pieces: [&[u8]; 12] = [
            b"\"", b"'", b"`", b"\\\"", b"\\\\", b"\\n", b"\n", b"ab ", b"\\x4", b"\\u0041",
            b"\\q", b"\\",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            // A new length every round (a length of 0 used to leave the seed, and every later
            // round, as it was).
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                buf.extend_from_slice(pieces[(seed % 12) as usize]);
            }
            let (fast, slow) = (decoded(&buf).unwrap_or_default(), byte_loop(&buf));
            let (fast, slow) = (fast.finish(), slow.finish());
            assert_eq!(fast.0, slow.0, "{:?}", String::from_utf8_lossy(&buf));
            for at in 0..=fast.0.len() {
                for end in at..=fast.0.len() {
                    assert_eq!(fast.1.to_raw(at..end), slow.1.to_raw(at..end));
                }
            }
            distinct.insert(buf);
        }
        assert!(
            distinct.len() > 10_000,
            "{} distinct buffers",
            distinct.len()
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
