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
//!
//! Must not import anything outside `platform`.

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use super::{Label, ListenerEvent, PRIORITY_UNIT};
use crate::platform::audit;
use crate::platform::store::{Store, Tx, now_ms};

/// Candidates written per transaction, at most (more jobs wait for the next group).
pub const GROUP_ROWS: usize = 4_000;

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

/// How far an existing alert was written.
#[derive(sqlx::FromRow)]
struct AlertProgress {
    id: i64,
    token_count: i64,
    recorded_tokens: i64,
}

impl From<AlertProgress> for Opened {
    fn from(p: AlertProgress) -> Opened {
        Opened::Existing {
            alert_id: p.id,
            token_count: p.token_count as usize,
            recorded: p.recorded_tokens as usize,
        }
    }
}

/// An alert [`open_many`] found by its dedupe key.
#[derive(sqlx::FromRow)]
struct KnownAlert {
    listener_id: String,
    dedupe_key: String,
    #[sqlx(flatten)]
    progress: AlertProgress,
}

/// An alert [`open_many`] created, with the id it was given.
#[derive(sqlx::FromRow)]
struct CreatedAlert {
    id: i64,
    listener_id: String,
    dedupe_key: String,
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
///
/// The alerts a group opens are written together, a few statements for the whole group (SQLite's
/// statements are round trips to its connection thread, and they were most of a commit's time);
/// if that fails, the group is written again job by job, each in its own savepoint, so one bad job
/// fails only itself.
async fn commit_group(store: &Store, group: Vec<Job>) -> bool {
    let batched = match write_batched(store, &group).await {
        Ok(results) => Some(results),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), jobs = group.len(), "group write failed; writing job by job");
            None
        }
    };
    let (results, failed) = match batched {
        Some(results) => (results, None),
        None => match write_each(store, &group).await {
            Ok(results) => (results, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}"))),
        },
    };
    if let Some(e) = &failed {
        tracing::error!(error = %e, jobs = group.len(), "cannot commit a group of alerts");
    }
    let ok = failed.is_none();
    let mut results = results.into_iter();
    for job in group {
        // Nothing of the group is stored when its commit failed.
        let result = match (&failed, results.next()) {
            (Some(e), _) => Err(anyhow::anyhow!("{e}")),
            (None, Some(r)) => r,
            (None, None) => Err(anyhow::anyhow!("not written")),
        };
        match job {
            Job::Open { reply, .. } => {
                let _ = reply.send(result.and_then(|d| match d {
                    Done::Opened(o) => Ok(o),
                    Done::Sliced => Err(anyhow::anyhow!("an open job answers Opened")),
                }));
            }
            Job::Slice { reply, .. } => {
                let _ = reply.send(result.map(|_| ()));
            }
        }
    }
    ok
}

/// Every job of the group in one transaction, each in its own savepoint.
async fn write_each(store: &Store, group: &[Job]) -> anyhow::Result<Vec<anyhow::Result<Done>>> {
    let mut results = Vec::with_capacity(group.len());
    let mut tx = store.begin().await?;
    for job in group {
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
    Ok(results)
}

/// The group's new alerts together, its slices one by one, in one transaction. Any error rolls
/// everything back (the caller then writes job by job).
async fn write_batched(store: &Store, group: &[Job]) -> anyhow::Result<Vec<anyhow::Result<Done>>> {
    let mut tx = store.begin().await?;
    let opens: Vec<(&NewAlert, &[Row])> = group
        .iter()
        .filter_map(|j| match j {
            Job::Open { alert, rows, .. } => Some((alert.as_ref(), rows.as_slice())),
            Job::Slice { .. } => None,
        })
        .collect();
    let mut opened = open_many(&mut tx, store, &opens).await?.into_iter();
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        results.push(match job {
            Job::Open { .. } => Ok(Done::Opened(
                opened.next().context("an answer per opened alert")?,
            )),
            Job::Slice {
                alert_id,
                start,
                rows,
                ..
            } => {
                slice(&mut tx, store, *alert_id, *start, rows).await?;
                Ok(Done::Sliced)
            }
        });
    }
    tx.commit().await.context("cannot commit alerts")?;
    Ok(results)
}

