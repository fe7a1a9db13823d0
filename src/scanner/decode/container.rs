//! Looking inside files: zip (and jar, war: zip by content), tar, gzip (tar.gz, tgz, plain .gz) and
//! zlib streams, recognised by their magic bytes, not their names. Each member is scanned as a file
//! of its own, named `outer!member` (`bundle.tar.gz!var/data/coordinator-token.json`), with the
//! text decoders too. [`DecodeOptions::max_depth`] bounds containers and decoders together: a
//! base64 value in a zip member takes two levels.
//!
//! Hostile input is bounded before it is read: every member is read through a cap (the least of
//! [`TreeLimits::max_member_bytes`], its compressed size times [`TreeLimits::max_ratio`], and what
//! is left of [`TreeLimits::max_total_bytes`] for the whole outer file), so a decompression bomb
//! is cut off after at most that many bytes and reported as skipped, never an out-of-memory. The
//! member being read is the only one in memory; a tar.gz is read as a stream.
//!
//! Pure: the archive readers (`zip`, `tar`, `flate2`) read from memory; no I/O, async or HTTP.

use std::io::{Cursor, Read};

use super::DecodeOptions;
use crate::scanner::engine::Scanner;
use crate::scanner::finding::Finding;

/// The first bytes looked at for a NUL to call data binary (as git and ripgrep do).
const BINARY_SNIFF: usize = 8 << 10;

/// Limits on what a container may expand to.
#[derive(Debug, Clone, Copy)]
pub struct TreeLimits {
    /// Most bytes one member may decompress to.
    pub max_member_bytes: u64,
    /// Most bytes all members of one outer file may decompress to, together.
    pub max_total_bytes: u64,
    /// Most times its compressed size a member may expand.
    pub max_ratio: u64,
    /// Most members looked at in one archive.
    pub max_members: usize,
}

impl Default for TreeLimits {
    fn default() -> Self {
        TreeLimits {
            max_member_bytes: 32 << 20,
            max_total_bytes: 256 << 20,
            max_ratio: 200,
            max_members: 100_000,
        }
    }
}

/// Why a file or member was not scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Binary and not a container Spillway reads.
    Binary,
    /// Expands past a cap: a decompression bomb, or simply too big.
    Expansion,
    /// Not readable as the container it claims to be.
    Corrupt,
    /// Containers nested deeper than allowed.
    Depth,
    /// A compression method or feature not supported (encrypted, bzip2, ...).
    Unsupported,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Binary => "binary",
            Skip::Expansion => "expansion_cap",
            Skip::Corrupt => "corrupt",
            Skip::Depth => "depth",
            Skip::Unsupported => "unsupported",
        }
    }
}

/// Where findings of a tree scan go: each with the path of the file or member it is in and that
/// member's bytes (its span, line and column are in them).
pub trait TreeSink<'r> {
    fn finding(&mut self, path: &str, data: &[u8], finding: Finding<'r>);
    /// A file or member left unscanned, and why.
    fn skipped(&mut self, _path: &str, _why: Skip) {}
    /// Bytes of text scanned (members included).
    fn scanned(&mut self, _bytes: usize) {}
}

/// A compressed stream, by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compression {
    Gzip,
    Zlib,
}

/// The compression `head` starts with: gzip's `1f 8b`, or a zlib header (whose two bytes can be
/// ordinary characters, `x^` or `x\xda`: callers try it only on data that is not text).
pub(super) fn compression(head: &[u8]) -> Option<Compression> {
    match head {
        [0x1f, 0x8b, ..] => Some(Compression::Gzip),
        [0x78, 0x01 | 0x5e | 0x9c | 0xda, ..] => Some(Compression::Zlib),
        _ => None,
    }
}

/// Decompresses `data` within `cap` bytes: `Expansion` past it, `Corrupt` when unreadable (the
/// base64 decoder's compressed runs; a compressed file is read as a member).
pub(super) fn inflate(how: Compression, data: &[u8], cap: u64) -> Result<Vec<u8>, Skip> {
    read_capped(decompressor(how, data), cap)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Zip,
    Tar,
    Compressed(Compression),
    Binary,
    Text,
}

fn kind(data: &[u8]) -> Kind {
    let binary = || memchr::memchr(0, &data[..data.len().min(BINARY_SNIFF)]).is_some();
    if data.starts_with(b"PK\x03\x04") || data.starts_with(b"PK\x05\x06") {
        Kind::Zip
    } else if data.len() >= 262 && &data[257..262] == b"ustar" {
        Kind::Tar
    } else if compression(data) == Some(Compression::Gzip) {
        Kind::Compressed(Compression::Gzip)
    } else if !binary() {
        Kind::Text
    } else if let Some(how) = compression(data) {
        Kind::Compressed(how)
    } else {
        Kind::Binary
    }
}

