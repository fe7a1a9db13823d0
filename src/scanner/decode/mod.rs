//! Decoded views: the scanner reads text as its writers encoded it. A token after a JSON escape, in
//! a percent-encoded URL or form value, is a token; [`Scanner::scan_decoded`] scans the raw buffer,
//! then each decoded view of it (nested up to [`DecodeOptions::max_depth`]), and reports every
//! finding at the raw bytes that encode it ([`SpanMap`]), with the steps that reached it.
//!
//! Why views of regions and not a decoded copy of the whole buffer: the raw pass already sees every
//! token that stands as written, so only the regions a decoder changes (the string literals with an
//! escape, the URL runs with a `%XX`) are decoded and scanned again; on plain source text that is a
//! small fraction of the bytes.
//!
//! Pure: no I/O, async, database or HTTP; decoders take bytes and return views.

mod base64;
pub mod container;
mod escape;
mod marks;
mod percent;
mod span_map;

use std::collections::HashMap;

pub(crate) use marks::Marks;
pub use span_map::{SpanMap, ViewBuilder};

use super::engine::{LineCounter, Scanner, Sink};
use super::finding::Finding;

/// How a finding was reached, outermost first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeStep {
    /// JSON or JavaScript string escapes.
    Escape,
    /// Percent-encoding in a URL-like run.
    Percent,
    /// A whole `application/x-www-form-urlencoded` body.
    Form,
    /// Base64, standard or URL-safe.
    Base64,
    /// gzip, zlib or raw deflate data, decompressed.
    Inflate,
}

impl DecodeStep {
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeStep::Escape => "escape",
            DecodeStep::Percent => "percent",
            DecodeStep::Form => "form",
            DecodeStep::Base64 => "base64",
            DecodeStep::Inflate => "inflate",
        }
    }
}

impl std::fmt::Display for DecodeStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the outermost buffer is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outer {
    /// Any text: decoders find the regions they apply to.
    #[default]
    Text,
    /// An `application/x-www-form-urlencoded` body: every key and value is decoded.
    Form,
}

/// Limits of decoding. Decoding is never needed for safety, so every limit skips, never fails.
#[derive(Debug, Clone, Copy)]
pub struct DecodeOptions {
    /// Views of views: 0 scans the raw bytes only.
    pub max_depth: usize,
    /// Decoded bytes produced for one buffer, all views together.
    pub max_decoded_bytes: usize,
    pub outer: Outer,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_depth: 3,
            max_decoded_bytes: 64 << 20,
            outer: Outer::Text,
        }
    }
}

impl DecodeOptions {
    /// Raw bytes only.
    pub fn none() -> Self {
        DecodeOptions {
            max_depth: 0,
            ..Self::default()
        }
    }
}

/// A view kept for reuse by a scanner holds on to at most this much memory; a larger one (a big
/// decompressed blob) is freed, so a thread's memory does not stay at its largest file's.
const KEEP_VIEW_BYTES: usize = 1 << 20;

/// Fills `views` with the decoded views of `buf` (each left empty where its decoder found nothing)
/// and returns the steps that made each one (outermost first). `marks` are `buf`'s when `marked`
/// (the scan of `buf` marked it), else scratch space. A URL run shorter than `shortest` bytes (the
/// rule set's shortest match) is left out: it decodes to no more bytes than it takes, so no
/// finding fits in it.
fn views(
    outer: Outer,
    buf: &[u8],
    marks: &mut Marks,
    marked: bool,
    shortest: usize,
    views: &mut [ViewBuilder; 4],
) -> [&'static [DecodeStep]; 4] {
    let [first, second, third, fourth] = views;
    match outer {
        Outer::Text => {
            if !marked {
                marks.find(buf);
            }
            escape::decode(buf, marks.backslashes(), first);
            percent::decode(buf, marks.percents(), shortest, second);
            base64::decode(buf, marks.runs(), third, fourth);
            [
                &[DecodeStep::Escape],
                &[DecodeStep::Percent],
                &[DecodeStep::Base64],
                &[DecodeStep::Base64, DecodeStep::Inflate],
            ]
        }
        Outer::Form => {
            percent::decode_form(buf, first);
            [&[DecodeStep::Form], &[], &[], &[]]
        }
    }
}

