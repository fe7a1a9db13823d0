//! Where the text decoders start, found in one pass over a buffer 64 bytes at a time: the runs of
//! at least [`MIN_RUN`] base64 alphabet characters, the backslashes (escapes) and the percent signs
//! (`%XX`). One pass instead of three (two `memchr` walks and the run finder) reads each block once,
//! and on source text nothing but three masks and a few shifts is computed for almost every block.
//! The engine marks a buffer chunk by chunk as its keyword pass reads it ([`Marks::start`],
//! [`Marks::mark`], [`Marks::finish`]), so the bytes are read while they are in cache.
//!
//! Pure: no I/O, async, database or HTTP; imports nothing but `std`.

use std::ops::Range;

/// Shortest run of alphabet characters found: 32 characters are 24 bytes, as short as a token with
/// its key name gets (`KEY=` and a 20-character token); shorter runs are mostly identifiers, paths
/// and hex.
pub const MIN_RUN: usize = 32;

/// Whether `b` is in either base64 alphabet (standard `+/`, URL-safe `-_`).
pub const fn in_alphabet(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// What a buffer's decoders start from. Reused from buffer to buffer ([`Marks::find`] clears it).
#[derive(Debug, Default)]
pub struct Marks {
    runs: Vec<(usize, usize)>,
    /// The blocks that hold a backslash or a `%`; the first `blocks` count. One list for both: a
    /// block's entry is written whatever it holds, and only a block with a mark keeps it, so there
    /// is no branch on source text, where marks are sparse and unpredictable.
    specials: Vec<Special>,
    blocks: usize,
    /// Each block's alphabet mask, after one zero (the mask "before" the first block) and before
    /// zeros up to a whole group of [`GROUP`].
    alphabet: Vec<u64>,
    /// The length of the buffer being marked.
    len: usize,
}

/// A block's backslashes and percent signs: bit k is about byte `pos + k`.
#[derive(Debug, Clone, Copy, Default)]
struct Special {
    pos: usize,
    backslash: u64,
    percent: u64,
}

/// Blocks whose runs are looked for at once: their deep bits are computed side by side (the
/// compiler makes vector code of it), and a group without any is passed over with one test.
const GROUP: usize = 8;

/// Lists longer than this many entries are freed after a buffer that needed them, so a thread's
/// memory does not stay at its largest buffer's (1.5 MiB of [`Special`]).
const KEEP_BLOCKS: usize = 1 << 16;

/// Makes `list` hold `len` entries (their values are overwritten before they are read).
fn room<T: Clone + Default>(list: &mut Vec<T>, len: usize) {
    if list.len() > KEEP_BLOCKS.max(len) {
        list.truncate(len);
        list.shrink_to_fit();
    }
    if list.len() < len {
        list.resize(len, T::default());
    }
}

impl Marks {
    /// The runs of at least `MIN_RUN` (32) alphabet characters, `(start, end)`, in order.
    pub fn runs(&self) -> &[(usize, usize)] {
        &self.runs
    }

    /// Where the backslashes are, in order.
    pub fn backslashes(&self) -> Positions<'_> {
        Positions::new(&self.specials[..self.blocks], |s| s.backslash)
    }

    /// Where the percent signs are, in order.
    pub fn percents(&self) -> Positions<'_> {
        Positions::new(&self.specials[..self.blocks], |s| s.percent)
    }

    /// Marks `buf`: [`Marks::start`], [`Marks::mark`] of every block, [`Marks::finish`].
    pub fn find(&mut self, buf: &[u8]) {
        self.start(buf.len());
        self.mark(buf, 0..buf.len());
        self.finish();
    }

    /// Begins marking a buffer of `len` bytes; its blocks are then marked in order
    /// ([`Marks::mark`], in as many pieces as the caller likes: the engine marks each chunk it has
    /// just read, while the chunk is in cache) and the runs found by [`Marks::finish`].
    pub fn start(&mut self, len: usize) {
        let blocks = len.div_ceil(64);
        room(&mut self.specials, blocks);
        room(&mut self.alphabet, padded(blocks));
        self.alphabet[0] = 0;
        self.blocks = 0;
        self.len = len;
    }

    /// Marks the blocks of `buf` (the buffer [`Marks::start`] was given the length of) in `range`,
    /// which starts at a block and ends at one or at the buffer's end, with AVX-512BW or AVX2
    /// where the CPU has them.
    pub fn mark(&mut self, buf: &[u8], range: Range<usize>) {
        assert!(buf.len() == self.len && range.start.is_multiple_of(64) && range.end <= buf.len());
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512BW, and so AVX-512F (checked just above; std caches it).
            return unsafe { self.mark_avx512(buf, range) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above; std caches the answer).
            return unsafe { self.mark_avx2(buf, range) };
        }
        self.mark_with(buf, range, block_portable)
    }

    /// [`Marks::mark`] compiled for AVX-512BW, so the block masks inline into its loop.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and AVX-512BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn mark_avx512(&mut self, buf: &[u8], range: Range<usize>) {
        // SAFETY: this function runs only where AVX-512BW is present.
        self.mark_with(buf, range, |b| unsafe { block_avx512(b) })
    }

    /// [`Marks::mark`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn mark_avx2(&mut self, buf: &[u8], range: Range<usize>) {
        // SAFETY: this function runs only where AVX2 is present.
        self.mark_with(buf, range, |b| unsafe { block_avx2(b) })
    }

    #[inline(always)]
    fn mark_with(&mut self, buf: &[u8], range: Range<usize>, block: impl Fn(&[u8; 64]) -> Block) {
        let mut specials = self.blocks;
        for pos in range.step_by(64) {
            let masks = match buf.get(pos..pos + 64) {
                Some(bytes) => block(bytes.try_into().expect("64 bytes")),
                None => {
                    // The last block, read past the end as zero bytes (in no mask).
                    let mut tail = [0u8; 64];
                    tail[..buf.len() - pos].copy_from_slice(&buf[pos..]);
                    block(&tail)
                }
            };
            self.alphabet[pos / 64 + 1] = masks.alphabet;
            self.specials[specials] = Special {
                pos,
                backslash: masks.backslash,
                percent: masks.percent,
            };
            specials += usize::from(masks.backslash | masks.percent != 0);
        }
        self.blocks = specials;
    }

    /// Finds the runs of the buffer whose blocks are all marked (eight blocks' deep bits side by
    /// side in vector registers where the CPU has AVX-512 or AVX2).
    pub fn finish(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above; std caches it).
            return unsafe { self.finish_avx512() };
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above; std caches the answer).
            return unsafe { self.finish_avx2() };
        }
        self.finish_portable()
    }

    /// [`Marks::finish`] with the deep bits of a group computed in one AVX-512 register (the
    /// compiler's own vector code for [`deep`] spilled to the stack: twice as slow).
    ///
    /// # Safety
    /// The CPU must have AVX-512F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn finish_avx512(&mut self) {
        // SAFETY: this function runs only where AVX-512F is present.
        self.finish_with(|window, deeps| unsafe { deep_avx512(window, deeps) })
    }

    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn finish_avx2(&mut self) {
        // SAFETY: this function runs only where AVX2 is present.
        self.finish_with(|window, deeps| unsafe { deep_avx2(window, deeps) })
    }

    fn finish_portable(&mut self) {
        self.finish_with(deep_group)
    }

    /// Finds the runs from the alphabet masks, a group of blocks at a time: `group_deeps` gets the
    /// masks of the block before the group and of the group's blocks, writes the group's deep bits
    /// and returns one bit per block that has any (writing nothing when none has).
    #[inline(always)]
    fn finish_with(&mut self, group_deeps: impl Fn(&[u64; GROUP + 1], &mut [u64; GROUP]) -> u32) {
        const _: () = assert!(MIN_RUN == 32, "`deep` finds runs of 32");
        let blocks = self.len.div_ceil(64);
        let padded = padded(blocks);
        self.alphabet[1 + blocks..padded].fill(0);
        // A run is found at its 32nd character, in the block that holds it.
        self.runs.clear();
        let alphabet = &self.alphabet[..padded];
        // Everything before it is done.
        let mut done = 0usize;
        let mut deeps = [0u64; GROUP];
        for group in (0..blocks).step_by(GROUP) {
            if done >= (group + GROUP) * 64 {
                // Inside a long run (a base64 blob) already found.
                continue;
            }
            let window = alphabet[group..group + GROUP + 1]
                .try_into()
                .expect("a group and the block before");
            // One bit per block of the group with deep bits.
            let mut with_deep = group_deeps(window, &mut deeps);
            while with_deep != 0 {
                let k = with_deep.trailing_zeros() as usize;
                with_deep &= with_deep - 1;
                let mut deep = deeps[k];
                let b = group + k;
                let pos = b * 64;
                if done > pos {
                    // Within or right after a run already found.
                    deep &= u64::MAX.checked_shl((done - pos) as u32).unwrap_or(0);
                }
                while deep != 0 {
                    // A run's 32nd character: the first deep one after `done`.
                    let j = deep.trailing_zeros() as usize;
                    let end = run_end(alphabet, b, j);
                    self.runs.push((pos + j + 1 - MIN_RUN, end));
                    done = end;
                    deep &= u64::MAX.checked_shl((end - pos) as u32).unwrap_or(0);
                }
            }
        }
    }
}

