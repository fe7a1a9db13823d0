//! The tamper-evident audit log: append-only entries in the database, chained by hash with RFC 9162
//! leaf and node hashing, plus Ed25519-signed checkpoints written to a file outside the database.
//!
//! - An entry's leaf hash is `SHA-256(0x00 || canonical JSON of the entry)`; its chain hash is
//!   `SHA-256(0x01 || previous chain hash || leaf hash)` (32 zero bytes before the first entry).
//! - A checkpoint signs `(seq, chain hash)` of the newest entry. Editing, deleting or reordering
//!   entries breaks the chain; rewriting the whole chain consistently, or cutting its tail, no longer
//!   matches a signed checkpoint. [`verify`] names the first bad entry.
//!
//! Every state change appends its entry inside the same transaction as the change itself.
//!
//! Owns the `audit_log` table and the checkpoint file. Must not import anything outside `platform`.

use std::io::{BufRead as _, Write as _};
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::platform::store::{Backend, Store, Tx, now_ms};

/// One audit entry. Never holds a raw token: subjects are ids and fingerprints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: serde_json::Value,
}

impl Entry {
    fn leaf_hash(&self) -> [u8; 32] {
        let canonical = serde_json::to_vec(self).expect("entries serialise");
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(&canonical);
        h.finalize().into()
    }
}

fn chain_hash(previous: &[u8; 32], leaf: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(previous);
    h.update(leaf);
    h.finalize().into()
}

fn decode_hash(hex_str: &str) -> Option<[u8; 32]> {
    hex::decode(hex_str).ok()?.try_into().ok()
}

/// The newest entry's place in the chain.
#[derive(sqlx::FromRow)]
struct Head {
    seq: i64,
    chain_hash: String,
}

const HEAD: &str = "SELECT seq, chain_hash FROM audit_log ORDER BY seq DESC LIMIT 1";

/// The sequence number and previous chain hash the next entry takes after `head`.
fn next_after(head: Option<Head>) -> anyhow::Result<(i64, [u8; 32])> {
    Ok(match head {
        Some(head) => (
            head.seq + 1,
            decode_hash(&head.chain_hash).context("corrupt chain hash in audit log")?,
        ),
        None => (1, [0u8; 32]),
    })
}

/// Appends an entry inside `tx` and returns its sequence number.
pub async fn append(
    tx: &mut Tx,
    backend: Backend,
    actor: &str,
    action: &str,
    subject: &str,
    details: serde_json::Value,
) -> anyhow::Result<i64> {
    if backend == Backend::Postgres {
        // Replicas append one at a time: the lock is released when the transaction ends.
        sqlx::query("SELECT pg_advisory_xact_lock(7305001)")
            .execute(&mut **tx)
            .await?;
    }
    let last = sqlx::query_as::<_, Head>(HEAD)
        .fetch_optional(&mut **tx)
        .await?;
    let (seq, previous) = next_after(last)?;
    let entry = Entry {
        seq,
        at: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        details,
    };
    let leaf = entry.leaf_hash();
    let chain = chain_hash(&previous, &leaf);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, subject, details, leaf_hash, chain_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(entry.seq)
    .bind(entry.at)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.subject)
    .bind(canonical(&entry.details))
    .bind(hex::encode(leaf))
    .bind(hex::encode(chain))
    .execute(&mut **tx)
    .await
    .context("cannot append to the audit log")?;
    Ok(seq)
}

/// An entry to append (see [`append_many`]).
pub struct NewEntry {
    pub actor: String,
    pub action: &'static str,
    pub subject: String,
    pub details: serde_json::Value,
}

