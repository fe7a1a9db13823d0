//! Deciding candidates in batches: claim queued candidates, open each token once, look its JWT
//! key id up (refreshing the JWKS of installations issuing the type when the key id is unknown,
//! stale or does not verify, rate-limited), attribute it ([`super::attribute`], pure), and record
//! one finding per installation (unattributed ones too, never dropped) with one audit entry for
//! the batch, in one transaction fenced by the work-queue lease.

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::Row as _;

use super::Engine;
use super::attribute::{self, Decision, DecodedToken, JwtVerdict, Method};
use crate::findings::store::{self as findings, NewFinding};
use crate::findings::{FindingState, Label, Payload, payload};
use crate::installations::Installation;
use crate::installations::signing_keys::KeyLookup;
use crate::platform::audit;
use crate::platform::store::now_ms;
use crate::scanner::TokenSecret;

/// Candidates decided per claim.
pub const BATCH: usize = 64;

/// A queued candidate.
struct Candidate {
    work_id: i64,
    /// The part of its alert it came in: its findings are served in this order (see intake).
    priority: i64,
    id: i64,
    fingerprint: String,
    token_type: String,
    url: Option<String>,
    source: String,
    sealed_token: Option<String>,
    context_hosts: Vec<String>,
    received_at: i64,
}

/// Claims up to [`BATCH`] queued candidates and decides each; returns how many were claimed.
pub async fn decide_batch(engine: &Engine) -> anyhow::Result<usize> {
    let now = now_ms();
    let lock = engine.store.skip_locked();
    let claimed = sqlx::query(&format!(
        "UPDATE work_queue SET lease_until = $1, lease_owner = $2 WHERE id IN (\
           SELECT id FROM work_queue WHERE kind = 'decide' AND state = 'pending' AND run_at <= $3 \
           AND (lease_until IS NULL OR lease_until < $3) ORDER BY priority, id LIMIT $4 {lock}) \
         RETURNING id, candidate_id, priority"
    ))
    .bind(now + engine.tuning.lease.as_millis() as i64)
    .bind(&engine.worker_id)
    .bind(now)
    .bind(BATCH as i64)
    .fetch_all(engine.store.pool())
    .await
    .context("cannot claim candidates")?;
    let count = claimed.len();
    // RETURNING does not keep the subquery's order: decide in arrival order, so the first report
    // of a token is the one its finding records.
    let mut claimed: Vec<(i64, i64, i64)> = claimed
        .iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                row.try_get("candidate_id")?,
                row.try_get("priority")?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    claimed.sort_unstable();
    if count > 0 {
        // Decisions see every registration made before them, wherever it was made.
        engine.read_installations(true).await?;
    }
    let mut prepared = Vec::with_capacity(count);
    for candidate in load_many(engine, &claimed).await? {
        let (work_id, candidate_id) = (candidate.work_id, candidate.id);
        match prepare(engine, candidate).await {
            Ok(p) => prepared.push(p),
            Err(e) => {
                tracing::warn!(candidate = candidate_id, error = %format!("{e:#}"), "cannot decide candidate");
                retry_or_fail(engine, work_id, candidate_id, &format!("{e:#}")).await?;
            }
        }
    }
    // One transaction (one commit, one fsync) for the whole batch: deciding must not crowd out
    // intake on the database. A failed commit leaves every lease to lapse; all are decided again.
    if prepared.is_empty() {
        return Ok(count);
    }
    let mut tx = engine.store.begin().await?;
    let Recorded {
        audit: decisions,
        decided,
        leaked,
    } = record_batch(engine, &mut tx, &prepared).await?;
    // One audit entry for the batch, appended last: on PostgreSQL the audit lock is then held
    // only from here to the commit, not while the batch is written.
    if !decisions.is_empty() {
        audit::append(
            &mut tx,
            engine.store.backend(),
            &format!("worker:{}", engine.worker_id),
            "candidates.decided",
            &format!("candidates:{}", decisions.len()),
            serde_json::json!({ "decisions": decisions }),
        )
        .await?;
    }
    crate::platform::failpoint::hit("decide.before_commit");
    tx.commit().await.context("cannot commit decisions")?;
    for (installation, state) in decided {
        engine
            .observer
            .outcome(installation.as_deref(), state.as_str());
    }
    for state in leaked {
        engine.observer.admin_key_leaked(state.as_str());
        engine.observer.outcome(None, state.as_str());
    }
    Ok(count)
}

