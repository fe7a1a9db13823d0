//! The multi-pattern engine: a compiled [`RuleSet`] (built once, shared by every thread) and a
//! per-thread [`Scanner`] that runs it over whole buffers.
//!
//! Why it is shaped this way (measured on this kind of machine, see docs/BENCHMARKS.md):
//! - One pass finds every rule's **keywords** (for a token with a prefix, the prefix itself). The
//!   buffer is ASCII-lower-cased in cache-sized chunks and searched with Teddy (`aho-corasick`'s packed
//!   SIMD searcher) for a *fingerprint* of each keyword: three bytes chosen to be rare in real code
//!   and shared by as many keywords as possible. Teddy's speed depends on how many searchers (passes)
//!   there are and how often its buckets fire on real code, so the fingerprints are packed into a few
//!   searchers of at most 32, lookalikes sharing buckets (`fingerprint.rs`; `spillway rules --stats`
//!   prints the estimate). A combined regex of all rules (tried first) ran at 0.1 GB/s: its lazy DFA
//!   thrashes on 100+ token shapes.
//! - A fingerprint hit is confirmed against the whole keyword, then each rule of that keyword runs
//!   its own regex in a **window** around the hit; overlapping windows of a rule are merged, so no byte
//!   is searched twice by one rule. Rule regexes thus only see a tiny fraction of the input.
//! - Rules without keywords (imported ones only) get a separate combined whole-buffer pass.
//! - A buffer that will be decoded is marked for the decoders (`decode/marks.rs`) chunk by chunk
//!   as the keyword pass lower-cases it, while the chunk is in cache.
//! - Validators, entropy, context and allowlists run only on candidates.
//!
//! No async, database or HTTP here: the core takes bytes and hands [`Finding`]s to a [`Sink`].

use std::ops::Range;
use std::sync::Arc;

use aho_corasick::packed;
use memchr::memmem;
use regex_automata::util::iter::Searcher;
use regex_automata::{Anchored, Input, meta};

use super::allowlist::{self, Allowlist};
use super::finding::{Finding, TokenSecret, Verdict};
use super::fingerprint;
use super::rule::{Dialect, Pass, Rule, RuleError, check_unique_ids};
use super::validate::{self, Validator};

/// Bytes lower-cased and searched at a time: small enough to stay in L2.
const CHUNK: usize = 128 << 10;

/// Receives findings. Any `FnMut(Finding)` is a sink.
pub trait Sink<'r> {
    fn finding(&mut self, finding: Finding<'r>);
}

impl<'r, F: FnMut(Finding<'r>)> Sink<'r> for F {
    fn finding(&mut self, finding: Finding<'r>) {
        self(finding)
    }
}

/// Options that change what counts as a finding.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanOptions {
    /// Also report candidates that failed a validator (marked [`Verdict::Invalid`]).
    pub include_invalid: bool,
}

/// The keyword prefilter's size and estimated cost: each searcher is one SIMD pass over the input,
/// each candidate a verification (see `fingerprint.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefilterStats {
    /// Distinct 3-byte fingerprints searched for.
    pub fingerprints: usize,
    /// Teddy searchers, i.e. passes over each chunk.
    pub searchers: usize,
    /// Estimated Teddy verifications per MB of real code.
    pub estimated_candidates_per_mb: u64,
}

/// Rules that run together as one `meta::Regex` over the whole buffer; pattern `i` is rule
/// `rule_of_pattern[i]`. Only for imported rules without keywords.
#[derive(Debug)]
struct CombinedPass {
    regex: meta::Regex,
    rule_of_pattern: Vec<usize>,
}

impl CombinedPass {
    fn build(rules: &[Rule], members: Vec<usize>) -> Result<Option<Self>, RuleError> {
        if members.is_empty() {
            return Ok(None);
        }
        let patterns: Vec<&str> = members.iter().map(|&i| rules[i].pattern.as_str()).collect();
        let regex = meta::Builder::new()
            .configure(
                meta::Config::new()
                    .which_captures(regex_automata::nfa::thompson::WhichCaptures::Implicit),
            )
            .build_many(&patterns)
            .map_err(|e| RuleError::Parse {
                file: "<unanchored rules>".into(),
                message: e.to_string(),
            })?;
        Ok(Some(CombinedPass {
            regex,
            rule_of_pattern: members,
        }))
    }
}

