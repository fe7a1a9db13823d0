//! The `findings` table: every statement that reads or writes it is here, and every state change
//! is checked against the lifecycle ([`super::lifecycle::allowed`]) before it is written. Callers
//! hold the transaction (a change commits with its audit entry) and decide what happens; this
//! module only knows rows. Must not import the revocation engine, HTTP or the installation
//! registry.

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::Row as _;

use super::lifecycle::{self, FindingState, Label, Outcome};
use crate::platform::store::{Store, Tx};

/// Rows per multi-row statement (parameters stay well under both backends' limits).
const ROWS_PER_STATEMENT: usize = 64;

/// A finding a decision creates.
#[derive(Debug, Clone)]
pub struct NewFinding<'a> {
    pub candidate_id: i64,
    /// None: unattributed, or one of this Spillway's own admin keys.
    pub installation_id: Option<&'a str>,
    pub fingerprint: &'a str,
    pub token_type: &'a str,
    /// `key_id`, `hostname`, `token_type`, `none` or `spillway`.
    pub attribution: &'static str,
    pub state: FindingState,
    pub label: Option<Label>,
    /// The sealed payload, while a call or pull still needs it.
    pub sealed_token: Option<String>,
    pub found_at: Option<&'a str>,
    pub source: &'a str,
    pub received_at: i64,
    pub priority: i64,
    /// Why nobody was attributed.
    pub last_error: Option<&'a str>,
}

/// A finding a decision inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub id: i64,
    pub candidate_id: i64,
    pub installation_id: Option<String>,
}

/// Inserts decided findings inside `tx`, in the order given. A token already found for an
/// installation keeps its first finding (the later one is left out of the result).
pub async fn insert(
    tx: &mut Tx,
    store: &Store,
    rows: &[NewFinding<'_>],
    now: i64,
) -> anyhow::Result<Vec<Inserted>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO findings (candidate_id, installation_id, fingerprint, token_type, attribution, \
             state, outcome, label, sealed_token, found_at, source, received_at, created_at, updated_at, \
             next_run_at, decided_at, priority, last_error) VALUES {} \
             ON CONFLICT (installation_id, fingerprint) WHERE installation_id IS NOT NULL DO NOTHING \
             RETURNING id, candidate_id, installation_id",
            store.params().rows(chunk.len(), 18)
        );
        let mut q = sqlx::query(&sql);
        for f in chunk {
            anyhow::ensure!(
                lifecycle::initial(f.state),
                "a finding cannot start in state {}",
                f.state
            );
            let terminal = f.state.is_terminal();
            q = q
                .bind(f.candidate_id)
                .bind(f.installation_id)
                .bind(f.fingerprint)
                .bind(f.token_type)
                .bind(f.attribution)
                .bind(f.state.as_str())
                .bind(terminal.then(|| f.state.as_str()))
                .bind(f.label.map(Label::as_str))
                .bind(f.sealed_token.clone().filter(|_| !terminal))
                .bind(f.found_at)
                .bind(f.source)
                .bind(f.received_at)
                .bind(now)
                .bind(now)
                .bind(now)
                .bind(terminal.then_some(now))
                .bind(f.priority)
                .bind(f.last_error);
        }
        for row in q
            .fetch_all(&mut **tx)
            .await
            .context("cannot record findings")?
        {
            out.push(Inserted {
                id: row.try_get("id")?,
                candidate_id: row.try_get("candidate_id")?,
                installation_id: row.try_get("installation_id")?,
            });
        }
    }
    Ok(out)
}

/// A finding a worker holds the lease of.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub installation_id: String,
    pub state: FindingState,
    /// The revoke's outcome, carried while the notification is due.
    pub outcome: Option<Outcome>,
    pub fingerprint: String,
    pub token_type: String,
    pub sealed_token: Option<String>,
    pub found_at: Option<String>,
    pub source: String,
    pub received_at: i64,
    pub created_at: i64,
    pub attempts: i64,
    pub decided_at: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: i64,
    installation_id: String,
    state: String,
    outcome: Option<String>,
    fingerprint: String,
    token_type: String,
    sealed_token: Option<String>,
    found_at: Option<String>,
    source: String,
    received_at: i64,
    created_at: i64,
    attempts: i64,
    decided_at: Option<i64>,
}

impl TryFrom<ClaimedRow> for Claimed {
    type Error = anyhow::Error;

