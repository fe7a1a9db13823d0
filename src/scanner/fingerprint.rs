//! What the keyword prefilter searches for, and how it is laid out for Teddy.
//!
//! The engine folds its input to lower case and searches it for a 3-byte *fingerprint* of every
//! keyword with Teddy (`aho-corasick`'s packed SIMD searcher). Measured on real code
//! (docs/BENCHMARKS.md), two things set the cost of that search:
//! - **Passes.** Each Teddy searcher is one pass over the input, about 50 µs per MB here. One searcher
//!   holds at most [`MAX_GROUP`] fingerprints: beyond that, aho-corasick switches to "fat" Teddy,
//!   which reads half as many bytes per step.
//! - **Bucket candidates.** Teddy sorts its fingerprints into 8 buckets and, for each position,
//!   tests each byte's two nibbles against per-bucket masks. A bucket holding `abc` and `xyz` also
//!   fires on every mix of their nibbles (`ayc`, `xbz`, ...), and each firing costs a verification
//!   (about 22 ns). With 14 fingerprints per searcher dealt into buckets in sorted order, real code
//!   made 6,500 candidates per MB for 930 real fingerprint hits; packed by [`layout`], the same
//!   fingerprints in two searchers make about 1,500.
//!
//! Both choices are estimated from [`TRIGRAM_PER_MB`], how often each lower-cased 3-byte sequence
//! occurs in real source code.
//!
//! [`layout`] relies on how aho-corasick 1.1 assigns buckets (pattern `i` goes to bucket
//! `7 - i % 8` unless an earlier pattern has the same low nibbles). That is an implementation
//! detail: were it to change, the search would stay exact and only get slower, which the engine
//! benchmark shows.

use std::collections::HashMap;
use std::sync::LazyLock;

use memchr::memmem;

use super::rule::MIN_KEYWORD_LEN;
use super::trigram_freq::{MIN_LISTED_PER_MB, TRIGRAM_PER_MB};

/// A lower-cased 3-byte sequence.
pub(super) type Trigram = [u8; 3];

/// A fingerprint and the keywords it stands for: (keyword index, offset of the fingerprint in it).
pub(super) type Fingerprint = (Trigram, Vec<(usize, usize)>);

/// Most fingerprints per Teddy searcher: above 32 patterns aho-corasick picks fat Teddy on AVX2.
pub(super) const MAX_GROUP: usize = 32;
/// Above this many fingerprints the layout search is cut short (see [`pack`]).
const LARGE_LAYOUT: usize = 4 * MAX_GROUP;
/// Buckets of slim Teddy (and of every Teddy without AVX2).
const BUCKETS: usize = 8;
/// One more pass over the input costs about as much as this many bucket candidates per MB
/// (measured: ~50 µs per MB per pass, ~22 ns per candidate).
const PASS_COST_PER_MB: u64 = 2300;
/// Every fingerprint costs the SIMD pass about as much as this many extra hits per MB; it keeps the
/// choice from spending a fingerprint per keyword when a shared one is nearly as rare.
const FINGERPRINT_COST_PER_MB: u64 = 40;
/// Rate given to a sequence missing from the table: rarer than any listed one.
const UNLISTED_PER_MB: u32 = MIN_LISTED_PER_MB / 2;

/// `PREFIX_START[a << 8 | b]..PREFIX_START[(a << 8 | b) + 1]` are the table rows starting `a b`.
static PREFIX_START: LazyLock<Vec<u32>> = LazyLock::new(|| {
    let mut start = vec![0u32; (1 << 16) + 1];
    for (t, _) in TRIGRAM_PER_MB {
        start[(usize::from(t[0]) << 8 | usize::from(t[1])) + 1] += 1;
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    start
});

/// The table rows whose sequence starts with `a b`.
fn rows_starting(a: u8, b: u8) -> &'static [(Trigram, u32)] {
    let i = usize::from(a) << 8 | usize::from(b);
    &TRIGRAM_PER_MB[PREFIX_START[i] as usize..PREFIX_START[i + 1] as usize]
}