/// Opens many alerts in a few statements: the ones whose dedupe key was seen (or repeats within
/// the group) are `Existing`, the others are written with their first slices.
async fn open_many(
    tx: &mut Tx,
    store: &Store,
    opens: &[(&NewAlert, &[Row])],
) -> anyhow::Result<Vec<Opened>> {
    if opens.is_empty() {
        return Ok(Vec::new());
    }
    let mut known: std::collections::HashMap<(String, String), Opened> =
        std::collections::HashMap::new();
    for chunk in opens.chunks(CANDIDATE_ROWS) {
        let sql = format!(
            "SELECT listener_id, dedupe_key, id, token_count, recorded_tokens FROM alerts \
             WHERE dedupe_key IN ({})",
            store.params().list(chunk.len())
        );
        let mut q = sqlx::query_as::<_, KnownAlert>(&sql);
        for (a, _) in chunk {
            q = q.bind(&a.dedupe_key);
        }
        for row in q.fetch_all(&mut **tx).await? {
            known.insert((row.listener_id, row.dedupe_key), row.progress.into());
        }
    }
    // The first of each new key within the group is written; a repeat is a replay of it.
    let mut fresh: Vec<usize> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, (a, _)) in opens.iter().enumerate() {
        let key = (a.listener_id.clone(), a.dedupe_key.clone());
        if !known.contains_key(&key) && seen.insert(key) {
            fresh.push(i);
        }
    }
    let now = now_ms();
    let mut ids: std::collections::HashMap<(String, String), i64> =
        std::collections::HashMap::new();
    for chunk in fresh.chunks(CANDIDATE_ROWS) {
        let sql = format!(
            "INSERT INTO alerts (listener_id, dedupe_key, body_sha256, received_at, key_id, \
             key_current, token_count, recorded_tokens) VALUES {} RETURNING id, listener_id, dedupe_key",
            store.params().rows(chunk.len(), 8)
        );
        let mut q = sqlx::query_as::<_, CreatedAlert>(&sql);
        for &i in chunk {
            let (a, rows) = opens[i];
            q = q
                .bind(&a.listener_id)
                .bind(&a.dedupe_key)
                .bind(&a.body_sha256)
                .bind(now)
                .bind(&a.key_id)
                .bind(a.key_current.map(i64::from))
                .bind(a.token_count as i64)
                .bind(rows.len() as i64);
        }
        for row in q
            .fetch_all(&mut **tx)
            .await
            .context("cannot record alerts")?
        {
            ids.insert((row.listener_id, row.dedupe_key), row.id);
        }
    }
    let alert_id = |a: &NewAlert| -> anyhow::Result<i64> {
        ids.get(&(a.listener_id.clone(), a.dedupe_key.clone()))
            .copied()
            .context("an id for every new alert")
    };
    // Candidates of every new alert, in as few statements as the parameter limits allow.
    let mut batch: Vec<(i64, usize, &Row)> = Vec::new();
    for &i in &fresh {
        let (a, rows) = opens[i];
        let id = alert_id(a)?;
        batch.extend(rows.iter().enumerate().map(|(p, r)| (id, p, r)));
    }
    insert_candidates(tx, store, &batch).await?;
    let new_ids: Vec<i64> = fresh
        .iter()
        .map(|&i| alert_id(opens[i].0))
        .collect::<anyhow::Result<_>>()?;
    for chunk in new_ids.chunks(CANDIDATE_ROWS) {
        let mut p = store.params();
        let sql = format!(
            "INSERT INTO work_queue (kind, candidate_id, state, attempts, run_at, priority) \
             SELECT 'decide', id, 'pending', 0, {}, position / {} FROM candidates \
             WHERE alert_id IN ({}) AND (label IS NULL OR label <> 'false_positive')",
            p.take(),
            p.take(),
            p.list(chunk.len())
        );
        let mut q = sqlx::query(&sql).bind(now).bind(PRIORITY_UNIT as i64);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut **tx).await.context("cannot queue work")?;
    }
    let events: Vec<&NewAlert> = fresh
        .iter()
        .map(|&i| opens[i].0)
        .filter(|a| a.event.is_some())
        .collect();
    for chunk in events.chunks(CANDIDATE_ROWS) {
        let sql = format!(
            "INSERT INTO listener_events (listener_id, received_at, body_sha256, redacted_body, \
             tokens_found, content_type, content_encoding, body_kept, note) VALUES {}",
            store.params().rows(chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql);
        for a in chunk {
            let event = a.event.as_ref().expect("filtered on events");
            q = q
                .bind(&a.listener_id)
                .bind(now)
                .bind(&a.body_sha256)
                .bind(event.redacted_body.as_deref().unwrap_or(""))
                .bind(a.token_count as i64)
                .bind(event.content_type.as_deref())
                .bind(event.content_encoding.as_deref())
                .bind(i64::from(event.redacted_body.is_some()))
                .bind(event.note.as_deref());
        }
        q.execute(&mut **tx)
            .await
            .context("cannot record listener events")?;
    }
    let mut entries = Vec::with_capacity(fresh.len());
    for &i in &fresh {
        let (a, rows) = opens[i];
        entries.push(audit::NewEntry {
            actor: format!("listener:{}", a.listener_id),
            action: "alert.received",
            subject: format!("alert:{}", alert_id(a)?),
            details: received_details(a, rows.len()),
        });
    }
    audit::append_many(tx, store.backend(), entries).await?;
    let mut is_fresh = vec![false; opens.len()];
    for &i in &fresh {
        is_fresh[i] = true;
    }
    opens
        .iter()
        .enumerate()
        .map(|(i, (a, rows))| {
            let key = (a.listener_id.clone(), a.dedupe_key.clone());
            if let Some(existing) = known.get(&key) {
                return Ok(*existing);
            }
            let id = alert_id(a)?;
            Ok(if is_fresh[i] {
                Opened::New { alert_id: id }
            } else {
                // Repeats a key opened earlier in this group.
                Opened::Existing {
                    alert_id: id,
                    token_count: a.token_count,
                    recorded: rows.len(),
                }
            })
        })
        .collect()
}

