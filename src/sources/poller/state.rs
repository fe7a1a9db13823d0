//! The poller's durable state (tables `poller_feeds`, `poller_pushes`, `poller_commits`): what
//! has been listed, what is still to scan, what was scanned. A feed's cursor moves in the same
//! transaction that queues its new pushes, and a push is finished only after its tokens are in
//! the intake, so a crash anywhere neither loses a push nor (with the intake's replay check)
//! records one twice.
//!
//! Must not import anything outside `platform`.

use anyhow::Context as _;

use crate::platform::audit;
use crate::platform::store::{Store, now_ms};

/// A feed's cursor.
#[derive(Debug, Default, Clone, sqlx::FromRow)]
pub struct Cursor {
    pub etag: Option<String>,
    pub last_event_id: i64,
}

/// A push listed by a feed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Push {
    pub event_id: i64,
    pub repo: String,
    #[sqlx(rename = "before_sha")]
    pub before: String,
    #[sqlx(rename = "head_sha")]
    pub head: String,
    pub git_ref: Option<String>,
    pub pushed_at: i64,
    pub attempts: i64,
}

pub async fn cursor(store: &Store, feed: &str) -> anyhow::Result<Cursor> {
    let cursor =
        sqlx::query_as::<_, Cursor>("SELECT etag, last_event_id FROM poller_feeds WHERE feed = $1")
            .bind(feed)
            .fetch_optional(store.pool())
            .await
            .context("cannot read the poller's cursor")?;
    Ok(cursor.unwrap_or_default())
}

/// A feed answered 304: only the poll time changes.
pub async fn touch(store: &Store, feed: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE poller_feeds SET polled_at = $1 WHERE feed = $2")
        .bind(now_ms())
        .bind(feed)
        .execute(store.pool())
        .await?;
    Ok(())
}

/// A gap: events between the cursor and the oldest event listed were not seen.
#[derive(Debug, Clone)]
pub struct Gap {
    pub after_event_id: i64,
    pub oldest_listed: i64,
}

