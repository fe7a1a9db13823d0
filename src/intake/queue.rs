//! The decide queue as the revocation engine consumes it: claiming queued candidates (leases;
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL), reading them, completing them fenced by the lease,
//! counting failed attempts, and what a decision changes on a candidate (its sealed copy goes, its
//! offline label stays). Intake's committer writes these rows; this module is the only other code
//! that touches `work_queue` and `candidates`. Must not import the revocation engine or HTTP.

use std::collections::{HashMap, HashSet};

use anyhow::Context as _;
use sqlx::Row as _;

use crate::findings::Label;
use crate::platform::store::{Store, Tx};

/// Rows per multi-row statement (parameters stay well under both backends' limits).
const ROWS_PER_STATEMENT: usize = 64;

/// A claimed decide work item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    pub work_id: i64,
    pub candidate_id: i64,
    /// The part of its alert the candidate came in: its findings are served in this order.
    pub priority: i64,
}

/// Leases up to `limit` due decide items to `worker`, in arrival order.
pub async fn claim(
    store: &Store,
    worker: &str,
    limit: usize,
    now: i64,
    lease_until: i64,
) -> anyhow::Result<Vec<Claim>> {
    let lock = store.skip_locked();
    let rows = sqlx::query(&format!(
        "UPDATE work_queue SET lease_until = $1, lease_owner = $2 WHERE id IN (\
           SELECT id FROM work_queue WHERE kind = 'decide' AND state = 'pending' AND run_at <= $3 \
           AND (lease_until IS NULL OR lease_until < $3) ORDER BY priority, id LIMIT $4 {lock}) \
         RETURNING id, candidate_id, priority"
    ))
    .bind(lease_until)
    .bind(worker)
    .bind(now)
    .bind(limit as i64)
    .fetch_all(store.pool())
    .await
    .context("cannot claim candidates")?;
    let mut claimed = rows
        .iter()
        .map(|row| {
            Ok(Claim {
                work_id: row.try_get("id")?,
                candidate_id: row.try_get("candidate_id")?,
                priority: row.try_get("priority")?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // RETURNING does not keep the subquery's order: arrival order, so the first report of a
    // token is the one its finding records.
    claimed.sort_unstable();
    Ok(claimed)
}

/// A queued candidate, as a decision reads it.
#[derive(Debug, Clone)]
pub struct QueuedCandidate {
    pub claim: Claim,
    pub fingerprint: String,
    pub token_type: String,
    pub url: Option<String>,
    /// The listener kind (or id) it came through.
    pub source: String,
    pub sealed_token: Option<String>,
    /// Hostnames seen next to the token.
    pub context_hosts: Vec<String>,
    pub received_at: i64,
}

#[derive(sqlx::FromRow)]
struct CandidateRow {
    id: i64,
    fingerprint: String,
    token_type: String,
    url: Option<String>,
    sealed_token: Option<String>,
    context_hosts: Option<String>,
    received_at: i64,
    source: String,
}

/// The claimed candidates, in the order given: one query.
pub async fn load(store: &Store, claimed: &[Claim]) -> anyhow::Result<Vec<QueuedCandidate>> {
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT c.id, c.fingerprint, c.token_type, c.url, c.sealed_token, c.context_hosts, \
         a.received_at, COALESCE(l.kind, a.listener_id) AS source \
         FROM candidates c JOIN alerts a ON a.id = c.alert_id \
         LEFT JOIN listeners l ON l.id = a.listener_id WHERE c.id IN ({})",
        store.params().list(claimed.len())
    );
    let mut q = sqlx::query_as::<_, CandidateRow>(&sql);
    for c in claimed {
        q = q.bind(c.candidate_id);
    }
    let mut rows: HashMap<i64, CandidateRow> = q
        .fetch_all(store.pool())
        .await
        .context("cannot read candidates")?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    claimed
        .iter()
        .map(|&claim| {
            let row = rows
                .remove(&claim.candidate_id)
                .with_context(|| format!("candidate {} is gone", claim.candidate_id))?;
            Ok(QueuedCandidate {
                claim,
                fingerprint: row.fingerprint,
                token_type: row.token_type,
                url: row.url,
                source: row.source,
                sealed_token: row.sealed_token,
                context_hosts: row
                    .context_hosts
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or_default(),
                received_at: row.received_at,
            })
        })
        .collect()
}

/// Completes the items this worker still leases (a decided item is deleted: the candidate, its
/// findings and the audit entry are the record, so the queue's indexes stay small). Returns the
/// work ids completed; another worker may have taken the others over.
pub async fn complete(
    tx: &mut Tx,
    store: &Store,
    worker: &str,
    work_ids: &[i64],
) -> anyhow::Result<HashSet<i64>> {
    let mut done = HashSet::new();
    for chunk in work_ids.chunks(ROWS_PER_STATEMENT) {
        let mut p = store.params();
        let sql = format!(
            "DELETE FROM work_queue WHERE lease_owner = {} AND state = 'pending' AND id IN ({}) \
             RETURNING id",
            p.take(),
            p.list(chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(worker);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q
            .fetch_all(&mut **tx)
            .await
            .context("cannot complete work items")?
        {
            done.insert(row.try_get::<i64, _>("id")?);
        }
    }
    Ok(done)
}

/// After a decision: the candidates' sealed copies go (their findings hold their own), and an
/// offline label is kept unless one is already set.
pub async fn decided(
    tx: &mut Tx,
    store: &Store,
    candidate_ids: &[i64],
    labels: &[(i64, Label)],
) -> anyhow::Result<()> {
    for chunk in candidate_ids.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE candidates SET sealed_token = NULL WHERE id IN ({})",
            store.params().list(chunk.len())
        );
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut **tx)
            .await
            .context("cannot update candidates")?;
    }
    for label in [Label::TruePositive, Label::FalsePositive] {
        let ids: Vec<i64> = labels
            .iter()
            .filter(|(_, l)| *l == label)
            .map(|(id, _)| *id)
            .collect();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let mut p = store.params();
            let sql = format!(
                "UPDATE candidates SET label = COALESCE(label, {}) WHERE id IN ({})",
                p.take(),
                p.list(chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(label.as_str());
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut **tx)
                .await
                .context("cannot label candidates")?;
        }
    }
    Ok(())
}

/// Counts a failed attempt and releases the lease; None when this worker no longer holds it.
pub async fn attempt_failed(
    store: &Store,
    worker: &str,
    work_id: i64,
) -> anyhow::Result<Option<i64>> {
    let row = sqlx::query(
        "UPDATE work_queue SET attempts = attempts + 1, lease_until = NULL, lease_owner = NULL \
         WHERE id = $1 AND lease_owner = $2 AND state = 'pending' RETURNING attempts",
    )
    .bind(work_id)
    .bind(worker)
    .fetch_optional(store.pool())
    .await
    .context("cannot count a failed decision")?;
    row.map(|r| r.try_get("attempts").map_err(Into::into))
        .transpose()
}

/// Schedules a failed decision again at `run_at`.
pub async fn retry_at(store: &Store, work_id: i64, run_at: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE work_queue SET run_at = $1 WHERE id = $2")
        .bind(run_at)
        .bind(work_id)
        .execute(store.pool())
        .await
        .context("cannot reschedule a decision")?;
    Ok(())
}

/// Gives a decision up (its attempts ran out) inside `tx`.
pub async fn give_up(tx: &mut Tx, work_id: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE work_queue SET state = 'failed' WHERE id = $1 AND state = 'pending'")
        .bind(work_id)
        .execute(&mut **tx)
        .await
        .context("cannot fail a decision")?;
    Ok(())
}

/// Candidates waiting to be decided.
pub async fn pending(store: &Store) -> anyhow::Result<i64> {
    let n: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM work_queue WHERE kind = 'decide' AND state = 'pending'",
    )
    .fetch_one(store.pool())
    .await
    .context("cannot count queued decisions")?
    .try_get("n")?;
    Ok(n)
}
