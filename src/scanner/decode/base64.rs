//! Base64, standard (`+/`) and URL-safe (`-_`), padded or not: a Kubernetes Secret's `data:` values,
//! a `.dockerconfigjson`, a basic-auth header, a JWT payload. Only runs long enough to hold a token
//! ([`MIN_RUN`] characters) are decoded, and only what decodes to text is kept: a long identifier
//! or random base64 decodes to bytes that are not text and is dropped, so it cannot make findings.
//! A run that decodes to gzip or zlib data is decompressed (capped) and kept when that is text.
//!
//! Each 4-character quantum maps to its 3 decoded bytes ([`ViewBuilder::atomic`]), so a finding is
//! reported at exactly the characters that encode it.

use super::container::{self, compression};
use super::span_map::ViewBuilder;

/// Shortest run decoded: 32 characters are 24 bytes, as short as a token with its key name gets
/// (`KEY=` and a 20-character token); shorter runs are mostly identifiers, paths and hex.
pub const MIN_RUN: usize = 32;
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

#[cfg(any(test, not(target_arch = "x86_64")))]
const HIGH: u64 = 0x8080_8080_8080_8080;

#[cfg(any(test, not(target_arch = "x86_64")))]
const fn splat(b: u8) -> u64 {
    b as u64 * 0x0101_0101_0101_0101
}

/// High bit of each byte of `x` (whose high bits are clear) set where the byte is at least `n`.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn at_least(x: u64, n: u8) -> u64 {
    x.wrapping_add(splat(0x80 - n)) & HIGH
}

#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn equal(x: u64, n: u8) -> u64 {
    at_least(x, n) & !at_least(x, n + 1)
}

/// Bit k set when byte k of `chunk` is in either base64 alphabet: eight bytes at once, no branch
/// (the same answer as [`CLASS`], which the tests check).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn class_bits(chunk: &[u8]) -> u8 {
    let w = u64::from_le_bytes(chunk[..8].try_into().expect("eight bytes"));
    let x = w & !HIGH;
    let m = (at_least(x, b'0') & !at_least(x, b'9' + 1))
        | (at_least(x, b'A') & !at_least(x, b'Z' + 1))
        | (at_least(x, b'a') & !at_least(x, b'z' + 1))
        | equal(x, b'+')
        | equal(x, b'/')
        | equal(x, b'-')
        | equal(x, b'_');
    // Non-ASCII bytes are never base64; then one bit per byte, byte k to bit k.
    let m = (m & !w) >> 7;
    (m.wrapping_mul(0x0102_0408_1020_4080) >> 56) as u8
}

/// Bit k set when byte k of the 64 at the start of `block` is in either alphabet.
#[cfg(target_arch = "x86_64")]
#[inline]
fn block_mask(block: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    assert!(block.len() >= 64);
    let mut out = 0u64;
    for k in 0..4 {
        // SAFETY: SSE2 is part of the x86_64 baseline, and the 16 bytes read are in `block`
        // (asserted above); unaligned loads are allowed.
        let bits = unsafe {
            let x = _mm_loadu_si128(block.as_ptr().add(16 * k).cast::<__m128i>());
            // Signed compares: every byte >= 0x80 is negative, so outside every range.
            let range = |lo: u8, hi: u8| {
                _mm_and_si128(
                    _mm_cmpgt_epi8(x, _mm_set1_epi8(lo as i8 - 1)),
                    _mm_cmpgt_epi8(_mm_set1_epi8(hi as i8 + 1), x),
                )
            };
            let equal = |c: u8| _mm_cmpeq_epi8(x, _mm_set1_epi8(c as i8));
            let letters_digits = _mm_or_si128(
                _mm_or_si128(range(b'0', b'9'), range(b'A', b'Z')),
                range(b'a', b'z'),
            );
            let signs = _mm_or_si128(
                _mm_or_si128(equal(b'+'), equal(b'/')),
                _mm_or_si128(equal(b'-'), equal(b'_')),
            );
            _mm_movemask_epi8(_mm_or_si128(letters_digits, signs)) as u16
        };
        out |= u64::from(bits) << (16 * k);
    }
    out
}

/// Bit k set when byte k of the 64 at the start of `block` is in either alphabet.
#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn block_mask(block: &[u8]) -> u64 {
    (0..8).fold(0, |m, k| {
        m | u64::from(class_bits(&block[8 * k..])) << (8 * k)
    })
}

