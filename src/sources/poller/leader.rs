//! Exactly one poller among replicas. On PostgreSQL the poller holds a session advisory lock on a
//! connection taken out of the pool for as long as it polls; when its process dies the server
//! drops the session and the lock with it, and another replica's next attempt (every
//! `election_interval_ms`) takes over. SQLite has one process by construction.
//!
//! Must not import anything outside `platform`.

use sqlx::{AnyConnection, Connection as _};

use crate::platform::store::{Backend, Store};

/// The lock's key (the audit log's transaction lock is 7305001).
const POLLER_LOCK: i64 = 7_305_002;
/// Longest a liveness check of the lock's session may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub enum Leadership {
    Sole,
    Locked(AnyConnection),
}

/// Becomes the poller if no one else is.
pub async fn try_acquire(store: &Store) -> anyhow::Result<Option<Leadership>> {
    if store.backend() == Backend::Sqlite {
        return Ok(Some(Leadership::Sole));
    }
    let mut conn = store.pool().acquire().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(POLLER_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    // Only a held lock leaves the pool: a pooled session must never carry it.
    Ok(got.then(|| Leadership::Locked(conn.detach())))
}

impl Leadership {
    /// False once the lock's session is gone (then another replica may already poll).
    pub async fn still_held(&mut self) -> bool {
        match self {
            Leadership::Sole => true,
            // A silently dropped connection could block a ping for as long as TCP takes to
            // notice: a slow answer counts as a lost lock.
            Leadership::Locked(conn) => {
                matches!(
                    tokio::time::timeout(CHECK_TIMEOUT, conn.ping()).await,
                    Ok(Ok(()))
                )
            }
        }
    }

    /// Gives the lock up (closing its session releases it).
    pub async fn release(self) {
        if let Leadership::Locked(conn) = self {
            let _ = tokio::time::timeout(CHECK_TIMEOUT, conn.close()).await;
        }
    }
}
