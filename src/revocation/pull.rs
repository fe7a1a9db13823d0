//! Pull mode, for installations Spillway cannot reach: the installation authenticates with its
//! shared secret, fetches pending revocations after a cursor, and acknowledges each with the same
//! terminal answers a revoke call would give. Same state machine and audit trail as push mode.

use anyhow::Context as _;
use sqlx::Row as _;

use super::finding_owner;
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
    let rows = sqlx::query(
        "SELECT id, fingerprint, token_type, sealed_token, found_at, source, received_at FROM findings \
         WHERE installation_id = $1 AND state = 'awaiting_pull' AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(&installation.id)
    .bind(after)
    .bind(limit.clamp(1, 500))
    .fetch_all(store.pool())
    .await
    .context("cannot read pending revocations")?;
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        let id: i64 = r.try_get("id")?;
        let fingerprint: String = r.try_get("fingerprint")?;
        let sealed: String = r
            .try_get::<Option<String>, _>("sealed_token")?
            .with_context(|| format!("finding {id} awaits a pull but has no sealed token"))?;
        let token = crate::platform::seal::open(
            &keys.sealing,
            &finding_owner(&installation.id, &fingerprint),
            &sealed,
        )?;
        let opened = super::open_payload(&token);
        items.push(PullItem {
            finding_id: format!("fnd_{id}"),
            cursor: id,
            idempotency_key: idempotency_key(&fingerprint),
            token_type: r.try_get("token_type")?,
            token_sha256: opened.sha256,
            token: opened
                .raw
                .filter(|_| installation.spec.delivery == Delivery::Raw),
            found_at: r.try_get("found_at")?,
            source: r.try_get("source")?,
            received_at: contract::rfc3339_ms(r.try_get("received_at")?),
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
    let row =
        sqlx::query("SELECT state, outcome FROM findings WHERE id = $1 AND installation_id = $2")
            .bind(id)
            .bind(&installation.id)
            .fetch_optional(&mut *tx)
            .await
            .context("cannot read finding")?
            .ok_or_else(|| PullError::NotFound(finding_id.into()))?;
    let state: String = row.try_get("state").map_err(anyhow::Error::from)?;
    let outcome: Option<String> = row.try_get("outcome").map_err(anyhow::Error::from)?;
    if state != "awaiting_pull" {
        return match outcome {
            Some(o) if o == status.as_str() => Ok(state),
            previous => Err(PullError::Conflict {
                id: finding_id.into(),
                previous: previous.unwrap_or(state),
            }),
        };
    }
    let notify = installation.spec.notify_url.is_some() && status != RevokeStatus::UnknownToken;
    let next = if notify { "notifying" } else { status.as_str() };
    let now = now_ms();
    let revoked = status != RevokeStatus::UnknownToken;
    let updated = sqlx::query(
        "UPDATE findings SET state = $1, outcome = $2, label = COALESCE($3, label), updated_at = $4, \
         decided_at = $4, next_run_at = $4, sealed_token = CASE WHEN $5 = 1 THEN sealed_token ELSE NULL END \
         WHERE id = $6 AND state = 'awaiting_pull'",
    )
    .bind(next)
    .bind(status.as_str())
    .bind(revoked.then_some("true_positive"))
    .bind(now)
    .bind(i64::from(notify))
    .bind(id)
    .execute(&mut *tx)
    .await
    .context("cannot record acknowledgement")?
    .rows_affected();
    if updated != 1 {
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
            "from": "awaiting_pull",
            "to": next,
            "outcome": status.as_str(),
            "via": "pull",
        }),
    )
    .await?;
    tx.commit().await.context("cannot commit acknowledgement")?;
    Ok(next.to_owned())
}