/// Estimated occurrences per MB of real code of a lower-cased 3-byte sequence.
pub(super) fn frequency(t: Trigram) -> u32 {
    rows_starting(t[0], t[1])
        .iter()
        .find(|(row, _)| row[2] == t[2])
        .map_or(UNLISTED_PER_MB, |&(_, f)| f)
}

/// Picks the 3-byte sequences the prefilter searches for: every keyword (lower-cased) contains at
/// least one, and the choice (greedy weighted set cover) keeps both their number and their frequency
/// in real code low, e.g. `_v1` for `dop_v1_`, `doo_v1_` and `dor_v1_`, not the common `dop`, `doo`,
/// `dor`. Returns (fingerprint, [(keyword, offset)]) sorted by fingerprint.
pub(super) fn choose(keywords: &[&[u8]]) -> Vec<Fingerprint> {
    // Which keywords hold each sequence, found once (a rescan per round was quadratic in keywords).
    let mut holders: HashMap<Trigram, Vec<usize>> = HashMap::new();
    for (k, keyword) in keywords.iter().enumerate() {
        for w in keyword.windows(MIN_KEYWORD_LEN) {
            let list = holders
                .entry(w.try_into().expect("windows of three"))
                .or_default();
            if list.last() != Some(&k) {
                list.push(k);
            }
        }
    }
    let mut covered = vec![false; keywords.len()];
    let mut uncovered: Vec<usize> = (0..keywords.len()).collect();
    let mut chosen: Vec<Fingerprint> = Vec::new();
    while !uncovered.is_empty() {
        let mut best: Option<(Trigram, u64, usize)> = None;
        for &k in &uncovered {
            for w in keywords[k].windows(MIN_KEYWORD_LEN) {
                let t: Trigram = w.try_into().expect("windows of three");
                let covers = holders[&t].iter().filter(|&&u| !covered[u]).count();
                let cost = u64::from(frequency(t)) + FINGERPRINT_COST_PER_MB;
                // Compare cost/covers without division: a/b < c/d <=> a*d < c*b.
                let better =
                    best.is_none_or(|(_, bc, bn)| cost * (bn as u64) < bc * (covers as u64));
                if better {
                    best = Some((t, cost, covers));
                }
            }
        }
        let (t, _, _) = best.expect("every keyword has at least three bytes");
        let mut members = Vec::new();
        uncovered.retain(|&u| match memmem::find(keywords[u], &t) {
            Some(offset) => {
                members.push((u, offset));
                covered[u] = true;
                false
            }
            None => true,
        });
        chosen.push((t, members));
    }
    chosen.sort();
    chosen
}

/// A Teddy bucket's masks: per position, the low and the high nibbles its members have there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Masks {
    lo: [u16; 3],
    hi: [u16; 3],
}

impl Masks {
    fn of(members: impl Iterator<Item = Trigram>) -> Masks {
        let mut m = Masks {
            lo: [0; 3],
            hi: [0; 3],
        };
        for t in members {
            for (j, byte) in t.into_iter().enumerate() {
                m.lo[j] |= 1 << (byte & 15);
                m.hi[j] |= 1 << (byte >> 4);
            }
        }
        m
    }

    /// The bytes position `j` admits: every high nibble with every low nibble.
    fn admitted(&self, j: usize) -> impl Iterator<Item = u8> + Clone {
        let (lo, hi) = (self.lo[j], self.hi[j]);
        bits(hi).flat_map(move |h| bits(lo).map(move |l| h << 4 | l))
    }