/// A reader that stops at a cap and remembers that it was reached.
struct Capped<R> {
    inner: R,
    left: u64,
    hit: bool,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One more byte would be past the cap: look, so an exact fit is not a bomb.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? > 0 {
                self.hit = true;
            }
            return Ok(0);
        }
        let n = buf.len().min(self.left as usize);
        let read = self.inner.read(&mut buf[..n])?;
        self.left -= read as u64;
        Ok(read)
    }
}

/// Reads all of `reader` within `cap` bytes: the bytes, or `Expansion` past the cap.
fn read_capped(reader: impl Read, cap: u64) -> Result<Vec<u8>, Skip> {
    let mut capped = Capped {
        inner: reader,
        left: cap,
        hit: false,
    };
    let mut out = Vec::new();
    match capped.read_to_end(&mut out) {
        Ok(_) if capped.hit => Err(Skip::Expansion),
        Ok(_) => Ok(out),
        Err(_) if capped.hit => Err(Skip::Expansion),
        Err(_) => Err(Skip::Corrupt),
    }
}

/// The name a decompressed `.gz` file goes by inside its path.
fn stem(path: &str) -> &str {
    let name = path.rsplit(['/', '!']).next().unwrap_or(path);
    name.strip_suffix(".gz")
        .or_else(|| name.strip_suffix(".gzip"))
        .or_else(|| name.strip_suffix(".z"))
        .filter(|s| !s.is_empty())
        .unwrap_or("(inflated)")
}

/// One scan of a file tree: its limits and what is left of its byte budget.
struct Walk<'o> {
    options: &'o DecodeOptions,
    limits: &'o TreeLimits,
    budget: u64,
}

impl Walk<'_> {
    /// The cap for a member `compressed` bytes long.
    fn cap(&self, compressed: u64) -> u64 {
        self.limits
            .max_member_bytes
            .min(compressed.max(1).saturating_mul(self.limits.max_ratio))
            .min(self.budget)
    }
}

impl<'r> Scanner<'r> {
    /// Scans `data`, named `path`: text with its decoded views; containers member by member
    /// (`path!member`), within `limits`. With `options.max_depth` 0, raw text only: nothing is
    /// decoded or opened.
    pub fn scan_tree(
        &mut self,
        path: &str,
        data: &[u8],
        options: &DecodeOptions,
        limits: &TreeLimits,
        sink: &mut impl TreeSink<'r>,
    ) {
        let mut walk = Walk {
            options,
            limits,
            budget: limits.max_total_bytes,
        };
        self.tree(path, data, 0, &mut walk, sink);
    }

    fn tree(
        &mut self,
        path: &str,
        data: &[u8],
        depth: usize,
        walk: &mut Walk<'_>,
        sink: &mut impl TreeSink<'r>,
    ) {
        self.scan_path(path, &mut |f: Finding<'r>| sink.finding(path, data, f));
        let kind = kind(data);
        if kind == Kind::Text {
            sink.scanned(data.len());
            // One depth budget for containers and decoders together.
            let options = DecodeOptions {
                max_depth: walk.options.max_depth.saturating_sub(depth),
                ..*walk.options
            };
            self.scan_decoded(path, data, &options, &mut |f: Finding<'r>| {
                sink.finding(path, data, f)
            });
            return;
        }
        if kind == Kind::Binary || walk.options.max_depth == 0 {
            sink.skipped(path, Skip::Binary);
            return;
        }
        if depth >= walk.options.max_depth {
            sink.skipped(path, Skip::Depth);
            return;
        }
        match kind {
            Kind::Zip => self.zip(path, data, depth, walk, sink),
            Kind::Tar => self.tar(path, Cursor::new(data), depth, walk, sink),
            Kind::Compressed(how) => {
                let cap = walk.cap(data.len() as u64);
                // A tar inside is read as a stream; anything else is one member.
                let mut head = Vec::new();
                let _ = decompressor(how, data).take(512).read_to_end(&mut head);
                if head.len() >= 262 && &head[257..262] == b"ustar" {
                    let mut capped = Capped {
                        inner: decompressor(how, data),
                        left: cap,
                        hit: false,
                    };
                    self.tar(path, &mut capped, depth, walk, sink);
                    if capped.hit {
                        sink.skipped(path, Skip::Expansion);
                    }
                    return;
                }
                let name = format!("{path}!{}", stem(path));
                self.member(&name, decompressor(how, data), None, cap, depth, walk, sink);
            }
            Kind::Text | Kind::Binary => unreachable!("handled above"),
        }
    }