/// Counts a failed decision: retried with backoff, and after `max_attempts` failed loudly (audit
/// entry, metric) instead of retried forever.
async fn retry_or_fail(
    engine: &Engine,
    work_id: i64,
    candidate_id: i64,
    error: &str,
) -> anyhow::Result<()> {
    let now = now_ms();
    let attempts: i64 = match sqlx::query(
        "UPDATE work_queue SET attempts = attempts + 1, lease_until = NULL, lease_owner = NULL \
         WHERE id = $1 AND lease_owner = $2 AND state = 'pending' RETURNING attempts",
    )
    .bind(work_id)
    .bind(&engine.worker_id)
    .fetch_optional(engine.store.pool())
    .await?
    {
        Some(row) => row.try_get("attempts")?,
        None => return Ok(()),
    };
    if attempts < i64::from(engine.tuning.max_attempts) {
        let delay = super::limits::backoff(attempts as u32, None);
        sqlx::query("UPDATE work_queue SET run_at = $1 WHERE id = $2")
            .bind(now + delay.as_millis() as i64)
            .bind(work_id)
            .execute(engine.store.pool())
            .await?;
        return Ok(());
    }
    let mut tx = engine.store.begin().await?;
    sqlx::query("UPDATE work_queue SET state = 'failed' WHERE id = $1 AND state = 'pending'")
        .bind(work_id)
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        engine.store.backend(),
        &format!("worker:{}", engine.worker_id),
        "candidate.failed",
        &format!("candidate:{candidate_id}"),
        serde_json::json!({ "attempts": attempts, "error": error }),
    )
    .await?;
    tx.commit().await?;
    engine.observer.failed("none", "decide");
    Ok(())
}

/// The claimed candidates (work id, candidate id, priority), in the order given: one query.
async fn load_many(engine: &Engine, claimed: &[(i64, i64, i64)]) -> anyhow::Result<Vec<Candidate>> {
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT c.id, c.fingerprint, c.token_type, c.url, c.sealed_token, c.context_hosts, \
         a.received_at, COALESCE(l.kind, a.listener_id) AS source \
         FROM candidates c JOIN alerts a ON a.id = c.alert_id \
         LEFT JOIN listeners l ON l.id = a.listener_id WHERE c.id IN ({})",
        engine.store.params().list(claimed.len())
    );
    let mut q = sqlx::query(&sql);
    for (_, candidate_id, _) in claimed {
        q = q.bind(*candidate_id);
    }
    let mut rows: std::collections::HashMap<i64, sqlx::any::AnyRow> = q
        .fetch_all(engine.store.pool())
        .await
        .context("cannot read candidates")?
        .into_iter()
        .map(|r| Ok((r.try_get::<i64, _>("id")?, r)))
        .collect::<anyhow::Result<_>>()?;
    let mut out = Vec::with_capacity(claimed.len());
    for &(work_id, candidate_id, priority) in claimed {
        let row = rows
            .remove(&candidate_id)
            .with_context(|| format!("candidate {candidate_id} is gone"))?;
        out.push(Candidate {
            work_id,
            priority,
            id: candidate_id,
            fingerprint: row.try_get("fingerprint")?,
            token_type: row.try_get("token_type")?,
            url: row.try_get("url")?,
            source: row.try_get("source")?,
            sealed_token: row.try_get("sealed_token")?,
            context_hosts: row
                .try_get::<Option<String>, _>("context_hosts")?
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or_default(),
            received_at: row.try_get("received_at")?,
        });
    }
    Ok(out)
}

/// The sealing owner of a candidate's token copy.
pub fn candidate_owner(fingerprint: &str) -> String {
    format!("candidate:{fingerprint}")
}