    /// Estimated Teddy verifications per MB: every sequence whose bytes all pass the masks, i.e.
    /// every mix of the members' nibbles, position by position.
    fn cost(&self) -> u64 {
        let admitted_third =
            |b: u8| self.lo[2] >> (b & 15) & 1 == 1 && self.hi[2] >> (b >> 4) & 1 == 1;
        let combinations = (0..3)
            .map(|j| u64::from(self.lo[j].count_ones() * self.hi[j].count_ones()))
            .product::<u64>();
        let (mut listed, mut rate) = (0u64, 0u64);
        let second = self.admitted(1);
        for a in self.admitted(0) {
            for b in second.clone() {
                for &(t, f) in rows_starting(a, b) {
                    if admitted_third(t[2]) {
                        listed += 1;
                        rate += u64::from(f);
                    }
                }
            }
        }
        rate + (combinations - listed) * u64::from(UNLISTED_PER_MB)
    }
}

/// The set bits of `mask`, as nibbles.
fn bits(mut mask: u16) -> impl Iterator<Item = u8> + Clone {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let bit = mask.trailing_zeros() as u8;
            mask &= mask - 1;
            bit
        })
    })
}

/// Estimated Teddy verifications per MB for one bucket ([`Masks::cost`]).
fn bucket_cost(members: impl Iterator<Item = Trigram>) -> u64 {
    Masks::of(members).cost()
}

/// How the fingerprints are split over Teddy searchers, and what that is estimated to cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    /// Per searcher, fingerprint indices in the order to add them.
    pub groups: Vec<Vec<usize>>,
    /// Estimated bucket candidates per MB of real code, all searchers together.
    pub candidates_per_mb: u64,
}

/// Splits `fingerprints` into Teddy searchers and orders each so that fingerprints sharing a bucket
/// share nibbles: `ghp`, `ghr`, `ghs` and `ghu` together fire on nothing else, while `ghp` with
/// `_v1` would also fire on `_h1`, `gvp`, ... Starts from the fewest searchers that fit and adds one
/// (at most two) while the saving could exceed [`PASS_COST_PER_MB`]; packs each by local search
/// (swaps between buckets while any lowers the estimate) and keeps the cheapest, counting
/// [`PASS_COST_PER_MB`] per searcher.
pub(super) fn layout(fingerprints: &[Trigram]) -> Layout {
    let n = fingerprints.len();
    if n == 0 {
        return Layout {
            groups: Vec::new(),
            candidates_per_mb: 0,
        };
    }
    let total = |l: &Layout| l.candidates_per_mb + PASS_COST_PER_MB * l.groups.len() as u64;
    // Each fingerprint's own frequency: a lower bound of any bucket holding it.
    let own: Vec<u64> = fingerprints
        .iter()
        .map(|&t| u64::from(frequency(t)))
        .collect();
    // No layout fires less than the fingerprints themselves occur.
    let floor: u64 = own.iter().sum();
    let fewest = n.div_ceil(MAX_GROUP);
    let most = n.div_ceil(BUCKETS).clamp(fewest, fewest + 2);
    let mut best = pack(fingerprints, &own, fewest);
    for groups in fewest + 1..=most {
        // Another searcher can only pay off if it saves more candidates than a pass costs.
        if best.candidates_per_mb.saturating_sub(floor) <= PASS_COST_PER_MB {
            break;
        }
        let next = pack(fingerprints, &own, groups);
        if total(&next) < total(&best) {
            best = next;
        }
    }
    best
}