/// Entries of the alphabet list for `blocks` blocks: one zero before them, and zeros after them up
/// to a whole group and one more.
fn padded(blocks: usize) -> usize {
    1 + blocks.div_ceil(GROUP) * GROUP + 1
}

/// The positions of one kind of mark, in order.
pub struct Positions<'a> {
    blocks: std::slice::Iter<'a, Special>,
    of: fn(&Special) -> u64,
    pos: usize,
    bits: u64,
}

impl<'a> Positions<'a> {
    fn new(blocks: &'a [Special], of: fn(&Special) -> u64) -> Self {
        Positions {
            blocks: blocks.iter(),
            of,
            pos: 0,
            bits: 0,
        }
    }
}

impl Iterator for Positions<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.bits == 0 {
            let block = self.blocks.next()?;
            self.pos = block.pos;
            self.bits = (self.of)(block);
        }
        let k = self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        Some(self.pos + k)
    }
}

/// The masks of one 64-byte block: bit k is about byte k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    alphabet: u64,
    backslash: u64,
    percent: u64,
}

/// Where the run that holds byte `j` of block `b` ends (its first byte outside the alphabet, or the
/// buffer's end), read off the blocks' alphabet masks (`alphabet[b + 1]` is block `b`'s, and the
/// list ends in a zero).
#[inline(always)]
fn run_end(alphabet: &[u64], b: usize, j: usize) -> usize {
    let ones = (alphabet[b + 1] >> j).trailing_ones() as usize;
    if j + ones < 64 {
        return b * 64 + j + ones;
    }
    let mut next = b + 1;
    while alphabet[next + 1] == u64::MAX {
        next += 1;
    }
    next * 64 + alphabet[next + 1].trailing_ones() as usize
}