    fn try_from(r: ClaimedRow) -> anyhow::Result<Claimed> {
        Ok(Claimed {
            state: FindingState::parse(&r.state)
                .with_context(|| format!("finding {} has unknown state {}", r.id, r.state))?,
            outcome: match r.outcome.as_deref() {
                None => None,
                Some(o) => Some(
                    Outcome::parse(o)
                        .with_context(|| format!("finding {} has unknown outcome {o}", r.id))?,
                ),
            },
            id: r.id,
            installation_id: r.installation_id,
            fingerprint: r.fingerprint,
            token_type: r.token_type,
            sealed_token: r.sealed_token,
            found_at: r.found_at,
            source: r.source,
            received_at: r.received_at,
            created_at: r.created_at,
            attempts: r.attempts,
            decided_at: r.decided_at,
        })
    }
}

/// Leases up to `limit` due findings of an installation in a worker state to `worker` until
/// `lease_until` (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas share the work).
pub async fn claim(
    store: &Store,
    worker: &str,
    installation_id: &str,
    limit: usize,
    now: i64,
    lease_until: i64,
) -> anyhow::Result<Vec<Claimed>> {
    let lock = store.skip_locked();
    let [verifying, revoking, notifying] = FindingState::WORKER.map(FindingState::as_str);
    let sql = format!(
        "UPDATE findings SET lease_until = $1, lease_owner = $2 WHERE id IN (\
           SELECT id FROM findings WHERE installation_id = $3 \
           AND state IN ('{verifying}', '{revoking}', '{notifying}') AND next_run_at <= $4 \
           AND (lease_until IS NULL OR lease_until < $4) ORDER BY priority, next_run_at LIMIT $5 {lock}) \
         RETURNING id, installation_id, state, outcome, fingerprint, token_type, sealed_token, \
           found_at, source, received_at, created_at, attempts, decided_at"
    );
    sqlx::query_as::<_, ClaimedRow>(&sql)
        .bind(lease_until)
        .bind(worker)
        .bind(installation_id)
        .bind(now)
        .bind(limit as i64)
        .fetch_all(store.pool())
        .await
        .context("cannot claim findings")?
        .into_iter()
        .map(Claimed::try_from)
        .collect()
}

/// Gives a leased finding back until `run_at` without counting an attempt (installation paused,
/// breaker open, over its rate, or the task ended without an answer).
pub async fn give_back(
    store: &Store,
    item: &Claimed,
    worker: &str,
    run_at: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE findings SET next_run_at = $1, lease_until = NULL, lease_owner = NULL \
         WHERE id = $2 AND lease_owner = $3",
    )
    .bind(run_at)
    .bind(item.id)
    .bind(worker)
    .execute(store.pool())
    .await
    .context("cannot reschedule finding")?;
    Ok(())
}

/// Counts a failed attempt and schedules the same step again at `run_at`.
pub async fn retry_at(
    store: &Store,
    item: &Claimed,
    worker: &str,
    attempts: i64,
    run_at: i64,
    reason: &str,
    now: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE findings SET attempts = $1, next_run_at = $2, last_error = $3, \
         lease_until = NULL, lease_owner = NULL, updated_at = $4 \
         WHERE id = $5 AND lease_owner = $6 AND state = $7",
    )
    .bind(attempts)
    .bind(run_at)
    .bind(reason)
    .bind(now)
    .bind(item.id)
    .bind(worker)
    .bind(item.state.as_str())
    .execute(store.pool())
    .await
    .context("cannot schedule retry")?;
    Ok(())
}

/// A worker's step, committed.
#[derive(Debug, Clone)]
pub struct Change {
    pub to: FindingState,
    pub outcome: Option<Outcome>,
    /// Kept when None.
    pub label: Option<Label>,
    /// Kept when None.
    pub error: Option<String>,
    pub attempts: i64,
    /// The sealed payload, while work remains.
    pub sealed_token: Option<String>,
    /// Still leased to the worker until then (its next step is due at once).
    pub lease_until: Option<i64>,
    /// The token was revoked by this step (`decided_at` records when).
    pub decided: bool,
}

impl Change {
    /// Giving up on a finding after `attempts`: it ends with `outcome` (a failure, or, for a
    /// notification, the revoke's outcome), naming why.
    pub fn given_up(outcome: Outcome, error: String, attempts: i64) -> Change {
        Change {
            to: FindingState::ending(outcome),
            outcome: Some(outcome),
            label: None,
            error: Some(error),
            attempts,
            sealed_token: None,
            lease_until: None,
            decided: false,
        }
    }
}