/// A lower-cased keyword and the rules that run around it.
#[derive(Debug)]
struct Keyword {
    text: Vec<u8>,
    rules: Vec<usize>,
    /// The first (up to) eight bytes of `text`, little-endian, and the mask that keeps them: a
    /// fingerprint hit is checked with one compare instead of a `memcmp` call (those calls were a
    /// fifth of a thousand-rule scan, where a fingerprint stands for many keywords).
    head: u64,
    head_mask: u64,
}

impl Keyword {
    fn new(text: Vec<u8>, rule: usize) -> Self {
        let n = text.len().min(8);
        let mut bytes = [0u8; 8];
        bytes[..n].copy_from_slice(&text[..n]);
        Keyword {
            head: u64::from_le_bytes(bytes),
            head_mask: if n == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * n)) - 1
            },
            text,
            rules: vec![rule],
        }
    }

    /// Whether `hay[at..]` starts with this keyword.
    fn is_at(&self, hay: &[u8], at: usize) -> bool {
        match hay.get(at..at + 8) {
            Some(word) => {
                let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
                word & self.head_mask == self.head
                    && (self.text.len() <= 8 || hay[at + 8..].starts_with(&self.text[8..]))
            }
            None => hay[at..].starts_with(&self.text),
        }
    }
}

/// One Teddy searcher over some of the fingerprints; pattern `i` stands for the keywords
/// `keywords_of[i]`: (keyword index, offset of the fingerprint inside the keyword).
#[derive(Debug)]
struct FingerprintGroup {
    searcher: packed::Searcher,
    keywords_of: Vec<Vec<(usize, usize)>>,
    /// The fingerprints, in the order they were added (which sets Teddy's buckets).
    fingerprints: Vec<[u8; 3]>,
}

/// The compiled rule set: built once, shared (`&RuleSet` is `Sync`) by every scanning thread.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    keywords: Vec<Keyword>,
    groups: Vec<FingerprintGroup>,
    /// What [`fingerprint::layout`] estimated the groups cost (Teddy verifications per MB of code).
    estimated_candidates_per_mb: u64,
    /// Longest keyword: how far chunks overlap so a keyword across a chunk edge is still seen whole.
    max_keyword: usize,
    unanchored: Option<CombinedPass>,
    /// Rules without a regex that report a source by its path alone.
    path_rules: Vec<usize>,
    /// Allowlists every rule has (a Gitleaks file's global allowlist): a source one of them lets go
    /// whole is not scanned at all.
    shared_allowlists: Vec<Arc<Allowlist>>,
    /// Whether Gitleaks' generic-finding filter runs (a Gitleaks `generic` rule is in the set).
    any_generic: bool,
    /// Bytes in the shortest match any rule that reads content can make: decoded text shorter
    /// than this holds no finding, so the decoders leave it out of their views.
    min_match_len: usize,
    options: ScanOptions,
}