/// Bit j set where byte j of the block (alphabet mask `m`) is at least the 32nd alphabet character
/// in a row, counting back into the block before (mask `prev`).
#[inline(always)]
fn deep(prev: u64, m: u64) -> u64 {
    // The 128 bits `m:prev` and'ed with themselves shifted by 1, 2, 4, 8 and 16, in two halves.
    let (mut high, mut low) = (m, prev);
    for shift in [1, 2, 4, 8, 16] {
        high &= high << shift | low >> (64 - shift);
        low &= low << shift;
    }
    high
}

/// [`deep`] of each block of a group (`window` holds the mask of the block before the group, then
/// the group's); returns one bit per block with deep bits. The compiler makes vector code of it.
#[inline(always)]
fn deep_group(window: &[u64; GROUP + 1], deeps: &mut [u64; GROUP]) -> u32 {
    *deeps = std::array::from_fn(|k| deep(window[k], window[k + 1]));
    deeps
        .iter()
        .enumerate()
        .fold(0u32, |bits, (k, &d)| bits | u32::from(d != 0) << k)
}

/// [`deep_group`] in one AVX-512 register: eight blocks, one lane each. Writes `deeps` only when a
/// block has deep bits (a fifth of the groups of source text).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn deep_avx512(window: &[u64; GROUP + 1], deeps: &mut [u64; GROUP]) -> u32 {
    use std::arch::x86_64::*;
    const _: () = assert!(GROUP == 8, "one lane per block");
    // SAFETY: both loads read eight u64 of the nine in `window`; unaligned loads are allowed.
    let (mut low, mut high) = unsafe {
        (
            _mm512_loadu_si512(window.as_ptr().cast()),
            _mm512_loadu_si512(window[1..].as_ptr().cast()),
        )
    };
    // `deep`'s rounds, lane by lane.
    macro_rules! round {
        ($shift:literal, $back:literal) => {
            high = _mm512_and_si512(
                high,
                _mm512_or_si512(
                    _mm512_slli_epi64::<$shift>(high),
                    _mm512_srli_epi64::<$back>(low),
                ),
            );
            low = _mm512_and_si512(low, _mm512_slli_epi64::<$shift>(low));
        };
    }
    round!(1, 63);
    round!(2, 62);
    round!(4, 60);
    round!(8, 56);
    high = _mm512_and_si512(
        high,
        _mm512_or_si512(_mm512_slli_epi64::<16>(high), _mm512_srli_epi64::<48>(low)),
    );
    let with_deep = u32::from(_mm512_test_epi64_mask(high, high));
    if with_deep != 0 {
        // SAFETY: eight u64 written to an array of eight; unaligned stores are allowed.
        unsafe { _mm512_storeu_si512(deeps.as_mut_ptr().cast(), high) };
    }
    with_deep
}