/// Applies a worker's step inside `tx`, fenced by its lease and the state it claimed. False when
/// the lease lapsed and another worker owns the finding now (it repeats the step with the same
/// idempotency key, so nothing is lost or doubled).
pub async fn advance(
    tx: &mut Tx,
    item: &Claimed,
    worker: &str,
    change: &Change,
    now: i64,
) -> anyhow::Result<bool> {
    anyhow::ensure!(
        lifecycle::allowed(item.state, change.to),
        "finding {} may not move from {} to {}",
        item.id,
        item.state,
        change.to
    );
    let updated = sqlx::query(
        "UPDATE findings SET state = $1, outcome = $2, label = COALESCE($3, label), \
         last_error = COALESCE($4, last_error), next_run_at = $5, attempts = $6, \
         sealed_token = $7, lease_until = $8, lease_owner = $9, updated_at = $10, \
         decided_at = CASE WHEN $11 = 1 THEN $10 ELSE decided_at END \
         WHERE id = $12 AND lease_owner = $13 AND state = $14",
    )
    .bind(change.to.as_str())
    .bind(change.outcome.map(Outcome::as_str))
    .bind(change.label.map(Label::as_str))
    .bind(change.error.clone())
    .bind(now)
    .bind(change.attempts)
    .bind(
        change
            .sealed_token
            .clone()
            .filter(|_| !change.to.is_terminal()),
    )
    .bind(change.lease_until)
    .bind(change.lease_until.map(|_| worker))
    .bind(now)
    .bind(i64::from(change.decided))
    .bind(item.id)
    .bind(worker)
    .bind(item.state.as_str())
    .execute(&mut **tx)
    .await
    .context("cannot record finding state")?
    .rows_affected();
    Ok(updated == 1)
}

/// Pull-mode findings created before `cutoff` and never acknowledged: (id, installation).
pub async fn unacknowledged_before(
    store: &Store,
    cutoff: i64,
) -> anyhow::Result<Vec<(i64, String)>> {
    let rows = sqlx::query(
        "SELECT id, installation_id FROM findings WHERE state = $1 AND created_at < $2 LIMIT 100",
    )
    .bind(FindingState::AwaitingPull.as_str())
    .bind(cutoff)
    .fetch_all(store.pool())
    .await
    .context("cannot read pending pulls")?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, r.try_get("installation_id")?)))
        .collect()
}

/// Fails a pull no one acknowledged; false when it was acknowledged meanwhile.
pub async fn fail_pull(tx: &mut Tx, id: i64, reason: &str, now: i64) -> anyhow::Result<bool> {
    let updated = sqlx::query(
        "UPDATE findings SET state = $1, outcome = $2, sealed_token = NULL, \
         updated_at = $3, decided_at = $3, last_error = $4 WHERE id = $5 AND state = $6",
    )
    .bind(FindingState::Failed.as_str())
    .bind(Outcome::Failed(lifecycle::Step::Pull).as_str())
    .bind(now)
    .bind(reason)
    .bind(id)
    .bind(FindingState::AwaitingPull.as_str())
    .execute(&mut **tx)
    .await
    .context("cannot fail a pull")?
    .rows_affected();
    Ok(updated == 1)
}

/// A revocation waiting for its installation to pull it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AwaitingPull {
    pub id: i64,
    pub fingerprint: String,
    pub token_type: String,
    pub sealed_token: Option<String>,
    pub found_at: Option<String>,
    pub source: String,
    pub received_at: i64,
}

/// The installation's revocations awaiting a pull after id `after`, oldest first.
pub async fn awaiting_pull(
    store: &Store,
    installation_id: &str,
    after: i64,
    limit: i64,
) -> anyhow::Result<Vec<AwaitingPull>> {
    sqlx::query_as(
        "SELECT id, fingerprint, token_type, sealed_token, found_at, source, received_at FROM findings \
         WHERE installation_id = $1 AND state = $2 AND id > $3 ORDER BY id LIMIT $4",
    )
    .bind(installation_id)
    .bind(FindingState::AwaitingPull.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(store.pool())
    .await
    .context("cannot read pending revocations")
}

/// A finding's state and outcome, if it is the installation's.
pub async fn state_of(
    tx: &mut Tx,
    id: i64,
    installation_id: &str,
) -> anyhow::Result<Option<(FindingState, Option<String>)>> {
    let Some(row) =
        sqlx::query("SELECT state, outcome FROM findings WHERE id = $1 AND installation_id = $2")
            .bind(id)
            .bind(installation_id)
            .fetch_optional(&mut **tx)
            .await
            .context("cannot read finding")?
    else {
        return Ok(None);
    };
    let state: String = row.try_get("state")?;
    let state = FindingState::parse(&state)
        .with_context(|| format!("finding {id} has unknown state {state}"))?;
    Ok(Some((state, row.try_get("outcome")?)))
}

/// Records an installation's acknowledgement of a pulled revocation: to `to` (`notifying` keeps
/// the sealed payload for the notification). False when another acknowledgement won.
pub async fn acknowledge(
    tx: &mut Tx,
    id: i64,
    to: FindingState,
    outcome: Outcome,
    now: i64,
) -> anyhow::Result<bool> {
    anyhow::ensure!(
        lifecycle::allowed(FindingState::AwaitingPull, to),
        "an acknowledged pull may not move to {to}"
    );
    let keep_sealed = !to.is_terminal();
    let updated = sqlx::query(
        "UPDATE findings SET state = $1, outcome = $2, label = COALESCE($3, label), updated_at = $4, \
         decided_at = $4, next_run_at = $4, sealed_token = CASE WHEN $5 = 1 THEN sealed_token ELSE NULL END \
         WHERE id = $6 AND state = $7",
    )
    .bind(to.as_str())
    .bind(outcome.as_str())
    .bind(outcome.label().map(Label::as_str))
    .bind(now)
    .bind(i64::from(keep_sealed))
    .bind(id)
    .bind(FindingState::AwaitingPull.as_str())
    .execute(&mut **tx)
    .await
    .context("cannot record acknowledgement")?
    .rows_affected();
    Ok(updated == 1)
}

/// What an installation's new registration asks of its findings in progress.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    pub pull_mode: bool,
    pub verifies: bool,
    pub notifies: bool,
}