/// The candidate's JWT verdict: decoded once; looked up, and when the key id is unknown, stale or
/// does not verify, looked up again after a (rate-limited) refresh of the issuers' JWKS, so a
/// forged-looking token is only ever judged against every claim on its key id.
async fn judge(
    engine: &Engine,
    all: &[Installation],
    token_type: &str,
    token: &TokenSecret,
) -> JwtVerdict {
    let Some(decoded) = DecodedToken::decode(token) else {
        return JwtVerdict::NotJwt;
    };
    let mut found = engine.key_cache.lookup(decoded.key_id());
    if !matches!(found, KeyLookup::Ambiguous { .. }) && !decoded.verifies(&found) {
        // Installations issuing this type first; any with a JWKS URL otherwise.
        let mut issuers = crate::installations::issuing(all, token_type);
        if issuers.is_empty() {
            issuers = all.iter().collect();
        }
        engine.key_cache.refresh(&issuers).await;
        found = engine.key_cache.lookup(decoded.key_id());
    }
    engine.report_key_conflicts().await;
    decoded.judge(&found, now_ms())
}

/// A candidate with its decision, ready to be recorded.
struct Prepared {
    c: Candidate,
    token: Option<TokenSecret>,
    decision: Decision,
}

/// Opens the candidate's token and decides it (may fetch a JWKS: outside any transaction).
async fn prepare(engine: &Engine, c: Candidate) -> anyhow::Result<Prepared> {
    let all = engine.installations();
    let token = match &c.sealed_token {
        Some(sealed) => Some(crate::platform::seal::open(
            &engine.keys.sealing,
            &candidate_owner(&c.fingerprint),
            sealed,
        )?),
        None => None,
    };
    let decision = match &token {
        Some(token) if crate::admin::api_keys::is_well_formed(token.expose()) => {
            Decision::nobody(Method::Spillway, None)
        }
        Some(token) => {
            let verdict = judge(engine, &all, &c.token_type, token).await;
            attribute::attribute(
                &all,
                &c.token_type,
                &c.context_hosts,
                &verdict,
                engine.tuning.fanout_max,
            )
        }
        None => Decision::nobody(
            Method::None,
            Some("no sealed token (recorded before decisions existed)".into()),
        ),
    };
    Ok(Prepared { c, token, decision })
}

/// Rows per multi-row statement (parameters stay well under both backends' limits).
const ROWS_PER_STATEMENT: usize = 64;

/// What recording a batch produced: the audit records, and the findings that ended at once (for
/// the metrics).
struct Recorded {
    audit: Vec<serde_json::Value>,
    /// Findings that ended at decision: (installation, state).
    decided: Vec<(Option<String>, FindingState)>,
    /// This Spillway's own admin keys found in public, by outcome.
    leaked: Vec<FindingState>,
}

