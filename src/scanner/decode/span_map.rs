//! Where each byte of a decoded view came from in its parent buffer, so a finding in the view is
//! reported, and redacted, at the bytes that encode it.
//!
//! A view is built of *atomic* runs, where some raw bytes (an escape, a `%XX`, a base64 quantum)
//! became some decoded bytes, and *literal* runs copied byte for byte (offsets map linearly). A
//! decoded span maps to the smallest raw span that covers every atomic run it touches, so a
//! redaction never leaves half an escape of a token behind.

use std::ops::Range;

/// An atomic run (possibly empty) and the literal run right after it: `atomic_raw` raw bytes at
/// `raw_start` that became `atomic_decoded` bytes at `decoded_start` as a whole, then `tail` bytes
/// copied unchanged. One segment per escape, not two: the text between escapes extends the
/// segment of the escape before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    decoded_start: usize,
    raw_start: usize,
    atomic_decoded: usize,
    atomic_raw: usize,
    tail: usize,
}

impl Segment {
    fn decoded_end(&self) -> usize {
        self.decoded_start + self.atomic_decoded + self.tail
    }

    fn raw_end(&self) -> usize {
        self.raw_start + self.atomic_raw + self.tail
    }
}

/// A decoded buffer and its map back to the parent.
#[derive(Debug, Default, Clone)]
pub struct ViewBuilder {
    bytes: Vec<u8>,
    map: SpanMap,
}

impl ViewBuilder {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The decoded bytes so far.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Where the decoded bytes so far came from.
    pub fn map(&self) -> &SpanMap {
        &self.map
    }

    /// Empties the view, keeping its memory for the next one.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.map.segments.clear();
    }

    /// Bytes of memory the view holds on to.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity() + self.map.segments.capacity() * std::mem::size_of::<Segment>()
    }

    /// Copies `raw[range]` unchanged.
    pub fn literal(&mut self, raw: &[u8], range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let decoded_start = self.bytes.len();
        self.bytes.extend_from_slice(&raw[range.clone()]);
        if let Some(last) = self.map.segments.last_mut()
            && last.raw_end() == range.start
            && last.decoded_end() == decoded_start
        {
            last.tail += range.len();
            return;
        }
        self.map.segments.push(Segment {
            decoded_start,
            raw_start: range.start,
            atomic_decoded: 0,
            atomic_raw: 0,
            tail: range.len(),
        });
    }

    /// Appends `decoded`, which the raw bytes `raw` stand for as a whole.
    pub fn atomic(&mut self, raw: Range<usize>, decoded: &[u8]) {
        if decoded.is_empty() {
            return;
        }
        let decoded_start = self.bytes.len();
        self.bytes.extend_from_slice(decoded);
        self.atomic_segment(raw, decoded_start);
    }

    /// [`ViewBuilder::atomic`] for up to 4 decoded bytes, packed little-endian in `packed` (`len`
    /// of them count): written as one word, so no byte goes through memory a byte at a time.
    pub fn atomic_packed(&mut self, raw: Range<usize>, packed: u32, len: usize) {
        debug_assert!((1..=4).contains(&len));
        let decoded_start = self.bytes.len();
        self.bytes.extend_from_slice(&packed.to_le_bytes());
        self.bytes.truncate(decoded_start + len);
        self.atomic_segment(raw, decoded_start);
    }

    /// Maps the bytes appended since `decoded_start` to `raw` as a whole.
    fn atomic_segment(&mut self, raw: Range<usize>, decoded_start: usize) {
        self.map.segments.push(Segment {
            decoded_start,
            raw_start: raw.start,
            atomic_decoded: self.bytes.len() - decoded_start,
            atomic_raw: raw.len(),
            tail: 0,
        });
    }

    /// A line break between two decoded regions, so no token is read across them. It maps to the
    /// empty raw span where the next region starts.
    pub fn separator(&mut self, raw_at: usize) {
        self.atomic(raw_at..raw_at, b"\n");
    }

    /// The bytes and map, owned (tests; the scanner reads a view in place and reuses it).
    #[cfg(test)]
    pub fn finish(self) -> (Vec<u8>, SpanMap) {
        (self.bytes, self.map)
    }
}

/// Maps spans of a decoded view back to its parent buffer.
#[derive(Debug, Default, Clone)]
pub struct SpanMap {
    segments: Vec<Segment>,
}

impl SpanMap {
    fn segment_at(&self, decoded: usize) -> Option<&Segment> {
        let i = self
            .segments
            .partition_point(|s| s.decoded_end() <= decoded);
        self.segments.get(i)
    }

    /// The raw span that encodes `decoded` (non-empty, inside the view).
    pub fn to_raw(&self, decoded: Range<usize>) -> Range<usize> {
        let last = decoded.end.max(decoded.start + 1) - 1;
        let (Some(first_seg), Some(last_seg)) =
            (self.segment_at(decoded.start), self.segment_at(last))
        else {
            return 0..0;
        };
        // Inside a segment's atomic run: all of it; in its tail: the very byte.
        let start = match decoded.start - first_seg.decoded_start {
            d if d < first_seg.atomic_decoded => first_seg.raw_start,
            d => first_seg.raw_start + first_seg.atomic_raw + (d - first_seg.atomic_decoded),
        };
        let end = match last - last_seg.decoded_start {
            d if d < last_seg.atomic_decoded => last_seg.raw_start + last_seg.atomic_raw,
            d => last_seg.raw_start + last_seg.atomic_raw + (d - last_seg.atomic_decoded) + 1,
        };
        start..end.max(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_runs_map_linearly_and_atomic_runs_map_whole() {
        // raw: `ab\ncd` (6 bytes, `\n` written as backslash + n) decoded to `ab<LF>cd`.
        let raw = b"ab\\ncd";
        let mut v = ViewBuilder::default();
        v.literal(raw, 0..2);
        v.atomic(2..4, b"\n");
        v.literal(raw, 4..6);
        let (bytes, map) = v.finish();
        assert_eq!(bytes, b"ab\ncd");
        assert_eq!(map.to_raw(3..5), 4..6);
        assert_eq!(map.to_raw(0..1), 0..1);
        // A span that touches the escape covers all of it.
        assert_eq!(map.to_raw(2..4), 2..5);
        assert_eq!(map.to_raw(1..3), 1..4);
    }

    #[test]
    fn adjacent_literals_merge() {
        let raw = b"abcdef";
        let mut v = ViewBuilder::default();
        v.literal(raw, 0..2);
        v.literal(raw, 2..4);
        v.separator(4);
        v.literal(raw, 4..6);
        let (bytes, map) = v.finish();
        assert_eq!(bytes, b"abcd\nef");
        // The first two literals; the separator with the last literal as its tail.
        assert_eq!(map.segments.len(), 2);
        assert_eq!(map.to_raw(5..7), 4..6);
    }
}