/// Packs `fingerprints` (own frequencies `own`) into `groups` searchers of balanced size.
fn pack(fingerprints: &[Trigram], own: &[u64], groups: usize) -> Layout {
    let n = fingerprints.len();
    // The buckets every searcher will have: searcher `g` of `size` patterns gives its `i`-th pattern
    // bucket slot `i % 8`, so slot `k` holds ceil((size - k) / 8) of them.
    let mut capacities = Vec::new();
    for g in 0..groups {
        let size = n / groups + usize::from(g < n % groups);
        for k in 0..BUCKETS.min(size) {
            capacities.push((g, (size - k).div_ceil(BUCKETS)));
        }
    }
    // The local search asks for the same buckets again and again: each start keeps a memo.
    let memoised = || {
        let memo = std::cell::RefCell::new(std::collections::HashMap::new());
        move |members: &[usize]| {
            let masks = Masks::of(members.iter().map(|&i| fingerprints[i]));
            *memo
                .borrow_mut()
                .entry(masks)
                .or_insert_with(|| masks.cost())
        }
    };
    // Two starts, each improved by local search; the cheaper wins. Sorted order (neighbours in byte
    // order tend to share nibbles) and a greedy fill of the shared buckets with the members that
    // add least to them.
    let mut sorted: Vec<usize> = (0..n).collect();
    sorted.sort_by_key(|&i| fingerprints[i]);
    let mut rest = sorted.into_iter();
    let by_order: Vec<Vec<usize>> = capacities
        .iter()
        .map(|&(_, cap)| rest.by_ref().take(cap).collect())
        .collect();
    // Beyond a few searchers the greedy start and repeated sweeps cost more at start-up (a second
    // for Gitleaks' 267 fingerprints) than they can save in a scan: sorted order, one sweep.
    let large = n > LARGE_LAYOUT;
    let sweeps = if large { 1 } else { usize::MAX };
    let from_order = || improve(by_order, own, &memoised(), sweeps);
    let (buckets, _) = if large {
        from_order()
    } else {
        // The two starts are independent: at start-up the other core is otherwise idle.
        let from_greedy = || {
            let cost_of = memoised();
            improve(
                greedy_fill(own, &capacities, &cost_of),
                own,
                &cost_of,
                sweeps,
            )
        };
        let (a, b) = std::thread::scope(|s| {
            let b = s.spawn(from_greedy);
            (
                from_order(),
                b.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            )
        });
        if b.1 < a.1 { b } else { a }
    };
    // Emit each searcher's patterns so that the `i`-th lands in slot `i % 8`.
    let mut out = vec![Vec::new(); groups];
    let mut first = 0;
    for (g, group) in out.iter_mut().enumerate() {
        let slots = capacities.iter().filter(|&&(owner, _)| owner == g).count();
        let mine = &buckets[first..first + slots];
        for round in 0.. {
            let before = group.len();
            group.extend(mine.iter().filter_map(|b| b.get(round)));
            if group.len() == before {
                break;
            }
        }
        first += slots;
    }
    let candidates_per_mb = out
        .iter()
        .map(|g| teddy_buckets(&g.iter().map(|&i| fingerprints[i]).collect::<Vec<_>>()))
        .flat_map(|buckets| buckets.into_iter().map(|b| bucket_cost(b.into_iter())))
        .sum();
    Layout {
        groups: out,
        candidates_per_mb,
    }
}

/// A starting packing: shared buckets (largest first) are filled one member at a time with the free
/// fingerprint that raises the bucket's estimate least beyond its own frequency; the rest take the
/// single buckets.
fn greedy_fill(
    own: &[u64],
    capacities: &[(usize, usize)],
    cost_of: &impl Fn(&[usize]) -> u64,
) -> Vec<Vec<usize>> {
    let n = own.len();
    let mut free: Vec<usize> = (0..n).collect();
    let mut buckets = vec![Vec::new(); capacities.len()];
    let mut shared: Vec<usize> = (0..capacities.len())
        .filter(|&b| capacities[b].1 > 1)
        .collect();
    shared.sort_by_key(|&b| std::cmp::Reverse(capacities[b].1));
    for b in shared {
        let bucket: &mut Vec<usize> = &mut buckets[b];
        if let Some((i, j)) = (0..free.len())
            .flat_map(|i| (i + 1..free.len()).map(move |j| (i, j)))
            .min_by_key(|&(i, j)| {
                let (x, y) = (free[i], free[j]);
                // What sharing a bucket adds to the two fingerprints' own frequencies.
                cost_of(&[x, y]).saturating_sub(own[x] + own[y])
            })
        {
            bucket.extend([free[i], free[j]]);
            free.remove(j);
            free.remove(i);
        }
        while bucket.len() < capacities[b].1 && !free.is_empty() {
            let base = cost_of(bucket);
            let at = (0..free.len())
                .min_by_key(|&i| {
                    bucket.push(free[i]);
                    let extra = cost_of(bucket).saturating_sub(base + own[free[i]]);
                    bucket.pop();
                    extra
                })
                .expect("free is not empty");
            bucket.push(free.remove(at));
        }
    }
    let mut rest = free.into_iter();
    for (b, bucket) in buckets.iter_mut().enumerate() {
        if bucket.is_empty() {
            bucket.extend(rest.by_ref().take(capacities[b].1));
        }
    }
    buckets
}

