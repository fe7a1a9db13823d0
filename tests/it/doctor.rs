//! `spillway doctor` on a real database through the real binary: a clean installation reports
//! nothing severe and exits 0; old, over-broad and long-lived admin keys, an unrotated
//! installation secret, an expired endpoint left in place and (on PostgreSQL, a production
//! database) development keys are reported, and the exit code is 1.

use std::collections::BTreeSet;

use crate::common::process::Setup;
use serde_json::Value;
use spillway::installations;
use spillway::platform::outbound::Policy;
use spillway::platform::store::{Store, now_ms};
use spillway::scanner::TokenSecret;
use spillway::sources::listeners::{self, ListenerKind, OldEndpoint};

const DAY_MS: i64 = 24 * 3600 * 1000;

fn doctor(setup: &Setup) -> (i32, Value) {
    let out = setup
        .command(&["doctor", "--format", "json"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

fn checks(report: &Value) -> BTreeSet<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn doctor_reports_credential_hygiene() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let setup = Setup::new("http://127.0.0.1:9/keys".into(), Some(&url));
        let keys =
            spillway::platform::keyring::Keys::load(&setup.dir.path().join("spillway.keys"), true)
                .unwrap();
        let store = Store::connect(&url).await.unwrap();

        // A narrow, short-lived key: nothing to say about it.
        let scopes = spillway::admin::api_keys::parse_scopes("audit:read").unwrap();
        spillway::admin::api_keys::create(
            &store,
            "dashboards",
            &scopes,
            30 * DAY_MS,
            spillway::admin::api_keys::Creator::Local("test"),
        )
        .await
        .unwrap();
        let (code, report) = doctor(&setup);
        if backend == "sqlite" {
            assert_eq!((code, report["severe"].as_u64()), (0, Some(0)), "{report}");
            assert!(checks(&report).is_empty(), "{report}");
        } else {
            // PostgreSQL is a production database, and these keys were generated for development.
            assert_eq!(code, 1, "{report}");
            assert!(checks(&report).contains("keys.development"), "{report}");
        }

        // An all-powerful key living two years, created 100 days ago.
        let all: BTreeSet<spillway::admin::api_keys::Scope> =
            spillway::admin::api_keys::Scope::ALL.into_iter().collect();
        let (broad, _) = spillway::admin::api_keys::create(
            &store,
            "ops",
            &all,
            730 * DAY_MS,
            spillway::admin::api_keys::Creator::Local("test"),
        )
        .await
        .unwrap();
        sqlx::query("UPDATE admin_keys SET created_at = created_at - $1 WHERE id = $2")
            .bind(100 * DAY_MS)
            .bind(&broad.id)
            .execute(store.pool())
            .await
            .unwrap();
        // An installation whose only secret is 120 days old.
        let spec = serde_json::from_value(serde_json::json!({
            "name": "acme", "hostnames": ["acme.example.com"], "token_types": ["palantir_jwt"],
            "jwks_url": "https://acme.example.com/jwks.json", "revoke_url": "https://acme.example.com/revoke",
            "rate_per_sec": 10.0, "burst": 5, "concurrency": 2
        }))
        .unwrap();
        let (installation, _) = installations::register(
            &store,
            &keys.sealing,
            &Policy::default(),
            spec,
            Some(TokenSecret::new(
                spillway::platform::webhook_auth::generate_whsec(),
            )),
            "test",
        )
        .await
        .unwrap();
        sqlx::query("UPDATE installation_secrets SET created_at = $1 WHERE installation_id = $2")
            .bind(now_ms() - 120 * DAY_MS)
            .bind(&installation.id)
            .execute(store.pool())
            .await
            .unwrap();
        // A rotated listener whose old endpoint expired and was never deleted.
        let (listener, _) = listeners::create(&store, ListenerKind::Github, "gh", "test")
            .await
            .unwrap();
        listeners::rotate(
            &store,
            &listener.id,
            OldEndpoint::ExpireAt(now_ms() + 60_000),
            "test",
        )
        .await
        .unwrap();
        sqlx::query(
            "UPDATE listener_endpoints SET expires_at = $1 WHERE listener_id = $2 AND expires_at IS NOT NULL",
        )
        .bind(now_ms() - 2 * DAY_MS)
        .bind(&listener.id)
        .execute(store.pool())
        .await
        .unwrap();

        let (code, report) = doctor(&setup);
        assert_eq!(code, 1, "{backend}: {report}");
        let found = checks(&report);
        for expected in [
            "admin_key.age",
            "admin_key.no_ttl",
            "admin_key.over_broad",
            "admin_key.shared",
            "installation_secret.not_rotated",
            "endpoint.expired_not_deleted",
        ] {
            assert!(
                found.contains(expected),
                "{backend}: {expected} missing: {report}"
            );
        }
        let subjects: Vec<&str> = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["check"] == "admin_key.over_broad")
            .map(|f| f["subject"].as_str().unwrap())
            .collect();
        assert_eq!(subjects, vec![broad.id.as_str()], "{backend}");
        // Text output says the same, ending with the counts.
        let out = setup.command(&["doctor"]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("SEVERE   admin_key.over_broad"), "{text}");
        assert!(text.trim_end().ends_with("configuration)"), "{text}");
    }
}