/// Appends `entries` in order inside `tx`, chained as [`append`] chains them, in as few statements
/// as possible (intake's group commit appends one entry per alert).
pub async fn append_many(
    tx: &mut Tx,
    backend: Backend,
    entries: Vec<NewEntry>,
) -> anyhow::Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(7305001)")
            .execute(&mut **tx)
            .await?;
    }
    let last = sqlx::query_as::<_, Head>(HEAD)
        .fetch_optional(&mut **tx)
        .await?;
    let (mut seq, mut previous) = next_after(last)?;
    let at = now_ms();
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        let entry = Entry {
            seq,
            at,
            actor: e.actor,
            action: e.action.to_owned(),
            subject: e.subject,
            details: e.details,
        };
        let leaf = entry.leaf_hash();
        let chain = chain_hash(&previous, &leaf);
        rows.push((entry, hex::encode(leaf), hex::encode(chain)));
        previous = chain;
        seq += 1;
    }
    for chunk in rows.chunks(500) {
        let sql = format!(
            "INSERT INTO audit_log (seq, at, actor, action, subject, details, leaf_hash, chain_hash) VALUES {}",
            crate::platform::store::Params::for_backend(backend).rows(chunk.len(), 8)
        );
        let mut q = sqlx::query(&sql);
        for (entry, leaf, chain) in chunk {
            q = q
                .bind(entry.seq)
                .bind(entry.at)
                .bind(&entry.actor)
                .bind(&entry.action)
                .bind(&entry.subject)
                .bind(canonical(&entry.details))
                .bind(leaf)
                .bind(chain);
        }
        q.execute(&mut **tx)
            .await
            .context("cannot append to the audit log")?;
    }
    Ok(())
}

/// An entry as stored: its details as JSON text.
#[derive(sqlx::FromRow)]
struct EntryRow {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    subject: String,
    details: String,
}

impl EntryRow {
    /// The entry, its details parsed (`unreadable` is what text that is not JSON becomes), and
    /// the details text as stored.
    fn into_entry(self, unreadable: impl FnOnce(&str) -> serde_json::Value) -> (Entry, String) {
        let details =
            serde_json::from_str(&self.details).unwrap_or_else(|_| unreadable(&self.details));
        let entry = Entry {
            seq: self.seq,
            at: self.at,
            actor: self.actor,
            action: self.action,
            subject: self.subject,
            details,
        };
        (entry, self.details)
    }
}

/// An entry as stored, with its hashes.
#[derive(sqlx::FromRow)]
struct StoredRow {
    #[sqlx(flatten)]
    entry: EntryRow,
    leaf_hash: String,
    chain_hash: String,
}

struct StoredEntry {
    entry: Entry,
    /// The details as stored, to check they are canonical JSON.
    details_text: String,
    leaf_hash: String,
    chain_hash: String,
}

impl From<StoredRow> for StoredEntry {
    fn from(r: StoredRow) -> StoredEntry {
        let (entry, details_text) = r
            .entry
            .into_entry(|text| serde_json::Value::String(text.to_owned()));
        StoredEntry {
            entry,
            details_text,
            leaf_hash: r.leaf_hash,
            chain_hash: r.chain_hash,
        }
    }
}

async fn load(store: &Store) -> anyhow::Result<Vec<StoredEntry>> {
    let rows = sqlx::query_as::<_, StoredRow>(
        "SELECT seq, at, actor, action, subject, details, leaf_hash, chain_hash FROM audit_log ORDER BY seq",
    )
    .fetch_all(store.pool())
    .await?;
    Ok(rows.into_iter().map(StoredEntry::from).collect())
}

/// Every entry recording `action`, oldest first.
pub async fn with_action(store: &Store, action: &str) -> anyhow::Result<Vec<Entry>> {
    entries_where(store, "action", action).await
}

/// Every entry about `subject` (its subject, as `finding:12` or `admin-key:...`), oldest first.
pub async fn about(store: &Store, subject: &str) -> anyhow::Result<Vec<Entry>> {
    entries_where(store, "subject", subject).await
}

/// Every entry whose `column` (a name from this module, never input) is `value`, oldest first.
async fn entries_where(
    store: &Store,
    column: &'static str,
    value: &str,
) -> anyhow::Result<Vec<Entry>> {
    let rows = sqlx::query_as::<_, EntryRow>(&format!(
        "SELECT seq, at, actor, action, subject, details FROM audit_log WHERE {column} = $1 ORDER BY seq"
    ))
    .bind(value)
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| r.into_entry(|_| serde_json::Value::Null).0)
        .collect())
}