/// First-improvement local search: swaps members between buckets while any swap lowers the
/// estimate. Each sweep is O(n^2) bucket estimates; few sweeps happen. `own[i]` is fingerprint `i`'s
/// own frequency, a lower bound of any bucket holding it, used to skip hopeless swaps. Returns the
/// packing and its estimated cost.
fn improve(
    mut buckets: Vec<Vec<usize>>,
    own: &[u64],
    cost_of: &impl Fn(&[usize]) -> u64,
    max_sweeps: usize,
) -> (Vec<Vec<usize>>, u64) {
    let mut costs: Vec<u64> = buckets.iter().map(|b| cost_of(b)).collect();
    let mut improved = true;
    let mut sweeps = 0;
    while improved && sweeps < max_sweeps {
        improved = false;
        sweeps += 1;
        for a in 0..buckets.len() {
            for b in a + 1..buckets.len() {
                for i in 0..buckets[a].len() {
                    for j in 0..buckets[b].len() {
                        let (x, y) = (buckets[a][i], buckets[b][j]);
                        buckets[a][i] = y;
                        buckets[b][j] = x;
                        let before = costs[a] + costs[b];
                        let ca = cost_of(&buckets[a]);
                        let at_least_b: u64 = buckets[b].iter().map(|&m| own[m]).sum();
                        let cb = (ca + at_least_b < before).then(|| cost_of(&buckets[b]));
                        if let Some(cb) = cb.filter(|cb| ca + cb < before) {
                            (costs[a], costs[b]) = (ca, cb);
                            improved = true;
                        } else {
                            buckets[a][i] = x;
                            buckets[b][j] = y;
                        }
                    }
                }
            }
        }
    }
    let total = costs.iter().sum();
    (buckets, total)
}

