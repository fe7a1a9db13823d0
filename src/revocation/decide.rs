//! Deciding candidates in batches: claim queued candidates, open each token once, look its JWT
//! key id up (refreshing the JWKS of installations issuing the type when the key id is unknown,
//! stale or does not verify, rate-limited), attribute it ([`super::attribute`], pure), and record
//! one finding per installation (unattributed ones too, never dropped) with one audit entry for
//! the batch, in one transaction fenced by the work-queue lease.

use std::collections::HashMap;

use anyhow::Context as _;

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

use crate::intake::queue::{self, QueuedCandidate as Candidate};

/// Claims up to [`BATCH`] queued candidates and decides each; returns how many were claimed.
pub async fn decide_batch(engine: &Engine) -> anyhow::Result<usize> {
    let now = now_ms();
    let claimed = queue::claim(
        &engine.store,
        &engine.worker_id,
        BATCH,
        now,
        now + engine.tuning.lease.as_millis() as i64,
    )
    .await?;
    let count = claimed.len();
    if count > 0 {
        // Decisions see every registration made before them, wherever it was made.
        engine.read_installations(true).await?;
    }
    let mut prepared = Vec::with_capacity(count);
    for candidate in queue::load(&engine.store, &claimed).await? {
        let (work_id, candidate_id) = (candidate.claim.work_id, candidate.claim.candidate_id);
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
    let Some(attempts) = queue::attempt_failed(&engine.store, &engine.worker_id, work_id).await?
    else {
        return Ok(());
    };
    if attempts < i64::from(engine.tuning.max_attempts) {
        let delay = super::limits::backoff(attempts as u32, None);
        return queue::retry_at(&engine.store, work_id, now_ms() + delay.as_millis() as i64).await;
    }
    let mut tx = engine.store.begin().await?;
    queue::give_up(&mut tx, work_id).await?;
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
    let found = engine.key_cache.lookup(decoded.key_id());
    let mut verdict = decoded.judge(&found, now_ms());
    // Verified at once is the common case: one signature check. Otherwise refresh, then judge
    // against what the refresh found (a second check only against keys that changed).
    if !matches!(found, KeyLookup::Ambiguous { .. })
        && !matches!(verdict, JwtVerdict::Verified { .. })
    {
        // Installations issuing this type first; any with a JWKS URL otherwise.
        let mut issuers = crate::installations::issuing(all, token_type);
        if issuers.is_empty() {
            issuers = all.iter().collect();
        }
        engine.key_cache.refresh(&issuers).await;
        verdict = decoded.judge(&engine.key_cache.lookup(decoded.key_id()), now_ms());
    }
    engine.report_key_conflicts().await;
    verdict
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
            &crate::intake::candidate_owner(&c.fingerprint),
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
    // Fence first: only the lease holder records a decision.
    let work_ids: Vec<i64> = prepared.iter().map(|p| p.c.claim.work_id).collect();
    let fenced = queue::complete(tx, &engine.store, &engine.worker_id, &work_ids).await?;
    let mine: Vec<&Prepared> = prepared
        .iter()
        .filter(|p| fenced.contains(&p.c.claim.work_id))
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
        spillway.insert(p.c.claim.candidate_id, (state, revoked));
    }

    // The findings, in arrival order: the first report of a token at an installation is the one
    // its finding records (later ones conflict and are left out). Unattributed candidates are
    // findings too, never dropped.
    let mut rows = Vec::new();
    for p in &mine {
        let c = &p.c;
        let row = |installation_id, state: FindingState, label| NewFinding {
            candidate_id: c.claim.candidate_id,
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
            priority: c.claim.priority,
            last_error: None,
        };
        if let Some((state, _)) = spillway.get(&c.claim.candidate_id) {
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
    let decided_ids: Vec<i64> = mine.iter().map(|p| p.c.claim.candidate_id).collect();
    let labels: Vec<(i64, Label)> = mine
        .iter()
        .filter_map(|p| {
            let label = p.decision.targets.iter().find_map(|(_, f)| f.label())?;
            Some((p.c.claim.candidate_id, label))
        })
        .collect();
    queue::decided(tx, &engine.store, &decided_ids, &labels).await?;

    let mut decided = Vec::new();
    let mut leaked = Vec::new();
    let audit = mine
        .iter()
        .map(|p| {
            let id = |installation: Option<&str>| {
                ids.get(&(p.c.claim.candidate_id, installation)).copied()
            };
            let created: Vec<serde_json::Value> =
                if let Some((state, revoked)) = spillway.get(&p.c.claim.candidate_id) {
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
                "candidate": p.c.claim.candidate_id,
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