impl RuleSet {
    /// Compiles `rules` into one engine. Fails on duplicate ids.
    pub fn new(rules: Vec<Rule>, options: ScanOptions) -> Result<Self, RuleError> {
        check_unique_ids(&rules)?;
        let mut keywords: Vec<Keyword> = Vec::new();
        for (i, rule) in rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.pass == Pass::Keyword)
        {
            for k in &rule.keywords {
                let text = k.to_ascii_lowercase().into_bytes();
                match keywords.iter_mut().find(|kw| kw.text == text) {
                    Some(kw) if !kw.rules.contains(&i) => kw.rules.push(i),
                    Some(_) => {}
                    None => keywords.push(Keyword::new(text, i)),
                }
            }
        }
        let texts: Vec<&[u8]> = keywords.iter().map(|k| k.text.as_slice()).collect();
        let fingerprints = fingerprint::choose(&texts);
        let layout = fingerprint::layout(&fingerprints.iter().map(|(f, _)| *f).collect::<Vec<_>>());
        let groups = layout
            .groups
            .iter()
            .map(|members| {
                let searcher = packed::Config::new()
                    .match_kind(packed::MatchKind::LeftmostFirst)
                    .builder()
                    .extend(members.iter().map(|&i| fingerprints[i].0))
                    .build()
                    .ok_or_else(|| RuleError::Parse {
                        file: "<keywords>".into(),
                        message: "no SIMD keyword searcher on this CPU".into(),
                    })?;
                Ok(FingerprintGroup {
                    searcher,
                    keywords_of: members.iter().map(|&i| fingerprints[i].1.clone()).collect(),
                    fingerprints: members.iter().map(|&i| fingerprints[i].0).collect(),
                })
            })
            .collect::<Result<Vec<_>, RuleError>>()?;
        let max_keyword = keywords.iter().map(|k| k.text.len()).max().unwrap_or(0);
        let unanchored_rules: Vec<usize> = (0..rules.len())
            .filter(|&i| rules[i].pass == Pass::Unanchored)
            .collect();
        let unanchored = CombinedPass::build(&rules, unanchored_rules)?;
        let path_rules = (0..rules.len())
            .filter(|&i| rules[i].pass == Pass::Path)
            .collect();
        let shared_allowlists = match rules.split_first() {
            Some((first, rest)) => first
                .allowlists
                .iter()
                .filter(|a| {
                    rest.iter()
                        .all(|r| r.allowlists.iter().any(|b| Arc::ptr_eq(a, b)))
                })
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let any_generic = rules.iter().any(|r| r.generic);
        let min_match_len = rules
            .iter()
            .filter(|r| r.pass != Pass::Path)
            .map(|r| r.min_match_len)
            .min()
            .unwrap_or(usize::MAX);
        tracing::debug!(
            rules = rules.len(),
            keywords = keywords.len(),
            fingerprints = fingerprints.len(),
            groups = groups.len(),
            estimated_candidates_per_mb = layout.candidates_per_mb,
            unanchored = unanchored.as_ref().map_or(0, |c| c.rule_of_pattern.len()),
            min_match_len,
            "compiled rule set"
        );
        Ok(RuleSet {
            rules,
            keywords,
            groups,
            estimated_candidates_per_mb: layout.candidates_per_mb,
            max_keyword,
            unanchored,
            path_rules,
            shared_allowlists,
            any_generic,
            min_match_len,
            options,
        })
    }

    /// The default rules shipped in `patterns/`.
    pub fn default_rules(options: ScanOptions) -> Result<Self, RuleError> {
        Self::new(super::rule::default_rules()?, options)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// Bytes in the shortest match any content rule can make.
    pub(crate) fn min_match_len(&self) -> usize {
        self.min_match_len
    }

    pub fn options(&self) -> ScanOptions {
        self.options
    }

    /// What the keyword prefilter costs, for `spillway rules --stats`.
    pub fn prefilter_stats(&self) -> PrefilterStats {
        PrefilterStats {
            fingerprints: self.groups.iter().map(|g| g.fingerprints.len()).sum(),
            searchers: self.groups.len(),
            estimated_candidates_per_mb: self.estimated_candidates_per_mb,
        }
    }

    /// Per Teddy searcher, its fingerprints in the order they were added (lower-cased bytes).
    pub fn prefilter_fingerprints(&self) -> Vec<Vec<[u8; 3]>> {
        self.groups.iter().map(|g| g.fingerprints.clone()).collect()
    }

    /// A scanner for one thread.
    pub fn scanner(&self) -> Scanner<'_> {
        Scanner {
            set: self,
            unanchored_cache: self.unanchored.as_ref().map(|c| c.regex.create_cache()),
            // Created on a rule's first `follows` check: most scans (a token in an alert, a log
            // line) never need one, and creating them was a measurable share of intake's CPU.
            follows_caches: (0..self.rules.len()).map(|_| None).collect(),
            open_windows: vec![None; self.rules.len()],
            touched: Vec::new(),
            // Grows to the chunk size on first use: scanning a short token allocates little.
            lower: Vec::new(),
            hits: Vec::new(),
            candidates: Vec::new(),
            commit: None,
            spare_views: Vec::new(),
            marks: Default::default(),
        }
    }
}

/// A candidate before confirmation: which rule, where its regex matched.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    rule: usize,
    start: usize,
    end: usize,
}