/// Prints every entry as one JSON object per line.
pub async fn export_jsonl(store: &Store, out: &mut impl std::io::Write) -> anyhow::Result<usize> {
    let entries = load(store).await?;
    for e in &entries {
        serde_json::to_writer(&mut *out, &e.entry)?;
        writeln!(out)?;
    }
    Ok(entries.len())
}

/// A signed statement that the log held `seq` entries ending in `chain_hash`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub chain_hash: String,
    pub at: i64,
    pub signature: String,
}

fn checkpoint_message(seq: i64, chain_hash: &str) -> Vec<u8> {
    format!("spillway-audit-checkpoint-v1\n{seq}\n{chain_hash}\n").into_bytes()
}

/// The newest checkpoint in `path`, read from its end (the file grows by a line a second under
/// load, so it is not read whole).
pub fn last_checkpoint(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot read checkpoints", path.display()));
        }
    };
    let len = file.metadata()?.len();
    let tail = len.min(4096);
    file.seek(SeekFrom::Start(len - tail))?;
    let mut buf = String::new();
    file.read_to_string(&mut buf)?;
    let Some(line) = buf.lines().rev().find(|l| !l.trim().is_empty()) else {
        return Ok(None);
    };
    serde_json::from_str(line)
        .map(Some)
        .with_context(|| format!("{}: last line is not a checkpoint", path.display()))
}

/// Signs the newest entry and appends the checkpoint to `path` (fsynced). Does nothing on an empty
/// log or when the newest entry is already checkpointed. The file work runs on a blocking thread, so
/// the fsync never stalls the tasks answering alerts.
pub async fn write_checkpoint(
    store: &Store,
    path: &Path,
    key: &SigningKey,
) -> anyhow::Result<Option<Checkpoint>> {
    let Some(Head { seq, chain_hash }) = sqlx::query_as::<_, Head>(HEAD)
        .fetch_optional(store.pool())
        .await?
    else {
        return Ok(None);
    };
    let (path, key) = (path.to_owned(), key.clone());
    tokio::task::spawn_blocking(move || append_checkpoint(&path, &key, seq, chain_hash))
        .await
        .context("checkpoint writer panicked")?
}

fn append_checkpoint(
    path: &Path,
    key: &SigningKey,
    seq: i64,
    chain_hash: String,
) -> anyhow::Result<Option<Checkpoint>> {
    if last_checkpoint(path)?.is_some_and(|c| c.seq == seq) {
        return Ok(None);
    }
    let signature = STANDARD.encode(key.sign(&checkpoint_message(seq, &chain_hash)).to_bytes());
    let checkpoint = Checkpoint {
        seq,
        chain_hash,
        at: now_ms(),
        signature,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open checkpoint file", path.display()))?;
    writeln!(file, "{}", serde_json::to_string(&checkpoint)?)?;
    file.sync_all()
        .with_context(|| format!("{}: cannot sync checkpoint file", path.display()))?;
    Ok(Some(checkpoint))
}

fn read_checkpoints(path: &Path) -> anyhow::Result<Vec<Checkpoint>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot read checkpoints", path.display()));
        }
    };
    std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let line = line?;
            serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a checkpoint", path.display(), i + 1))
        })
        .collect()
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry chains, and every checkpoint matches. `unwitnessed`: the newest entries no
    /// signed checkpoint covers yet (appended within the last checkpoint interval, or after a
    /// crash); their deletion could not be told from their never having been written.
    Intact {
        entries: usize,
        checkpoints: usize,
        unwitnessed: usize,
    },
    /// The first problem, naming the entry.
    Broken { seq: i64, reason: String },
}

