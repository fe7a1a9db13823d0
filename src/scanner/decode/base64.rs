//! Base64, standard (`+/`) and URL-safe (`-_`), padded or not: a Kubernetes Secret's `data:` values,
//! a `.dockerconfigjson`, a basic-auth header, a JWT payload. Only runs long enough to hold a token
//! ([`MIN_RUN`] characters) are decoded, and only what decodes to text is kept: a long identifier
//! or random base64 decodes to bytes that are not text and is dropped, so it cannot make findings.
//! A run that decodes to gzip or zlib data is decompressed (capped) and kept when that is text.
//!
//! Each 4-character quantum maps to its 3 decoded bytes ([`ViewBuilder::atomic`]), so a finding is
//! reported at exactly the characters that encode it.

use super::container::{self, compression};
use super::marks::MIN_RUN;
use super::span_map::ViewBuilder;

/// Longest run decoded (longer runs are images and fonts, not configuration).
const MAX_RUN: usize = 4 << 20;
/// Most bytes a compressed run may decompress to, and most times its own size.
const MAX_INFLATED: usize = 8 << 20;
const MAX_RATIO: usize = 100;

/// The base64 alphabet class of each byte: 1 standard-only (`+/`), 2 URL-safe-only (`-_`), 3 both
/// (letters and digits), 0 not base64.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphanumeric() {
            3
        } else if c == b'+' || c == b'/' {
            1
        } else if c == b'-' || c == b'_' {
            2
        } else {
            0
        };
        b += 1;
    }
    t
};

/// Each alphabet character's 6-bit value (both alphabets; other bytes read as 63, and are never
/// looked up: runs hold alphabet characters only).
static VALUE: [u8; 256] = {
    let mut t = [63u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            _ => 63,
        };
        c += 1;
    }
    t
};

fn value(c: u8) -> u8 {
    VALUE[c as usize]
}

/// A decoded quantum: where its characters start, how many there are, its bytes and how many of
/// them count.
type Quantum = (usize, usize, [u8; 3], usize);

/// Decodes a run (no padding inside) quantum by quantum into `out`, and says whether it is worth
/// keeping: false as soon as it mixes the two alphabets (then it is not base64) or, when the total
/// of decoded bytes is given, holds more control bytes than [`is_text`] allows of that many (a
/// long identifier decodes to about one in eight; this stops it after a few quanta).
fn decode_run(
    buf: &[u8],
    start: usize,
    end: usize,
    text_of: Option<usize>,
    out: &mut Vec<Quantum>,
) -> bool {
    let mut seen = 3u8;
    let mut control = 0usize;
    let mut i = start;
    while i + 2 <= end {
        let q = &buf[i..end.min(i + 4)];
        seen = q.iter().fold(seen, |seen, &c| seen & CLASS[c as usize]);
        if seen == 0 {
            return false;
        }
        let bytes = quantum_bytes(q);
        let count = q.len() - 1;
        if let Some(total) = text_of {
            // A control byte is a control character whatever else the bytes hold, and there are at
            // most `total` characters, so past this many the run cannot be text.
            control += bytes[..count]
                .iter()
                .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f)
                .count();
            if control * 100 > total * 3 {
                return false;
            }
        }
        out.push((i, q.len(), bytes, count));
        i += 4;
    }
    true
}

/// The three bytes a quantum of (up to) four characters stands for; missing characters read as 0.
fn quantum_bytes(q: &[u8]) -> [u8; 3] {
    let n = (0..4).fold(0u32, |n, k| {
        (n << 6) | q.get(k).map_or(0, |&c| u32::from(value(c)))
    });
    [(n >> 16) as u8, (n >> 8) as u8, n as u8]
}

/// What a run's first two quanta (8 characters, 6 bytes) say it may decode to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Printable ASCII or whitespace.
    Text,
    /// The start of gzip or zlib data.
    Compressed,
    /// Neither: the run is not decoded.
    Neither,
}

fn head(chars: &[u8]) -> Head {
    let text = |b: &u8| (0x20..0x7f).contains(b) || matches!(b, b'\t' | b'\n' | b'\r');
    // The first three bytes decide nearly every run that is not base64 text, and both
    // compression headers are two bytes long.
    let first = quantum_bytes(&chars[..4]);
    if compression(&first).is_some() {
        Head::Compressed
    } else if first.iter().all(text) && quantum_bytes(&chars[4..8]).iter().all(text) {
        Head::Text
    } else {
        Head::Neither
    }
}

