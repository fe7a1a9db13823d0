//! Operator commands as an operator runs them: the real binary on a fresh SQLite database, before
//! any server has started.

use std::path::Path;
use std::process::{Command, Output};

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(args)
            .current_dir(d)
            .env(
                "SPILLWAY_DATABASE_URL",
                format!("sqlite://{}", d.join("spillway.db").display()),
            )
            .env("SPILLWAY_KEY_FILE", d.join("spillway.keys"))
            .env(
                "SPILLWAY_AUDIT_CHECKPOINT_FILE",
                d.join("audit.checkpoints"),
            )
            .env("SPILLWAY_PUBLIC_URL", "https://hooks.example.test")
            .env_remove("SPILLWAY_FINGERPRINT_KEY")
            .output()
            .expect("spillway runs")
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn listeners_json(env: &Env) -> serde_json::Value {
    let o = env.run(&["listener", "list", "--json"]);
    assert!(o.status.success(), "{}", err(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn listener_lifecycle_from_the_command_line() {
    let env = Env::new();
    let created = env.run(&[
        "listener", "create", "--kind", "github", "--name", "partner",
    ]);
    assert!(created.status.success(), "{}", err(&created));
    let url = out(&created).lines().last().unwrap().to_owned();
    assert!(
        url.starts_with("https://hooks.example.test/l/") && url.len() > 60,
        "{url}"
    );
    assert!(
        err(&created).contains("generated development keys"),
        "a generated key file is announced loudly"
    );

    let list = listeners_json(&env);
    let listener = list[0]["id"].as_str().unwrap().to_owned();
    let first = list[0]["endpoints"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["kind"], "github");
    assert!(
        !serde_json::to_string(&list)
            .unwrap()
            .contains(url.rsplit('/').next().unwrap()),
        "secret path not listed"
    );

    let rotated = env.run(&["listener", "rotate", &listener, "--expire-in", "1h"]);
    assert!(rotated.status.success(), "{}", err(&rotated));
    assert!(
        out(&rotated)
            .lines()
            .last()
            .unwrap()
            .starts_with("https://hooks.example.test/l/")
    );
    let list = listeners_json(&env);
    let endpoints = list[0]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2);
    assert_eq!(
        endpoints
            .iter()
            .filter(|e| e["expires_at"].is_null())
            .count(),
        1
    );
    let active = endpoints
        .iter()
        .find(|e| e["expires_at"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let extended = env.run(&["listener", "extend", &first, "--expire-in", "2h"]);
    assert!(extended.status.success(), "{}", err(&extended));
    let refused = env.run(&["listener", "extend", &active, "--expire-in", "2h"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        err(&refused).contains(&format!("endpoint {active} is the active endpoint")),
        "{}",
        err(&refused)
    );
    let refused = env.run(&["listener", "delete", &active]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        err(&refused).contains("rotate the listener first"),
        "{}",
        err(&refused)
    );
    let deleted = env.run(&["listener", "delete", &first]);
    assert!(deleted.status.success(), "{}", err(&deleted));
    let missing = env.run(&["listener", "delete", "ep_nope"]);
    assert!(
        err(&missing).contains("no endpoint ep_nope"),
        "{}",
        err(&missing)
    );

    let verify = env.run(&["audit", "verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}{}",
        out(&verify),
        err(&verify)
    );
    assert!(
        out(&verify).contains("audit log intact: 4 entries"),
        "{}",
        out(&verify)
    );
    let export = env.run(&["audit", "export", "--format", "jsonl"]);
    let actions: Vec<String> = out(&export)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        actions,
        [
            "listener.create",
            "listener.rotate",
            "listener.extend",
            "listener.delete_endpoint"
        ]
    );
}

#[test]
fn audit_verify_fails_when_the_tail_is_cut() {
    let env = Env::new();
    assert!(
        env.run(&["listener", "create", "--kind", "gitlab"])
            .status
            .success()
    );
    assert!(
        env.run(&[
            "admin-key",
            "create",
            "--scopes",
            "audit:read",
            "--ttl",
            "1d"
        ])
        .status
        .success()
    );
    // Cut the last entry, as an intruder covering their tracks would.
    let db = env.path().join("spillway.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store =
            spillway::platform::store::Store::connect(&format!("sqlite://{}", db.display()))
                .await
                .unwrap();
        sqlx::query("DELETE FROM audit_log WHERE seq = 2")
            .execute(store.pool())
            .await
            .unwrap();
    });
    let verify = env.run(&["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(1));
    assert!(
        out(&verify).contains("BROKEN at entry 2") && out(&verify).contains("truncated"),
        "{}",
        out(&verify)
    );
}

#[test]
fn admin_keys_are_printed_once_in_the_scanner_recognised_format() {
    let env = Env::new();
    let created = env.run(&[
        "admin-key",
        "create",
        "--scopes",
        "listeners:read,audit:read",
        "--ttl",
        "30d",
        "--name",
        "ops",
    ]);
    assert!(created.status.success(), "{}", err(&created));
    let key = out(&created).lines().last().unwrap().to_owned();
    assert!(
        spillway::admin::api_keys::is_well_formed(&key),
        "malformed key"
    );
    std::fs::write(env.path().join("leak.txt"), format!("KEY={key}\n")).unwrap();
    let scan = env.run(&["scan", "--format", "json", "leak.txt"]);
    let findings: serde_json::Value = serde_json::from_slice(&scan.stdout).unwrap();
    assert_eq!(findings[0]["rule_id"], "spillway.admin-key");
    for file in ["spillway.db", "spillway.db-wal", "audit.checkpoints"] {
        let bytes = std::fs::read(env.path().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "raw key stored in {file}"
        );
    }

    let bad = env.run(&["admin-key", "create", "--scopes", "root", "--ttl", "1d"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        err(&bad).contains("unknown scope \"root\""),
        "{}",
        err(&bad)
    );
}

#[test]
fn admin_keys_are_listed_and_revoked_from_the_command_line() {
    let env = Env::new();
    let created = env.run(&[
        "admin-key",
        "create",
        "--scopes",
        "keys:read,audit:read",
        "--ttl",
        "7d",
        "--name",
        "dashboards",
    ]);
    assert!(created.status.success(), "{}", err(&created));
    let secret = out(&created).lines().last().unwrap().to_owned();
    let listed = env.run(&["admin-key", "list", "--format", "json"]);
    assert!(listed.status.success(), "{}", err(&listed));
    assert!(!out(&listed).contains(&secret), "a secret listed");
    let keys: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let key = &keys[0];
    for field in [
        "id",
        "scopes",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ] {
        assert!(key.get(field).is_some(), "{field} missing: {key}");
    }
    assert_eq!(
        key["scopes"],
        serde_json::json!(["audit:read", "keys:read"])
    );
    assert!(key["revoked_at"].is_null());
    let id = key["id"].as_str().unwrap().to_owned();

    let revoked = env.run(&["admin-key", "revoke", &id]);
    assert!(revoked.status.success(), "{}", err(&revoked));
    assert!(out(&revoked).contains(&id));
    let listed = env.run(&["admin-key", "list"]);
    assert!(out(&listed).contains("revoked"), "{}", out(&listed));
    let again = env.run(&["admin-key", "revoke", &id]);
    assert_eq!(again.status.code(), Some(2));
    assert!(err(&again).contains("already revoked"), "{}", err(&again));
    let verify = env.run(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", out(&verify));
}
