//! The multi-pattern engine: a compiled [`RuleSet`] (built once, shared by every thread) and a
//! per-thread [`Scanner`] that runs it over whole buffers.
//!
//! Why it is shaped this way (measured on this kind of machine, see docs/BENCHMARKS.md):
//! - Rules with a strong literal prefix (>= 4 case-sensitive bytes) run as **one** combined
//!   `meta::Regex` over the whole buffer; its literal prefilter (Teddy) is what makes it fast. A single
//!   short or common prefix in that set drags the whole set down by 10x, so such rules never join it.
//! - Every other rule runs only in **windows around its keywords**, found by one Aho-Corasick pass;
//!   windows of the same rule are merged so no byte is scanned twice by a rule.
//! - Rules without keywords (imported ones only) get a separate combined pass.
//! - Validators, entropy, context and allowlists run only on candidates.
//!
//! No async, database or HTTP here: the core takes bytes and hands [`Finding`]s to a [`Sink`].

use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use memchr::memmem;
use regex_automata::util::iter::Searcher;
use regex_automata::{Anchored, Input, meta};

use super::finding::{Finding, TokenSecret, Verdict};
use super::rule::{AllowTarget, Pass, Rule, RuleError, check_unique_ids};
use super::validate::{self, Validator};

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

/// Rules that run together as one `meta::Regex`; pattern `i` is rule `rule_of_pattern[i]`.
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
                file: "<combined rule set>".into(),
                message: e.to_string(),
            })?;
        Ok(Some(CombinedPass {
            regex,
            rule_of_pattern: members,
        }))
    }
}

/// The compiled rule set: built once, shared (`&RuleSet` is `Sync`) by every scanning thread.
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    combined: Option<CombinedPass>,
    unanchored: Option<CombinedPass>,
    keywords: Option<AhoCorasick>,
    /// For keyword pattern `i`: the rules to run around its hits.
    rules_of_keyword: Vec<Vec<usize>>,
    /// The longest keyword-rule window, for merging.
    options: ScanOptions,
}