impl<'r> Scanner<'r> {
    /// Scans `haystack` and its decoded views; hands every finding to `sink` in order of position,
    /// spans in `haystack`. A decoded finding of a rule that already found something at the same raw
    /// bytes is left out (the raw one, or the one fewest decodings reached, stands).
    pub fn scan_decoded(
        &mut self,
        source: &str,
        haystack: &[u8],
        options: &DecodeOptions,
        sink: &mut impl Sink<'r>,
    ) {
        if options.max_depth == 0 {
            return self.scan(source, haystack, sink);
        }
        let mut found = Vec::new();
        // Text is marked for its decoders by the scan; a form body is decoded whole.
        let marked = self.scan_marking(
            source,
            haystack,
            options.outer == Outer::Text,
            &mut |f: Finding<'r>| found.push(f),
        );
        let raw = found.len();
        let mut budget = options.max_decoded_bytes;
        self.scan_views(
            source,
            haystack,
            marked,
            options,
            options.outer,
            1,
            &mut budget,
            &mut found,
        );
        if found.len() == raw {
            for f in found {
                sink.finding(f);
            }
            return;
        }
        // Fewer steps first, so the raw (or least decoded) finding of a secret is the one kept.
        found.sort_by_key(|f| f.decoded.len());
        // One finding per rule and place: a view that decodes the same bytes again (an escaped PEM
        // block, a percent-encoded password) finds the same token spelled another way. The same
        // secret keeps its rawest finding; a different spelling is the decoded value, the one the
        // issuer knows, so the more decoded finding replaces the rawer one.
        let mut kept: Vec<Finding<'r>> = Vec::with_capacity(found.len());
        let mut by_rule: HashMap<&'r str, Vec<usize>> = HashMap::new();
        for f in found {
            let slot = by_rule.entry(f.rule.id.as_str()).or_default();
            // Findings of one view are distinct tokens even where their raw spans overlap (every
            // token inside one base64+gzip blob maps to the whole blob).
            let same_place = slot.iter().copied().find(|&k| {
                let g = &kept[k];
                g.decoded != f.decoded && g.span.start < f.span.end && f.span.start < g.span.end
            });
            match same_place {
                None => {
                    slot.push(kept.len());
                    kept.push(f);
                }
                Some(k) => {
                    let g = &kept[k];
                    if g.secret().expose() != f.secret().expose()
                        && f.decoded.len() > g.decoded.len()
                    {
                        kept[k] = f;
                    }
                }
            }
        }
        kept.sort_by_key(|f| (f.span.start, f.span.end));
        let mut lines = LineCounter::default();
        for mut f in kept {
            (f.line, f.column) = lines.position(haystack, f.located_at());
            sink.finding(f);
        }
    }

    /// Scans the views of `buf` (marked for its decoders when `marked`) and, to the depth allowed,
    /// theirs, into `out` at `buf`'s bytes.
    #[allow(clippy::too_many_arguments)]
    fn scan_views(
        &mut self,
        source: &str,
        buf: &[u8],
        marked: bool,
        options: &DecodeOptions,
        outer: Outer,
        depth: usize,
        budget: &mut usize,
        out: &mut Vec<Finding<'r>>,
    ) {
        // Views are reused from file to file: building them anew put the allocator at about a
        // tenth of decoding's time.
        let mut made: [ViewBuilder; 4] = std::array::from_fn(|_| {
            let mut v = self.spare_views.pop().unwrap_or_default();
            v.clear();
            v
        });
        let shortest = self.set.min_match_len();
        let steps = views(outer, buf, &mut self.marks, marked, shortest, &mut made);
        for (steps, view) in steps.into_iter().zip(&made) {
            if view.is_empty() || view.len() > *budget {
                continue;
            }
            *budget -= view.len();
            let mut inner = Vec::new();
            // Marked only where its own views are decoded next.
            let deeper = depth < options.max_depth;
            let marked = self.scan_marking(source, view.bytes(), deeper, &mut |f: Finding<'r>| {
                inner.push(f)
            });
            if deeper {
                self.scan_views(
                    source,
                    view.bytes(),
                    marked,
                    options,
                    Outer::Text,
                    depth + 1,
                    budget,
                    &mut inner,
                );
            }
            let map = view.map();
            for mut f in inner {
                f.span = map.to_raw(f.span.clone());
                f.match_span = map.to_raw(f.match_span.clone());
                f.decoded.splice(0..0, steps.iter().copied());
                out.push(f);
            }
        }
        self.spare_views
            .extend(made.into_iter().filter(|v| v.capacity() <= KEEP_VIEW_BYTES));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scanner::{RuleSet, ScanOptions};