/// The alphabet as two nibble tables (the lookup of Muła and Lemire's SIMD base64): a byte
/// `0xHL` is in either alphabet when `LOW_NIBBLE[L] & HIGH_NIBBLE[H] != 0`. Each high nibble
/// 2..=7 has a bit; `LOW_NIBBLE[L]` holds the bits of the high nibbles that make an alphabet
/// character with `L` (`0x2B` `+`, `0x2D` `-`, `0x2F` `/`, `0x30..=0x39`, `0x41..=0x5A`, `0x5F` `_`,
/// `0x61..=0x7A`). Bytes from `0x80` have no bit. The tests check it against [`CLASS`].
#[cfg(target_arch = "x86_64")]
const LOW_NIBBLE: [u8; 16] = [
    42, 62, 62, 62, 62, 62, 62, 62, 62, 62, 60, 21, 20, 21, 20, 29,
];
#[cfg(target_arch = "x86_64")]
const HIGH_NIBBLE: [u8; 16] = [0, 0, 1, 2, 4, 8, 16, 32, 0, 0, 0, 0, 0, 0, 0, 0];

/// [`block_mask`] with AVX2: two nibble lookups per 32 bytes instead of ten compares per 16.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_mask_avx2(block: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    assert!(block.len() >= 64);
    let tables = |t: &[u8; 16]| {
        let mut both = [0u8; 32];
        both[..16].copy_from_slice(t);
        both[16..].copy_from_slice(t);
        // SAFETY: 32 bytes read from a 32-byte array.
        unsafe { _mm256_loadu_si256(both.as_ptr().cast::<__m256i>()) }
    };
    let (low, high) = (tables(&LOW_NIBBLE), tables(&HIGH_NIBBLE));
    let nibble = _mm256_set1_epi8(0x0f);
    let mut out = 0u64;
    for k in 0..2 {
        // SAFETY: the 32 bytes read are in `block` (asserted above); unaligned loads are allowed.
        let x = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * k).cast::<__m256i>()) };
        let l = _mm256_shuffle_epi8(low, _mm256_and_si256(x, nibble));
        let h = _mm256_shuffle_epi8(high, _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble));
        let outside = _mm256_cmpeq_epi8(_mm256_and_si256(l, h), _mm256_setzero_si256());
        out |= u64::from(!(_mm256_movemask_epi8(outside) as u32)) << (32 * k);
    }
    out
}

/// [`block_mask`] with AVX-512BW: the same two nibble lookups over all 64 bytes at once, and the
/// test writes the mask directly (half the instructions of the AVX2 loop).
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn block_mask_avx512(block: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    assert!(block.len() >= 64);
    // SAFETY (both loads): 16 bytes read from a 16-byte table; unaligned loads are allowed.
    let low = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(LOW_NIBBLE.as_ptr().cast()) });
    let high = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(HIGH_NIBBLE.as_ptr().cast()) });
    let nibble = _mm512_set1_epi8(0x0f);
    // SAFETY: the 64 bytes read are in `block` (asserted above); unaligned loads are allowed.
    let x = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
    let l = _mm512_shuffle_epi8(low, _mm512_and_si512(x, nibble));
    let h = _mm512_shuffle_epi8(high, _mm512_and_si512(_mm512_srli_epi16(x, 4), nibble));
    _mm512_test_epi8_mask(l, h)
}

/// The high bit of a 16-bit lane of `m` is set where that lane is all ones; exact for the lowest
/// such lane, which is the one used (a lane above it may be set by the subtraction's borrow).
/// Every run of [`MIN_RUN`] = 32 characters holds an aligned 16-byte lane whole, so a block without
/// a full lane holds no run that has not already started before it.
#[inline(always)]
fn full_lanes(m: u64) -> u64 {
    let z = !m;
    z.wrapping_sub(0x0001_0001_0001_0001) & !z & 0x8000_8000_8000_8000
}

/// Calls `visit(start, end)` for each run of at least [`MIN_RUN`] alphabet characters, in order,
/// its extents read off the masks. 64 bytes a step (AVX-512BW or AVX2 where present, else SSE2 on x86_64): on
/// source text nothing but these masks and a test for a full 16-byte lane is computed for almost
/// every block.
fn each_long_run(buf: &[u8], visit: impl FnMut(usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has AVX-512BW, and so AVX-512F (checked just above; std caches it).
        return unsafe { each_long_run_avx512(buf, visit) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above; std caches the answer).
        return unsafe { each_long_run_avx2(buf, visit) };
    }
    each_long_run_with(buf, visit, block_mask)
}

