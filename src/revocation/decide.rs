//! Deciding a candidate: which installations it concerns and what to do first.
//!
//! Attribution, in order: a JWT's key id (`plntr`/`kid`) names the installation that published the
//! key (an unknown id refreshes the JWKS of installations issuing that type, rate-limited); else a
//! hostname seen next to the token; else every installation issuing the token type, at most
//! `fanout_max`. Offline verification: a JWT whose signature verifies is the installation's, and is
//! revoked without asking first (expired ones are labelled and left); a JWT whose key is known but
//! whose signature fails is invalid. Everything else is verified online before it is revoked (or,
//! with no verify URL, revoked directly: an installation answers `unknown_token` for a token it
//! did not issue). Unattributed candidates become findings with no installation, never dropped.

use anyhow::Context as _;
use sqlx::Row as _;

use super::{Engine, finding_owner};
use crate::audit;
use crate::installations::{self, Installation};
use crate::jwt;
use crate::scanner::TokenSecret;
use crate::store::now_ms;

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

/// A finding's first state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum First {
    Verify,
    Revoke,
    Pull,
    Expired,
    Invalid,
}

impl First {
    fn state(self) -> &'static str {
        match self {
            First::Verify => "verifying",
            First::Revoke => "revoking",
            First::Pull => "awaiting_pull",
            First::Expired => "expired",
            First::Invalid => "invalid",
        }
    }

    fn label(self) -> Option<&'static str> {
        match self {
            First::Revoke | First::Expired => Some("true_positive"),
            First::Invalid => Some("false_positive"),
            _ => None,
        }
    }
}

/// The decision for one candidate.
struct Decision {
    attribution: &'static str,
    targets: Vec<(Installation, First)>,
    /// Why nobody was attributed, when `targets` is empty.
    reason: Option<String>,
}

