//! Durable state: one storage layer over SQLite (embedded default: WAL, `synchronous=FULL`, writes
//! serialised through one connection) and PostgreSQL (production, shared by replicas). Queries are
//! written once with `$N` placeholders, which both backends accept; migrations live in
//! `migrations/sqlite` and `migrations/postgres` and are applied on connect.
//!
//! Owns connections, transactions and migrations; the tables' meaning belongs to the modules that
//! use them (audit, listeners, admin keys).
//!
//! Owns connections and transactions, not tables: each table family's statements live in its own
//! module. Must not import anything of the crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Connection as _, Executor as _, Transaction};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool plus which backend it talks to.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

pub type Tx = Transaction<'static, Any>;

/// Parameter placeholders for statements built at run time (multi-row inserts, `IN` lists):
/// `$1, $2, ...` on PostgreSQL, plain `?` on SQLite. Bind values in the order the placeholders
/// were taken. Why not `$N` on SQLite too: it binds a named parameter by looking its name up in a
/// linear list, so a statement's binding cost grows with the square of its parameters (intake's
/// 576-parameter inserts spent 16% of the database thread there).
pub struct Params {
    backend: Backend,
    taken: usize,
}

impl Params {
    pub fn for_backend(backend: Backend) -> Params {
        Params { backend, taken: 0 }
    }

    /// The next placeholder.
    pub fn take(&mut self) -> String {
        self.taken += 1;
        match self.backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => format!("${}", self.taken),
        }
    }

    /// `n` placeholders separated by commas (an `IN` list).
    pub fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.take()).collect::<Vec<_>>().join(", ")
    }

    /// `n` rows of `columns` placeholders: `(?, ?), (?, ?)`.
    pub fn rows(&mut self, n: usize, columns: usize) -> String {
        (0..n)
            .map(|_| format!("({})", self.list(columns)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Milliseconds since the Unix epoch: the one time unit stored.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Store {
    /// Placeholders for a statement built at run time (see [`Params`]).
    pub fn params(&self) -> Params {
        Params {
            backend: self.backend,
            taken: 0,
        }
    }

    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), creating a SQLite file if needed, and
    /// applies migrations.
    pub async fn connect(url: &str) -> anyhow::Result<Store> {
        install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            let url = if url.contains('?') {
                url.to_owned()
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            anyhow::bail!("SPILLWAY_DATABASE_URL must start with sqlite:// or postgres://");
        };
        // Well inside the 10 s request deadline: with the database gone, intake answers 503 (retry
        // later), not a timeout.
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(4));
        let options = match backend {
            // One connection: SQLite allows one writer, and serialising here avoids SQLITE_BUSY.
            Backend::Sqlite => options.max_connections(1).after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA foreign_keys = ON",
                        "PRAGMA busy_timeout = 5000",
                        // 64 MiB of page cache (the default is 2 MiB): intake and deciding touch
                        // indexes all over a growing file, and every cache miss is a pread.
                        "PRAGMA cache_size = -65536",
                    ] {
                        conn.execute(pragma).await?;
                    }
                    Ok(())
                })
            }),
            Backend::Postgres => options.max_connections(16),
        };
        let pool = options
            .connect(&url)
            .await
            .with_context(|| format!("cannot open database {}", redact_url(&url)))?;
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&pool)
            .await
            .context("cannot apply database migrations")?;
        Ok(Store { pool, backend })
    }

    /// Connects to a PostgreSQL server without applying migrations (tests use it to create a fresh
    /// database per test).
    pub async fn connect_admin(url: &str) -> anyhow::Result<Store> {
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .with_context(|| format!("cannot open database {}", redact_url(url)))?;
        Ok(Store {
            pool,
            backend: Backend::Postgres,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The clause that lets concurrent claimers pass over rows another transaction holds:
    /// `FOR UPDATE SKIP LOCKED` on PostgreSQL; nothing on SQLite, whose single writer connection
    /// already serialises claims.
    pub fn skip_locked(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// One round trip to the database (readiness).
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("database unavailable")?;
        Ok(())
    }

    /// Starts a transaction. On PostgreSQL, appends to the audit log inside it serialise on a
    /// transaction-scoped advisory lock (see `audit::append`).
    ///
    /// On SQLite every transaction is `BEGIN IMMEDIATE` (the write lock up front), which also
    /// refuses a connection left inside a transaction: when a COMMIT fails (disk full), SQLite may
    /// keep the transaction open, or sqlx may still count it as open; a plain `BEGIN` would then
    /// become a savepoint inside a transaction that never commits, and every later "commit" would
    /// only release it, acknowledging writes that are never stored. Such a connection is closed
    /// instead, and the caller gets an error (intake answers 503).
    pub async fn begin(&self) -> anyhow::Result<Tx> {
        match self.backend {
            Backend::Postgres => self
                .pool
                .begin()
                .await
                .context("cannot start a database transaction"),
            Backend::Sqlite => {
                let mut conn = self
                    .pool
                    .acquire()
                    .await
                    .context("cannot start a database transaction")?;
                if conn.is_in_transaction() {
                    tracing::warn!("closing a database connection left inside a transaction");
                    let _ = conn.close().await;
                    conn = self
                        .pool
                        .acquire()
                        .await
                        .context("cannot start a database transaction")?;
                }
                match sqlx::Transaction::begin(conn, Some("BEGIN IMMEDIATE".into())).await {
                    Ok(tx) => Ok(tx),
                    Err(e) => {
                        // SQLite itself may still be inside the failed transaction: the
                        // connection (the only one) is closed, and the next caller gets a new one.
                        if let Ok(conn) = self.pool.acquire().await {
                            let _ = conn.close().await;
                        }
                        Err(anyhow::Error::from(e).context("cannot start a database transaction"))
                    }
                }
            }
        }
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_not_printed() {
        assert_eq!(
            redact_url("postgres://spill:hunter2@127.0.0.1:5432/db"),
            "postgres://spill:***@127.0.0.1:5432/db"
        );
        assert_eq!(redact_url("sqlite://spillway.db"), "sqlite://spillway.db");
    }
}