/// [`deep_group`] in two AVX2 registers: four blocks a register, one lane each. Writes `deeps`
/// only when a block has deep bits. On the corpus, `finish` with the compiler's own AVX2 form of
/// [`deep_group`] took 1.8 times these perf samples, and with its SSE2 form 3.3 times.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn deep_avx2(window: &[u64; GROUP + 1], deeps: &mut [u64; GROUP]) -> u32 {
    use std::arch::x86_64::*;
    const _: () = assert!(GROUP == 8, "two registers of four lanes");
    // SAFETY: each load reads four u64 of the nine in `window`; unaligned loads are allowed.
    let load = |k: usize| unsafe { _mm256_loadu_si256(window[k..k + 4].as_ptr().cast()) };
    let (mut low, mut high) = ([load(0), load(4)], [load(1), load(5)]);
    // `deep`'s rounds, lane by lane.
    macro_rules! round {
        ($shift:literal, $back:literal) => {
            for r in 0..2 {
                high[r] = _mm256_and_si256(
                    high[r],
                    _mm256_or_si256(
                        _mm256_slli_epi64::<$shift>(high[r]),
                        _mm256_srli_epi64::<$back>(low[r]),
                    ),
                );
                low[r] = _mm256_and_si256(low[r], _mm256_slli_epi64::<$shift>(low[r]));
            }
        };
    }
    round!(1, 63);
    round!(2, 62);
    round!(4, 60);
    round!(8, 56);
    round!(16, 48);
    let zero = _mm256_setzero_si256();
    let empty = |v: __m256i| _mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(v, zero)));
    let with_deep = !(empty(high[0]) | empty(high[1]) << 4) as u32 & 0xff;
    if with_deep != 0 {
        // SAFETY: four u64 written to each half of an array of eight; unaligned stores are allowed.
        unsafe {
            _mm256_storeu_si256(deeps.as_mut_ptr().cast(), high[0]);
            _mm256_storeu_si256(deeps[4..].as_mut_ptr().cast(), high[1]);
        }
    }
    with_deep
}

/// The alphabet as two nibble tables (the lookup of Muła and Lemire's SIMD base64): a byte
/// `0xHL` is in either alphabet when `LOW_NIBBLE[L] & HIGH_NIBBLE[H] != 0`. Each high nibble
/// 2..=7 has a bit; `LOW_NIBBLE[L]` holds the bits of the high nibbles that make an alphabet
/// character with `L` (`0x2B` `+`, `0x2D` `-`, `0x2F` `/`, `0x30..=0x39`, `0x41..=0x5A`, `0x5F` `_`,
/// `0x61..=0x7A`). Bytes from `0x80` have no bit. The tests check it against [`in_alphabet`].
#[cfg(target_arch = "x86_64")]
const LOW_NIBBLE: [u8; 16] = [
    42, 62, 62, 62, 62, 62, 62, 62, 62, 62, 60, 21, 20, 21, 20, 29,
];
#[cfg(target_arch = "x86_64")]
const HIGH_NIBBLE: [u8; 16] = [0, 0, 1, 2, 4, 8, 16, 32, 0, 0, 0, 0, 0, 0, 0, 0];

