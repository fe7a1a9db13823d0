//! Reading findings (the admin API, the CLI and tests): never the sealed token.

use anyhow::Context as _;
use serde::Serialize;
use sqlx::Row as _;

use crate::platform::store::Store;

/// A finding as shown to operators.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FindingView {
    pub id: String,
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

/// Findings after id `after`, oldest first, optionally filtered by state and installation.
pub async fn list(
    store: &Store,
    state: Option<&str>,
    installation: Option<&str>,
    after: i64,
    limit: i64,
) -> anyhow::Result<Vec<FindingView>> {
    let rows = sqlx::query(
        "SELECT id, candidate_id, installation_id, fingerprint, token_type, attribution, state, outcome, \
         label, found_at, source, received_at, decided_at, attempts, last_error FROM findings \
         WHERE id > $1 AND ($2 IS NULL OR state = $2) AND ($3 IS NULL OR installation_id = $3) \
         ORDER BY id LIMIT $4",
    )
    .bind(after)
    .bind(state)
    .bind(installation)
    .bind(limit)
    .fetch_all(store.pool())
    .await
    .context("cannot list findings")?;
    rows.iter()
        .map(|r| {
            Ok(FindingView {
                id: format!("fnd_{}", r.try_get::<i64, _>("id")?),
                candidate_id: r.try_get("candidate_id")?,
                installation_id: r.try_get("installation_id")?,
                fingerprint: r.try_get("fingerprint")?,
                token_type: r.try_get("token_type")?,
                attribution: r.try_get("attribution")?,
                state: r.try_get("state")?,
                outcome: r.try_get("outcome")?,
                label: r.try_get("label")?,
                found_at: r.try_get("found_at")?,
                source: r.try_get("source")?,
                received_at: r.try_get("received_at")?,
                decided_at: r.try_get("decided_at")?,
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
            })
        })
        .collect()
}