/// Queues `pushes` and moves the feed's cursor, with an audit entry for a gap, in one
/// transaction.
pub async fn listed(
    store: &Store,
    feed: &str,
    cursor: &Cursor,
    pushes: &[Push],
    gap: Option<&Gap>,
) -> anyhow::Result<()> {
    let now = now_ms();
    let mut tx = store.begin().await?;
    for p in pushes {
        sqlx::query(
            "INSERT INTO poller_pushes (event_id, repo, before_sha, head_sha, git_ref, pushed_at, \
             listed_at, state, attempts, next_run_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $7) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(p.event_id)
        .bind(&p.repo)
        .bind(&p.before)
        .bind(&p.head)
        .bind(&p.git_ref)
        .bind(p.pushed_at)
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("cannot queue a push")?;
    }
    sqlx::query(
        "INSERT INTO poller_feeds (feed, etag, last_event_id, polled_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (feed) DO UPDATE SET etag = excluded.etag, \
         last_event_id = excluded.last_event_id, polled_at = excluded.polled_at",
    )
    .bind(feed)
    .bind(&cursor.etag)
    .bind(cursor.last_event_id)
    .bind(now)
    .execute(&mut *tx)
    .await
    .context("cannot move the poller's cursor")?;
    if let Some(gap) = gap {
        audit::append(
            &mut tx,
            store.backend(),
            "poller",
            "poller.gap",
            &format!("feed:{feed}"),
            serde_json::json!({
                "feed": feed,
                "after_event_id": gap.after_event_id.to_string(),
                "oldest_listed_event_id": gap.oldest_listed.to_string(),
            }),
        )
        .await?;
    }
    tx.commit().await.context("cannot commit listed events")?;
    Ok(())
}

/// Pushes due for scanning, oldest first.
pub async fn due(store: &Store, limit: i64) -> anyhow::Result<Vec<Push>> {
    sqlx::query_as::<_, Push>(
        "SELECT event_id, repo, before_sha, head_sha, git_ref, pushed_at, attempts FROM poller_pushes \
         WHERE state = 'pending' AND next_run_at <= $1 ORDER BY event_id LIMIT $2",
    )
    .bind(now_ms())
    .bind(limit)
    .fetch_all(store.pool())
    .await
    .context("cannot read due pushes")
}

/// True when `sha` of `repo` was scanned already (listed by another feed, or re-pushed).
pub async fn seen(store: &Store, repo: &str, sha: &str) -> anyhow::Result<bool> {
    Ok(
        sqlx::query("SELECT 1 AS one FROM poller_commits WHERE repo = $1 AND sha = $2")
            .bind(repo)
            .bind(sha)
            .fetch_optional(store.pool())
            .await?
            .is_some(),
    )
}

/// Finishes a push: its outcome, the commits it covered, and an audit entry when `details` says
/// something worth keeping (hits, skipped files).
pub async fn finish(
    store: &Store,
    push: &Push,
    outcome: &str,
    commits: &[String],
    details: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let now = now_ms();
    let mut tx = store.begin().await?;
    let mut shas: Vec<&str> = commits.iter().map(String::as_str).collect();
    shas.push(&push.head);
    shas.sort_unstable();
    shas.dedup();
    for sha in shas {
        sqlx::query(
            "INSERT INTO poller_commits (repo, sha, seen_at) VALUES ($1, $2, $3) \
             ON CONFLICT (repo, sha) DO NOTHING",
        )
        .bind(&push.repo)
        .bind(sha)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE poller_pushes SET state = 'done', outcome = $1, last_error = NULL WHERE event_id = $2",
    )
    .bind(outcome)
    .bind(push.event_id)
    .execute(&mut *tx)
    .await?;
    if let Some(details) = details {
        audit::append(
            &mut tx,
            store.backend(),
            "poller",
            &format!("poller.{outcome}"),
            &format!("push:{}", push.event_id),
            details,
        )
        .await?;
    }
    tx.commit().await.context("cannot finish a push")?;
    Ok(())
}

/// A push that could not be scanned this time: try again after `retry_in_ms`, or give it up
/// (`failed`, with an audit entry) after `max_attempts`. Returns true when it gave up.
pub async fn retry_later(
    store: &Store,
    push: &Push,
    error: &str,
    retry_in_ms: i64,
    max_attempts: i64,
) -> anyhow::Result<bool> {
    let attempts = push.attempts + 1;
    if attempts < max_attempts {
        sqlx::query(
            "UPDATE poller_pushes SET attempts = $1, next_run_at = $2, last_error = $3 \
             WHERE event_id = $4 AND state = 'pending'",
        )
        .bind(attempts)
        .bind(now_ms() + retry_in_ms)
        .bind(error)
        .bind(push.event_id)
        .execute(store.pool())
        .await?;
        return Ok(false);
    }
    let mut tx = store.begin().await?;
    sqlx::query(
        "UPDATE poller_pushes SET state = 'failed', outcome = 'failed', attempts = $1, last_error = $2 \
         WHERE event_id = $3 AND state = 'pending'",
    )
    .bind(attempts)
    .bind(error)
    .bind(push.event_id)
    .execute(&mut *tx)
    .await?;
    audit::append(
        &mut tx,
        store.backend(),
        "poller",
        "poller.push_failed",
        &format!("push:{}", push.event_id),
        serde_json::json!({
            "repo": push.repo, "head": push.head, "attempts": attempts, "error": error,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Beyond `max_backlog` waiting pushes, the oldest are skipped: one audit entry names how many
/// and which. Returns how many were skipped.
pub async fn trim_backlog(store: &Store, max_backlog: i64) -> anyhow::Result<u64> {
    let waiting: i64 =
        sqlx::query_scalar("SELECT COUNT(*) AS n FROM poller_pushes WHERE state = 'pending'")
            .fetch_one(store.pool())
            .await?;
    let excess = waiting - max_backlog;
    if excess <= 0 {
        return Ok(0);
    }
    let mut tx = store.begin().await?;
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT event_id FROM poller_pushes WHERE state = 'pending' ORDER BY event_id LIMIT $1",
    )
    .bind(excess)
    .fetch_all(&mut *tx)
    .await?;
    for id in &ids {
        sqlx::query(
            "UPDATE poller_pushes SET state = 'skipped', outcome = 'skipped_budget' \
             WHERE event_id = $1 AND state = 'pending'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    audit::append(
        &mut tx,
        store.backend(),
        "poller",
        "poller.skipped_budget",
        "poller",
        serde_json::json!({
            "skipped": ids.len(),
            "oldest_event_id": ids.first().map(i64::to_string),
            "newest_event_id": ids.last().map(i64::to_string),
            "max_backlog": max_backlog,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(ids.len() as u64)
}

/// Forgets finished pushes and seen commits older than `keep_ms`.
pub async fn prune(store: &Store, keep_ms: i64) -> anyhow::Result<()> {
    let before = now_ms() - keep_ms;
    sqlx::query("DELETE FROM poller_pushes WHERE state <> 'pending' AND listed_at < $1")
        .bind(before)
        .execute(store.pool())
        .await?;
    sqlx::query("DELETE FROM poller_commits WHERE seen_at < $1")
        .bind(before)
        .execute(store.pool())
        .await?;
    Ok(())
}