/// [`Block`] with AVX-512BW: two nibble lookups and two compares over all 64 bytes at once, each
/// writing its mask directly.
///
/// # Safety
/// The CPU must have AVX-512F and AVX-512BW.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn block_avx512(block: &[u8; 64]) -> Block {
    use std::arch::x86_64::*;
    // SAFETY (both loads): 16 bytes read from a 16-byte table; unaligned loads are allowed.
    let low = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(LOW_NIBBLE.as_ptr().cast()) });
    let high = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(HIGH_NIBBLE.as_ptr().cast()) });
    let nibble = _mm512_set1_epi8(0x0f);
    // SAFETY: 64 bytes read from a 64-byte array; unaligned loads are allowed.
    let x = unsafe { _mm512_loadu_si512(block.as_ptr().cast()) };
    let l = _mm512_shuffle_epi8(low, _mm512_and_si512(x, nibble));
    let h = _mm512_shuffle_epi8(high, _mm512_and_si512(_mm512_srli_epi16(x, 4), nibble));
    Block {
        alphabet: _mm512_test_epi8_mask(l, h),
        backslash: _mm512_cmpeq_epi8_mask(x, _mm512_set1_epi8(b'\\' as i8)),
        percent: _mm512_cmpeq_epi8_mask(x, _mm512_set1_epi8(b'%' as i8)),
    }
}

/// [`Block`] with AVX2: the same lookups and compares, 32 bytes at a time.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn block_avx2(block: &[u8; 64]) -> Block {
    use std::arch::x86_64::*;
    let tables = |t: &[u8; 16]| {
        let mut both = [0u8; 32];
        both[..16].copy_from_slice(t);
        both[16..].copy_from_slice(t);
        // SAFETY: 32 bytes read from a 32-byte array.
        unsafe { _mm256_loadu_si256(both.as_ptr().cast::<__m256i>()) }
    };
    let (low, high) = (tables(&LOW_NIBBLE), tables(&HIGH_NIBBLE));
    let nibble = _mm256_set1_epi8(0x0f);
    let bits = |v: __m256i| u64::from(_mm256_movemask_epi8(v) as u32);
    let mut out = Block {
        alphabet: 0,
        backslash: 0,
        percent: 0,
    };
    for k in 0..2 {
        // SAFETY: the 32 bytes read are in the 64-byte array; unaligned loads are allowed.
        let x = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * k).cast::<__m256i>()) };
        let l = _mm256_shuffle_epi8(low, _mm256_and_si256(x, nibble));
        let h = _mm256_shuffle_epi8(high, _mm256_and_si256(_mm256_srli_epi16(x, 4), nibble));
        let outside = _mm256_cmpeq_epi8(_mm256_and_si256(l, h), _mm256_setzero_si256());
        out.alphabet |= (!bits(outside) & 0xffff_ffff) << (32 * k);
        out.backslash |= bits(_mm256_cmpeq_epi8(x, _mm256_set1_epi8(b'\\' as i8))) << (32 * k);
        out.percent |= bits(_mm256_cmpeq_epi8(x, _mm256_set1_epi8(b'%' as i8))) << (32 * k);
    }
    out
}

