//! Where each byte of a decoded view came from in its parent buffer, so a finding in the view is
//! reported, and redacted, at the bytes that encode it.
//!
//! A view is built as a sequence of segments: *literal* runs copied byte for byte (offsets map
//! linearly) and *atomic* runs, where some raw bytes (an escape, a `%XX`, a base64 quantum) became
//! some decoded bytes. A decoded span maps to the smallest raw span that covers every atomic run it
//! touches, so a redaction never leaves half an escape of a token behind.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    decoded_start: usize,
    decoded_len: usize,
    raw_start: usize,
    raw_len: usize,
    literal: bool,
}

/// A decoded buffer and its map back to the parent.
#[derive(Debug, Default, Clone)]
pub struct ViewBuilder {
    pub(super) bytes: Vec<u8>,
    segments: Vec<Segment>,
}

impl ViewBuilder {
    pub fn with_capacity(n: usize) -> Self {
        ViewBuilder {
            bytes: Vec::with_capacity(n),
            segments: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Copies `raw[range]` unchanged.
    pub fn literal(&mut self, raw: &[u8], range: Range<usize>) {
        if range.is_empty() {
            return;
        }
        let decoded_start = self.bytes.len();
        self.bytes.extend_from_slice(&raw[range.clone()]);
        if let Some(last) = self.segments.last_mut()
            && last.literal
            && last.raw_start + last.raw_len == range.start
            && last.decoded_start + last.decoded_len == decoded_start
        {
            last.raw_len += range.len();
            last.decoded_len += range.len();
            return;
        }
        self.segments.push(Segment {
            decoded_start,
            decoded_len: range.len(),
            raw_start: range.start,
            raw_len: range.len(),
            literal: true,
        });
    }

    /// Appends `decoded`, which the raw bytes `raw` stand for as a whole.
    pub fn atomic(&mut self, raw: Range<usize>, decoded: &[u8]) {
        if decoded.is_empty() {
            return;
        }
        let decoded_start = self.bytes.len();
        self.bytes.extend_from_slice(decoded);
        self.segments.push(Segment {
            decoded_start,
            decoded_len: decoded.len(),
            raw_start: raw.start,
            raw_len: raw.len(),
            literal: false,
        });
    }

    /// A line break between two decoded regions, so no token is read across them. It maps to the
    /// empty raw span where the next region starts.
    pub fn separator(&mut self, raw_at: usize) {
        self.atomic(raw_at..raw_at, b"\n");
    }

    pub fn finish(self) -> (Vec<u8>, SpanMap) {
        (
            self.bytes,
            SpanMap {
                segments: self.segments,
            },
        )
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
            .partition_point(|s| s.decoded_start + s.decoded_len <= decoded);
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
        let start = if first_seg.literal {
            first_seg.raw_start + (decoded.start - first_seg.decoded_start)
        } else {
            first_seg.raw_start
        };
        let end = if last_seg.literal {
            last_seg.raw_start + (last - last_seg.decoded_start) + 1
        } else {
            last_seg.raw_start + last_seg.raw_len
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
        assert_eq!(map.segments.len(), 3);
        assert_eq!(map.to_raw(5..7), 4..6);
    }
}