/// Per-thread scanning state. Cheap to create; reuse it across buffers.
pub struct Scanner<'r> {
    pub(super) set: &'r RuleSet,
    unanchored_cache: Option<meta::Cache>,
    /// Per rule with `follows`: its regex's cache, once needed.
    follows_caches: Vec<Option<meta::Cache>>,
    /// Per rule: the window still being extended by nearby keyword hits.
    open_windows: Vec<Option<Range<usize>>>,
    touched: Vec<usize>,
    /// The current chunk, lower-cased.
    lower: Vec<u8>,
    /// Keyword hits in the current chunk: (absolute start, keyword index).
    hits: Vec<(usize, usize)>,
    candidates: Vec<Candidate>,
    /// The commit the buffers being scanned belong to (`scan --git`), for commit allowlists.
    commit: Option<String>,
    /// Decoded views' buffers, kept for the next buffer's views (`decode`).
    pub(super) spare_views: Vec<super::decode::ViewBuilder>,
    /// Where the decoders start in the buffer being decoded (`decode`), kept for the next one.
    pub(super) marks: super::decode::Marks,
}

impl<'r> Scanner<'r> {
    /// Sets the commit the next buffers come from (`None` outside git history), for allowlists
    /// that name commits.
    pub fn set_commit(&mut self, commit: Option<&str>) {
        self.commit = commit.map(str::to_owned);
    }

    /// Reports `path` to every path-only rule (Gitleaks' `path` without `regex`) that matches it:
    /// such a rule reports the file itself, whatever it holds, with an empty secret at line 0.
    pub fn scan_path(&mut self, path: &str, sink: &mut impl Sink<'r>) {
        let set = self.set;
        for &r in &set.path_rules {
            let rule = &set.rules[r];
            let matches = rule.path.as_ref().is_some_and(|p| p.is_match(path));
            let allowed = rule
                .allowlists
                .iter()
                .any(|a| a.allows_whole_source(path, self.commit.as_deref()));
            if matches && !allowed {
                sink.finding(Finding::new(
                    rule,
                    0..0,
                    0..0,
                    Verdict::Unvalidated,
                    None,
                    TokenSecret::new(""),
                ));
            }
        }
    }

    /// Scans `haystack` (from `source`, a label such as a path, used by path allowlists) and hands
    /// every finding to `sink`, in order of position.
    pub fn scan(&mut self, source: &str, haystack: &[u8], sink: &mut impl Sink<'r>) {
        self.scan_marking(source, haystack, false, sink);
    }

    /// [`Scanner::scan`], and with `mark`, marking `haystack` for the decoders on the way
    /// ([`super::decode::Marks`]). Whether it was marked: not where `mark` was false, the source
    /// is allowed whole, or the rule set has no keywords.
    pub(super) fn scan_marking(
        &mut self,
        source: &str,
        haystack: &[u8],
        mark: bool,
        sink: &mut impl Sink<'r>,
    ) -> bool {
        self.candidates.clear();
        let set = self.set;
        if set
            .shared_allowlists
            .iter()
            .any(|a| a.allows_whole_source(source, self.commit.as_deref()))
        {
            return false;
        }
        let marked = mark && !set.groups.is_empty();
        if !set.groups.is_empty() {
            self.keyword_pass(haystack, marked);
        }
        if let (Some(pass), Some(cache)) = (&set.unanchored, self.unanchored_cache.as_mut()) {
            collect_combined(pass, cache, haystack, &mut self.candidates);
        }
        if self.candidates.is_empty() {
            return marked;
        }
        self.candidates
            .sort_unstable_by_key(|c| (c.start, c.end, c.rule));
        self.candidates.dedup_by_key(|c| (c.start, c.end, c.rule));

        let mut lines = LineCounter::default();
        let mut found = Vec::new();
        let commit = self.commit.as_deref();
        for c in std::mem::take(&mut self.candidates) {
            if let Some(mut finding) = confirm(set, c, source, commit, haystack) {
                (finding.line, finding.column) = lines.position(haystack, finding.located_at());
                found.push(finding);
            }
        }
        if set.any_generic {
            drop_generic_inside_specific(&mut found);
            if !set.options.include_invalid {
                found.retain(|f| !f.verdict.is_invalid());
            }
        }
        for finding in found {
            sink.finding(finding);
        }
        marked
    }