fn online(i: &Installation) -> First {
    if i.spec.pull_mode {
        First::Pull
    } else if i.spec.verify_url.is_some() {
        First::Verify
    } else {
        First::Revoke
    }
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
    for (work_id, candidate_id, priority) in claimed {
        let candidate = load(engine, work_id, candidate_id, priority).await?;
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
    let mut decisions = Vec::with_capacity(prepared.len());
    for p in &prepared {
        decisions.extend(record(engine, &mut tx, p).await?);
    }
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
    crate::failpoint::hit("decide.before_commit");
    tx.commit().await.context("cannot commit decisions")?;
    for created in decisions
        .iter()
        .filter_map(|d| d["findings"].as_array())
        .flatten()
    {
        let state = created["state"].as_str().unwrap_or_default();
        if created["finding"].is_i64() && matches!(state, "expired" | "invalid" | "unattributed") {
            engine
                .observer
                .outcome(created["installation"].as_str(), state);
        }
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

async fn load(
    engine: &Engine,
    work_id: i64,
    candidate_id: i64,
    priority: i64,
) -> anyhow::Result<Candidate> {
    let row = sqlx::query(
        "SELECT c.id, c.fingerprint, c.token_type, c.url, c.sealed_token, c.context_hosts, \
         a.received_at, COALESCE(l.kind, a.listener_id) AS source \
         FROM candidates c JOIN alerts a ON a.id = c.alert_id \
         LEFT JOIN listeners l ON l.id = a.listener_id WHERE c.id = $1",
    )
    .bind(candidate_id)
    .fetch_one(engine.store.pool())
    .await
    .context("cannot read candidate")?;
    Ok(Candidate {
        work_id,
        priority,
        id: row.try_get("id")?,
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
    })
}

/// The sealing owner of a candidate's token copy.
pub fn candidate_owner(fingerprint: &str) -> String {
    format!("candidate:{fingerprint}")
}

async fn attribute(
    engine: &Engine,
    all: &[Installation],
    c: &Candidate,
    token: &TokenSecret,
) -> Decision {
    if let Ok(decoded) = jwt::decode(token.expose()) {
        let kid = decoded.key_id().unwrap_or_default().to_owned();
        let mut matches = engine.key_cache.lookup(&kid);
        if matches.is_empty() {
            // Installations issuing this type first; any with a JWKS URL otherwise.
            let mut candidates = installations::issuing(all, &c.token_type);
            if candidates.is_empty() {
                candidates = all.iter().collect();
            }
            engine.key_cache.refresh(&candidates).await;
            matches = engine.key_cache.lookup(&kid);
        }
        if !matches.is_empty() {
            let find = |id: &str| all.iter().find(|i| i.id == id).cloned();
            for m in &matches {
                if jwt::verify(token.expose(), &decoded, &m.key) {
                    let Some(installation) = find(&m.installation_id) else {
                        continue;
                    };
                    let expired = decoded
                        .expires_at()
                        .is_some_and(|exp| exp.saturating_mul(1000) <= now_ms());
                    let first = if expired {
                        First::Expired
                    } else if installation.spec.pull_mode {
                        First::Pull
                    } else {
                        First::Revoke
                    };
                    return Decision {
                        attribution: "key_id",
                        targets: vec![(installation, first)],
                        reason: None,
                    };
                }
            }
            if let Some(installation) = find(&matches[0].installation_id) {
                return Decision {
                    attribution: "key_id",
                    targets: vec![(installation, First::Invalid)],
                    reason: None,
                };
            }
        }
    }
    let by_host = installations::by_hostname(all, &c.context_hosts);
    if !by_host.is_empty() && by_host.len() <= engine.tuning.fanout_max {
        return Decision {
            attribution: "hostname",
            targets: by_host
                .into_iter()
                .map(|i| (i.clone(), online(i)))
                .collect(),
            reason: None,
        };
    }
    let issuing = installations::issuing(all, &c.token_type);
    match issuing.len() {
        0 => Decision {
            attribution: "none",
            targets: Vec::new(),
            reason: Some(format!(
                "no installation issues token type {}",
                c.token_type
            )),
        },
        n if n > engine.tuning.fanout_max => Decision {
            attribution: "none",
            targets: Vec::new(),
            reason: Some(format!(
                "{n} installations issue token type {} (fanout_max {})",
                c.token_type, engine.tuning.fanout_max
            )),
        },
        _ => Decision {
            attribution: "token_type",
            targets: issuing
                .into_iter()
                .map(|i| (i.clone(), online(i)))
                .collect(),
            reason: None,
        },
    }
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
        Some(sealed) => Some(crate::seal::open(
            &engine.keys.sealing,
            &candidate_owner(&c.fingerprint),
            sealed,
        )?),
        None => None,
    };
    let decision = match &token {
        Some(token) => attribute(engine, &all, &c, token).await,
        None => Decision {
            attribution: "none",
            targets: Vec::new(),
            reason: Some("no sealed token (recorded before decisions existed)".into()),
        },
    };
    Ok(Prepared { c, token, decision })
}

/// Records one decision inside `tx` (shared by a batch: one commit for many decisions) and returns
/// its audit record; `None`, having written nothing, when another worker took the candidate over.
async fn record(
    engine: &Engine,
    tx: &mut crate::store::Tx,
    p: &Prepared,
) -> anyhow::Result<Option<serde_json::Value>> {
    let Prepared { c, token, decision } = p;
    let now = now_ms();
    // Fence first: only the lease holder records the decision.
    let done = sqlx::query(
        "UPDATE work_queue SET state = 'done', lease_until = NULL WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
    )
    .bind(c.work_id)
    .bind(&engine.worker_id)
    .execute(&mut **tx)
    .await
    .context("cannot complete work item")?
    .rows_affected();
    if done != 1 {
        return Ok(None);
    }
    let mut created = Vec::new();
    for (installation, first) in &decision.targets {
        let active = matches!(first, First::Verify | First::Revoke | First::Pull);
        let sealed = match (&token, active) {
            (Some(t), true) => Some(crate::seal::seal(
                &engine.keys.sealing,
                &finding_owner(&installation.id, &c.fingerprint),
                &super::sealed_payload(t, installation.spec.delivery),
            )),
            _ => None,
        };
        let outcome = (!active).then(|| first.state());
        let inserted = sqlx::query(
            "INSERT INTO findings (candidate_id, installation_id, fingerprint, token_type, attribution, \
             state, outcome, label, sealed_token, found_at, source, received_at, created_at, updated_at, \
             next_run_at, decided_at, priority) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $13, $14, $15) \
             ON CONFLICT (installation_id, fingerprint) WHERE installation_id IS NOT NULL DO NOTHING \
             RETURNING id",
        )
        .bind(c.id)
        .bind(&installation.id)
        .bind(&c.fingerprint)
        .bind(&c.token_type)
        .bind(decision.attribution)
        .bind(first.state())
        .bind(outcome)
        .bind(first.label())
        .bind(sealed)
        .bind(c.url.clone())
        .bind(&c.source)
        .bind(c.received_at)
        .bind(now)
        .bind((!active).then_some(now))
        .bind(c.priority)
        .fetch_optional(&mut **tx)
        .await
        .context("cannot record finding")?;
        created.push(serde_json::json!({
            "installation": installation.id,
            "state": first.state(),
            "finding": inserted.map(|r| r.try_get::<i64, _>("id")).transpose()?,
        }));
    }
    if decision.targets.is_empty() {
        let id: i64 = sqlx::query(
            "INSERT INTO findings (candidate_id, installation_id, fingerprint, token_type, attribution, \
             state, outcome, found_at, source, received_at, created_at, updated_at, next_run_at, \
             last_error, decided_at) \
             VALUES ($1, NULL, $2, $3, 'none', 'unattributed', 'unattributed', $4, $5, $6, $7, $7, $7, $8, $7) \
             RETURNING id",
        )
        .bind(c.id)
        .bind(&c.fingerprint)
        .bind(&c.token_type)
        .bind(c.url.clone())
        .bind(&c.source)
        .bind(c.received_at)
        .bind(now)
        .bind(decision.reason.clone())
        .fetch_one(&mut **tx)
        .await
        .context("cannot record unattributed finding")?
        .try_get("id")?;
        created.push(
            serde_json::json!({ "installation": null, "state": "unattributed", "finding": id }),
        );
    }
    let label = decision.targets.iter().find_map(|(_, f)| f.label());
    sqlx::query(
        "UPDATE candidates SET sealed_token = NULL, label = COALESCE(label, $1) WHERE id = $2",
    )
    .bind(label)
    .bind(c.id)
    .execute(&mut **tx)
    .await
    .context("cannot update candidate")?;
    Ok(Some(serde_json::json!({
        "candidate": c.id,
        "attribution": decision.attribution,
        "findings": created,
        "reason": decision.reason,
    })))
}
