//! Group commit: one task writes every alert, many per transaction and fsync. A job waits in a
//! channel; the committer takes the first, then every job already queued (up to [`GROUP_ROWS`]
//! candidates), writes them all in one transaction (each in its own savepoint, so one failing job
//! does not fail the others) and answers each only after the commit. Every alert on SQLite used to
//! be its own transaction and fsync, serialised on one writer: 284 alerts/s.
//!
//! A job is at most one slice of an alert ([`super::SLICE`] tokens): a 100,000-token alert is
//! written slice by slice by its own request, each slice a job, so the alerts that arrive meanwhile
//! commit between its slices.
//!
//! Owns the writes to `alerts`, `candidates`, `listener_events` and the `decide` work items.

use anyhow::Context as _;
use sqlx::Row as _;
use tokio::sync::{mpsc, oneshot};

use super::{Label, ListenerEvent, PRIORITY_UNIT};
use crate::audit;
use crate::store::{Store, Tx, now_ms};

/// Candidates written per transaction, at most (more jobs wait for the next group).
pub const GROUP_ROWS: usize = 4_000;
/// Rows per multi-row INSERT: keeps a slice to a few round trips on PostgreSQL.
const BATCH: usize = 200;

/// One candidate ready to be written: the token only as its fingerprint and, while undecided,
/// sealed.
#[derive(Debug)]
pub struct Row {
    pub fingerprint: String,
    pub token_type: String,
    pub url: Option<String>,
    pub source: Option<String>,
    pub label: Option<Label>,
    pub sealed: Option<String>,
    pub hosts: Option<String>,
}

/// The alert a first slice opens.
#[derive(Debug)]
pub struct NewAlert {
    pub listener_id: String,
    pub listener_kind: String,
    pub dedupe_key: String,
    pub body_sha256: String,
    pub key_id: Option<String>,
    pub key_current: Option<bool>,
    /// Tokens in the whole alert (the first slice may hold fewer).
    pub token_count: usize,
    pub false_positives: usize,
    pub event: Option<ListenerEvent>,
}

/// What opening an alert found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    New {
        alert_id: i64,
    },
    /// The dedupe key was seen before: `recorded` of `token_count` tokens are written (fewer when
    /// an earlier request stopped between slices).
    Existing {
        alert_id: i64,
        token_count: usize,
        recorded: usize,
    },
}