/// Moves an installation's findings in progress to the states its new registration implies (push
/// and pull swapped, verify or notify URL removed), so none waits on a step that no longer exists.
/// Returns how many moved.
pub async fn follow_registration(
    tx: &mut Tx,
    installation_id: &str,
    registration: Registration,
    now: i64,
) -> anyhow::Result<u64> {
    use FindingState::*;
    let mut moves: Vec<(FindingState, FindingState)> = Vec::new();
    if registration.pull_mode {
        moves.push((Verifying, AwaitingPull));
        moves.push((Revoking, AwaitingPull));
    } else {
        let first = if registration.verifies {
            Verifying
        } else {
            Revoking
        };
        moves.push((AwaitingPull, first));
        if !registration.verifies {
            moves.push((Verifying, Revoking));
        }
    }
    let mut moved = 0;
    for (from, to) in moves {
        debug_assert!(lifecycle::allowed(from, to));
        moved += sqlx::query(
            "UPDATE findings SET state = $1, attempts = 0, next_run_at = $2, lease_until = NULL, \
             lease_owner = NULL, updated_at = $2 WHERE installation_id = $3 AND state = $4",
        )
        .bind(to.as_str())
        .bind(now)
        .bind(installation_id)
        .bind(from.as_str())
        .execute(&mut **tx)
        .await
        .context("cannot move findings")?
        .rows_affected();
    }
    if !registration.notifies {
        // Revoked already; only the notification had no longer anywhere to go: the revoke's
        // outcome (`revoked` or `already_revoked`) becomes the state.
        moved += sqlx::query(
            "UPDATE findings SET state = outcome, sealed_token = NULL, lease_until = NULL, \
             lease_owner = NULL, updated_at = $1, last_error = 'notify_url removed' \
             WHERE installation_id = $2 AND state = $3 AND outcome IN ($4, $5)",
        )
        .bind(now)
        .bind(installation_id)
        .bind(Notifying.as_str())
        .bind(Outcome::Revoked.as_str())
        .bind(Outcome::AlreadyRevoked.as_str())
        .execute(&mut **tx)
        .await
        .context("cannot move findings")?
        .rows_affected();
    }
    Ok(moved)
}

/// Fails every finding in progress of a removed installation; returns how many.
pub async fn fail_for_removed(tx: &mut Tx, installation_id: &str, now: i64) -> anyhow::Result<u64> {
    let [a, b, c, d] = FindingState::IN_PROGRESS.map(FindingState::as_str);
    Ok(sqlx::query(&format!(
        "UPDATE findings SET state = $1, outcome = $2, sealed_token = NULL, \
         lease_until = NULL, lease_owner = NULL, updated_at = $3, decided_at = $3 \
         WHERE installation_id = $4 AND state IN ('{a}', '{b}', '{c}', '{d}')"
    ))
    .bind(FindingState::Failed.as_str())
    .bind(Outcome::InstallationRemoved.as_str())
    .bind(now)
    .bind(installation_id)
    .execute(&mut **tx)
    .await
    .context("cannot stop findings")?
    .rows_affected())
}