/// Records a batch of decisions inside `tx` (one commit for the batch) in a few statements, and
/// returns their audit records. Only the candidates whose work item this worker still leases are
/// recorded: another worker may have taken the others over.
async fn record_batch(
    engine: &Engine,
    tx: &mut crate::platform::store::Tx,
    prepared: &[Prepared],
) -> anyhow::Result<Recorded> {
    let now = now_ms();
    // Fence first: only the lease holder records a decision. A decided work item is deleted (the
    // candidate, its findings and the audit entry are the record), so the queue holds only what is
    // pending or failed and its indexes stay small.
    let mut fenced = std::collections::HashSet::new();
    for chunk in prepared.chunks(ROWS_PER_STATEMENT) {
        let mut p = engine.store.params();
        let sql = format!(
            "DELETE FROM work_queue WHERE lease_owner = {} AND state = 'pending' AND id IN ({}) \
             RETURNING id",
            p.take(),
            p.list(chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(&engine.worker_id);
        for p in chunk {
            q = q.bind(p.c.work_id);
        }
        for row in q
            .fetch_all(&mut **tx)
            .await
            .context("cannot complete work items")?
        {
            fenced.insert(row.try_get::<i64, _>("id")?);
        }
    }
    let mine: Vec<&Prepared> = prepared
        .iter()
        .filter(|p| fenced.contains(&p.c.work_id))
        .collect();

    // This Spillway's own admin keys, found in public: revoked here and now (with the keys they
    // minted), each change audited in this transaction.
    let mut spillway: HashMap<i64, (FindingState, Vec<String>)> = HashMap::new();
    for p in mine
        .iter()
        .filter(|p| p.decision.method == Method::Spillway)
    {
        let Some(token) = &p.token else {
            continue;
        };
        let outcome = crate::admin::api_keys::revoke_leaked(tx, &engine.store, token, &p.c.source)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let (state, revoked) = match outcome {
            crate::admin::api_keys::LeakedKey::Revoked(ids) => (FindingState::Revoked, ids),
            crate::admin::api_keys::LeakedKey::AlreadyRevoked(id) => {
                (FindingState::AlreadyRevoked, vec![id])
            }
            crate::admin::api_keys::LeakedKey::Unknown => (FindingState::UnknownToken, Vec::new()),
        };
        spillway.insert(p.c.id, (state, revoked));
    }

    // The findings, in arrival order: the first report of a token at an installation is the one
    // its finding records (later ones conflict and are left out). Unattributed candidates are
    // findings too, never dropped.
    let mut rows = Vec::new();
    for p in &mine {
        let c = &p.c;
        let row = |installation_id, state: FindingState, label| NewFinding {
            candidate_id: c.id,
            installation_id,
            fingerprint: &c.fingerprint,
            token_type: &c.token_type,
            attribution: p.decision.method.as_str(),
            state,
            label,
            sealed_token: None,
            found_at: c.url.as_deref(),
            source: &c.source,
            received_at: c.received_at,
            priority: c.priority,
            last_error: None,
        };
        if let Some((state, _)) = spillway.get(&c.id) {
            let label = (*state != FindingState::UnknownToken).then_some(Label::TruePositive);
            rows.push(row(None, *state, label));
        } else if p.decision.targets.is_empty() {
            rows.push(NewFinding {
                last_error: p.decision.reason.as_deref(),
                ..row(None, FindingState::Unattributed, None)
            });
        } else {
            for (installation, first) in &p.decision.targets {
                let sealed_token = match &p.token {
                    Some(token) if first.active() => Some(
                        Payload::for_delivery(token, installation.spec.delivery).seal(
                            &engine.keys.sealing,
                            &payload::owner(&installation.id, &c.fingerprint),
                        ),
                    ),
                    _ => None,
                };
                rows.push(NewFinding {
                    sealed_token,
                    ..row(Some(&installation.id), first.state(), first.label())
                });
            }
        }
    }
    let inserted = findings::insert(tx, &engine.store, &rows, now).await?;
    let ids: HashMap<(i64, Option<&str>), i64> = inserted
        .iter()
        .map(|f| ((f.candidate_id, f.installation_id.as_deref()), f.id))
        .collect();

    // The candidates' sealed copies go (their findings hold their own), and offline labels stay.
    let decided: Vec<i64> = mine.iter().map(|p| p.c.id).collect();
    for chunk in decided.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "UPDATE candidates SET sealed_token = NULL WHERE id IN ({})",
            engine.store.params().list(chunk.len())
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
        let labelled: Vec<i64> = mine
            .iter()
            .filter(|p| p.decision.targets.iter().find_map(|(_, f)| f.label()) == Some(label))
            .map(|p| p.c.id)
            .collect();
        for chunk in labelled.chunks(ROWS_PER_STATEMENT) {
            let mut p = engine.store.params();
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

    let mut decided = Vec::new();
    let mut leaked = Vec::new();
    let audit = mine
        .iter()
        .map(|p| {
            let id = |installation: Option<&str>| ids.get(&(p.c.id, installation)).copied();
            let created: Vec<serde_json::Value> =
                if let Some((state, revoked)) = spillway.get(&p.c.id) {
                    leaked.push(*state);
                    vec![serde_json::json!({
                        "installation": null,
                        "state": state,
                        "finding": id(None),
                        "admin_keys_revoked": revoked,
                    })]
                } else if p.decision.targets.is_empty() {
                    decided.push((None, FindingState::Unattributed));
                    vec![serde_json::json!({
                        "installation": null,
                        "state": FindingState::Unattributed,
                        "finding": id(None),
                    })]
                } else {
                    p.decision
                        .targets
                        .iter()
                        .map(|(installation, first)| {
                            let finding = id(Some(&installation.id));
                            if finding.is_some() && first.state().is_terminal() {
                                decided.push((Some(installation.id.clone()), first.state()));
                            }
                            serde_json::json!({
                                "installation": installation.id,
                                "state": first.state(),
                                "finding": finding,
                            })
                        })
                        .collect()
                };
            serde_json::json!({
                "candidate": p.c.id,
                "attribution": p.decision.method.as_str(),
                "findings": created,
                "reason": p.decision.reason,
            })
        })
        .collect();
    Ok(Recorded {
        audit,
        decided,
        leaked,
    })
}
