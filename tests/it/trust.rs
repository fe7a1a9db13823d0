//! Trust boundaries: a key id has one owner (another installation reusing it can neither claim a
//! token nor make a genuine one look forged), and installation URLs that may not be called are
//! refused at once with the reason. On every backend.

use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use serde_json::{Value, json};
use spillway::installations::{self, RegistryError, Spec};
use spillway::platform::outbound::Policy;

use crate::common::revocation::{Rig, TERMINAL};

/// The reference installation's published key id.
async fn published_kid(rig: &Rig) -> String {
    let jwks: Value = rig
        .client
        .get(format!("{}/jwks.json", rig.installation.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    jwks["keys"][0]["kid"].as_str().unwrap().to_owned()
}

/// A P-256 JWK under `kid` whose private key nobody here will use.
fn foreign_jwk(kid: &str) -> Value {
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    serde_json::to_value(spillway::platform::jwt::jwk_of(key.verifying_key(), kid)).unwrap()
}

/// An installation that serves a JWKS under someone else's key id and answers every call
/// `unknown_token`.
async fn squatter(kid: &str) -> String {
    let jwks = json!({ "keys": [foreign_jwk(kid)] }).to_string();
    let unknown = || async {
        (
            [("content-type", "application/json")],
            r#"{"status":"unknown_token"}"#,
        )
    };
    let app = Router::new()
        .route(
            "/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move { ([("content-type", "application/json")], jwks) }
            }),
        )
        .route("/verify", post(unknown))
        .route("/revoke", post(unknown))
        .route("/notify", post(|| async { "" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn squatter_spec(base: &str, jwks: Option<Value>) -> Spec {
    let mut spec = json!({
        "name": "squatter",
        "token_types": ["palantir_jwt"],
        "verify_url": format!("{base}/verify"),
        "revoke_url": format!("{base}/revoke"),
    });
    match jwks {
        Some(inline) => spec["inline_jwks"] = inline,
        None => spec["jwks_url"] = json!(format!("{base}/jwks.json")),
    }
    serde_json::from_value(spec).unwrap()
}

const LOCAL: Policy = Policy {
    allow_http: true,
    allow_private: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_id_has_one_owner_and_a_second_claim_cannot_suppress_a_genuine_token() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(&url, |_| {}, |_| {}, |_| {}).await;
        let kid = published_kid(&rig).await;
        let base = squatter(&kid).await;
        let store = rig.server.state.store.clone();
        let sealing = &rig.server.state.keys.sealing;

        // Inline keys reusing another installation's inline key id are refused at registration.
        let (owner, _) = installations::register(
            &store,
            sealing,
            &LOCAL,
            serde_json::from_value(json!({
                "name": "inline-owner",
                "token_types": ["palantir_jwt"],
                "revoke_url": format!("{base}/revoke"),
                "inline_jwks": { "keys": [foreign_jwk("kid-taken")] },
            }))
            .unwrap(),
            None,
            "test",
        )
        .await
        .unwrap();
        let refused = installations::register(
            &store,
            sealing,
            &LOCAL,
            squatter_spec(&base, Some(json!({ "keys": [foreign_jwk("kid-taken")] }))),
            None,
            "test",
        )
        .await
        .unwrap_err();
        match refused {
            RegistryError::Invalid { field, message } => {
                assert_eq!(field, "inline_jwks.keys[0].kid", "{backend}");
                assert!(message.contains(&owner.id), "{backend}: {message}");
            }
            other => panic!("{backend}: {other:?}"),
        }
        installations::remove(&store, &owner.id, "test")
            .await
            .unwrap();

        // A squatter already registered with inline keys under the genuine key id (as data from
        // before the refusal could be), and a JWKS squatter: neither may suppress a genuine token.
        let (squatter, _) = installations::register(
            &store,
            sealing,
            &LOCAL,
            squatter_spec(&base, None),
            None,
            "test",
        )
        .await
        .unwrap();
        let forged_inline = json!({ "keys": [foreign_jwk(&kid)] }).to_string();
        sqlx::query("UPDATE installations SET inline_jwks = $1 WHERE id = $2")
            .bind(&forged_inline)
            .bind(&squatter.id)
            .execute(store.pool())
            .await
            .unwrap();
        let rig = rig.restart_server(async |_, _| {}, |_| {}).await;

        let token = rig.mint("session", None).await;
        let (status, answer) = rig
            .alert(&json!([{ "token": token, "type": "palantir_jwt", "url": "https://github.com/o/r" }]))
            .await;
        assert_eq!(status, 200, "{backend}: {answer}");
        assert!(
            !answer.contains("false_positive"),
            "{backend}: a genuine token was labelled forged: {answer}"
        );
        let settled = rig.settled(1, Duration::from_secs(30)).await;
        let genuine = settled
            .iter()
            .find(|f| f.installation_id.as_deref() == Some(rig.installation_id.as_str()))
            .unwrap_or_else(|| panic!("{backend}: no finding at the owner: {settled:#?}"));
        assert_eq!(genuine.state, "revoked", "{backend}: {settled:#?}");
        assert!(settled.iter().all(|f| TERMINAL.contains(&f.state.as_str())));
        assert_eq!(
            rig.installation.revocations().len(),
            1,
            "{backend}: the owner revoked it"
        );

        // The conflict is on record: audit entry, metric, doctor.
        let conflicts: Vec<String> = sqlx::query_scalar(
            "SELECT details FROM audit_log WHERE action = 'installation.key_conflict'",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(conflicts.len(), 1, "{backend}: {conflicts:?}");
        assert!(conflicts[0].contains(&squatter.id), "{backend}");
        let metrics = reqwest::get(format!("http://{}/metrics", rig.server.admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("spillway_key_id_conflicts_total 1"),
            "{backend}"
        );
        let settings = spillway::platform::config::Settings {
            key_file: rig.key_file(),
            ..Default::default()
        };
        let report = spillway::admin::doctor::run(&settings, &store)
            .await
            .unwrap();
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.check == "key_id.ambiguous" && f.subject == kid),
            "{backend}: {:?}",
            report.findings
        );
        rig.server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_installation_urls_end_at_once_naming_the_reason() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        // Loopback is refused by the server's outbound policy; the installation's URLs name
        // `localhost`, which passes registration (a name) and is refused after DNS.
        let rig = Rig::start(
            &url,
            |_| {},
            |s| s.outbound_allow_private = false,
            |spec| {
                for url in [&mut spec.verify_url, &mut spec.revoke_url] {
                    *url = url.as_ref().map(|u| u.replace("127.0.0.1", "localhost"));
                }
            },
        )
        .await;
        let store = rig.server.state.store.clone();
        let sealing = &rig.server.state.keys.sealing;
        let strict = Policy {
            allow_http: true,
            allow_private: false,
        };

        // IPv6 literals carrying an IPv4 address are refused at registration, naming the field.
        for (field, literal) in [
            ("revoke_url", "http://[::ffff:0:127.0.0.1]:9/revoke"),
            ("verify_url", "http://[64:ff9b:1::a00:1]/verify"),
        ] {
            let mut spec = json!({
                "name": "embedded",
                "token_types": ["palantir_jwt"],
                "revoke_url": "https://revoke.example/r",
            });
            spec[field] = json!(literal);
            let err = installations::register(
                &store,
                sealing,
                &strict,
                serde_json::from_value(spec).unwrap(),
                None,
                "test",
            )
            .await
            .unwrap_err();
            match err {
                RegistryError::Invalid { field: f, message } => {
                    assert_eq!(f, field, "{backend}: {message}");
                }
                other => panic!("{backend}: {literal}: {other:?}"),
            }
        }

        let token = rig.mint("session", None).await;
        let (status, answer) = rig
            .alert(&json!([{ "token": token, "type": "palantir_jwt", "url": "https://github.com/o/r" }]))
            .await;
        assert_eq!(status, 200, "{backend}: {answer}");
        let settled = rig.settled(1, Duration::from_secs(20)).await;
        assert_eq!(settled.len(), 1, "{backend}: {settled:#?}");
        let finding = &settled[0];
        assert_eq!(finding.state, "failed", "{backend}: {finding:#?}");
        assert_eq!(
            finding.attempts, 1,
            "{backend}: refused calls are not retried"
        );
        let error = finding.last_error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("refused: verify_url: localhost resolves only to internal addresses"),
            "{backend}: {error}"
        );
        assert!(
            rig.installation.revocations().is_empty(),
            "{backend}: nothing reached the installation"
        );
        rig.server.shutdown().await;
    }
}
