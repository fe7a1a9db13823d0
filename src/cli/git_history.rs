//! `spillway scan --git`: every blob of a repository's history scanned once, each hit reported with
//! the commit and path that introduced it.
//!
//! Commits are visited oldest first (by commit time, parents before children) from every reference, and each tree is walked
//! once: a tree id already seen holds only blobs already attributed, so it is skipped whole. Blob
//! contents are then scanned in parallel, one scanner and one object cache per thread.
//!
//! Must not import anything but the scanner: the scan CLI needs no database.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use gix::ObjectId;
use gix::revision::walk::Sorting;
use gix::traverse::commit::simple::CommitTimeOrder;

use super::report::ReportedFinding;
use super::scan::{Collect, ScanStats};
use crate::scanner::RuleSet;
use crate::scanner::{DecodeOptions, TreeLimits};

/// Where the repository at `path` comes from, for SARIF's `versionControlProvenance`: its `origin`
/// remote as a URI with no credentials, query or fragment (an scp-like `git@host:path` becomes
/// `ssh://host/path`), and what HEAD names. None without a usable remote: a local path is no
/// repository URI worth uploading.
pub fn provenance(path: &Path) -> Option<super::report::Provenance> {
    let repo = gix::discover(path).ok()?;
    let remote = repo.find_remote("origin").ok()?;
    let url = remote.url(gix::remote::Direction::Fetch)?;
    let host = url.host()?;
    let repo_path = url.path.to_string();
    let repo_path = repo_path
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .trim_start_matches('/');
    let port = url.port.map(|p| format!(":{p}")).unwrap_or_default();
    let repository_uri = match url.scheme {
        gix::url::Scheme::Https => format!("https://{host}{port}/{repo_path}"),
        gix::url::Scheme::Http => format!("http://{host}{port}/{repo_path}"),
        gix::url::Scheme::Ssh => format!("ssh://{host}{port}/{repo_path}"),
        gix::url::Scheme::Git => format!("git://{host}{port}/{repo_path}"),
        _ => return None,
    };
    Some(super::report::Provenance {
        repository_uri,
        revision_id: repo.head_id().ok().map(|id| id.to_string()),
        branch: repo
            .head_name()
            .ok()
            .flatten()
            .map(|name| name.as_bstr().to_string()),
        mapped_to: serde_json::json!({ "uriBaseId": super::report::SRCROOT }),
    })
}

/// A blob to scan and where it first appeared.
struct BlobOrigin {
    blob: ObjectId,
    commit: ObjectId,
    path: String,
}

/// Lists every blob in the history of the repository at `path`, attributed to its first commit.
fn first_appearances(repo: &gix::Repository) -> anyhow::Result<Vec<BlobOrigin>> {
    let mut tips: Vec<ObjectId> = Vec::new();
    if let Ok(head) = repo.head_id() {
        tips.push(head.detach());
    }
    for reference in repo.references()?.all()? {
        let Ok(mut reference) = reference else {
            continue;
        };
        if let Ok(id) = reference.peel_to_id()
            && repo
                .find_object(id)
                .is_ok_and(|o| o.kind == gix::object::Kind::Commit)
        {
            tips.push(id.detach());
        }
    }
    tips.sort();
    tips.dedup();
    anyhow::ensure!(!tips.is_empty(), "the repository has no commits");
    let mut commits: Vec<(ObjectId, ObjectId)> = Vec::new();
    // Newest first (a child always before its parents), then reversed: oldest first, parents first.
    for info in repo
        .rev_walk(tips)
        .sorting(Sorting::ByCommitTime(CommitTimeOrder::NewestFirst))
        .all()?
    {
        let info = info?;
        let tree = repo.find_commit(info.id)?.tree_id()?.detach();
        commits.push((info.id, tree));
    }
    commits.reverse();
    let mut seen_trees: HashSet<ObjectId> = HashSet::new();
    let mut seen_blobs: HashSet<ObjectId> = HashSet::new();
    let mut out = Vec::new();
    for (commit, root) in commits {
        let mut stack = vec![(root, String::new())];
        while let Some((tree_id, prefix)) = stack.pop() {
            if !seen_trees.insert(tree_id) {
                continue;
            }
            let tree = repo.find_tree(tree_id)?;
            for entry in tree.decode()?.entries.iter() {
                let path = if prefix.is_empty() {
                    entry.filename.to_string()
                } else {
                    format!("{prefix}/{}", entry.filename)
                };
                let id = entry.oid.to_owned();
                if entry.mode.is_tree() {
                    stack.push((id, path));
                } else if entry.mode.is_blob() && seen_blobs.insert(id) {
                    out.push(BlobOrigin {
                        blob: id,
                        commit,
                        path,
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Scans the history of the repository at `path` with `threads` threads.
pub fn scan_history(
    set: &RuleSet,
    path: &Path,
    threads: usize,
    max_file_size: u64,
    show_secrets: bool,
    decode: &DecodeOptions,
    stats: &ScanStats,
) -> anyhow::Result<Vec<ReportedFinding>> {
    let repo =
        gix::open(path).with_context(|| format!("{}: not a git repository", path.display()))?;
    let blobs = first_appearances(&repo)
        .with_context(|| format!("{}: cannot read history", path.display()))?;
    let shared = repo.into_sync();
    let next = AtomicUsize::new(0);
    let found = Mutex::new(Vec::new());
    let first_error = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut repo = shared.to_thread_local();
                repo.object_cache_size_if_unset(16 << 20);
                let mut scanner = set.scanner();
                let mut local = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(origin) = blobs.get(i) else { break };
                    let blob = match repo.find_object(origin.blob) {
                        Ok(b) => b,
                        Err(e) => {
                            first_error
                                .lock()
                                .expect("no panics while locked")
                                .get_or_insert_with(|| {
                                    anyhow::anyhow!(
                                        "{}: blob {} ({}): {e}",
                                        path.display(),
                                        origin.blob,
                                        origin.path
                                    )
                                });
                            break;
                        }
                    };
                    if blob.data.len() as u64 > max_file_size {
                        stats.skipped_large.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let commit = origin.commit.to_string();
                    scanner.set_commit(Some(&commit));
                    let mut collect = Collect::new(stats, Some(commit), show_secrets);
                    scanner.scan_tree(
                        &origin.path,
                        &blob.data,
                        decode,
                        &TreeLimits::default(),
                        &mut collect,
                    );
                    local.extend(collect.found);
                }
                found.lock().expect("no panics while locked").extend(local);
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("threads joined") {
        return Err(e);
    }
    Ok(found.into_inner().expect("threads joined"))
}