    fn zip(
        &mut self,
        path: &str,
        data: &[u8],
        depth: usize,
        walk: &mut Walk<'_>,
        sink: &mut impl TreeSink<'r>,
    ) {
        let mut archive = match zip::ZipArchive::new(Cursor::new(data)) {
            Ok(a) => a,
            Err(_) => return sink.skipped(path, Skip::Corrupt),
        };
        for i in 0..archive.len().min(walk.limits.max_members) {
            let mut entry = match archive.by_index(i) {
                Ok(e) => e,
                Err(zip::result::ZipError::UnsupportedArchive(_)) => {
                    sink.skipped(path, Skip::Unsupported);
                    continue;
                }
                Err(_) => {
                    sink.skipped(path, Skip::Corrupt);
                    continue;
                }
            };
            if !entry.is_file() {
                continue;
            }
            let name = format!("{path}!{}", entry.name());
            let cap = walk.cap(entry.compressed_size());
            let declared = entry.size();
            self.member(&name, &mut entry, Some(declared), cap, depth, walk, sink);
        }
    }

    fn tar(
        &mut self,
        path: &str,
        reader: impl Read,
        depth: usize,
        walk: &mut Walk<'_>,
        sink: &mut impl TreeSink<'r>,
    ) {
        let mut archive = tar::Archive::new(reader);
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(_) => return sink.skipped(path, Skip::Corrupt),
        };
        for (n, entry) in entries.enumerate() {
            if n >= walk.limits.max_members {
                break;
            }
            let Ok(mut entry) = entry else {
                // A truncated stream (or one cut off at the cap) ends the archive.
                break;
            };
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let member = entry
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "(unnamed)".into());
            let name = format!("{path}!{member}");
            let cap = walk.limits.max_member_bytes.min(walk.budget);
            let declared = entry.size();
            self.member(&name, &mut entry, Some(declared), cap, depth, walk, sink);
        }
    }

    /// Reads one member through `cap` and scans it as a file named `name`, one level deeper. The
    /// size a header declares is checked first (a bomb usually declares it); every byte read is
    /// counted anyway (it may lie).
    #[allow(clippy::too_many_arguments)]
    fn member(
        &mut self,
        name: &str,
        reader: impl Read,
        declared: Option<u64>,
        cap: u64,
        depth: usize,
        walk: &mut Walk<'_>,
        sink: &mut impl TreeSink<'r>,
    ) {
        if declared.is_some_and(|size| size > cap) {
            return sink.skipped(name, Skip::Expansion);
        }
        match read_capped(reader, cap) {
            Ok(inner) => {
                walk.budget = walk.budget.saturating_sub(inner.len() as u64);
                self.tree(name, &inner, depth + 1, walk, sink);
            }
            Err(why) => sink.skipped(name, why),
        }
    }
}