pub enum Job {
    Open {
        alert: Box<NewAlert>,
        rows: Vec<Row>,
        reply: oneshot::Sender<anyhow::Result<Opened>>,
    },
    Slice {
        alert_id: i64,
        /// Position of the first row in its alert.
        start: usize,
        rows: Vec<Row>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
}

impl Job {
    fn rows(&self) -> usize {
        match self {
            Job::Open { rows, .. } | Job::Slice { rows, .. } => rows.len().max(1),
        }
    }
}

/// What the committer reports (metrics hang off this).
pub trait GroupObserver: Send + Sync {
    /// A group of `jobs` jobs and `rows` candidates was committed (or failed) in `elapsed`.
    fn group(&self, _jobs: usize, _rows: usize, _elapsed: std::time::Duration, _ok: bool) {}
}

/// Starts the committer; it ends when every sender is gone.
pub fn start(store: Store, observer: std::sync::Arc<dyn GroupObserver>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(run(store, rx, observer));
    tx
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    observer: std::sync::Arc<dyn GroupObserver>,
) {
    while let Some(first) = rx.recv().await {
        let mut rows = first.rows();
        let mut group = vec![first];
        while rows < GROUP_ROWS {
            match rx.try_recv() {
                Ok(job) => {
                    rows += job.rows();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let (jobs, started) = (group.len(), std::time::Instant::now());
        let ok = commit_group(&store, group).await;
        observer.group(jobs, rows, started.elapsed(), ok);
    }
}

/// The answer a job gets once its group committed (or failed).
enum Done {
    Opened(Opened),
    Sliced,
}

/// Writes a group in one transaction and answers each job; `false` when the commit failed.
async fn commit_group(store: &Store, group: Vec<Job>) -> bool {
    let mut results: Vec<anyhow::Result<Done>> = Vec::with_capacity(group.len());
    let outcome: anyhow::Result<()> = async {
        let mut tx = store.begin().await?;
        for job in &group {
            sqlx::query("SAVEPOINT job").execute(&mut *tx).await?;
            let result = match job {
                Job::Open { alert, rows, .. } => {
                    open(&mut tx, store, alert, rows).await.map(Done::Opened)
                }
                Job::Slice {
                    alert_id,
                    start,
                    rows,
                    ..
                } => slice(&mut tx, store, *alert_id, *start, rows)
                    .await
                    .map(|()| Done::Sliced),
            };
            if result.is_err() {
                sqlx::query("ROLLBACK TO SAVEPOINT job")
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("RELEASE SAVEPOINT job")
                .execute(&mut *tx)
                .await?;
            results.push(result);
        }
        tx.commit().await.context("cannot commit alerts")?;
        Ok(())
    }
    .await;
    let failed = outcome.err().map(|e| format!("{e:#}"));
    if let Some(e) = &failed {
        tracing::error!(error = %e, jobs = group.len(), "cannot commit a group of alerts");
    }
    let ok = failed.is_none();
    for (job, result) in group.into_iter().zip(
        results
            .into_iter()
            .map(Some)
            .chain(std::iter::repeat_with(|| None)),
    ) {
        // Nothing of the group is stored when its commit failed.
        let result = match (&failed, result) {
            (Some(e), _) => Err(anyhow::anyhow!("{e}")),
            (None, Some(r)) => r,
            (None, None) => Err(anyhow::anyhow!("not written")),
        };
        match job {
            Job::Open { reply, .. } => {
                let _ = reply.send(result.map(|d| match d {
                    Done::Opened(o) => o,
                    Done::Sliced => unreachable!("an open job answers Opened"),
                }));
            }
            Job::Slice { reply, .. } => {
                let _ = reply.send(result.map(|_| ()));
            }
        }
    }
    ok
}

/// Opens an alert with its first slice, unless its dedupe key was seen before.
async fn open(tx: &mut Tx, store: &Store, a: &NewAlert, rows: &[Row]) -> anyhow::Result<Opened> {
    let existing = sqlx::query(
        "SELECT id, token_count, recorded_tokens FROM alerts WHERE listener_id = $1 AND dedupe_key = $2",
    )
    .bind(&a.listener_id)
    .bind(&a.dedupe_key)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(row) = existing {
        return Ok(Opened::Existing {
            alert_id: row.try_get("id")?,
            token_count: row.try_get::<i64, _>("token_count")? as usize,
            recorded: row.try_get::<i64, _>("recorded_tokens")? as usize,
        });
    }
    let now = now_ms();
    let alert_id: i64 = sqlx::query(
        "INSERT INTO alerts (listener_id, dedupe_key, body_sha256, received_at, key_id, key_current, \
         token_count, recorded_tokens) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(&a.listener_id)
    .bind(&a.dedupe_key)
    .bind(&a.body_sha256)
    .bind(now)
    .bind(&a.key_id)
    .bind(a.key_current.map(i64::from))
    .bind(a.token_count as i64)
    .bind(rows.len() as i64)
    .fetch_one(&mut **tx)
    .await
    .context("cannot record alert")?
    .try_get("id")?;
    insert_rows(tx, alert_id, 0, rows, now).await?;
    if let Some(event) = &a.event {
        sqlx::query(
            "INSERT INTO listener_events (listener_id, received_at, body_sha256, redacted_body, \
             tokens_found, content_type, content_encoding, body_kept, note) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&a.listener_id)
        .bind(now)
        .bind(&a.body_sha256)
        .bind(event.redacted_body.as_deref().unwrap_or(""))
        .bind(a.token_count as i64)
        .bind(event.content_type.as_deref())
        .bind(event.content_encoding.as_deref())
        .bind(i64::from(event.redacted_body.is_some()))
        .bind(event.note.as_deref())
        .execute(&mut **tx)
        .await
        .context("cannot record listener event")?;
    }
    let mut details = serde_json::json!({
        "listener": a.listener_id,
        "kind": a.listener_kind,
        "body_sha256": a.body_sha256,
        "tokens": a.token_count,
        "false_positives": a.false_positives,
        "key_id": a.key_id,
        "key_current": a.key_current,
    });
    if rows.len() < a.token_count {
        details["recorded"] = rows.len().into();
    }
    audit::append(
        tx,
        store.backend(),
        &format!("listener:{}", a.listener_id),
        "alert.received",
        &format!("alert:{alert_id}"),
        details,
    )
    .await?;
    Ok(Opened::New { alert_id })
}

/// Writes a further slice of an open alert, unless it was written already (by an earlier request
/// for the same alert).
async fn slice(
    tx: &mut Tx,
    store: &Store,
    alert_id: i64,
    start: usize,
    rows: &[Row],
) -> anyhow::Result<()> {
    let end = start + rows.len();
    let advanced = sqlx::query(
        "UPDATE alerts SET recorded_tokens = $1 WHERE id = $2 AND recorded_tokens = $3",
    )
    .bind(end as i64)
    .bind(alert_id)
    .bind(start as i64)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if advanced != 1 {
        return Ok(());
    }
    insert_rows(tx, alert_id, start, rows, now_ms()).await?;
    let listener: String = sqlx::query_scalar("SELECT listener_id FROM alerts WHERE id = $1")
        .bind(alert_id)
        .fetch_one(&mut **tx)
        .await?;
    audit::append(
        tx,
        store.backend(),
        &format!("listener:{listener}"),
        "alert.slice",
        &format!("alert:{alert_id}"),
        serde_json::json!({ "from": start, "to": end }),
    )
    .await?;
    Ok(())
}

/// Candidates at positions `start..` and the work to decide them. A work item's priority is the
/// part of its alert it came in (`position / PRIORITY_UNIT`): claims take lower priorities first,
/// so the first tokens of every alert are decided before the rest of a huge one.
async fn insert_rows(
    tx: &mut Tx,
    alert_id: i64,
    start: usize,
    rows: &[Row],
    now: i64,
) -> anyhow::Result<()> {
    const COLUMNS: usize = 9;
    for (chunk_index, chunk) in rows.chunks(BATCH).enumerate() {
        let mut sql = String::from(
            "INSERT INTO candidates (alert_id, position, fingerprint, token_type, url, source, label, \
             sealed_token, context_hosts) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            let params: Vec<String> = (1..=COLUMNS)
                .map(|c| format!("${}", i * COLUMNS + c))
                .collect();
            sql.push_str(&format!("({})", params.join(", ")));
        }
        let mut q = sqlx::query(&sql);
        for (i, r) in chunk.iter().enumerate() {
            q = q
                .bind(alert_id)
                .bind((start + chunk_index * BATCH + i) as i64)
                .bind(&r.fingerprint)
                .bind(&r.token_type)
                .bind(&r.url)
                .bind(&r.source)
                .bind(r.label.map(|l| l.as_str()))
                .bind(&r.sealed)
                .bind(&r.hosts);
        }
        q.execute(&mut **tx)
            .await
            .context("cannot record candidates")?;
    }
    // Every candidate not already known false is queued for attribution and revocation.
    sqlx::query(
        "INSERT INTO work_queue (kind, candidate_id, state, attempts, run_at, priority) \
         SELECT 'decide', id, 'pending', 0, $1, position / $2 FROM candidates \
         WHERE alert_id = $3 AND position >= $4 AND position < $5 \
         AND (label IS NULL OR label <> 'false_positive')",
    )
    .bind(now)
    .bind(PRIORITY_UNIT as i64)
    .bind(alert_id)
    .bind(start as i64)
    .bind((start + rows.len()) as i64)
    .execute(&mut **tx)
    .await
    .context("cannot queue work")?;
    Ok(())
}