/// How many findings are in each state still in progress (states with none are absent).
pub async fn in_progress_counts(store: &Store) -> anyhow::Result<HashMap<FindingState, i64>> {
    let [a, b, c, d] = FindingState::IN_PROGRESS.map(FindingState::as_str);
    let rows = sqlx::query(&format!(
        "SELECT state, COUNT(*) AS n FROM findings \
         WHERE state IN ('{a}', '{b}', '{c}', '{d}') GROUP BY state"
    ))
    .fetch_all(store.pool())
    .await
    .context("cannot count findings")?;
    let mut out = HashMap::new();
    for r in rows {
        let state: String = r.try_get("state")?;
        if let Some(state) = FindingState::parse(&state) {
            out.insert(state, r.try_get("n")?);
        }
    }
    Ok(out)
}

/// A finding as shown to operators: never the sealed token.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct FindingView {
    #[sqlx(skip)]
    pub id: String,
    #[serde(skip)]
    #[sqlx(rename = "id")]
    pub row_id: i64,
    pub candidate_id: i64,
    pub installation_id: Option<String>,
    pub fingerprint: String,
    pub token_type: String,
    pub attribution: String,
    pub state: String,
    pub outcome: Option<String>,
    pub label: Option<String>,
    pub found_at: Option<String>,
    pub source: String,
    pub received_at: i64,
    pub decided_at: Option<i64>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// Which findings a listing shows; `None` shows all.
#[derive(Debug, Default, Clone)]
pub struct Filter<'a> {
    pub state: Option<&'a str>,
    pub installation: Option<&'a str>,
    pub source: Option<&'a str>,
}

const VIEW_COLUMNS: &str = "id, candidate_id, installation_id, fingerprint, token_type, attribution, \
     state, outcome, label, found_at, source, received_at, decided_at, attempts, last_error";

fn with_id(mut f: FindingView) -> FindingView {
    f.id = format!("fnd_{}", f.row_id);
    f
}

/// Findings after id `after`, oldest first, as `filter` says.
pub async fn list(
    store: &Store,
    filter: &Filter<'_>,
    after: i64,
    limit: i64,
) -> anyhow::Result<Vec<FindingView>> {
    page(store, filter, ("id > $1", "id"), after, limit).await
}

/// The newest findings first (before id `before`, when given), as `filter` says.
pub async fn newest(
    store: &Store,
    filter: &Filter<'_>,
    before: Option<i64>,
    limit: i64,
) -> anyhow::Result<Vec<FindingView>> {
    let before = before.unwrap_or(i64::MAX);
    page(store, filter, ("id < $1", "id DESC"), before, limit).await
}

/// One page of findings: `(bound_clause, order)` is this module's SQL, never input; the clause
/// compares with `$1`, which is `bound`.
async fn page(
    store: &Store,
    filter: &Filter<'_>,
    (bound_clause, order): (&'static str, &'static str),
    bound: i64,
    limit: i64,
) -> anyhow::Result<Vec<FindingView>> {
    let rows: Vec<FindingView> = sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM findings \
         WHERE {bound_clause} AND ($2 IS NULL OR state = $2) \
         AND ($3 IS NULL OR installation_id = $3) AND ($4 IS NULL OR source = $4) \
         ORDER BY {order} LIMIT $5"
    ))
    .bind(bound)
    .bind(filter.state)
    .bind(filter.installation)
    .bind(filter.source)
    .bind(limit)
    .fetch_all(store.pool())
    .await
    .context("cannot list findings")?;
    Ok(rows.into_iter().map(with_id).collect())
}

/// Finding `row_id`, if there is one.
pub async fn get(store: &Store, row_id: i64) -> anyhow::Result<Option<FindingView>> {
    let row: Option<FindingView> = sqlx::query_as(&format!(
        "SELECT {VIEW_COLUMNS} FROM findings WHERE id = $1"
    ))
    .bind(row_id)
    .fetch_optional(store.pool())
    .await
    .context("cannot read finding")?;
    Ok(row.map(with_id))
}

/// The newest error among installation `installation`'s recent findings (its newest 1,000) that are
/// still in progress or failed: (finding row id, when it was received, the error). An error a
/// finding got past is not reported.
pub async fn last_error(
    store: &Store,
    installation: &str,
) -> anyhow::Result<Option<(i64, i64, String)>> {
    sqlx::query_as(
        "SELECT id, received_at, last_error FROM \
         (SELECT id, received_at, last_error, state FROM findings WHERE installation_id = $1 \
          ORDER BY id DESC LIMIT 1000) recent \
         WHERE last_error IS NOT NULL \
         AND state IN ('verifying', 'revoking', 'notifying', 'awaiting_pull', 'failed') \
         ORDER BY id DESC LIMIT 1",
    )
    .bind(installation)
    .fetch_optional(store.pool())
    .await
    .context("cannot read an installation's last error")
}
