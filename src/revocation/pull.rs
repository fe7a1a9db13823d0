//! Pull mode, for installations Spillway cannot reach: the installation authenticates with its
//! shared secret, fetches pending revocations after a cursor, and acknowledges each with the same
//! terminal answers a revoke call would give. Same state machine and audit trail as push mode.
//!
//! Must not import HTTP (the pull API in `http` calls it) or write SQL (the findings store does).

use anyhow::Context as _;

use crate::findings::store as findings;
use crate::findings::{FindingState, Outcome, Payload, payload};
use crate::installations::contract::{self, PullItem, PullPage, RevokeStatus};
use crate::installations::{self, Delivery, Installation, RegistryError};
use crate::platform::audit;
use crate::platform::keyring::Keys;
use crate::platform::store::{Store, now_ms};

/// Why a pull request was refused.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("unknown installation or wrong secret")]
    Unauthorized,
    #[error("installation {0} is not in pull mode")]
    NotPullMode(String),
    #[error("no pending revocation {0} for this installation")]
    NotFound(String),
    #[error("finding {id} was already acknowledged as {previous}")]
    Conflict { id: String, previous: String },
    #[error(transparent)]
    Storage(#[from] anyhow::Error),
}

impl From<sqlx::Error> for PullError {
    fn from(e: sqlx::Error) -> Self {
        PullError::Storage(e.into())
    }
}

/// The installation whose live shared secret is `presented`.
pub async fn authenticate(
    store: &Store,
    keys: &Keys,
    installation_id: &str,
    presented: &str,
) -> Result<Installation, PullError> {
    let installation = match installations::get(store, installation_id).await {
        Ok(i) if i.id == installation_id => i,
        Ok(_) | Err(RegistryError::NotFound(_)) => return Err(PullError::Unauthorized),
        Err(e) => return Err(PullError::Storage(anyhow::anyhow!("{e}"))),
    };
    let secrets = installations::secrets(store, &keys.sealing, installation_id).await?;
    if !secrets
        .iter()
        .any(|s| crate::platform::webhook_auth::same_secret(s.expose(), presented))
    {
        return Err(PullError::Unauthorized);
    }
    if !installation.spec.pull_mode {
        return Err(PullError::NotPullMode(installation.id));
    }
    Ok(installation)
}

/// Pending revocations after `after`, oldest first.
pub async fn page(
    store: &Store,
    keys: &Keys,
    idempotency_key: impl Fn(&str) -> String,
    installation: &Installation,
    after: i64,
    limit: i64,
) -> Result<PullPage, PullError> {
    let rows = findings::awaiting_pull(store, &installation.id, after, limit.clamp(1, 500)).await?;
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        let sealed = r
            .sealed_token
            .with_context(|| format!("finding {} awaits a pull but has no sealed token", r.id))?;
        let payload = Payload::open(
            &keys.sealing,
            &payload::owner(&installation.id, &r.fingerprint),
            &sealed,
        )?;
        items.push(PullItem {
            finding_id: format!("fnd_{}", r.id),
            cursor: r.id,
            idempotency_key: idempotency_key(&r.fingerprint),
            token_type: r.token_type,
            token_sha256: payload.sha256_hex(),
            token: payload
                .raw()
                .filter(|_| installation.spec.delivery == Delivery::Raw)
                .cloned(),
            found_at: r.found_at,
            source: r.source,
            received_at: contract::rfc3339_ms(r.received_at),
        });
    }
    let next_cursor = items.last().map_or(after, |i| i.cursor);
    Ok(PullPage {
        revocations: items,
        next_cursor,
    })
}

/// Parses `fnd_<n>`.
pub fn parse_finding_id(s: &str) -> Option<i64> {
    s.strip_prefix("fnd_")?.parse().ok()
}

/// Records the installation's answer for one pulled revocation; acknowledging again with the same
/// answer is accepted (idempotent). Returns the finding's new state.
pub async fn ack(
    store: &Store,
    installation: &Installation,
    finding_id: &str,
    status: RevokeStatus,
) -> Result<String, PullError> {
    let id = parse_finding_id(finding_id).ok_or_else(|| PullError::NotFound(finding_id.into()))?;
    let mut tx = store.begin().await.map_err(PullError::Storage)?;
    let (state, outcome) = findings::state_of(&mut tx, id, &installation.id)
        .await?
        .ok_or_else(|| PullError::NotFound(finding_id.into()))?;
    if state != FindingState::AwaitingPull {
        return match outcome {
            Some(o) if o == status.as_str() => Ok(state.as_str().to_owned()),
            previous => Err(PullError::Conflict {
                id: finding_id.into(),
                previous: previous.unwrap_or_else(|| state.as_str().to_owned()),
            }),
        };
    }
    let answered = match status {
        RevokeStatus::Revoked => Outcome::Revoked,
        RevokeStatus::AlreadyRevoked => Outcome::AlreadyRevoked,
        RevokeStatus::UnknownToken => Outcome::UnknownToken,
    };
    let notify = installation.spec.notify_url.is_some() && answered != Outcome::UnknownToken;
    let next = if notify {
        FindingState::Notifying
    } else {
        FindingState::ending(answered)
    };
    if !findings::acknowledge(&mut tx, id, next, answered, now_ms()).await? {
        // A concurrent acknowledgement won: answer as for a second one.
        tx.rollback().await.map_err(anyhow::Error::from)?;
        return Box::pin(ack(store, installation, finding_id, status)).await;
    }
    audit::append(
        &mut tx,
        store.backend(),
        &format!("installation:{}", installation.id),
        &format!("finding.{next}"),
        &format!("finding:{id}"),
        serde_json::json!({
            "installation": installation.id,
            "from": FindingState::AwaitingPull,
            "to": next,
            "outcome": status.as_str(),
            "via": "pull",
        }),
    )
    .await?;
    tx.commit().await.context("cannot commit acknowledgement")?;
    Ok(next.as_str().to_owned())
}