/// Rows per multi-row statement (parameters stay well under both backends' limits).
const CANDIDATE_ROWS: usize = 500;

/// The audit details of a received alert.
fn received_details(a: &NewAlert, recorded: usize) -> serde_json::Value {
    let mut details = serde_json::json!({
        "listener": a.listener_id,
        "kind": a.listener_kind,
        "body_sha256": a.body_sha256,
        "tokens": a.token_count,
        "false_positives": a.false_positives,
        "key_id": a.key_id,
        "key_current": a.key_current,
    });
    if recorded < a.token_count {
        details["recorded"] = recorded.into();
    }
    details
}

/// Opens an alert with its first slice, unless its dedupe key was seen before.
async fn open(tx: &mut Tx, store: &Store, a: &NewAlert, rows: &[Row]) -> anyhow::Result<Opened> {
    let existing = sqlx::query_as::<_, AlertProgress>(
        "SELECT id, token_count, recorded_tokens FROM alerts WHERE listener_id = $1 AND dedupe_key = $2",
    )
    .bind(&a.listener_id)
    .bind(&a.dedupe_key)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(progress) = existing {
        return Ok(progress.into());
    }
    let now = now_ms();
    let alert_id: i64 = sqlx::query_scalar(
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
    .context("cannot record alert")?;
    insert_rows(tx, store, alert_id, 0, rows, now).await?;
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
    audit::append(
        tx,
        store.backend(),
        &format!("listener:{}", a.listener_id),
        "alert.received",
        &format!("alert:{alert_id}"),
        received_details(a, rows.len()),
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
    insert_rows(tx, store, alert_id, start, rows, now_ms()).await?;
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

/// Inserts candidates given as (alert id, position, row), in as few statements as the parameter
/// limits allow.
async fn insert_candidates(
    tx: &mut Tx,
    store: &Store,
    batch: &[(i64, usize, &Row)],
) -> anyhow::Result<()> {
    for chunk in batch.chunks(CANDIDATE_ROWS) {
        let sql = format!(
            "INSERT INTO candidates (alert_id, position, fingerprint, token_type, url, source, label, \
             sealed_token, context_hosts) VALUES {}",
            store.params().rows(chunk.len(), 9)
        );
        let mut q = sqlx::query(&sql);
        for (id, position, r) in chunk {
            q = q
                .bind(*id)
                .bind(*position as i64)
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
    Ok(())
}

/// Candidates at positions `start..` and the work to decide them. A work item's priority is the
/// part of its alert it came in (`position / PRIORITY_UNIT`): claims take lower priorities first,
/// so the first tokens of every alert are decided before the rest of a huge one.
async fn insert_rows(
    tx: &mut Tx,
    store: &Store,
    alert_id: i64,
    start: usize,
    rows: &[Row],
    now: i64,
) -> anyhow::Result<()> {
    let batch: Vec<(i64, usize, &Row)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (alert_id, start + i, r))
        .collect();
    insert_candidates(tx, store, &batch).await?;
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
