//! Scanning one push: `compare/{before}...{head}` (or the head commit alone for a new branch),
//! the added lines of each file's patch, and blobs for files GitHub shows no patch for, bounded
//! in size and count. A compare listing the maximum number of files may be truncated
//! (`too_many_files`): then each of its commits is read too, page by page, within the budget.
//!
//! Must not import storage or HTTP.

use std::collections::HashSet;

use base64::Engine as _;

use super::diff;
use super::github::{Blob, Commit, Compare, Error, FILES_PER_DIFF, File, GitHub, RateObserver};
use super::state::Push;
use crate::intake::hosts_near;
use crate::scanner::{DecodeOptions, Finding, RuleSet, Skip, TokenSecret, TreeLimits, TreeSink};

/// One token found in a push.
pub struct Hit {
    pub token: TokenSecret,
    pub verdict: &'static str,
    pub token_type: String,
    pub rule: String,
    /// `outer!member` for a token inside an archive.
    pub path: String,
    pub line: usize,
    pub url: String,
    pub hosts: Vec<String>,
    /// How it was reached inside the file (`base64`, `escape`, ...), outermost first.
    pub decoded: Vec<&'static str>,
}

/// What scanning a push found and what it had to leave out.
#[derive(Default)]
pub struct Scanned {
    pub hits: Vec<Hit>,
    pub commits: Vec<String>,
    pub files: usize,
    pub bytes: u64,
    /// (path, reason) for files not scanned.
    pub skipped: Vec<(String, &'static str)>,
    pub truncated: bool,
}

pub struct Limits {
    pub max_blobs: u32,
    pub max_blob_bytes: u64,
    pub html_url: String,
}

/// GitHub calls left in this poll; each request spends one.
pub struct Budget(pub u32);

impl Budget {
    fn spend(&mut self) -> Result<(), Error> {
        if self.0 == 0 {
            return Err(Error::Budget);
        }
        self.0 -= 1;
        Ok(())
    }