    /// Finds keyword hits chunk by chunk and runs each hit's rules in merged windows; with `mark`,
    /// also marks each chunk for the decoders ([`Scanner::scan_marking`]) right after reading it.
    fn keyword_pass(&mut self, haystack: &[u8], mark: bool) {
        let set = self.set;
        if mark {
            self.marks.start(haystack.len());
        }
        let mut chunk_start = 0;
        while chunk_start < haystack.len() {
            let owned_end = (chunk_start + CHUNK).min(haystack.len());
            // The lower-cased copy reaches a keyword's length beyond the owned range on both sides,
            // so a keyword starting in the owned range is seen whole whatever its fingerprint offset.
            let copy_start = chunk_start.saturating_sub(set.max_keyword);
            let copy_end = (owned_end + set.max_keyword).min(haystack.len());
            // One fused copy-and-fold pass that writes each byte once (copying then folding in place
            // read the chunk twice; `resize` would zero-fill it first).
            let source = &haystack[copy_start..copy_end];
            self.lower.clear();
            self.lower
                .extend(source.iter().map(|byte| byte.to_ascii_lowercase()));
            if mark {
                // While the chunk is still in cache: marking a buffer out of cache took 1.6
                // times as long (39 against 24 ms on the corpus, in isolation).
                self.marks.mark(haystack, chunk_start..owned_end);
            }
            self.hits.clear();
            let owned = (chunk_start - copy_start)..(owned_end - copy_start);
            for group in &set.groups {
                let mut at = 0;
                // Restart one byte after each hit, so overlapping fingerprints are all seen.
                while let Some(m) = group
                    .searcher
                    .find_in(&self.lower, aho_corasick::Span::from(at..self.lower.len()))
                {
                    at = m.start() + 1;
                    for &(k, offset) in &group.keywords_of[m.pattern().as_usize()] {
                        let Some(start) = m.start().checked_sub(offset) else {
                            continue;
                        };
                        if owned.contains(&start) && set.keywords[k].is_at(&self.lower, start) {
                            self.hits.push((copy_start + start, k));
                        }
                    }
                    if m.start() >= owned.end {
                        break;
                    }
                }
            }
            self.hits.sort_unstable();
            for i in 0..self.hits.len() {
                let (at, k) = self.hits[i];
                let keyword = &set.keywords[k];
                let after = at + keyword.text.len();
                for &r in &keyword.rules {
                    let rule = &set.rules[r];
                    if let Some(follows) = &rule.follows {
                        let cache =
                            self.follows_caches[r].get_or_insert_with(|| follows.create_cache());
                        let input = Input::new(haystack)
                            .span(after..(after + rule.window).min(haystack.len()))
                            .anchored(Anchored::Yes)
                            .earliest(true);
                        if follows.search_half_with(cache, &input).is_none() {
                            continue;
                        }
                    }
                    let window = at.saturating_sub(rule.window_before)
                        ..(after + rule.window).min(haystack.len());
                    match &mut self.open_windows[r] {
                        Some(open) if window.start <= open.end => {
                            open.end = open.end.max(window.end)
                        }
                        slot => {
                            if let Some(done) = slot.replace(window) {
                                search_window(
                                    &set.rules[r],
                                    r,
                                    haystack,
                                    done,
                                    &mut self.candidates,
                                );
                            } else {
                                self.touched.push(r);
                            }
                        }
                    }
                }
            }
            chunk_start = owned_end;
        }
        if mark {
            self.marks.finish();
        }
        for r in self.touched.drain(..) {
            if let Some(done) = self.open_windows[r].take() {
                search_window(&set.rules[r], r, haystack, done, &mut self.candidates);
            }
        }
    }
}

fn collect_combined(
    pass: &CombinedPass,
    cache: &mut meta::Cache,
    haystack: &[u8],
    out: &mut Vec<Candidate>,
) {
    let mut it = Searcher::new(Input::new(haystack));
    while let Some(m) = it.advance(|input| Ok(pass.regex.search_with(cache, input))) {
        out.push(Candidate {
            rule: pass.rule_of_pattern[m.pattern().as_usize()],
            start: m.start(),
            end: m.end(),
        });
    }
}

