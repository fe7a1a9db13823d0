//! Storage, audit log, listener rotation and admin keys, on SQLite and on PostgreSQL (see
//! `crate::common::fresh_databases`).

use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use spillway::admin::api_keys as admin_keys;
use spillway::platform::audit::{self, Verdict};
use spillway::platform::keyring::Keys;
use spillway::platform::store::{Store, now_ms};
use spillway::sources::listeners::{self, ListenerKind, OldEndpoint, RotationError};

use crate::common::backends;

fn active_count(l: &listeners::Listener) -> usize {
    l.endpoints
        .iter()
        .filter(|e| e.expires_at.is_none())
        .count()
}

#[tokio::test]
async fn rotation_rules_hold_through_random_operation_sequences() {
    for (backend, store, _dir) in backends().await {
        let (listener, first) = listeners::create(&store, ListenerKind::Github, "gh", "test")
            .await
            .unwrap();
        let mut secrets = vec![(
            first.endpoint.id.clone(),
            first.path.trim_start_matches("/l/").to_owned(),
        )];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for step in 0..40 {
            let current = listeners::list(&store).await.unwrap().remove(0);
            let pick = |rng: &mut rand::rngs::StdRng| {
                current.endpoints[rng.gen_range(0..current.endpoints.len())].clone()
            };
            match rng.gen_range(0..4) {
                0 => {
                    let old = if rng.gen_bool(0.3) {
                        OldEndpoint::Delete
                    } else {
                        OldEndpoint::ExpireAt(now_ms() + rng.gen_range(30..400))
                    };
                    let new = listeners::rotate(&store, &listener.id, old, "test")
                        .await
                        .unwrap();
                    secrets.push((
                        new.endpoint.id.clone(),
                        new.path.trim_start_matches("/l/").to_owned(),
                    ));
                }
                1 => {
                    let e = pick(&mut rng);
                    let until = now_ms() + 500;
                    let result = listeners::extend(&store, &e.id, until, "test").await;
                    match (e.expires_at, result) {
                        (None, Err(RotationError::Active(_))) => {}
                        (Some(at), Err(RotationError::Expired(_))) if at <= now_ms() => {}
                        (Some(at), Ok(updated)) if at > now_ms() - 1000 => {
                            assert_eq!(updated.expires_at, Some(until))
                        }
                        (at, r) => panic!(
                            "{backend} step {step}: extend of endpoint expiring {at:?} gave {r:?}"
                        ),
                    }
                }
                2 => {
                    let e = pick(&mut rng);
                    let result = listeners::delete_endpoint(&store, &e.id, "test").await;
                    match (e.expires_at, result) {
                        (None, Err(RotationError::Active(_))) => {}
                        (Some(_), Ok(())) => {}
                        (at, r) => panic!(
                            "{backend} step {step}: delete of endpoint expiring {at:?} gave {r:?}"
                        ),
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(rng.gen_range(10..150))).await,
            }
            let after = listeners::list(&store).await.unwrap().remove(0);
            assert_eq!(
                active_count(&after),
                1,
                "{backend} step {step}: exactly one active endpoint"
            );
            for (id, secret) in &secrets {
                let before = now_ms();
                let routed = listeners::resolve(&store, secret).await.unwrap();
                let after_call = now_ms();
                let endpoint = after.endpoints.iter().find(|e| &e.id == id);
                // Live for the whole call, or gone before it started; anything else is a race to skip.
                let live = endpoint.is_some_and(|e| e.expires_at.is_none_or(|at| at > after_call));
                let gone = endpoint.is_none_or(|e| e.expires_at.is_some_and(|at| at <= before));
                if live {
                    assert_eq!(
                        routed.map(|r| r.0),
                        Some(listener.id.clone()),
                        "{backend} step {step}: live endpoint {id} must route"
                    );
                } else if gone {
                    assert!(
                        routed.is_none(),
                        "{backend} step {step}: deleted or expired endpoint {id} must not route"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn an_expired_endpoint_cannot_be_changed_only_deleted() {
    for (backend, store, _dir) in backends().await {
        let (listener, first) = listeners::create(&store, ListenerKind::Gitlab, "gl", "test")
            .await
            .unwrap();
        listeners::rotate(
            &store,
            &listener.id,
            OldEndpoint::ExpireAt(now_ms() + 600),
            "test",
        )
        .await
        .unwrap();
        let secret = first.path.trim_start_matches("/l/");
        assert!(
            listeners::resolve(&store, secret).await.unwrap().is_some(),
            "{backend}: still live before expiry"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            listeners::resolve(&store, secret).await.unwrap().is_none(),
            "{backend}: expired endpoint routes nowhere"
        );
        let err = listeners::extend(&store, &first.endpoint.id, now_ms() + 60_000, "test")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("can no longer be changed, only deleted"),
            "{backend}: {err}"
        );
        listeners::delete_endpoint(&store, &first.endpoint.id, "test")
            .await
            .unwrap();
        let past = listeners::rotate(
            &store,
            &listener.id,
            OldEndpoint::ExpireAt(now_ms() - 1),
            "test",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(past, RotationError::ExpiryInPast),
            "{backend}: {past}"
        );
    }
}

async fn audit_fixture(
    store: &Store,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    ed25519_dalek::SigningKey,
) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::load(&dir.path().join("keys"), true).unwrap();
    let path = dir.path().join("checkpoints");
    let (l, _) = listeners::create(store, ListenerKind::Github, "a", "test")
        .await
        .unwrap();
    for _ in 0..4 {
        listeners::rotate(
            store,
            &l.id,
            OldEndpoint::ExpireAt(now_ms() + 60_000),
            "test",
        )
        .await
        .unwrap();
    }
    audit::write_checkpoint(store, &path, &keys.audit_signing_key())
        .await
        .unwrap();
    (dir, path, keys.audit_signing_key())
}

async fn verdict(
    store: &Store,
    path: &std::path::Path,
    key: &ed25519_dalek::SigningKey,
) -> Verdict {
    audit::verify(store, path, &key.verifying_key())
        .await
        .unwrap()
}

#[tokio::test]
async fn audit_verify_names_the_first_edited_deleted_or_reordered_entry_and_a_truncated_tail() {
    for (backend, store, _dir) in backends().await {
        let (_keep, path, key) = audit_fixture(&store).await;
        assert_eq!(
            verdict(&store, &path, &key).await,
            Verdict::Intact {
                entries: 5,
                checkpoints: 1,
                unwitnessed: 0,
            },
            "{backend}"
        );

        sqlx::query("UPDATE audit_log SET subject = 'forged' WHERE seq = 3")
            .execute(store.pool())
            .await
            .unwrap();
        assert!(
            matches!(verdict(&store, &path, &key).await, Verdict::Broken { seq: 3, ref reason } if reason.contains("modified")),
            "{backend}"
        );
    }
    for (backend, store, _dir) in backends().await {
        let (_keep, path, key) = audit_fixture(&store).await;
        sqlx::query("DELETE FROM audit_log WHERE seq = 2")
            .execute(store.pool())
            .await
            .unwrap();
        assert!(
            matches!(verdict(&store, &path, &key).await, Verdict::Broken { seq: 2, ref reason } if reason.contains("missing")),
            "{backend}"
        );
    }
    for (backend, store, _dir) in backends().await {
        let (_keep, path, key) = audit_fixture(&store).await;
        // Swap the contents (and hashes) of entries 2 and 3.
        for (from, to) in [(2, 100), (3, 2), (100, 3)] {
            sqlx::query("UPDATE audit_log SET seq = $1 WHERE seq = $2")
                .bind(to)
                .bind(from)
                .execute(store.pool())
                .await
                .unwrap();
        }
        assert!(
            matches!(
                verdict(&store, &path, &key).await,
                Verdict::Broken { seq: 2, .. }
            ),
            "{backend}"
        );
    }
    for (backend, store, _dir) in backends().await {
        let (_keep, path, key) = audit_fixture(&store).await;
        sqlx::query("DELETE FROM audit_log WHERE seq >= 4")
            .execute(store.pool())
            .await
            .unwrap();
        assert!(
            matches!(verdict(&store, &path, &key).await, Verdict::Broken { seq: 4, ref reason } if reason.contains("truncated")),
            "{backend}"
        );
    }
}

#[tokio::test]
async fn audit_verify_counts_the_unwitnessed_tail_and_refuses_details_that_are_not_canonical() {
    for (backend, store, _dir) in backends().await {
        let (_keep, path, key) = audit_fixture(&store).await;
        let (l, _) = listeners::create(&store, ListenerKind::Github, "b", "test")
            .await
            .unwrap();
        for _ in 0..3 {
            listeners::rotate(&store, &l.id, OldEndpoint::Delete, "test")
                .await
                .unwrap();
        }
        // Four entries after the last checkpoint: intact, but said to be unwitnessed.
        assert_eq!(
            verdict(&store, &path, &key).await,
            Verdict::Intact {
                entries: 9,
                checkpoints: 1,
                unwitnessed: 4,
            },
            "{backend}"
        );
        audit::write_checkpoint(&store, &path, &key).await.unwrap();
        assert!(
            matches!(
                verdict(&store, &path, &key).await,
                Verdict::Intact { unwitnessed: 0, .. }
            ),
            "{backend}"
        );
        // Deleting witnessed entries is a truncation.
        sqlx::query("DELETE FROM audit_log WHERE seq >= 7")
            .execute(store.pool())
            .await
            .unwrap();
        assert!(
            matches!(verdict(&store, &path, &key).await, Verdict::Broken { seq: 7, ref reason } if reason.contains("truncated")),
            "{backend}"
        );
    }
    for (backend, store, _dir) in backends().await {
        let (_keep, path, key) = audit_fixture(&store).await;
        // A duplicated key, the forged value first: a JSON reader that takes the first value
        // (SQLite's json_extract) sees it, while the hash was computed over the last.
        let details: String = sqlx::query_scalar("SELECT details FROM audit_log WHERE seq = 2")
            .fetch_one(store.pool())
            .await
            .unwrap();
        let first_key = serde_json::from_str::<serde_json::Value>(&details)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        let forged = format!("{{\"{first_key}\":\"forged\",{}", &details[1..]);
        sqlx::query("UPDATE audit_log SET details = $1 WHERE seq = 2")
            .bind(&forged)
            .execute(store.pool())
            .await
            .unwrap();
        assert!(
            matches!(verdict(&store, &path, &key).await, Verdict::Broken { seq: 2, ref reason } if reason.contains("canonical")),
            "{backend}: {forged}"
        );
    }
}

#[tokio::test]
async fn a_key_can_never_mint_a_wider_key_and_expired_keys_fail() {
    for (backend, store, _dir) in backends().await {
        let read = admin_keys::parse_scopes("listeners:read,keys:write").unwrap();
        let (key, secret) = admin_keys::create(
            &store,
            "ops",
            &read,
            60_000,
            spillway::admin::api_keys::Creator::Local("cli"),
        )
        .await
        .unwrap();
        let authed = admin_keys::authenticate(&store, secret.expose())
            .await
            .unwrap()
            .expect("key authenticates");
        assert_eq!(authed.id, key.id, "{backend}");
        let wider = admin_keys::parse_scopes("listeners:read,listeners:write").unwrap();
        let err = admin_keys::create(
            &store,
            "x",
            &wider,
            60_000,
            admin_keys::Creator::Key(&authed),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains("listeners:write"),
            "{backend}: {err}"
        );
        let (_, short) = admin_keys::create(
            &store,
            "short",
            &read,
            30,
            spillway::admin::api_keys::Creator::Local("cli"),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            admin_keys::authenticate(&store, short.expose())
                .await
                .unwrap()
                .is_none(),
            "{backend}: expired key"
        );
        let stored: Vec<String> = sqlx::query_scalar("SELECT key_hash FROM admin_keys")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert!(
            stored.iter().all(|h| !h.contains("spillway_")),
            "{backend}: keys are stored hashed"
        );
    }
}