/// [`each_long_run`] compiled for AVX2, so the masks inline into its loop.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn each_long_run_avx2(buf: &[u8], visit: impl FnMut(usize, usize)) {
    // SAFETY: this function runs only where AVX2 is present.
    each_long_run_with(buf, visit, |block| unsafe { block_mask_avx2(block) })
}

/// [`each_long_run`] compiled for AVX-512BW.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn each_long_run_avx512(buf: &[u8], visit: impl FnMut(usize, usize)) {
    // SAFETY: this function runs only where AVX-512BW is present.
    each_long_run_with(buf, visit, |block| unsafe { block_mask_avx512(block) })
}

#[inline(always)]
fn each_long_run_with(
    buf: &[u8],
    mut visit: impl FnMut(usize, usize),
    block_mask: impl Fn(&[u8]) -> u64,
) {
    const _: () = assert!(MIN_RUN == 32, "full_lanes finds runs of 32");
    let mut pos = 0;
    // Everything before it is done.
    let mut done = 0usize;
    // The mask of the block before `pos` (its leading ones are the alphabet characters in a row
    // just before `pos`), when that block was looked at and `done` is before `pos`.
    let mut prev = 0u64;
    while pos + 64 <= buf.len() {
        let mut m = block_mask(&buf[pos..pos + 64]);
        // Almost every block of source text: no full lane, nothing else to do. (Masking the bytes
        // before `done` only clears bits, so it cannot add a lane.)
        if full_lanes(m) == 0 {
            prev = m;
            pos += 64;
            continue;
        }
        let carry = if done >= pos {
            // Right after a run that ended in this block (`done - pos` < 64).
            m &= u64::MAX << (done - pos);
            0
        } else {
            prev.leading_ones() as usize
        };
        let mut lanes = full_lanes(m);
        let mut next = pos + 64;
        while lanes != 0 {
            // The lowest full lane, and the run that holds it: it starts after the last byte
            // outside the alphabet below the lane (the lanes below are not full, so that byte is
            // in this block or, for lane 0, `carry` bytes back).
            let lane = lanes.trailing_zeros() as usize & !15;
            let outside_below = !m & ((1u64 << lane) - 1);
            let start = if outside_below == 0 {
                pos - carry
            } else {
                pos + 64 - outside_below.leading_zeros() as usize
            };
            let end = run_end(buf, pos + lane, pos, m, &block_mask);
            if end - start >= MIN_RUN {
                visit(start, end);
            }
            done = end;
            if end - pos >= 64 {
                next = done / 64 * 64;
                break;
            }
            m &= u64::MAX << (end - pos);
            lanes = full_lanes(m);
        }
        prev = m;
        pos = next;
    }
    let carry = if done >= pos {
        0
    } else {
        prev.leading_ones() as usize
    };
    // The last bytes, one at a time.
    let mut i = done.max(pos.saturating_sub(carry));
    while i < buf.len() {
        if CLASS[buf[i] as usize] == 0 {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < buf.len() && CLASS[buf[end] as usize] != 0 {
            end += 1;
        }
        if end - i >= MIN_RUN {
            visit(i, end);
        }
        i = end.max(i + 1);
    }
}

/// Where the run that holds `from` ends (its first byte outside the alphabet, or the buffer's
/// end): from `m`, the mask of the 64-byte block at `pos` that holds `from`, then block by block.
#[inline(always)]
fn run_end(
    buf: &[u8],
    from: usize,
    pos: usize,
    m: u64,
    block_mask: &impl Fn(&[u8]) -> u64,
) -> usize {
    let ones = (m >> (from - pos)).trailing_ones() as usize;
    if from - pos + ones < 64 {
        return from + ones;
    }
    let mut p = pos + 64;
    while p + 64 <= buf.len() {
        let next = block_mask(&buf[p..p + 64]);
        if next != u64::MAX {
            return p + next.trailing_ones() as usize;
        }
        p += 64;
    }
    while p < buf.len() && CLASS[buf[p] as usize] != 0 {
        p += 1;
    }
    p
}

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
pub fn decode(buf: &[u8], text: &mut ViewBuilder, compressed: &mut ViewBuilder) {
    let mut quanta: Vec<Quantum> = Vec::new();
    let mut decoded: Vec<u8> = Vec::new();
    each_long_run(buf, |start, end| {
        // Padding ends a run.
        let mut padded = end;
        while padded < buf.len() && padded < end + 2 && buf[padded] == b'=' {
            padded += 1;
        }
        let len = end - start;
        // Long enough, not huge, and a length base64 can have.
        if !(MIN_RUN..=MAX_RUN).contains(&len) || len % 4 == 1 {
            return;
        }
        // Nearly every run in source text that is not base64 (a rule of dashes, a path, hex, a long
        // identifier) decodes to a control or non-ASCII byte within its first two quanta: looked at
        // before the whole run is decoded. Text a token is in starts printable (a key, a brace).
        let head = head(&buf[start..start + 8]);
        if head == Head::Neither {
            return;
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
            return;
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
    });
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    use super::*;

    /// The text and compressed views of `buf`, each `None` when empty.
    fn decoded(buf: &[u8]) -> (Option<ViewBuilder>, Option<ViewBuilder>) {
        let (mut text, mut compressed) = (ViewBuilder::default(), ViewBuilder::default());
        decode(buf, &mut text, &mut compressed);
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
    fn eight_bytes_at_a_time_agree_with_the_table() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let chunk = seed.to_le_bytes();
            let bits = class_bits(&chunk);
            for (k, &b) in chunk.iter().enumerate() {
                assert_eq!(bits >> k & 1 == 1, CLASS[b as usize] != 0, "byte {b:#04x}");
            }
        }
        for b in 0..=255u8 {
            let bits = class_bits(&[b; 8]);
            assert_eq!(bits == 0xff, CLASS[b as usize] != 0, "byte {b:#04x}");
        }
    }

    #[test]
    fn the_block_masks_agree_with_the_table() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut block = [0u8; 64];
        for round in 0..5_000 {
            for b in block.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Every byte value early on, then mostly ASCII around the alphabet's edges.
                *b = if round < 100 {
                    seed as u8
                } else {
                    (seed % 0x80) as u8
                };
            }
            let expected = (0..64).fold(0u64, |m, k| {
                m | u64::from(CLASS[block[k] as usize] != 0) << k
            });
            assert_eq!(block_mask(&block), expected, "{block:?}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present.
                assert_eq!(unsafe { block_mask_avx2(&block) }, expected, "{block:?}");
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512bw") {
                // SAFETY: AVX-512BW is present.
                assert_eq!(unsafe { block_mask_avx512(&block) }, expected, "{block:?}");
            }
        }
        for b in 0..=255u8 {
            let expected = if CLASS[b as usize] != 0 { u64::MAX } else { 0 };
            assert_eq!(block_mask(&[b; 64]), expected, "byte {b:#04x}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present.
                assert_eq!(
                    unsafe { block_mask_avx2(&[b; 64]) },
                    expected,
                    "byte {b:#04x}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512bw") {
                // SAFETY: AVX-512BW is present.
                assert_eq!(
                    unsafe { block_mask_avx512(&[b; 64]) },
                    expected,
                    "byte {b:#04x}"
                );
            }
        }
    }

    #[test]
    fn every_long_run_is_visited_once_as_a_byte_loop_finds_them() {
        // Alphabet characters, non-alphabet punctuation (`.`, `:`, `<`) and separators, in runs of
        // random lengths around the block size.
        let pieces: [&[u8]; 6] = [b"aZ09+/", b"-_xY", b".:<", b" ", b"\n\"", b"\xc3\xa9"];
        let mut seed = 0x1234_5678_9abc_def1_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut buf = Vec::new();
            while buf.len() < 300 {
                let piece = pieces[(next() % 6) as usize];
                let len = (next() % 70) as usize;
                buf.extend((0..len).map(|k| piece[k % piece.len()]));
            }
            let mut expected = Vec::new();
            let mut i = 0;
            while i < buf.len() {
                let start = i;
                while i < buf.len() && CLASS[buf[i] as usize] != 0 {
                    i += 1;
                }
                if i - start >= MIN_RUN {
                    expected.push((start, i));
                }
                i = i.max(start + 1);
            }
            let mut seen = Vec::new();
            each_long_run(&buf, |start, end| seen.push((start, end)));
            assert_eq!(seen, expected, "{:?}", String::from_utf8_lossy(&buf));
            // The paths for CPUs without AVX-512 or AVX2, too.
            seen.clear();
            each_long_run_with(&buf, |start, end| seen.push((start, end)), block_mask);
            assert_eq!(seen, expected, "{:?}", String::from_utf8_lossy(&buf));
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                seen.clear();
                // SAFETY: AVX2 is present.
                unsafe { each_long_run_avx2(&buf, |start, end| seen.push((start, end))) };
                assert_eq!(seen, expected, "{:?}", String::from_utf8_lossy(&buf));
            }
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
