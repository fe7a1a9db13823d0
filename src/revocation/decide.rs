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
use crate::installations::signing_keys::KeyLookup;
use crate::installations::{self, Installation};
use crate::platform::audit;
use crate::platform::jwt;
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
    /// One of this Spillway's own admin keys: revoked here (self-revocation), not at an
    /// installation.
    spillway_key: bool,
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
    let decisions = record_batch(engine, &mut tx, &prepared).await?;
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
        if created.get("admin_keys_revoked").is_some() {
            engine.observer.admin_key_leaked(state);
            engine.observer.outcome(None, state);
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

async fn attribute(
    engine: &Engine,
    all: &[Installation],
    c: &Candidate,
    token: &TokenSecret,
) -> Decision {
    if let Ok(decoded) = jwt::decode(token.expose()) {
        let kid = decoded.key_id().unwrap_or_default().to_owned();
        // Installations issuing this type first; any with a JWKS URL otherwise.
        let mut issuers = installations::issuing(all, &c.token_type);
        if issuers.is_empty() {
            issuers = all.iter().collect();
        }
        let verifies = |found: &KeyLookup| {
            found.fresh_owner().is_some_and(|(_, keys)| {
                keys.iter()
                    .any(|key| jwt::verify(token.expose(), &decoded, key))
            })
        };
        let mut found = engine.key_cache.lookup(&kid);
        // Unknown, known from a JWKS fetched too long ago, or owned but not verifying (another
        // issuer's JWKS, not fetched yet, may publish the same key id): fetch again (rate limited)
        // before any verdict, so a forged-looking token is only ever judged against every claim.
        if !matches!(found, KeyLookup::Ambiguous { .. }) && !verifies(&found) {
            engine.key_cache.refresh(&issuers).await;
            found = engine.key_cache.lookup(&kid);
        }
        engine.report_key_conflicts().await;
        // An offline verdict only against the one owner's fresh keys; an ambiguous, stale or
        // unknown key id leaves the token to the online path below.
        let owner = found
            .fresh_owner()
            .and_then(|(id, keys)| Some((all.iter().find(|i| i.id == id)?.clone(), keys)));
        if let Some((installation, keys)) = owner {
            let verified = keys
                .iter()
                .any(|key| jwt::verify(token.expose(), &decoded, key));
            let expired = decoded
                .expires_at()
                .is_some_and(|exp| exp.saturating_mul(1000) <= now_ms());
            let first = match (verified, expired) {
                (false, _) => First::Invalid,
                (true, true) => First::Expired,
                (true, false) if installation.spec.pull_mode => First::Pull,
                (true, false) => First::Revoke,
            };
            return Decision {
                attribution: "key_id",
                targets: vec![(installation, first)],
                reason: None,
                spillway_key: false,
            };
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
            spillway_key: false,
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
            spillway_key: false,
        },
        n if n > engine.tuning.fanout_max => Decision {
            attribution: "none",
            targets: Vec::new(),
            reason: Some(format!(
                "{n} installations issue token type {} (fanout_max {})",
                c.token_type, engine.tuning.fanout_max
            )),
            spillway_key: false,
        },
        _ => Decision {
            attribution: "token_type",
            targets: issuing
                .into_iter()
                .map(|i| (i.clone(), online(i)))
                .collect(),
            reason: None,
            spillway_key: false,
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
        Some(sealed) => Some(crate::platform::seal::open(
            &engine.keys.sealing,
            &candidate_owner(&c.fingerprint),
            sealed,
        )?),
        None => None,
    };
    let decision = match &token {
        Some(token) if crate::admin::api_keys::is_well_formed(token.expose()) => Decision {
            attribution: "spillway",
            targets: Vec::new(),
            reason: None,
            spillway_key: true,
        },
        Some(token) => attribute(engine, &all, &c, token).await,
        None => Decision {
            attribution: "none",
            targets: Vec::new(),
            reason: Some("no sealed token (recorded before decisions existed)".into()),
            spillway_key: false,
        },
    };
    Ok(Prepared { c, token, decision })
}

/// Rows per multi-row statement (parameters stay well under both backends' limits).
const ROWS_PER_STATEMENT: usize = 64;

/// Records a batch of decisions inside `tx` (one commit for the batch) in a few statements, and
/// returns their audit records. Only the candidates whose work item this worker still leases are
/// recorded: another worker may have taken the others over.
async fn record_batch(
    engine: &Engine,
    tx: &mut crate::platform::store::Tx,
    prepared: &[Prepared],
) -> anyhow::Result<Vec<serde_json::Value>> {
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

    // Findings of attributed candidates, in arrival order: the first report of a token at an
    // installation is the one its finding records (later ones conflict and are left out).
    struct Target<'a> {
        p: &'a Prepared,
        installation: &'a Installation,
        first: First,
    }
    let targets: Vec<Target<'_>> = mine
        .iter()
        .flat_map(|p| {
            p.decision
                .targets
                .iter()
                .map(move |(installation, first)| Target {
                    p,
                    installation,
                    first: *first,
                })
        })
        .collect();
    let mut finding_ids: std::collections::HashMap<(String, String), i64> =
        std::collections::HashMap::new();
    for chunk in targets.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO findings (candidate_id, installation_id, fingerprint, token_type, attribution, \
             state, outcome, label, sealed_token, found_at, source, received_at, created_at, updated_at, \
             next_run_at, decided_at, priority) VALUES {} \
             ON CONFLICT (installation_id, fingerprint) WHERE installation_id IS NOT NULL DO NOTHING \
             RETURNING id, installation_id, fingerprint",
            engine.store.params().rows(chunk.len(), 17)
        );
        let mut q = sqlx::query(&sql);
        for t in chunk {
            let (c, token) = (&t.p.c, &t.p.token);
            let active = matches!(t.first, First::Verify | First::Revoke | First::Pull);
            let sealed = match (token, active) {
                (Some(token), true) => Some(crate::platform::seal::seal(
                    &engine.keys.sealing,
                    &finding_owner(&t.installation.id, &c.fingerprint),
                    &super::sealed_payload(token, t.installation.spec.delivery),
                )),
                _ => None,
            };
            q = q
                .bind(c.id)
                .bind(&t.installation.id)
                .bind(&c.fingerprint)
                .bind(&c.token_type)
                .bind(t.p.decision.attribution)
                .bind(t.first.state())
                .bind((!active).then(|| t.first.state()))
                .bind(t.first.label())
                .bind(sealed)
                .bind(c.url.clone())
                .bind(&c.source)
                .bind(c.received_at)
                .bind(now)
                .bind(now)
                .bind(now)
                .bind((!active).then_some(now))
                .bind(c.priority);
        }
        for row in q
            .fetch_all(&mut **tx)
            .await
            .context("cannot record findings")?
        {
            finding_ids.insert(
                (row.try_get("installation_id")?, row.try_get("fingerprint")?),
                row.try_get("id")?,
            );
        }
    }

    // Unattributed candidates are findings too, never dropped.
    let unattributed: Vec<&Prepared> = mine
        .iter()
        .copied()
        .filter(|p| p.decision.targets.is_empty() && !p.decision.spillway_key)
        .collect();
    let mut unattributed_ids: std::collections::HashMap<i64, i64> =
        std::collections::HashMap::new();
    for chunk in unattributed.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO findings (candidate_id, installation_id, fingerprint, token_type, attribution, \
             state, outcome, found_at, source, received_at, created_at, updated_at, next_run_at, \
             last_error, decided_at, priority) VALUES {} RETURNING id, candidate_id",
            {
                let mut p = engine.store.params();
                (0..chunk.len())
                    .map(|_| {
                        let [id, fp, ty, url, source, received, created, updated, next, error, decided, priority] =
                            std::array::from_fn(|_| p.take());
                        format!(
                            "({id}, NULL, {fp}, {ty}, 'none', 'unattributed', 'unattributed', {url}, \
                             {source}, {received}, {created}, {updated}, {next}, {error}, {decided}, {priority})"
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let mut q = sqlx::query(&sql);
        for p in chunk {
            let c = &p.c;
            q = q
                .bind(c.id)
                .bind(&c.fingerprint)
                .bind(&c.token_type)
                .bind(c.url.clone())
                .bind(&c.source)
                .bind(c.received_at)
                .bind(now)
                .bind(now)
                .bind(now)
                .bind(p.decision.reason.clone())
                .bind(now)
                .bind(c.priority);
        }
        for row in q
            .fetch_all(&mut **tx)
            .await
            .context("cannot record unattributed findings")?
        {
            unattributed_ids.insert(row.try_get("candidate_id")?, row.try_get("id")?);
        }
    }

    // This Spillway's own admin keys, found in public: revoked here and now (with the keys they
    // minted), each change audited in this transaction.
    let mut spillway_findings: std::collections::HashMap<i64, (i64, &'static str, Vec<String>)> =
        std::collections::HashMap::new();
    for p in mine.iter().filter(|p| p.decision.spillway_key) {
        let Some(token) = &p.token else {
            continue;
        };
        let outcome = crate::admin::api_keys::revoke_leaked(tx, &engine.store, token, &p.c.source)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let (state, label, revoked) = match outcome {
            crate::admin::api_keys::LeakedKey::Revoked(ids) => {
                ("revoked", Some("true_positive"), ids)
            }
            crate::admin::api_keys::LeakedKey::AlreadyRevoked(id) => {
                ("already_revoked", Some("true_positive"), vec![id])
            }
            crate::admin::api_keys::LeakedKey::Unknown => ("unknown_token", None, Vec::new()),
        };
        let c = &p.c;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO findings (candidate_id, installation_id, fingerprint, token_type, attribution, \
             state, outcome, label, found_at, source, received_at, created_at, updated_at, next_run_at, \
             decided_at, priority) \
             VALUES ($1, NULL, $2, $3, 'spillway', $4, $4, $5, $6, $7, $8, $9, $9, $9, $9, $10) RETURNING id",
        )
        .bind(c.id)
        .bind(&c.fingerprint)
        .bind(&c.token_type)
        .bind(state)
        .bind(label)
        .bind(c.url.clone())
        .bind(&c.source)
        .bind(c.received_at)
        .bind(now)
        .bind(c.priority)
        .fetch_one(&mut **tx)
        .await
        .context("cannot record a leaked admin key")?;
        spillway_findings.insert(c.id, (id, state, revoked));
    }

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
    for label in ["true_positive", "false_positive"] {
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
            let mut q = sqlx::query(&sql).bind(label);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut **tx)
                .await
                .context("cannot label candidates")?;
        }
    }

    let mut claimed_pairs = std::collections::HashSet::new();
    Ok(mine
        .iter()
        .map(|p| {
            let created: Vec<serde_json::Value> =
                if let Some((id, state, revoked)) = spillway_findings.get(&p.c.id) {
                    vec![serde_json::json!({
                        "installation": null,
                        "state": state,
                        "finding": id,
                        "admin_keys_revoked": revoked,
                    })]
                } else if p.decision.targets.is_empty() {
                    vec![serde_json::json!({
                        "installation": null,
                        "state": "unattributed",
                        "finding": unattributed_ids.get(&p.c.id),
                    })]
                } else {
                    p.decision
                        .targets
                        .iter()
                        .map(|(installation, first)| {
                            let pair = (installation.id.clone(), p.c.fingerprint.clone());
                            // The first candidate of a pair in the batch is the one that inserted it.
                            let finding = finding_ids
                                .get(&pair)
                                .filter(|_| claimed_pairs.insert(pair.clone()));
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
                "attribution": p.decision.attribution,
                "findings": created,
                "reason": p.decision.reason,
            })
        })
        .collect())
}