impl RuleSet {
    /// Compiles `rules` into one engine. Fails on duplicate ids.
    pub fn new(rules: Vec<Rule>, options: ScanOptions) -> Result<Self, RuleError> {
        check_unique_ids(&rules)?;
        let by_pass = |pass: Pass| -> Vec<usize> {
            (0..rules.len())
                .filter(|&i| rules[i].pass == pass)
                .collect()
        };
        // Longer literal prefixes first: when two rules match at the same place, the more specific wins.
        let mut strong = by_pass(Pass::Combined);
        strong.sort_by_key(|&i| std::cmp::Reverse(rules[i].prefix_len));
        let combined = CombinedPass::build(&rules, strong)?;
        let unanchored = CombinedPass::build(&rules, by_pass(Pass::Unanchored))?;

        let mut keyword_list: Vec<String> = Vec::new();
        let mut rules_of_keyword: Vec<Vec<usize>> = Vec::new();
        for i in by_pass(Pass::Keyword) {
            for k in &rules[i].keywords {
                let k = k.to_ascii_lowercase();
                let slot = match keyword_list.iter().position(|x| *x == k) {
                    Some(p) => p,
                    None => {
                        keyword_list.push(k);
                        rules_of_keyword.push(Vec::new());
                        keyword_list.len() - 1
                    }
                };
                if !rules_of_keyword[slot].contains(&i) {
                    rules_of_keyword[slot].push(i);
                }
            }
        }
        // The keyword search reports the leftmost-longest keyword at each position; a shorter keyword
        // inside a longer one is implied by it, so the longer one also carries the shorter's rules.
        for a in 0..keyword_list.len() {
            for b in 0..keyword_list.len() {
                if a != b && keyword_list[a].contains(keyword_list[b].as_str()) {
                    let extra: Vec<usize> = rules_of_keyword[b].clone();
                    for r in extra {
                        if !rules_of_keyword[a].contains(&r) {
                            rules_of_keyword[a].push(r);
                        }
                    }
                }
            }
        }
        let keywords = if keyword_list.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&keyword_list)
                    .map_err(|e| RuleError::Parse {
                        file: "<keywords>".into(),
                        message: e.to_string(),
                    })?,
            )
        };
        tracing::debug!(
            combined = combined.as_ref().map_or(0, |c| c.rule_of_pattern.len()),
            keyword_rules = by_pass(Pass::Keyword).len(),
            keywords = keyword_list.len(),
            unanchored = unanchored.as_ref().map_or(0, |c| c.rule_of_pattern.len()),
            "compiled rule set"
        );
        Ok(RuleSet {
            rules,
            combined,
            unanchored,
            keywords,
            rules_of_keyword,
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

    pub fn options(&self) -> ScanOptions {
        self.options
    }

    /// A scanner for one thread.
    pub fn scanner(&self) -> Scanner<'_> {
        Scanner {
            set: self,
            combined_cache: self.combined.as_ref().map(|c| c.regex.create_cache()),
            unanchored_cache: self.unanchored.as_ref().map(|c| c.regex.create_cache()),
            open_windows: vec![None; self.rules.len()],
            candidates: Vec::new(),
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
    set: &'r RuleSet,
    combined_cache: Option<meta::Cache>,
    unanchored_cache: Option<meta::Cache>,
    /// Per keyword rule: the window still being extended by nearby hits.
    open_windows: Vec<Option<Range<usize>>>,
    candidates: Vec<Candidate>,
}

impl<'r> Scanner<'r> {
    /// Scans `haystack` (from `source`, a label such as a path, used by path allowlists) and hands
    /// every finding to `sink`, in order of position.
    pub fn scan(&mut self, source: &str, haystack: &[u8], sink: &mut impl Sink<'r>) {
        self.candidates.clear();
        let set = self.set;
        if let (Some(pass), Some(cache)) = (&set.combined, self.combined_cache.as_mut()) {
            collect_combined(pass, cache, haystack, &mut self.candidates);
        }
        if let (Some(pass), Some(cache)) = (&set.unanchored, self.unanchored_cache.as_mut()) {
            collect_combined(pass, cache, haystack, &mut self.candidates);
        }
        if let Some(ac) = &set.keywords {
            self.collect_keyword_windows(ac, haystack);
        }
        if self.candidates.is_empty() {
            return;
        }
        self.candidates
            .sort_unstable_by_key(|c| (c.start, c.end, c.rule));
        self.candidates.dedup_by_key(|c| (c.start, c.end, c.rule));

        let mut lines = LineCounter::default();
        for c in std::mem::take(&mut self.candidates) {
            if let Some(mut finding) = confirm(set, c, source, haystack) {
                (finding.line, finding.column) = lines.position(haystack, finding.span.start);
                sink.finding(finding);
            }
        }
    }

    /// Runs keyword rules in merged windows around their keyword hits.
    fn collect_keyword_windows(&mut self, ac: &AhoCorasick, haystack: &[u8]) {
        let set = self.set;
        let mut touched: Vec<usize> = Vec::new();
        let mut at = 0;
        // Restart one byte after each hit's start, so overlapping keywords are all seen.
        while let Some(hit) = ac.find(aho_corasick::Input::new(haystack).span(at..haystack.len())) {
            at = hit.start() + 1;
            for &r in &set.rules_of_keyword[hit.pattern().as_usize()] {
                let w = set.rules[r].window;
                let window = hit.start().saturating_sub(w)..(hit.end() + w).min(haystack.len());
                match &mut self.open_windows[r] {
                    Some(open) if window.start <= open.end => open.end = open.end.max(window.end),
                    slot => {
                        if let Some(done) = slot.replace(window) {
                            search_window(&set.rules[r], r, haystack, done, &mut self.candidates);
                        } else {
                            touched.push(r);
                        }
                    }
                }
            }
            if at >= haystack.len() {
                break;
            }
        }
        for r in touched {
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
    haystack: &[u8],
) -> Option<Finding<'r>> {
    let rule = &set.rules[c.rule];
    let mut caps = rule.regex.create_captures();
    rule.regex.search_captures(
        &Input::new(haystack)
            .span(c.start..c.end)
            .anchored(Anchored::Yes),
        &mut caps,
    );
    let span = caps.get_group(rule.secret_group)?.range();
    let secret = std::str::from_utf8(&haystack[span.clone()]).ok()?;
    if secret.is_empty() || is_allowlisted(rule, source, haystack, secret, c.start..c.end) {
        return None;
    }
    if rule
        .min_entropy
        .is_some_and(|min| validate::shannon_entropy(secret.as_bytes()) < min)
    {
        return None;
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
    if verdict.is_invalid() && !set.options.include_invalid {
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

fn is_allowlisted(
    rule: &Rule,
    source: &str,
    haystack: &[u8],
    secret: &str,
    m: Range<usize>,
) -> bool {
    let list = &rule.allowlist;
    if list.is_empty() {
        return false;
    }
    let lower = secret.to_ascii_lowercase();
    if list.stopwords.iter().any(|w| lower.contains(w.as_str())) {
        return true;
    }
    if list.paths.iter().any(|p| p.is_match(source)) {
        return true;
    }
    let target = match list.target {
        AllowTarget::Secret => secret.as_bytes(),
        AllowTarget::Match => &haystack[m],
        AllowTarget::Line => {
            let start = memchr::memrchr(b'\n', &haystack[..m.start]).map_or(0, |i| i + 1);
            let end =
                memchr::memchr(b'\n', &haystack[m.end..]).map_or(haystack.len(), |i| m.end + i);
            &haystack[start..end]
        }
    };
    list.regexes.iter().any(|r| r.is_match(target))
}

/// Turns increasing byte offsets into 1-based (line, column) without rescanning from the start.
#[derive(Default)]
struct LineCounter {
    offset: usize,
    line: usize,
    line_start: usize,
}

impl LineCounter {
    fn position(&mut self, haystack: &[u8], at: usize) -> (usize, usize) {
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
    fn line_counter_is_one_based_and_incremental() {
        let text = b"a\nbc\n\nxyz";
        let mut lc = LineCounter::default();
        assert_eq!(lc.position(text, 0), (1, 1));
        assert_eq!(lc.position(text, 3), (2, 2));
        assert_eq!(lc.position(text, 7), (4, 2));
        assert_eq!(lc.position(text, 2), (2, 1));
    }
}