/// Recomputes the chain and checks it against the stored hashes and the signed checkpoints.
pub async fn verify(
    store: &Store,
    checkpoints: &Path,
    key: &ed25519_dalek::VerifyingKey,
) -> anyhow::Result<Verdict> {
    let entries = load(store).await?;
    let mut chain_at = std::collections::HashMap::new();
    let mut previous = [0u8; 32];
    for (i, stored) in entries.iter().enumerate() {
        let expected_seq = i as i64 + 1;
        let seq = stored.entry.seq;
        if seq != expected_seq {
            return Ok(Verdict::Broken {
                seq: expected_seq,
                reason: format!(
                    "entry {expected_seq} is missing (next entry present is {seq}): deleted"
                ),
            });
        }
        // Details are stored as canonical JSON (keys sorted, no duplicates, no spaces): the text
        // the hash covers is the text every reader sees. Anything else (a duplicated key whose
        // first value a JSON reader such as SQLite's json_extract would take) is tampering.
        if canonical(&stored.entry.details) != stored.details_text {
            return Ok(Verdict::Broken {
                seq,
                reason: format!(
                    "entry {seq} was modified: its details are not stored as canonical JSON"
                ),
            });
        }
        let leaf = stored.entry.leaf_hash();
        if hex::encode(leaf) != stored.leaf_hash {
            return Ok(Verdict::Broken {
                seq,
                reason: format!("entry {seq} was modified: its content does not match its hash"),
            });
        }
        let chain = chain_hash(&previous, &leaf);
        if hex::encode(chain) != stored.chain_hash {
            return Ok(Verdict::Broken {
                seq,
                reason: format!(
                    "entry {seq} does not chain to entry {}: entries reordered or rewritten",
                    seq - 1
                ),
            });
        }
        chain_at.insert(seq, hex::encode(chain));
        previous = chain;
    }
    let checkpoints = read_checkpoints(checkpoints)?;
    // The newest checkpoint that still matches: a rewrite must have started after it.
    let mut last_matching = 0;
    for c in &checkpoints {
        let signature = STANDARD
            .decode(&c.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .context("a checkpoint has a malformed signature")?;
        if key
            .verify(&checkpoint_message(c.seq, &c.chain_hash), &signature)
            .is_err()
        {
            return Ok(Verdict::Broken {
                seq: c.seq,
                reason: format!("checkpoint at entry {} has a bad signature", c.seq),
            });
        }
        match chain_at.get(&c.seq) {
            None => {
                return Ok(Verdict::Broken {
                    seq: entries.len() as i64 + 1,
                    reason: format!(
                        "log truncated: a signed checkpoint covers entry {} but the log ends at entry {}",
                        c.seq,
                        entries.len()
                    ),
                });
            }
            Some(chain) if *chain != c.chain_hash => {
                return Ok(Verdict::Broken {
                    seq: last_matching + 1,
                    reason: format!(
                        "entries {}..={} do not match the signed checkpoint at entry {}: the log was rewritten",
                        last_matching + 1,
                        c.seq,
                        c.seq
                    ),
                });
            }
            Some(_) => last_matching = last_matching.max(c.seq),
        }
    }
    let witnessed = checkpoints.iter().map(|c| c.seq).max().unwrap_or(0);
    Ok(Verdict::Intact {
        entries: entries.len(),
        checkpoints: checkpoints.len(),
        unwitnessed: (entries.len() as i64 - witnessed).max(0) as usize,
    })
}

/// The one text an entry's details are stored as: serde_json's rendering of a `Value`, whose
/// objects keep their keys sorted and unique (the crate is built without `preserve_order`).
pub fn canonical(details: &serde_json::Value) -> String {
    details.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_and_node_hashes_use_rfc9162_prefixes() {
        let e = Entry {
            seq: 1,
            at: 0,
            actor: "a".into(),
            action: "b".into(),
            subject: "c".into(),
            details: serde_json::json!({}),
        };
        let bytes = serde_json::to_vec(&e).unwrap();
        let mut h = Sha256::new();
        h.update([0u8]);
        h.update(&bytes);
        let leaf: [u8; 32] = h.finalize().into();
        assert_eq!(e.leaf_hash(), leaf);
        let mut n = Sha256::new();
        n.update([1u8]);
        n.update([0u8; 32]);
        n.update(leaf);
        let node: [u8; 32] = n.finalize().into();
        assert_eq!(chain_hash(&[0u8; 32], &leaf), node);
    }
}