fn search_window(
    rule: &Rule,
    index: usize,
    haystack: &[u8],
    window: Range<usize>,
    out: &mut Vec<Candidate>,
) {
    for m in rule.regex.find_iter(Input::new(haystack).span(window)) {
        if !m.is_empty() {
            out.push(Candidate {
                rule: index,
                start: m.start(),
                end: m.end(),
            });
        }
    }
}

/// Turns a candidate into a finding: captures the secret, then allowlist, entropy, context and
/// validators. `None` when the candidate is not a finding under the set's options.
fn confirm<'r>(
    set: &'r RuleSet,
    c: Candidate,
    source: &str,
    commit: Option<&str>,
    haystack: &[u8],
) -> Option<Finding<'r>> {
    let rule = &set.rules[c.rule];
    if rule.path.as_ref().is_some_and(|p| !p.is_match(source)) {
        return None;
    }
    let gitleaks = rule.dialect == Dialect::Gitleaks;
    let line = if gitleaks || !rule.allowlists.is_empty() {
        line_around(haystack, c.start..c.end)
    } else {
        &[]
    };
    if gitleaks && memmem::find(line, b"gitleaks:allow").is_some() {
        return None;
    }
    let mut caps = rule.regex.create_captures();
    rule.regex.search_captures(
        &Input::new(haystack)
            .span(c.start..c.end)
            .anchored(Anchored::Yes),
        &mut caps,
    );
    let mut span = if rule.secret_group == 0 {
        // Gitleaks without `secretGroup`: the first group that matched something.
        (1..caps.group_len())
            .filter_map(|g| caps.get_group(g))
            .find(|s| !s.is_empty())?
            .range()
    } else {
        caps.get_group(rule.secret_group)?.range()
    };
    if gitleaks {
        // Gitleaks trims newlines off the match.
        while span.start < span.end && haystack[span.start] == b'\n' {
            span.start += 1;
        }
        while span.end > span.start && haystack[span.end - 1] == b'\n' {
            span.end -= 1;
        }
    }
    let secret = std::str::from_utf8(&haystack[span.clone()]).ok()?;
    if secret.is_empty() {
        return None;
    }
    if !rule.allowlists.is_empty() {
        let candidate = allowlist::Candidate {
            source,
            commit,
            secret,
            matched: &haystack[c.start..c.end],
            line,
        };
        if rule.allowlists.iter().any(|a| a.allows(&candidate)) {
            return None;
        }
    }
    if let Some(min) = rule.min_entropy {
        let entropy = validate::shannon_entropy(secret.as_bytes());
        // Gitleaks wants the entropy above its threshold; Spillway's rules at least at it.
        if entropy < min || (gitleaks && entropy <= min) {
            return None;
        }
    }
    if let Some(ctx) = &rule.context {
        let near =
            &haystack[c.start.saturating_sub(ctx.within)..(c.end + ctx.within).min(haystack.len())];
        let near = near.to_ascii_lowercase();
        if !ctx
            .keywords
            .iter()
            .any(|k| memmem::find(&near, k.as_bytes()).is_some())
        {
            return None;
        }
    }
    let mut verdict = if rule.validators.is_empty() {
        Verdict::Unvalidated
    } else {
        Verdict::Valid
    };
    let mut jwt = None;
    for v in &rule.validators {
        let outcome = match v {
            Validator::Crc32Base62 => validate::check_crc32_base62(secret.as_bytes()),
            Validator::Crc32Base36 => validate::check_crc32_base36(secret.as_bytes()),
            Validator::Jwt => {
                validate::check_jwt(secret.as_bytes(), &rule.jwt).map(|facts| jwt = Some(facts))
            }
        };
        if let Err(why) = outcome {
            verdict = Verdict::Invalid(why);
            break;
        }
    }
    // With generic rules in the set an invalid finding is kept until they have been judged: a
    // token its own rule recognised and found fake must not come back as a generic secret.
    if verdict.is_invalid() && !set.options.include_invalid && !set.any_generic {
        return None;
    }
    Some(Finding::new(
        rule,
        span,
        c.start..c.end,
        verdict,
        jwt,
        TokenSecret::new(secret),
    ))
}

