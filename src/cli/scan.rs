//! `spillway scan`: files, directories (parallel walk honouring `.gitignore`), stdin and git history.
//!
//! Exit status: 0 nothing found, 1 findings (or `--exit-code N`), 2 an error (the message names the
//! path). A one-line summary and any notes go to stderr (`-q` silences them); a reader that closes
//! the pipe early ends the output quietly.
//!
//! Must not import anything but the scanner: the scan CLI needs no database.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use super::baseline::Baseline;
use super::report::{self, Format, Location, ReportedFinding};
use crate::scanner::{
    DecodeOptions, Finding, RuleSet, ScanOptions, Skip, TreeLimits, TreeSink, rule,
};

/// Files this large or larger are skipped unless `--max-file-size` says otherwise.
const DEFAULT_MAX_FILE_SIZE: &str = "25M";

/// Exit codes, shown by `spillway scan --help`.
pub const EXIT_CODES: &str = "Exit codes:
  0  nothing found
  1  findings (set another code with --exit-code)
  2  an error: a path that cannot be read, rules that do not load, output that cannot be written";

#[derive(Debug, clap::Args)]
#[command(after_help = EXIT_CODES)]
pub struct ScanArgs {
    /// Files or directories to scan; `-` reads stdin. With --git: repositories. Default: `.`.
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Exit code when anything is found (0 reports without failing the build).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub exit_code: u8,
    /// No summary or notes on stderr (errors are still printed).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Extra rule files or directories (Spillway or Gitleaks TOML; `builtin:gitleaks`: Gitleaks'
    /// own default config). Repeatable.
    #[arg(long = "rules", value_name = "DIR")]
    pub rules: Vec<PathBuf>,
    /// Use only the rules given with --rules.
    #[arg(long)]
    pub no_default_rules: bool,
    /// Also report candidates that fail their checksum or structure check (marked invalid).
    #[arg(long)]
    pub include_invalid: bool,
    /// Print secrets in full (by default only a redacted preview).
    #[arg(long)]
    pub show_secrets: bool,
    /// Scan every blob in the history of the repositories given as paths.
    #[arg(long)]
    pub git: bool,
    /// Skip files larger than this (bytes, or with K, M or G).
    #[arg(long, default_value = DEFAULT_MAX_FILE_SIZE, value_parser = parse_size)]
    pub max_file_size: u64,
    /// Also scan files that .gitignore / .ignore exclude.
    #[arg(long)]
    pub no_ignore: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Suppress findings listed in this baseline file.
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// Write every finding of this scan to a baseline file (and exit 0 unless an error occurred).
    #[arg(long, value_name = "FILE")]
    pub write_baseline: Option<PathBuf>,
    /// Match the raw bytes only: no escapes, percent-encoding or base64 decoded, no archive or
    /// compressed file opened.
    #[arg(long)]
    pub no_decode: bool,
    /// How deep decoders and containers nest (a base64 value in a JSON string in a zip in a tarball
    /// is 4).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_decode_depth: usize,
}