    fn token() -> String {
        let body = "R7mKq2VxT9pL4sN8wYc3Hd6Fj1Zb5A";
        format!(
            "ghp_{body}{}",
            crate::scanner::validate::crc32_base62(body.as_bytes())
        )
    }

    fn findings(text: &[u8], options: DecodeOptions) -> Vec<(String, Vec<DecodeStep>, usize)> {
        let rules = RuleSet::default_rules(ScanOptions::default()).unwrap();
        let mut scanner = rules.scanner();
        let mut out = Vec::new();
        scanner.scan_decoded("t", text, &options, &mut |f: Finding<'_>| {
            out.push((
                String::from_utf8_lossy(&text[f.span.clone()]).into_owned(),
                f.decoded.clone(),
                f.line,
            ))
        });
        out
    }

    #[test]
    fn a_token_after_an_escape_is_found_at_its_raw_bytes() {
        let t = token();
        let body = format!(r#"{{"a":"x\n{t}","b":"\u0020{t}"}}"#);
        let found = findings(body.as_bytes(), DecodeOptions::default());
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0], (t.clone(), vec![DecodeStep::Escape], 1));
        assert_eq!(found[1].0, t);
        assert!(findings(body.as_bytes(), DecodeOptions::none()).is_empty());
    }

    #[test]
    fn a_token_spelled_with_escapes_maps_to_the_whole_spelling() {
        let t = token();
        let spelled = format!("\\u0067{}", &t[1..]);
        let body = format!(r#"{{"k":"{spelled}"}}"#);
        let found = findings(body.as_bytes(), DecodeOptions::default());
        assert_eq!(found, vec![(spelled, vec![DecodeStep::Escape], 1)]);
    }

    fn token_of(body: &str) -> String {
        format!(
            "ghp_{body}{}",
            crate::scanner::validate::crc32_base62(body.as_bytes())
        )
    }

    /// Two tokens inside one base64+gzip value both map to the whole value: both are reported.
    #[test]
    fn two_tokens_in_one_compressed_blob_are_two_findings() {
        use ::base64::Engine as _;
        use std::io::Write as _;
        let (a, b) = (
            token_of("R7mKq2VxT9pL4sN8wYc3Hd6Fj1Zb5A"),
            token_of("Zq8wTn3vLp2xRk5mYb7cHd9fJg4sNa"),
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(format!("A={a}\nB={b}\n").as_bytes()).unwrap();
        let blob = ::base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let found = findings(
            format!("release: {blob}\n").as_bytes(),
            DecodeOptions::default(),
        );
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn raw_findings_stand_and_are_not_repeated_by_views() {
        let t = token();
        let body = format!("line one\n\"a\\tb {t}\"");
        let found = findings(body.as_bytes(), DecodeOptions::default());
        assert_eq!(found, vec![(t, vec![], 2)]);
    }

    #[test]
    fn nested_encodings_decode_to_the_depth_allowed() {
        let t = token();
        // A form body whose `payload` is JSON with an escape before the token.
        let json = format!(r#"{{"m":"x\n{t}"}}"#);
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &json)
            .finish();
        let form_options = DecodeOptions {
            outer: Outer::Form,
            ..DecodeOptions::default()
        };
        let found = findings(form.as_bytes(), form_options);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].1, vec![DecodeStep::Form, DecodeStep::Escape]);
        assert_eq!(found[0].0, t);
        let shallow = DecodeOptions {
            max_depth: 1,
            ..form_options
        };
        assert!(findings(form.as_bytes(), shallow).is_empty());
    }
}