/// The buckets slim Teddy makes of `patterns` added in this order (aho-corasick 1.1): a pattern
/// joins an earlier one with the same low nibbles, else goes to bucket `7 - i % 8`.
fn teddy_buckets(patterns: &[Trigram]) -> Vec<Vec<Trigram>> {
    let mut buckets = vec![Vec::new(); BUCKETS];
    let mut by_low_nibbles: Vec<(Trigram, usize)> = Vec::new();
    for (i, &t) in patterns.iter().enumerate() {
        let low = t.map(|b| b & 15);
        let bucket = match by_low_nibbles.iter().find(|(l, _)| *l == low) {
            Some(&(_, bucket)) => bucket,
            None => {
                let bucket = BUCKETS - 1 - i % BUCKETS;
                by_low_nibbles.push((low, bucket));
                bucket
            }
        };
        buckets[bucket].push(t);
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tri(s: &str) -> Trigram {
        s.as_bytes().try_into().unwrap()
    }

    #[test]
    fn table_is_sorted_and_lookups_find_listed_rows() {
        assert!(TRIGRAM_PER_MB.windows(2).all(|w| w[0].0 < w[1].0));
        // Three spaces are among the commonest sequences in code; a run of `~` is not listed.
        assert!(frequency(*b"   ") > 1000);
        assert_eq!(frequency(*b"~~~"), UNLISTED_PER_MB);
        for &(t, f) in TRIGRAM_PER_MB.iter().step_by(97) {
            assert_eq!(frequency(t), f);
        }
    }

    #[test]
    fn a_lone_fingerprint_costs_its_own_frequency() {
        assert_eq!(
            bucket_cost([*b"ing"].into_iter()),
            u64::from(frequency(*b"ing"))
        );
        // `ghp` and `ghs` differ only in the low nibble of their last byte: the bucket's masks
        // admit nothing else.
        let pair = bucket_cost([tri("ghp"), tri("ghs")].into_iter());
        assert_eq!(pair, u64::from(frequency(*b"ghp") + frequency(*b"ghs")));
        // `ing` with `sk-` admits `snk`, `ik-`, ... and so costs more than the two alone.
        let mixed = bucket_cost([tri("ing"), tri("sk-")].into_iter());
        assert!(mixed > u64::from(frequency(*b"ing") + frequency(*b"sk-")));
    }

    #[test]
    fn layout_places_every_fingerprint_once_and_beats_sorted_order() {
        let names = [
            "://", "ecr", "tad", "xox", "sk-", "dap", "liv", "shp", "at-", "_ap", "pi-", "_v1",
            "eyj", "psc", "dd.", "isc", "at_", "goc", "-us", "aki", "sia", "dd-", "ghp", "gho",
            "ghu", "ghs", "ghr", "glr", "aiz", "hf_", "pi_", "cmv", "npm", "t3b", "--b", "sg.",
            "xap", "hoo", "spi", "whs", "twi",
        ];
        let fps: Vec<Trigram> = names.iter().map(|s| tri(s)).collect();
        let layout = layout(&fps);
        let mut seen: Vec<usize> = layout.groups.concat();
        seen.sort();
        assert_eq!(seen, (0..fps.len()).collect::<Vec<_>>());
        assert!(layout.groups.iter().all(|g| g.len() <= MAX_GROUP));
        // Cheaper than dealing the sorted fingerprints into buckets unexamined, as the engine did.
        let mut sorted = fps.clone();
        sorted.sort();
        let naive: u64 = sorted
            .chunks(14)
            .flat_map(teddy_buckets)
            .map(|b| bucket_cost(b.into_iter()))
            .sum();
        assert!(
            layout.candidates_per_mb * 2 < naive,
            "{} vs {naive}",
            layout.candidates_per_mb
        );
    }

    #[test]
    fn lookalikes_share_the_one_bucket_that_must_hold_two() {
        // Nine fingerprints, one searcher: one bucket holds two. `ghp` and `ghs` differ in one low
        // nibble, so together they fire on nothing else; sorted order would pair `://` with `aiz`.
        let names = [
            "://", "aiz", "eyj", "ghp", "ghs", "npm", "sk-", "t3b", "xox",
        ];
        let fps: Vec<Trigram> = names.iter().map(|s| tri(s)).collect();
        let layout = layout(&fps);
        assert_eq!(layout.groups.len(), 1);
        let order = &layout.groups[0];
        let slot = |name: &str| {
            let i = names.iter().position(|n| *n == name).unwrap();
            order.iter().position(|&x| x == i).unwrap() % BUCKETS
        };
        assert_eq!(slot("ghp"), slot("ghs"), "{order:?}");
        let own: u64 = fps.iter().map(|&t| u64::from(frequency(t))).sum();
        assert_eq!(layout.candidates_per_mb, own);
    }

    #[test]
    fn few_fingerprints_make_one_searcher() {
        let fps = [tri("ghp"), tri("xox"), tri("sk-")];
        let layout = layout(&fps);
        assert_eq!(layout.groups.len(), 1);
        assert_eq!(layout.groups[0].len(), 3);
    }
}
