//! The public listener's directory of endpoint routes, in memory: an endpoint resolves from its
//! path before a single body byte is read, and without a database query per request, so made-up
//! endpoints cost the server almost nothing.
//!
//! The copy is refreshed every [`REFRESH`] and, on a miss (or an endpoint that looks expired), at
//! most once per [`MISS_REFRESH`] (single-flight), so an endpoint created or extended elsewhere (the
//! CLI, another replica) works within that, and a stream of forged paths cannot turn into a stream
//! of queries. Changes made through this replica's admin API reload it at once. A deletion or an
//! expiry set elsewhere takes effect within [`REFRESH`].
//!
//! Owns no table: rows come from `listeners::routes`. Must not import HTTP types.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::platform::keyring::Keys;
use crate::platform::store::{Store, now_ms};
use crate::scanner::TokenSecret;
use crate::sources::listeners::{self, ListenerKind};

/// How stale the directory may get without a miss.
pub const REFRESH: Duration = Duration::from_secs(5);
/// Least time between two reloads caused by misses.
pub const MISS_REFRESH: Duration = Duration::from_secs(1);

/// Where an endpoint routes to.
pub struct Route {
    pub listener_id: String,
    pub kind: ListenerKind,
    expires_at: Option<i64>,
    /// The listener's secret, opened (generic listeners and the GitLab revocation API).
    pub secret: Option<TokenSecret>,
}

impl Route {
    fn live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

struct Snapshot {
    routes: HashMap<String, Arc<Route>>,
    loaded: Option<Instant>,
}

pub struct Directory {
    store: Store,
    keys: Arc<Keys>,
    snapshot: RwLock<Snapshot>,
    reload: tokio::sync::Mutex<()>,
}

impl Directory {
    pub fn new(store: Store, keys: Arc<Keys>) -> Directory {
        Directory {
            store,
            keys,
            snapshot: RwLock::new(Snapshot {
                routes: HashMap::new(),
                loaded: None,
            }),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    fn lookup(&self, hash: &str) -> Option<Arc<Route>> {
        let snapshot = self.snapshot.read().expect("directory lock");
        snapshot
            .routes
            .get(hash)
            .filter(|r| r.live(now_ms()))
            .cloned()
    }

    fn age(&self) -> Option<Duration> {
        self.snapshot
            .read()
            .expect("directory lock")
            .loaded
            .map(|t| t.elapsed())
    }

    /// The live route of the endpoint whose secret path part is `secret`.
    pub async fn resolve(&self, secret: &str) -> anyhow::Result<Option<Arc<Route>>> {
        let hash = listeners::path_hash(secret);
        let fresh_enough = |age: Option<Duration>| age.is_some_and(|a| a < MISS_REFRESH);
        if let Some(route) = self.lookup(&hash)
            && self.age().is_some_and(|a| a < REFRESH)
        {
            return Ok(Some(route));
        }
        if !fresh_enough(self.age()) {
            let _single = self.reload.lock().await;
            if !fresh_enough(self.age()) {
                self.reload_now().await?;
            }
        }
        Ok(self.lookup(&hash))
    }

    /// Reads every route again (after a change through the admin API).
    pub async fn reload_now(&self) -> anyhow::Result<()> {
        let rows = listeners::routes(&self.store).await?;
        let mut routes = HashMap::with_capacity(rows.len());
        for row in rows {
            let secret = match &row.secret_sealed {
                Some(sealed) => Some(listeners::open_secret(
                    &self.keys.sealing,
                    &row.listener_id,
                    sealed,
                )?),
                None => None,
            };
            routes.insert(
                row.path_hash,
                Arc::new(Route {
                    listener_id: row.listener_id,
                    kind: row.kind,
                    expires_at: row.expires_at,
                    secret,
                }),
            );
        }
        *self.snapshot.write().expect("directory lock") = Snapshot {
            routes,
            loaded: Some(Instant::now()),
        };
        Ok(())
    }
}