/// The line(s) holding `m`, without their line ends.
fn line_around(haystack: &[u8], m: Range<usize>) -> &[u8] {
    let start = memchr::memrchr(b'\n', &haystack[..m.start]).map_or(0, |i| i + 1);
    let end = memchr::memchr(b'\n', &haystack[m.end..]).map_or(haystack.len(), |i| m.end + i);
    &haystack[start..end]
}

/// Gitleaks' filter, for every generic rule: a generic rule's finding is dropped when a specific
/// rule's finding on the same line holds its secret (the specific rule names the token better; an
/// invalid one says it is no token at all).
/// Among Spillway's own generic rules, one finding of a secret on a line is enough: a later generic
/// rule reporting the same secret there is dropped too (Gitleaks reports both, so its rules keep
/// doing so).
fn drop_generic_inside_specific(found: &mut Vec<Finding<'_>>) {
    let dropped: Vec<bool> = found
        .iter()
        .enumerate()
        .map(|(i, f)| {
            f.rule.generic
                && found.iter().enumerate().any(|(j, g)| {
                    g.line == f.line
                        && g.rule.id != f.rule.id
                        && if g.rule.generic {
                            j < i
                                && f.rule.dialect == Dialect::Spillway
                                && g.rule.dialect == Dialect::Spillway
                                && g.secret().expose() == f.secret().expose()
                        } else {
                            g.secret().expose().contains(f.secret().expose())
                        }
                })
        })
        .collect();
    let mut i = 0;
    found.retain(|_| {
        i += 1;
        !dropped[i - 1]
    });
}

/// Turns increasing byte offsets into 1-based (line, column) without rescanning from the start.
#[derive(Default)]
pub(super) struct LineCounter {
    offset: usize,
    line: usize,
    line_start: usize,
}

impl LineCounter {
    pub(super) fn position(&mut self, haystack: &[u8], at: usize) -> (usize, usize) {
        if at < self.offset {
            *self = LineCounter::default();
        }
        for nl in memchr::memchr_iter(b'\n', &haystack[self.offset..at]) {
            self.line += 1;
            self.line_start = self.offset + nl + 1;
        }
        self.offset = at;
        (self.line + 1, at - self.line_start + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_recognised_by_their_head_and_tail() {
        let hay = b"xx ghp_abc -----begin rsa private key----- sk";
        for (text, at, expected) in [
            (&b"ghp_"[..], 3, true),
            (b"ghp_", 4, false),
            (b"-----begin", 11, true),
            (b"-----begin rsa", 11, true),
            (b"-----begin dsa", 11, false),
            (b"sk", hay.len() - 2, true),
            (b"sk-", hay.len() - 2, false),
            (b"key----- sk", hay.len() - 11, true),
        ] {
            let keyword = Keyword::new(text.to_vec(), 0);
            assert_eq!(
                keyword.is_at(hay, at),
                expected,
                "{:?} at {at}",
                String::from_utf8_lossy(text)
            );
            assert_eq!(keyword.is_at(hay, at), hay[at..].starts_with(text));
        }
    }

    /// The shortest match is over the rules that read content: a path-only rule matches no text.
    #[test]
    fn the_shortest_match_leaves_path_only_rules_out() {
        let config = r#"
[[rules]]
id = "key-file"
path = '''\.p12$'''

[[rules]]
id = "short-secret"
regex = '''secret_([a-z]{10})'''
keywords = ["secret_"]

[[rules]]
id = "long-secret"
regex = '''longsecret_([a-z]{40})'''
keywords = ["longsecret_"]
"#;
        let rules = crate::scanner::gitleaks::parse_gitleaks_file("t.toml", config).unwrap();
        assert_eq!(rules[0].pass, Pass::Path);
        let set = RuleSet::new(rules, ScanOptions::default()).unwrap();
        assert_eq!(set.min_match_len(), "secret_".len() + 10);
    }

    #[test]
    fn line_counter_is_one_based_and_incremental() {
        let text = b"a\nbc\n\nxyz";
        let mut lc = LineCounter::default();
        assert_eq!(lc.position(text, 0), (1, 1));
        assert_eq!(lc.position(text, 3), (2, 2));
        assert_eq!(lc.position(text, 7), (4, 2));
        assert_eq!(lc.position(text, 2), (2, 1));
    }
}