fn decompressor(how: Compression, data: &[u8]) -> Box<dyn Read + '_> {
    match how {
        Compression::Zlib => Box::new(flate2::read::ZlibDecoder::new(data)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devtools::archives::{gzip, tar_of, zip_of};
    use crate::scanner::{DecodeStep, RuleSet, ScanOptions};

    fn token() -> String {
        let body = "R7mKq2VxT9pL4sN8wYc3Hd6Fj1Zb5A";
        format!(
            "ghp_{body}{}",
            crate::scanner::validate::crc32_base62(body.as_bytes())
        )
    }

    #[derive(Default)]
    struct Collected {
        found: Vec<(String, String, Vec<DecodeStep>, usize)>,
        skipped: Vec<(String, Skip)>,
    }

    impl<'r> TreeSink<'r> for Collected {
        fn finding(&mut self, path: &str, data: &[u8], f: Finding<'r>) {
            self.found.push((
                path.to_owned(),
                String::from_utf8_lossy(&data[f.span.clone()]).into_owned(),
                f.decoded.clone(),
                f.line,
            ));
        }
        fn skipped(&mut self, path: &str, why: Skip) {
            self.skipped.push((path.to_owned(), why));
        }
    }

    fn scan(path: &str, data: &[u8], options: DecodeOptions, limits: TreeLimits) -> Collected {
        let rules = RuleSet::default_rules(ScanOptions::default()).unwrap();
        let mut scanner = rules.scanner();
        let mut out = Collected::default();
        scanner.scan_tree(path, data, &options, &limits, &mut out);
        out
    }

    #[test]
    fn members_of_a_tarball_are_scanned_under_their_paths() {
        let t = token();
        let json = format!("{{\n  \"token\": \"{t}\"\n}}\n");
        let tgz = gzip(&tar_of(&[
            ("README.md", b"nothing here"),
            ("var/data/coordinator-token.json", json.as_bytes()),
        ]));
        let out = scan(
            "bundle.tar.gz",
            &tgz,
            DecodeOptions::default(),
            TreeLimits::default(),
        );
        assert_eq!(
            out.found,
            [(
                "bundle.tar.gz!var/data/coordinator-token.json".to_owned(),
                t.clone(),
                vec![],
                2
            )]
        );
        // Nothing is opened without decoding.
        let out = scan(
            "bundle.tar.gz",
            &tgz,
            DecodeOptions::none(),
            TreeLimits::default(),
        );
        assert!(out.found.is_empty());
        assert_eq!(out.skipped, [("bundle.tar.gz".to_owned(), Skip::Binary)]);
    }

    #[test]
    fn zips_plain_gz_and_nesting_are_opened_to_the_depth_allowed() {
        let t = token();
        let inner = zip_of(&[("config/app.env", format!("GH={t}\n").as_bytes())]);
        let jar = zip_of(&[("lib/inner.jar", &inner)]);
        let out = scan(
            "app.war",
            &jar,
            DecodeOptions::default(),
            TreeLimits::default(),
        );
        assert_eq!(out.found.len(), 1, "{:?}", out.skipped);
        assert_eq!(out.found[0].0, "app.war!lib/inner.jar!config/app.env");
        let shallow = DecodeOptions {
            max_depth: 1,
            ..DecodeOptions::default()
        };
        let out = scan("app.war", &jar, shallow, TreeLimits::default());
        assert!(out.found.is_empty());
        assert_eq!(
            out.skipped,
            [("app.war!lib/inner.jar".to_owned(), Skip::Depth)]
        );
        // A base64 value inside a gzipped file: both steps show.
        let b64 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("token={t}"),
        );
        let gz = gzip(format!("kind: Secret\ndata:\n  gh: {b64}\n").as_bytes());
        let out = scan(
            "secret.yaml.gz",
            &gz,
            DecodeOptions::default(),
            TreeLimits::default(),
        );
        assert_eq!(out.found.len(), 1);
        assert_eq!(out.found[0].0, "secret.yaml.gz!secret.yaml");
        assert_eq!(out.found[0].2, [DecodeStep::Base64]);
        assert_eq!(out.found[0].3, 3);
    }

    #[test]
    fn archives_of_token_free_files_find_nothing_and_bombs_are_cut_off() {
        let clean = zip_of(&[
            (
                "a.txt",
                b"just text, no secrets, aGVsbG8gd29ybGQgdGhpcyBpcyBmaW5l",
            ),
            ("b.bin", &[0u8, 1, 2, 3, 255]),
        ]);
        let out = scan(
            "clean.zip",
            &clean,
            DecodeOptions::default(),
            TreeLimits::default(),
        );
        assert!(out.found.is_empty());
        assert_eq!(out.skipped, [("clean.zip!b.bin".to_owned(), Skip::Binary)]);

        // 64 MB of zeros: 64 KB compressed, far past the ratio cap.
        let zeros = vec![0u8; 64 << 20];
        let bomb = zip_of(&[("zeros", &zeros)]);
        let tgz_bomb = gzip(&tar_of(&[("zeros", &zeros)]));
        drop(zeros);
        let out = scan(
            "bomb.zip",
            &bomb,
            DecodeOptions::default(),
            TreeLimits::default(),
        );
        assert_eq!(
            out.skipped,
            [("bomb.zip!zeros".to_owned(), Skip::Expansion)]
        );
        let out = scan(
            "bomb.tgz",
            &tgz_bomb,
            DecodeOptions::default(),
            TreeLimits::default(),
        );
        assert!(
            out.skipped.iter().any(|(_, why)| *why == Skip::Expansion),
            "{:?}",
            out.skipped
        );
        // Truncated: corrupt, not a crash.
        let out = scan(
            "cut.zip",
            &clean[..20],
            DecodeOptions::default(),
            TreeLimits::default(),
        );
        assert_eq!(out.skipped, [("cut.zip".to_owned(), Skip::Corrupt)]);
    }
}
