//! The installation registry, through the admin API over real HTTP, on every backend: validation
//! names the field, secrets are shown once and stored sealed, two live during a rotation, changes
//! are audited, and outbound URLs obey the operator's policy.

use reqwest::StatusCode;
use serde_json::{Value, json};
use spillway::admin::api_keys as admin_keys;

async fn call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn registration(name: &str) -> Value {
    json!({
        "name": name,
        "hostnames": ["acme.palantirfoundry.com"],
        "token_types": ["palantir_jwt"],
        "verify_url": "https://acme.example.com/spillway/verify",
        "revoke_url": "https://acme.example.com/spillway/revoke",
        "notify_url": "https://acme.example.com/spillway/notify",
        "rate_per_sec": 5.0,
        "burst": 10,
        "concurrency": 2
    })
}

#[tokio::test]
async fn installations_are_registered_rotated_and_removed_with_audit() {
    use reqwest::Method;
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (running, _keep) = crate::common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let base = format!("http://{}", running.admin_addr);
        let store = &running.state.store;
        let scopes = admin_keys::parse_scopes("installations:read,installations:write").unwrap();
        let (_, writer) = admin_keys::create(
            store,
            "ops",
            &scopes,
            3_600_000,
            spillway::admin::api_keys::Creator::Local("test"),
        )
        .await
        .unwrap();
        let readonly = admin_keys::parse_scopes("installations:read").unwrap();
        let (_, reader) = admin_keys::create(
            store,
            "ro",
            &readonly,
            3_600_000,
            spillway::admin::api_keys::Creator::Local("test"),
        )
        .await
        .unwrap();
        let (w, r) = (writer.expose(), reader.expose());

        // Scope enforcement.
        let (s, b) = call(
            &base,
            Method::POST,
            "/api/v1/installations",
            r,
            Some(registration("acme")),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{backend}: {b}");

        // Validation names the field.
        for (patch, field) in [
            (
                json!({"revoke_url": "http://acme.example.com/r"}),
                "revoke_url",
            ),
            (
                json!({"verify_url": "https://169.254.169.254/latest/meta-data"}),
                "verify_url",
            ),
            (json!({"token_types": []}), "token_types"),
            (json!({"rate_per_sec": 0.0}), "rate_per_sec"),
            (json!({"concurrency": 0}), "concurrency"),
            (json!({"hostnames": ["Not A Host"]}), "hostnames"),
            (json!({"pull_mode": true}), "pull_mode"),
        ] {
            let mut body = registration("bad");
            for (k, v) in patch.as_object().unwrap() {
                body[k] = v.clone();
            }
            let (s, b) = call(&base, Method::POST, "/api/v1/installations", w, Some(body)).await;
            assert_eq!(
                s,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{backend} {field}: {b}"
            );
            assert!(
                b["error"].as_str().unwrap().starts_with(field),
                "{backend}: {b}"
            );
        }
        let mut no_revoke = registration("bad");
        no_revoke.as_object_mut().unwrap().remove("revoke_url");
        let (s, b) = call(
            &base,
            Method::POST,
            "/api/v1/installations",
            w,
            Some(no_revoke),
        )
        .await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY
                && b["error"].as_str().unwrap().starts_with("revoke_url"),
            "{b}"
        );

        // A misspelt field is refused, not ignored.
        let mut typo = registration("typo");
        typo["verfy_url"] = json!("https://acme.example.com/v");
        let (s, b) = call(&base, Method::POST, "/api/v1/installations", w, Some(typo)).await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY
                && b["error"].as_str().unwrap().contains("verfy_url"),
            "{backend}: {b}"
        );

        // Register: the generated secret is returned once.
        let (s, b) = call(
            &base,
            Method::POST,
            "/api/v1/installations",
            w,
            Some(registration("acme")),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {b}");
        let id = b["installation"]["id"].as_str().unwrap().to_owned();
        let secret = b["secret"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("whsec_"));
        let (s, _) = call(
            &base,
            Method::POST,
            "/api/v1/installations",
            w,
            Some(registration("acme")),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{backend}: names are unique");

        let (s, list) = call(&base, Method::GET, "/api/v1/installations", r, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert!(
            !list.to_string().contains(&secret),
            "{backend}: a secret is never listed"
        );
        assert_eq!(list[0]["live_secrets"], 1);

        // Update one field; the rest stays.
        let (s, b) = call(
            &base,
            Method::PATCH,
            &format!("/api/v1/installations/{id}"),
            w,
            Some(json!({"rate_per_sec": 50.0})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend}: {b}");
        assert_eq!(b["rate_per_sec"], 50.0);
        assert_eq!(b["burst"], 10);
        let (s, b) = call(
            &base,
            Method::PATCH,
            &format!("/api/v1/installations/{id}"),
            w,
            Some(json!({"burst": 0})),
        )
        .await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY
                && b["error"].as_str().unwrap().starts_with("burst"),
            "{b}"
        );

        // Rotation: add beside the old (two live, both sign), a third is refused, retire the old.
        let rotate = format!("/api/v1/installations/{id}/rotate-secret");
        let (s, b) = call(&base, Method::POST, &rotate, w, Some(json!({}))).await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {b}");
        let new_secret = b["secret"].as_str().unwrap().to_owned();
        let live = spillway::installations::secrets(store, &running.state.keys.sealing, &id)
            .await
            .unwrap();
        let live: Vec<&str> = live.iter().map(|s| s.expose()).collect();
        assert_eq!(
            live,
            vec![new_secret.as_str(), secret.as_str()],
            "{backend}: newest first"
        );
        let (s, b) = call(&base, Method::POST, &rotate, w, Some(json!({}))).await;
        assert!(
            s == StatusCode::CONFLICT && b["error"].as_str().unwrap().contains("retire"),
            "{b}"
        );
        let (s, _) = call(
            &base,
            Method::POST,
            &rotate,
            w,
            Some(json!({"retire_old": true})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let live = spillway::installations::secrets(store, &running.state.keys.sealing, &id)
            .await
            .unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(
            live[0].expose(),
            new_secret,
            "{backend}: the new secret stays"
        );

        // Secrets are stored sealed.
        let sealed: Vec<(String,)> = sqlx::query_as("SELECT sealed FROM installation_secrets")
            .fetch_all(store.pool())
            .await
            .unwrap();
        assert!(
            sealed
                .iter()
                .all(|(s,)| !s.contains(&new_secret) && !s.contains("whsec_"))
        );

        let (s, _) = call(
            &base,
            Method::DELETE,
            &format!("/api/v1/installations/{id}"),
            w,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(
            &base,
            Method::GET,
            &format!("/api/v1/installations/{id}"),
            r,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);

        let actions: Vec<(String,)> = sqlx::query_as("SELECT action FROM audit_log ORDER BY seq")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let actions: Vec<&str> = actions.iter().map(|(a,)| a.as_str()).collect();
        for expected in [
            "installation.registered",
            "installation.updated",
            "installation.secret_added",
            "installation.secret_retired",
            "installation.removed",
        ] {
            assert!(
                actions.contains(&expected),
                "{backend}: {expected} in {actions:?}"
            );
        }
        running.shutdown().await;
    }
}