    pub fn is_spent(&self) -> bool {
        self.0 == 0
    }
}

/// With `degrade` (the push was given a whole poll's budget), a push that needs more calls than
/// that is scanned as far as the budget goes, the rest recorded as skipped, rather than retried
/// forever; without it, a spent budget is `Error::Budget` and the push waits for the next poll.
pub async fn scan_push(
    gh: &GitHub,
    observer: &dyn RateObserver,
    rules: &RuleSet,
    limits: &Limits,
    push: &Push,
    budget: &mut Budget,
    degrade: bool,
) -> Result<Scanned, Error> {
    let repo = &push.repo;
    let mut out = Scanned::default();
    let new_branch = push.before.is_empty() || push.before.bytes().all(|b| b == b'0');
    let files = if new_branch {
        budget.spend()?;
        let commit: Commit = page(
            gh,
            &format!("/repos/{repo}/commits/{}", push.head),
            observer,
        )
        .await?
        .json()?;
        out.commits.push(commit.sha);
        commit.files
    } else {
        budget.spend()?;
        let compare: Compare = match page(
            gh,
            &format!("/repos/{repo}/compare/{}...{}", push.before, push.head),
            observer,
        )
        .await
        {
            Ok(p) => p.json()?,
            // No diff to show (too large to generate, or `before` is gone after a force-push):
            // the head commit's own files are the nearest thing.
            Err(Error::Status { status: 422, .. }) => {
                out.truncated = true;
                out.commits.push(push.head.clone());
                Compare {
                    commits: Vec::new(),
                    files: commit_files(gh, observer, repo, &push.head, budget).await?,
                }
            }
            Err(e) => return Err(e),
        };
        out.commits
            .extend(compare.commits.iter().map(|c| c.sha.clone()));
        let mut files = compare.files;
        if files.len() >= FILES_PER_DIFF && !out.truncated {
            out.truncated = true;
            let listed: HashSet<(String, Option<String>)> = files
                .iter()
                .map(|f| (f.filename.clone(), f.sha.clone()))
                .collect();
            // Newest commit first: its version of a file is the one that was pushed.
            for sha in out.commits.iter().rev() {
                match commit_files(gh, observer, repo, sha, budget).await {
                    Ok(more) => {
                        for file in more {
                            if !listed.contains(&(file.filename.clone(), file.sha.clone())) {
                                files.push(file);
                            }
                        }
                    }
                    Err(Error::Budget) if degrade => {
                        out.skipped
                            .push((format!("commit {sha} and older"), "budget"));
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        files
    };

    let mut scanner = rules.scanner();
    let mut seen = HashSet::new();
    let mut blobs = 0;
    for file in files {
        if file.status == "removed" || !seen.insert((file.filename.clone(), file.sha.clone())) {
            continue;
        }
        out.files += 1;
        let link = |line: usize| match &file.blob_url {
            Some(u) => format!("{u}#L{line}"),
            None => format!(
                "{}/{repo}/blob/{}/{}#L{line}",
                limits.html_url.trim_end_matches('/'),
                push.head,
                file.filename
            ),
        };
        let (text, lines) = if let Some(patch) = &file.patch {
            let added = diff::added_lines(patch);
            (added.text, Some(added.lines))
        } else {
            let Some(sha) = file.sha.clone() else {
                out.skipped.push((file.filename.clone(), "no_blob"));
                continue;
            };
            if blobs >= limits.max_blobs {
                out.skipped.push((file.filename.clone(), "blob_count"));
                continue;
            }
            blobs += 1;
            match budget.spend() {
                Ok(()) => {}
                Err(_) if degrade => {
                    out.skipped.push((file.filename.clone(), "budget"));
                    continue;
                }
                Err(e) => return Err(e),
            }
            let blob: Blob = page(gh, &format!("/repos/{repo}/git/blobs/{sha}"), observer)
                .await?
                .json()?;
            if blob.size > limits.max_blob_bytes {
                out.skipped.push((file.filename.clone(), "blob_size"));
                continue;
            }
            let Some(bytes) = decode_blob(&blob) else {
                out.skipped.push((file.filename.clone(), "blob_encoding"));
                continue;
            };
            (bytes, None)
        };
        out.bytes += text.len() as u64;
        // A blob may be an archive or compressed (a deployment tarball): opened within the tree
        // limits; added lines are text, decoded but never opened.
        let mut sink = Hits {
            out: &mut out,
            top: &file.filename,
            lines: lines.as_deref(),
            link: &link,
        };
        scanner.scan_tree(
            &file.filename,
            &text,
            &DecodeOptions::default(),
            &blob_limits(limits.max_blob_bytes),
            &mut sink,
        );
    }
    Ok(out)
}

/// What a pushed blob may expand to: a few times the blob cap, never more than the CLI's limits.
fn blob_limits(max_blob_bytes: u64) -> TreeLimits {
    let defaults = TreeLimits::default();
    TreeLimits {
        max_member_bytes: defaults
            .max_member_bytes
            .min(max_blob_bytes.saturating_mul(4)),
        max_total_bytes: defaults
            .max_total_bytes
            .min(max_blob_bytes.saturating_mul(8)),
        ..defaults
    }
}

/// Collects one file's hits (a blob's archive members included, as `path!member`).
struct Hits<'a, L: Fn(usize) -> String> {
    out: &'a mut Scanned,
    top: &'a str,
    /// For a patch: the file line of each added line.
    lines: Option<&'a [usize]>,
    link: &'a L,
}

impl<'r, L: Fn(usize) -> String> TreeSink<'r> for Hits<'_, L> {
    fn finding(&mut self, path: &str, data: &[u8], f: Finding<'r>) {
        if f.verdict.is_invalid() {
            return;
        }
        let line = match self.lines {
            Some(lines) => lines.get(f.line.wrapping_sub(1)).copied().unwrap_or(0),
            None => f.line,
        };
        // A member's line is inside the member: the link points at the archive.
        let url = if path == self.top {
            (self.link)(line)
        } else {
            (self.link)(0).trim_end_matches("#L0").to_owned()
        };
        self.out.hits.push(Hit {
            token: f.secret().clone(),
            verdict: f.verdict.as_str(),
            token_type: f.rule.token_type.clone(),
            rule: f.rule.id.clone(),
            path: path.to_owned(),
            line,
            url,
            hosts: hosts_near(data, f.span.clone(), 256),
            decoded: f.decoded.iter().map(|d| d.as_str()).collect(),
        });
    }

    fn skipped(&mut self, path: &str, why: Skip) {
        self.out.skipped.push((path.to_owned(), why.as_str()));
    }
}

/// Every file of one commit, page by page (a commit lists up to 300 files per page).
async fn commit_files(
    gh: &GitHub,
    observer: &dyn RateObserver,
    repo: &str,
    sha: &str,
    budget: &mut Budget,
) -> Result<Vec<File>, Error> {
    let mut files = Vec::new();
    for n in 1..=10 {
        budget.spend()?;
        let commit: Commit = page(
            gh,
            &format!("/repos/{repo}/commits/{sha}?per_page={FILES_PER_DIFF}&page={n}"),
            observer,
        )
        .await?
        .json()?;
        let full = commit.files.len() >= FILES_PER_DIFF;
        files.extend(commit.files);
        if !full {
            break;
        }
    }
    Ok(files)
}

async fn page(
    gh: &GitHub,
    path: &str,
    observer: &dyn RateObserver,
) -> Result<super::github::Page, Error> {
    let page = gh.get(path, None, observer).await?;
    if page.not_modified {
        return Err(Error::Malformed(format!(
            "{path}: 304 to an unconditional request"
        )));
    }
    Ok(page)
}

fn decode_blob(blob: &Blob) -> Option<Vec<u8>> {
    match blob.encoding.as_str() {
        "base64" => {
            let compact: String = blob.content.split_ascii_whitespace().collect();
            base64::engine::general_purpose::STANDARD
                .decode(compact)
                .ok()
        }
        "utf-8" | "utf8" => Some(blob.content.clone().into_bytes()),
        _ => None,
    }
}
