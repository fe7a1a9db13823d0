//! Base64, standard (`+/`) and URL-safe (`-_`), padded or not: a Kubernetes Secret's `data:` values,
//! a `.dockerconfigjson`, a basic-auth header, a JWT payload. Only runs long enough to hold a token
//! ([`MIN_RUN`] characters) are decoded, and only what decodes to text is kept: a long identifier
//! or random base64 decodes to bytes that are not text and is dropped, so it cannot make findings.
//! A run that decodes to gzip or zlib data is decompressed (capped) and kept when that is text.
//!
//! Each 4-character quantum maps to its 3 decoded bytes ([`ViewBuilder::atomic`]), so a finding is
//! reported at exactly the characters that encode it.

use std::io::Read as _;

use super::span_map::ViewBuilder;

/// Shortest run decoded: 24 characters are 18 bytes, shorter than almost every token format.
pub const MIN_RUN: usize = 24;
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

fn value(c: u8) -> u8 {
    match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        _ => 63,
    }
}

/// A decoded quantum: where its characters start, how many there are, its bytes and how many of
/// them count.
type Quantum = (usize, usize, [u8; 3], usize);

/// Decodes a run (no padding inside) quantum by quantum into `out`.
fn decode_run(buf: &[u8], start: usize, end: usize, out: &mut Vec<Quantum>) {
    let mut i = start;
    while i + 2 <= end {
        let q = &buf[i..end.min(i + 4)];
        let mut n = 0u32;
        for k in 0..4 {
            n = (n << 6) | q.get(k).map_or(0, |&c| u32::from(value(c)));
        }
        out.push((
            i,
            q.len(),
            [(n >> 16) as u8, (n >> 8) as u8, n as u8],
            q.len() - 1,
        ));
        i += 4;
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
pub(super) fn inflate(data: &[u8]) -> Option<Vec<u8>> {
    let cap = MAX_INFLATED.min(data.len().saturating_mul(MAX_RATIO));
    let mut out = Vec::new();
    let read = if data.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(data)
            .take(cap as u64 + 1)
            .read_to_end(&mut out)
    } else if data.len() >= 2 && data[0] == 0x78 && matches!(data[1], 0x01 | 0x5e | 0x9c | 0xda) {
        flate2::read::ZlibDecoder::new(data)
            .take(cap as u64 + 1)
            .read_to_end(&mut out)
    } else {
        return None;
    };
    (read.is_ok() && out.len() <= cap).then_some(out)
}

/// What the base64 runs of `buf` decode to: the runs that are text (step `base64`), and the runs
/// that are compressed text (steps `base64`, `gzip`), each a view; None when there is neither.
pub fn decode(buf: &[u8]) -> (Option<ViewBuilder>, Option<ViewBuilder>) {
    let mut text: Option<ViewBuilder> = None;
    let mut compressed: Option<ViewBuilder> = None;
    let mut quanta: Vec<Quantum> = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        if CLASS[buf[i] as usize] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut seen = 3u8;
        while i < buf.len() && CLASS[buf[i] as usize] != 0 {
            seen &= CLASS[buf[i] as usize];
            i += 1;
        }
        let end = i;
        // Padding ends a run.
        let mut padded = end;
        while padded < buf.len() && padded < end + 2 && buf[padded] == b'=' {
            padded += 1;
        }
        let len = end - start;
        // One alphabet only (a run mixing `+` and `_` is not base64), long enough, not huge, and a
        // length base64 can have.
        if seen == 0 || !(MIN_RUN..=MAX_RUN).contains(&len) || len % 4 == 1 {
            continue;
        }
        quanta.clear();
        decode_run(buf, start, end, &mut quanta);
        let mut decoded = Vec::with_capacity(len / 4 * 3 + 2);
        for &(_, _, bytes, n) in &quanta {
            decoded.extend_from_slice(&bytes[..n]);
        }
        if is_text(&decoded) {
            let view = text.get_or_insert_with(ViewBuilder::default);
            for &(at, qlen, bytes, n) in &quanta {
                // The last quantum takes the padding with it.
                let raw_end = if at + qlen == end { padded } else { at + qlen };
                view.atomic(at..raw_end, &bytes[..n]);
            }
            view.atomic(padded..padded, b"\n");
        } else if let Some(inflated) = inflate(&decoded).filter(|d| is_text(d)) {
            let view = compressed.get_or_insert_with(ViewBuilder::default);
            view.atomic(start..padded, &inflated);
            view.atomic(padded..padded, b"\n");
        }
    }
    (text, compressed)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    use super::*;

    fn view(v: Option<ViewBuilder>) -> (Vec<u8>, super::super::SpanMap) {
        v.expect("a view").finish()
    }

    #[test]
    fn text_runs_decode_and_map_back_to_their_characters() {
        let secret = "password: hunter2-is-not-a-token-but-text";
        let encoded = STANDARD.encode(secret);
        let buf = format!("data:\n  creds: {encoded}\n");
        let (text, compressed) = decode(buf.as_bytes());
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
        let (bytes, _) = view(decode(url.as_bytes()).0);
        assert!(String::from_utf8(bytes).unwrap().contains("url-safe"));
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
            let (text, compressed) = decode(STANDARD.encode(&bytes).as_bytes());
            assert!(text.is_none() && compressed.is_none());
        }
        for code in [
            "fn thisIsAVeryLongFunctionNameIndeed() {}",
            "AbstractSingletonProxyFactoryBeanImpl",
            "c2hvcnQ=",
        ] {
            let (text, compressed) = decode(code.as_bytes());
            assert!(text.is_none() && compressed.is_none(), "{code}");
        }
    }

    #[test]
    fn a_compressed_run_is_inflated_and_a_bomb_is_not() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(b"config: the token is here somewhere, as text\n")
            .unwrap();
        let encoded = STANDARD.encode(gz.finish().unwrap());
        let (text, compressed) = decode(format!("blob = \"{encoded}\"").as_bytes());
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
        let (text, compressed) = decode(STANDARD.encode(&bomb).as_bytes());
        assert!(text.is_none() && compressed.is_none());
    }
}