impl ScanArgs {
    pub fn decode_options(&self) -> DecodeOptions {
        DecodeOptions {
            max_depth: if self.no_decode {
                0
            } else {
                self.max_decode_depth
            },
            ..DecodeOptions::default()
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size (examples: 1048576, 512K, 25M, 1G)"))
}

/// Counters shared by scanning threads (for the progress line and the summary).
#[derive(Debug, Default)]
pub struct ScanStats {
    pub files: AtomicUsize,
    pub bytes: AtomicU64,
    pub skipped_binary: AtomicUsize,
    pub skipped_large: AtomicUsize,
    /// Files the directory walk handed over (read, too large or unreadable).
    pub considered: AtomicUsize,
    /// Archive members (or compressed files) not opened: over a cap, corrupt, too deep or in an
    /// unsupported format. Each is named on stderr.
    pub skipped_members: Mutex<Vec<String>>,
}

impl ScanStats {
    pub fn add_scanned(&self, bytes: usize) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Collects one file's findings (archive members included) as reported findings.
pub struct Collect<'s> {
    pub found: Vec<ReportedFinding>,
    commit: Option<String>,
    show_secrets: bool,
    stats: &'s ScanStats,
}

impl<'s> Collect<'s> {
    pub fn new(stats: &'s ScanStats, commit: Option<String>, show_secrets: bool) -> Collect<'s> {
        Collect {
            found: Vec::new(),
            commit,
            show_secrets,
            stats,
        }
    }
}

impl<'r> TreeSink<'r> for Collect<'_> {
    fn finding(&mut self, path: &str, data: &[u8], f: Finding<'r>) {
        let location = Location {
            path: path.to_owned(),
            commit: self.commit.clone(),
        };
        self.found
            .push(ReportedFinding::new(&f, location, data, self.show_secrets));
    }

    fn skipped(&mut self, path: &str, why: Skip) {
        match why {
            Skip::Binary => {
                self.stats.skipped_binary.fetch_add(1, Ordering::Relaxed);
            }
            _ => self
                .stats
                .skipped_members
                .lock()
                .expect("no panics while locked")
                .push(format!("{path}: {}", why.as_str())),
        }
    }

    fn scanned(&mut self, bytes: usize) {
        self.stats.add_scanned(bytes);
    }
}

fn build_rules(args: &ScanArgs) -> anyhow::Result<RuleSet> {
    rule_set(
        &args.rules,
        args.no_default_rules,
        ScanOptions {
            include_invalid: args.include_invalid,
        },
    )
}

/// The default rules (unless `no_default_rules`) plus every rule file or directory in `extra`.
pub fn rule_set(
    extra: &[PathBuf],
    no_default_rules: bool,
    options: ScanOptions,
) -> anyhow::Result<RuleSet> {
    let mut rules = if no_default_rules {
        Vec::new()
    } else {
        rule::default_rules()?
    };
    for path in extra {
        let more = if path.as_os_str() == "builtin:gitleaks" {
            crate::scanner::gitleaks::default_config_rules()?
        } else if path.is_dir() {
            rule::load_rules_dir(path)?
        } else {
            rule::load_rule_file(path)?
        };
        rules.extend(more);
    }
    anyhow::ensure!(
        !rules.is_empty(),
        "no rules: --no-default-rules needs --rules DIR"
    );
    Ok(RuleSet::new(rules, options)?)
}

/// Runs `spillway scan`; returns the process exit code.
pub fn run(args: ScanArgs) -> u8 {
    match run_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spillway scan: error: {e:#}");
            2
        }
    }
}

/// Whether a write failed because the reader went away (`spillway scan | head`): stop quietly.
pub fn reader_gone(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run_inner(args: &ScanArgs) -> anyhow::Result<u8> {
    let started = std::time::Instant::now();
    let set = build_rules(args)?;
    tracing::info!(rules = set.rules().len(), "rules loaded");
    let baseline = args.baseline.as_deref().map(Baseline::load).transpose()?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };
    let stats = ScanStats::default();
    let errors = Mutex::new(Vec::<String>::new());
    let done = AtomicBool::new(false);

    let ignored = IgnoredCount::default();
    let mut findings = std::thread::scope(|s| {
        if std::io::stderr().is_terminal() && !args.quiet {
            s.spawn(|| progress(&stats, &done));
        }
        if !args.git && !args.no_ignore && !args.quiet {
            s.spawn(|| ignored.count(&paths));
        }
        let result = scan_paths(args, &set, &paths, threads, &stats, &errors);
        done.store(true, Ordering::Relaxed);
        ignored.give_up_after(started.elapsed() / 4 + Duration::from_millis(250));
        result
    })?;

    let errors = errors.into_inner().expect("threads joined");
    for e in &errors {
        eprintln!("spillway scan: error: {e}");
    }
    if let Some(path) = &args.write_baseline {
        report::sort(&mut findings);
        Baseline::from_findings(&findings).save(path)?;
        eprintln!(
            "spillway scan: wrote {} findings to baseline {}",
            findings.len(),
            path.display()
        );
        return Ok(if errors.is_empty() { 0 } else { 2 });
    }
    if let Some(b) = &baseline {
        let known = b.fingerprints();
        findings.retain(|f| !known.contains(f.fingerprint.as_str()));
    }
    report::sort(&mut findings);
    let context = report::RunContext {
        category: if args.git {
            "spillway/git/"
        } else {
            "spillway/files/"
        },
        provenance: if args.git {
            paths
                .iter()
                .filter_map(|p| super::git_history::provenance(p))
                .collect()
        } else {
            Vec::new()
        },
    };
    match write_report(args, &findings, &set, &context) {
        Err(e) if reader_gone(&e) => {}
        other => other?,
    }
    let skipped = (
        stats.skipped_binary.load(Ordering::Relaxed),
        stats.skipped_large.load(Ordering::Relaxed),
    );
    if skipped.1 > 0 && !args.quiet {
        eprintln!(
            "spillway scan: skipped {} files over --max-file-size",
            skipped.1
        );
    }
    let mut members = stats
        .skipped_members
        .lock()
        .expect("threads joined")
        .clone();
    members.sort();
    for note in members.iter().filter(|_| !args.quiet) {
        eprintln!("spillway scan: not opened: {note}");
    }
    if !args.quiet {
        if let Some(n) = ignored.skipped(&stats) {
            eprintln!(
                "spillway scan: {n} files skipped by .gitignore, .ignore or git excludes (--no-ignore scans them)"
            );
        }
        eprintln!(
            "spillway scan: {} files, {}, {} findings in {:.2} s",
            stats.files.load(Ordering::Relaxed),
            human_bytes(stats.bytes.load(Ordering::Relaxed)),
            findings.len(),
            started.elapsed().as_secs_f64()
        );
    }
    // The process ends next: freeing the compiled rules and their per-thread regex caches one by
    // one cost 10M instructions, a third as much as scanning one small file (callgrind).
    std::mem::forget(set);
    Ok(match (errors.is_empty(), findings.is_empty()) {
        (false, _) => 2,
        (true, true) => 0,
        (true, false) => args.exit_code,
    })
}

/// The report, on stdout or (`-o`) in a file.
fn write_report(
    args: &ScanArgs,
    findings: &[ReportedFinding],
    set: &RuleSet,
    context: &report::RunContext,
) -> anyhow::Result<()> {
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        report::write(out, args.format, findings, set.rules(), context)?;
        out.flush()
    };
    match &args.output {
        Some(path) => {
            // A report with secrets in full is readable by its owner only.
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            if args.show_secrets {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut file = std::io::BufWriter::new(
                options
                    .open(path)
                    .with_context(|| format!("{}: cannot create the report", path.display()))?,
            );
            write(&mut file).with_context(|| format!("{}: cannot write the report", path.display()))
        }
        None => write(&mut std::io::stdout().lock()).context("cannot write output"),
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        0..1_000_000 => format!("{:.1} KB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// Counts the files an ignore-free walk sees, beside the scan, so the summary can say how many the
/// ignore files kept out. It walks directory entries only (no reads) and gives up a little after the
/// scan is done (a quarter of the scan's time more, at least 250 ms), so a huge ignored tree never
/// holds the scan up for long; then no count is reported.
#[derive(Debug, Default)]
struct IgnoredCount {
    files: AtomicUsize,
    finished: AtomicBool,
    deadline: Mutex<Option<std::time::Instant>>,
}

impl IgnoredCount {
    fn give_up_after(&self, grace: Duration) {
        *self.deadline.lock().expect("no panics while locked") =
            Some(std::time::Instant::now() + grace);
    }

    fn past_deadline(&self) -> bool {
        self.deadline
            .lock()
            .expect("no panics while locked")
            .is_some_and(|d| std::time::Instant::now() > d)
    }

    fn count(&self, paths: &[PathBuf]) {
        let roots: Vec<&PathBuf> = paths.iter().filter(|p| p.as_os_str() != "-").collect();
        let Some(mut walk) = walker(&roots) else {
            return;
        };
        walk.standard_filters(false);
        for (i, entry) in walk.build().enumerate() {
            if i % 256 == 0 && self.past_deadline() {
                return;
            }
            if entry.is_ok_and(|e| e.file_type().is_some_and(|t| t.is_file())) {
                self.files.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.finished.store(true, Ordering::Relaxed);
    }

    /// Files the ignore-free walk saw that the scan did not consider, if both walks finished.
    fn skipped(&self, stats: &ScanStats) -> Option<usize> {
        if !self.finished.load(Ordering::Relaxed) {
            return None;
        }
        let considered = stats.considered.load(Ordering::Relaxed);
        let n = self
            .files
            .load(Ordering::Relaxed)
            .saturating_sub(considered);
        (n > 0).then_some(n)
    }
}

fn scan_paths(
    args: &ScanArgs,
    set: &RuleSet,
    paths: &[PathBuf],
    threads: usize,
    stats: &ScanStats,
    errors: &Mutex<Vec<String>>,
) -> anyhow::Result<Vec<ReportedFinding>> {
    let mut findings = Vec::new();
    let decode = args.decode_options();
    if args.git {
        for path in paths {
            findings.extend(super::git_history::scan_history(
                set,
                path,
                threads,
                args.max_file_size,
                args.show_secrets,
                &decode,
                stats,
            )?);
        }
        return Ok(findings);
    }
    let (stdin, fs_paths): (Vec<&PathBuf>, Vec<&PathBuf>) =
        paths.iter().partition(|p| p.as_os_str() == "-");
    if !stdin.is_empty() {
        let mut data = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut data)
            .context("-: cannot read stdin")?;
        let mut scanner = set.scanner();
        let mut collect = Collect::new(stats, None, args.show_secrets);
        scanner.scan_tree("-", &data, &decode, &TreeLimits::default(), &mut collect);
        findings.extend(collect.found);
    }
    for p in &fs_paths {
        if !p.exists() {
            errors
                .lock()
                .expect("no panics while locked")
                .push(format!("{}: no such file or directory", p.display()));
        }
    }
    let Some(mut walk) = walker(&fs_paths) else {
        return Ok(findings);
    };
    walk.threads(threads)
        .hidden(false)
        .require_git(false)
        .git_ignore(!args.no_ignore)
        .git_exclude(!args.no_ignore)
        .git_global(!args.no_ignore)
        .ignore(!args.no_ignore)
        .parents(!args.no_ignore);
    let found = Mutex::new(findings);
    let decode = &decode;
    walk.build_parallel().run(|| {
        let mut scanner = set.scanner();
        let mut buf = Vec::new();
        let found = &found;
        Box::new(move |entry| {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    errors
                        .lock()
                        .expect("no panics while locked")
                        .push(e.to_string());
                    return ignore::WalkState::Continue;
                }
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return ignore::WalkState::Continue;
            }
            let path = entry.path();
            stats.considered.fetch_add(1, Ordering::Relaxed);
            match read_candidate(path, args.max_file_size, &mut buf) {
                Ok(ReadOutcome::Read(n)) => {
                    let data = &buf[..n];
                    // Not `display()` or `to_string_lossy()`: both go through a UTF-8 check a
                    // chunk at a time (a percent of the whole scan); a path is almost always UTF-8.
                    let label = path
                        .to_str()
                        .map_or_else(|| path.to_string_lossy(), std::borrow::Cow::Borrowed);
                    let mut collect = Collect::new(stats, None, args.show_secrets);
                    scanner.scan_tree(&label, data, decode, &TreeLimits::default(), &mut collect);
                    tracing::debug!(path = %label, bytes = n, findings = collect.found.len(), "scanned");
                    if !collect.found.is_empty() {
                        found
                            .lock()
                            .expect("no panics while locked")
                            .extend(collect.found);
                    }
                }
                Ok(ReadOutcome::TooLarge) => {
                    tracing::debug!(path = %path.display(), "skipped: over --max-file-size");
                    stats.skipped_large.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    errors
                        .lock()
                        .expect("no panics while locked")
                        .push(format!("{}: {e}", path.display()))
                }
            }
            ignore::WalkState::Continue
        })
    });
    Ok(found.into_inner().expect("walk finished"))
}

/// A walk of the `roots` that exist, `.git` directories left out; None when none exists.
fn walker(roots: &[&PathBuf]) -> Option<ignore::WalkBuilder> {
    let roots: Vec<&&PathBuf> = roots.iter().filter(|p| p.exists()).collect();
    let (first, rest) = roots.split_first()?;
    let mut walk = ignore::WalkBuilder::new(first);
    for p in rest {
        walk.add(p);
    }
    walk.filter_entry(|e| e.file_name() != ".git");
    Some(walk)
}

enum ReadOutcome {
    /// The file's bytes are `buf[..n]`.
    Read(usize),
    TooLarge,
}

/// Reads `path` into `buf` unless it is larger than `max`.
///
/// `buf` is reused across files and never shrinks; only its first `n` bytes are this file's. A file
/// costs one `statx` and, most often, one `read`: the length comes from the open file and reading
/// stops there. `read_to_end` would ask for the size again, seek, and read once more to see the
/// end: three more system calls per file, which made a scan of the corpus 5% slower. A file that
/// grows while it is read is scanned as long as it was when opened; one that reports a size of 0
/// is read to its end, within `max` (pseudo-files report 0 whatever they hold).
fn read_candidate(path: &Path, max: u64, buf: &mut Vec<u8>) -> std::io::Result<ReadOutcome> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > max {
        return Ok(ReadOutcome::TooLarge);
    }
    if len == 0 {
        buf.clear();
        let read = file.take(max.saturating_add(1)).read_to_end(buf)?;
        return Ok(if read as u64 > max {
            ReadOutcome::TooLarge
        } else {
            ReadOutcome::Read(read)
        });
    }
    let len = usize::try_from(len).map_err(|_| std::io::ErrorKind::OutOfMemory)?;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let mut filled = 0;
    while filled < len {
        match file.read(&mut buf[filled..len]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ReadOutcome::Read(filled))
}

/// A progress line on stderr (only when it is a terminal), cleared at the end.
fn progress(stats: &ScanStats, done: &AtomicBool) {
    let mut shown = false;
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let (files, bytes) = (
            stats.files.load(Ordering::Relaxed),
            stats.bytes.load(Ordering::Relaxed),
        );
        eprint!("\rscanned {files} files, {:.1} MB", bytes as f64 / 1e6);
        shown = true;
    }
    if shown {
        eprint!("\r\x1b[2K");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("25M"), Ok(25 << 20));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("ten").unwrap_err().contains("not a size"));
    }
}