/// [`Block`] a byte at a time, for CPUs without AVX2.
fn block_portable(block: &[u8; 64]) -> Block {
    let mask = |is: &dyn Fn(u8) -> bool| {
        block
            .iter()
            .enumerate()
            .fold(0u64, |m, (k, &b)| m | u64::from(is(b)) << k)
    };
    Block {
        alphabet: mask(&in_alphabet),
        backslash: mask(&|b| b == b'\\'),
        percent: mask(&|b| b == b'%'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    type BlockFn = fn(&[u8; 64]) -> Block;

    /// Every way this CPU can compute a block's masks.
    fn block_fns() -> Vec<(&'static str, BlockFn)> {
        let mut out: Vec<(&'static str, BlockFn)> = vec![("portable", block_portable)];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present.
            out.push(("avx2", |b| unsafe { block_avx2(b) }));
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: AVX-512BW is present.
            out.push(("avx512", |b| unsafe { block_avx512(b) }));
        }
        out
    }

    #[test]
    fn the_block_masks_agree_with_a_byte_loop() {
        let expected = |block: &[u8; 64]| {
            let mask =
                |is: fn(u8) -> bool| (0..64).fold(0u64, |m, k| m | u64::from(is(block[k])) << k);
            Block {
                alphabet: mask(in_alphabet),
                backslash: mask(|b| b == b'\\'),
                percent: mask(|b| b == b'%'),
            }
        };
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut blocks: Vec<[u8; 64]> = (0..=255u8).map(|b| [b; 64]).collect();
        for round in 0..5_000 {
            let mut block = [0u8; 64];
            for b in block.iter_mut() {
                let r = xorshift(&mut seed);
                // Every byte value early on, then mostly ASCII around the alphabet's edges.
                *b = if round < 100 {
                    r as u8
                } else {
                    (r % 0x80) as u8
                };
            }
            blocks.push(block);
        }
        for (name, block_fn) in block_fns() {
            for block in &blocks {
                assert_eq!(block_fn(block), expected(block), "{name}: {block:?}");
            }
        }
    }

    /// Runs, backslashes and percent signs as a byte loop finds them.
    fn byte_loop(buf: &[u8]) -> (Vec<(usize, usize)>, Vec<usize>, Vec<usize>) {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < buf.len() {
            let start = i;
            while i < buf.len() && in_alphabet(buf[i]) {
                i += 1;
            }
            if i - start >= MIN_RUN {
                runs.push((start, i));
            }
            i = i.max(start + 1);
        }
        let at = |c: u8| (0..buf.len()).filter(|&k| buf[k] == c).collect();
        (runs, at(b'\\'), at(b'%'))
    }

    #[test]
    fn every_mark_is_found_once_as_a_byte_loop_finds_it() {
        // Alphabet characters, non-alphabet punctuation and separators, backslashes and percent
        // signs, in runs of random lengths around the block size (and long ones across blocks).
        let pieces: [&[u8]; 8] = [
            b"aZ09+/",
            b"-_xY",
            b".:<",
            b" ",
            b"\n\"",
            b"\xc3\xa9",
            b"\\n",
            b"%2F",
        ];
        let mut seed = 0x1234_5678_9abc_def1_u64;
        for round in 0..3000 {
            let mut buf = Vec::new();
            let target = if round % 10 == 0 { 1000 } else { 300 };
            while buf.len() < target {
                let piece = pieces[(xorshift(&mut seed) % 8) as usize];
                let len = (xorshift(&mut seed) % if round % 10 == 0 { 300 } else { 70 }) as usize;
                buf.extend((0..len).map(|k| piece[k % piece.len()]));
            }
            let expected = byte_loop(&buf);
            let mut marks = Marks::default();
            let check = |marks: &Marks, name: &str| {
                let seen = (
                    marks.runs().to_vec(),
                    marks.backslashes().collect(),
                    marks.percents().collect(),
                );
                assert_eq!(
                    seen,
                    expected,
                    "{name}: {:?}",
                    String::from_utf8_lossy(&buf)
                );
            };
            marks.find(&buf);
            check(&marks, "find");
            // The paths for CPUs without AVX-512 or AVX2, too (reusing the marks clears them), and
            // marked in pieces of random whole blocks, as the engine marks its chunks.
            marks.start(buf.len());
            let mut from = 0;
            while from < buf.len() {
                let to = (from + 64 * (1 + xorshift(&mut seed) % 3) as usize).min(buf.len());
                marks.mark_with(&buf, from..to, block_portable);
                from = to;
            }
            marks.finish_portable();
            check(&marks, "portable, in pieces");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                marks.start(buf.len());
                // SAFETY: AVX2 is present.
                unsafe {
                    marks.mark_avx2(&buf, 0..buf.len());
                    marks.finish_avx2();
                }
                check(&marks, "avx2");
            }
        }
    }

    #[test]
    fn runs_are_found_at_every_offset_and_length() {
        for lead in 0..130 {
            for len in [MIN_RUN - 1, MIN_RUN, MIN_RUN + 1, 63, 64, 65, 129, 200] {
                for trail in [0, 1, 64] {
                    let mut buf = vec![b' '; lead];
                    buf.extend(std::iter::repeat_n(b'a', len));
                    buf.extend(std::iter::repeat_n(b'.', trail));
                    let mut marks = Marks::default();
                    marks.find(&buf);
                    let expected: &[(usize, usize)] = if len >= MIN_RUN {
                        &[(lead, lead + len)]
                    } else {
                        &[]
                    };
                    assert_eq!(
                        marks.runs(),
                        expected,
                        "lead {lead} len {len} trail {trail}"
                    );
                }
            }
        }
    }
}