/// Whether decoded bytes read as text a token could stand in: valid UTF-8, and nearly all of it
/// printable or whitespace.
pub(super) fn is_text(bytes: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return false;
    };
    let printable = s
        .chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
        .count();
    printable * 100 >= s.chars().count() * 97
}

/// Decompresses gzip or zlib data, within [`MAX_INFLATED`] and [`MAX_RATIO`]; None when it is
/// neither, is corrupt, or expands past either cap.
fn inflate(data: &[u8]) -> Option<Vec<u8>> {
    let cap = MAX_INFLATED.min(data.len().saturating_mul(MAX_RATIO));
    container::inflate(compression(data)?, data, cap as u64).ok()
}

/// What the base64 runs of `buf` decode to, appended to two views: the runs that are text (step
/// `base64`) to `text`, and the runs that are compressed text (steps `base64`, `gzip`) to
/// `compressed`. A view stays empty when there is no such run.
pub fn decode(
    buf: &[u8],
    runs: &[(usize, usize)],
    text: &mut ViewBuilder,
    compressed: &mut ViewBuilder,
) {
    let mut quanta: Vec<Quantum> = Vec::new();
    let mut decoded: Vec<u8> = Vec::new();
    for &(start, end) in runs {
        // Padding ends a run.
        let mut padded = end;
        while padded < buf.len() && padded < end + 2 && buf[padded] == b'=' {
            padded += 1;
        }
        let len = end - start;
        // Long enough, not huge, and a length base64 can have.
        if !(MIN_RUN..=MAX_RUN).contains(&len) || len % 4 == 1 {
            continue;
        }
        // Nearly every run in source text that is not base64 (a rule of dashes, a path, hex, a long
        // identifier) decodes to a control or non-ASCII byte within its first two quanta: looked at
        // before the whole run is decoded. Text a token is in starts printable (a key, a brace).
        let head = head(&buf[start..start + 8]);
        if head == Head::Neither {
            continue;
        }
        // One alphabet only (a run mixing `+` and `_` is not base64), and text unless it starts
        // like compressed data.
        let total = len / 4 * 3 + [0, 0, 1, 2][len % 4];
        quanta.clear();
        if !decode_run(
            buf,
            start,
            end,
            (head == Head::Text).then_some(total),
            &mut quanta,
        ) {
            continue;
        }
        decoded.clear();
        for &(_, _, bytes, n) in &quanta {
            decoded.extend_from_slice(&bytes[..n]);
        }
        if is_text(&decoded) {
            for &(at, qlen, bytes, n) in &quanta {
                // The last quantum takes the padding with it.
                let raw_end = if at + qlen == end { padded } else { at + qlen };
                text.atomic(at..raw_end, &bytes[..n]);
            }
            text.atomic(padded..padded, b"\n");
        } else if let Some(inflated) = inflate(&decoded).filter(|d| is_text(d)) {
            compressed.atomic(start..padded, &inflated);
            compressed.atomic(padded..padded, b"\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    use super::super::marks::{Marks, in_alphabet};
    use super::*;

    /// The text and compressed views of `buf`, each `None` when empty.
    fn decoded(buf: &[u8]) -> (Option<ViewBuilder>, Option<ViewBuilder>) {
        let (mut text, mut compressed) = (ViewBuilder::default(), ViewBuilder::default());
        let mut marks = Marks::default();
        marks.find(buf);
        decode(buf, marks.runs(), &mut text, &mut compressed);
        let some = |v: ViewBuilder| (!v.is_empty()).then_some(v);
        (some(text), some(compressed))
    }

    fn view(v: Option<ViewBuilder>) -> (Vec<u8>, super::super::SpanMap) {
        v.expect("a view").finish()
    }

    #[test]
    fn text_runs_decode_and_map_back_to_their_characters() {
        let secret = "password: hunter2-is-not-a-token-but-text";
        let encoded = STANDARD.encode(secret);
        let buf = format!("data:\n  creds: {encoded}\n");
        let (text, compressed) = decoded(buf.as_bytes());
        assert!(compressed.is_none());
        let (bytes, map) = view(text);
        let s = String::from_utf8(bytes).unwrap();
        let at = s.find("hunter2").unwrap();
        let raw = map.to_raw(at..at + 7);
        // `hunter2` sits in quanta that start within the encoded run.
        let run = buf.find(&encoded).unwrap();
        assert!(raw.start >= run && raw.end <= run + encoded.len());
        // URL-safe, unpadded.
        let url = URL_SAFE_NO_PAD.encode("a token?? in url-safe base64 >>> here");
        assert!(url.contains('_') || url.contains('-'));
        let (bytes, _) = view(decoded(url.as_bytes()).0);
        assert!(String::from_utf8(bytes).unwrap().contains("url-safe"));
    }

    #[test]
    fn the_class_table_is_the_alphabet_the_runs_are_found_in() {
        for b in 0..=255u8 {
            assert_eq!(CLASS[b as usize] != 0, in_alphabet(b), "byte {b:#04x}");
        }
    }

    #[test]
    fn runs_are_found_wherever_they_start_and_end() {
        let encoded = STANDARD.encode("the key is in here, as text, long enough");
        // Across every offset in and around the 64-byte blocks, and after a long run of alphabet
        // characters that is not base64.
        for pad in 0..200 {
            let lead = if pad % 2 == 0 {
                " ".repeat(pad)
            } else {
                format!("{} ", "ab".repeat(pad / 2))
            };
            let buf = format!("{lead}{encoded}{}", ";".repeat(pad % 3));
            let (bytes, _) = view(decoded(buf.as_bytes()).0);
            assert!(
                String::from_utf8(bytes).unwrap().contains("the key"),
                "pad {pad}"
            );
        }
    }

    #[test]
    fn random_bytes_identifiers_and_short_runs_decode_to_nothing() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200 {
            let bytes: Vec<u8> = (0..48)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let (text, compressed) = decoded(STANDARD.encode(&bytes).as_bytes());
            assert!(text.is_none() && compressed.is_none());
        }
        for code in [
            "fn thisIsAVeryLongFunctionNameIndeed() {}",
            "AbstractSingletonProxyFactoryBeanImpl",
            "c2hvcnQ=",
        ] {
            let (text, compressed) = decoded(code.as_bytes());
            assert!(text.is_none() && compressed.is_none(), "{code}");
        }
    }

    /// Giving up on a run early never drops one that decodes to text.
    #[test]
    fn a_run_given_up_early_is_never_text() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut gave_up = 0;
        for round in 0..20_000 {
            // Text with a few control bytes sprinkled in, around the 3% is_text allows.
            let len = 24 + (next() % 200) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 100 {
                    0..=3 if round % 2 == 0 => (next() % 0x20) as u8,
                    _ => b' ' + (next() % 0x5f) as u8,
                })
                .collect();
            let encoded = STANDARD.encode(&bytes);
            let run = encoded.trim_end_matches('=').as_bytes();
            let total = run.len() / 4 * 3 + [0, 0, 1, 2][run.len() % 4];
            assert_eq!(total, bytes.len());
            let mut quanta = Vec::new();
            if !decode_run(run, 0, run.len(), Some(total), &mut quanta) {
                gave_up += 1;
                assert!(!is_text(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
        assert!(
            gave_up > 1_000,
            "the test must reach the early exit: {gave_up}"
        );
    }

    #[test]
    fn a_compressed_run_is_inflated_and_a_bomb_is_not() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(b"config: the token is here somewhere, as text\n")
            .unwrap();
        let encoded = STANDARD.encode(gz.finish().unwrap());
        let (text, compressed) = decoded(format!("blob = \"{encoded}\"").as_bytes());
        assert!(text.is_none());
        let (bytes, _) = view(compressed);
        assert!(
            String::from_utf8(bytes)
                .unwrap()
                .contains("the token is here")
        );

        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![b'a'; 32 << 20]).unwrap();
        let bomb = bomb.finish().unwrap();
        assert!(inflate(&bomb).is_none(), "past the ratio cap");
        let (text, compressed) = decoded(STANDARD.encode(&bomb).as_bytes());
        assert!(text.is_none() && compressed.is_none());
    }
}
