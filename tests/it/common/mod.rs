//! Shared test helpers: a fresh database per test on every backend available.
//!
//! PostgreSQL runs when `SPILLWAY_TEST_POSTGRES_URL` names a server (`.ci/run` starts a throwaway
//! cluster and sets it). Without it tests run on SQLite only and say so; under CI (`CI` set) a
//! missing PostgreSQL fails the run instead of passing silently.
#![allow(dead_code)]

pub use spillway::devtools::archives;
pub mod process;
pub mod revocation;
pub mod sarif;
pub mod senders;

use spillway::platform::store::Store;

/// (backend name, database URL, directory that lives as long as the database).
pub async fn fresh_databases() -> Vec<(String, String, tempfile::TempDir)> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    out.push(("sqlite".to_owned(), url, dir));
    match std::env::var("SPILLWAY_TEST_POSTGRES_URL") {
        Ok(base) if !base.is_empty() => {
            let admin = Store::connect_admin(&base)
                .await
                .expect("PostgreSQL reachable");
            let name = format!("spillway_test_{:016x}", rand::random::<u64>());
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(admin.pool())
                .await
                .unwrap();
            let scheme_end = base.find("://").expect("a URL") + 3;
            let url = match base[scheme_end..].find('/') {
                Some(i) => format!("{}/{name}", &base[..scheme_end + i]),
                None => format!("{base}/{name}"),
            };
            out.push(("postgres".to_owned(), url, tempfile::tempdir().unwrap()));
        }
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must run the PostgreSQL tests: set SPILLWAY_TEST_POSTGRES_URL")
        }
        _ => eprintln!(
            "PostgreSQL tests skipped locally: set SPILLWAY_TEST_POSTGRES_URL=postgres://... to run them"
        ),
    }
    out
}

/// Connected stores for [`fresh_databases`].
pub async fn backends() -> Vec<(String, Store, tempfile::TempDir)> {
    let mut out = Vec::new();
    for (name, url, dir) in fresh_databases().await {
        out.push((
            name,
            Store::connect(&url).await.expect("database opens"),
            dir,
        ));
    }
    out
}

/// The real server on free loopback ports, keys provided as a file (PostgreSQL counts as
/// production, where keys must be provided), partner key URLs pointed at `keys_url`.
pub async fn start_server(
    database_url: &str,
    keys_url: &str,
) -> (spillway::service::Running, tempfile::TempDir) {
    start_server_tuned(database_url, keys_url, |_| {}).await
}

/// [`start_server`] with settings adjusted by `tune`.
pub async fn start_server_tuned(
    database_url: &str,
    keys_url: &str,
    tune: impl FnOnce(&mut spillway::platform::config::Settings),
) -> (spillway::service::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = spillway::platform::config::Settings {
        database_url: database_url.into(),
        listen_addr: "127.0.0.1:0".into(),
        admin_addr: "127.0.0.1:0".into(),
        github_keys_url: keys_url.to_owned(),
        gitlab_keys_url: keys_url.to_owned(),
        depsdev_keys_url: keys_url.to_owned(),
        key_file: dir.path().join("keys"),
        audit_checkpoint_file: dir.path().join("checkpoints"),
        public_url: "https://hooks.example.test".into(),
        ..spillway::platform::config::Settings::default()
    };
    tune(&mut settings);
    spillway::platform::keyring::Keys::load(&settings.key_file, true).unwrap();
    let running = spillway::service::start(&settings)
        .await
        .expect("server starts");
    (running, dir)
}
