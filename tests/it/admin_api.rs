//! The admin API over real HTTP: authentication (401), authorisation by scope (403), listener
//! rotation rules, and keys that cannot mint wider keys. On every backend.

use reqwest::StatusCode;
use serde_json::{Value, json};
use spillway::admin::api_keys as admin_keys;

struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    }
}

#[tokio::test]
async fn every_admin_request_is_authenticated_authorised_and_audited() {
    use reqwest::Method;
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (running, _keep) = crate::common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let api = Api {
            base: format!("http://{}", running.admin_addr),
            client: reqwest::Client::new(),
        };
        let scopes = admin_keys::parse_scopes("listeners:read,listeners:write,keys:write").unwrap();
        let (_, root) = admin_keys::create(
            &running.state.store,
            "bootstrap",
            &scopes,
            3_600_000,
            spillway::admin::api_keys::Creator::Local("test"),
        )
        .await
        .unwrap();
        let root = root.expose().to_owned();

        let (s, b) = api.call(Method::GET, "/api/v1/listeners", None, None).await;
        assert!(
            s == StatusCode::UNAUTHORIZED && b.contains("missing Authorization header"),
            "{backend}: {b}"
        );
        let (s, b) = api
            .call(
                Method::GET,
                "/api/v1/listeners",
                Some("spillway_nope"),
                None,
            )
            .await;
        assert!(
            s == StatusCode::UNAUTHORIZED && b.contains("unknown, malformed, expired or revoked"),
            "{backend}: {b}"
        );

        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/listeners",
                Some(&root),
                Some(json!({ "kind": "nope" })),
            )
            .await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY && b.contains("kind: unknown listener kind"),
            "{backend}: {b}"
        );
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/listeners",
                Some(&root),
                Some(json!({ "name": "x" })),
            )
            .await;
        assert!(
            s.is_client_error() && b.contains("missing field `kind`"),
            "{backend}: {s} {b}"
        );
        // A secret the sender could never sign with is refused now, not later as a 401 to them.
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/listeners",
                Some(&root),
                Some(json!({ "kind": "standard-webhooks", "name": "sw", "secret": "whsec_not base64!" })),
            )
            .await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY && b.contains("secret: "),
            "{backend}: {s} {b}"
        );
        assert!(!b.contains("not base64!"), "{backend}: secret echoed: {b}");
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/listeners",
                Some(&root),
                Some(json!({ "kind": "github-hmac", "name": "gh" })),
            )
            .await;
        assert!(
            s == StatusCode::CREATED && b.contains("\"secret\""),
            "{backend}: a generated secret is shown once: {s} {b}"
        );
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/listeners",
                Some(&root),
                Some(json!({ "kind": "github", "name": "gh" })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {b}");
        let created: Value = serde_json::from_str(&b).unwrap();
        assert!(
            created["endpoint_url"]
                .as_str()
                .unwrap()
                .starts_with("https://hooks.example.test/l/"),
            "{backend}: {b}"
        );
        let listener = created["listener"]["id"].as_str().unwrap().to_owned();
        let first = created["listener"]["endpoints"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let (s, b) = api
            .call(
                Method::POST,
                &format!("/api/v1/listeners/{listener}/rotate"),
                Some(&root),
                Some(json!({ "expire_in_secs": 3600 })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {b}");
        let active = serde_json::from_str::<Value>(&b).unwrap()["endpoint"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (s, b) = api
            .call(
                Method::POST,
                &format!("/api/v1/endpoints/{active}/extend"),
                Some(&root),
                Some(json!({ "expire_in_secs": 60 })),
            )
            .await;
        assert!(
            s == StatusCode::CONFLICT && b.contains("is the active endpoint"),
            "{backend}: {b}"
        );
        let (s, _) = api
            .call(
                Method::POST,
                &format!("/api/v1/endpoints/{first}/extend"),
                Some(&root),
                Some(json!({ "expire_in_secs": 7200 })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}");
        let (s, b) = api
            .call(
                Method::DELETE,
                &format!("/api/v1/endpoints/{active}"),
                Some(&root),
                None,
            )
            .await;
        assert!(
            s == StatusCode::CONFLICT && b.contains("rotate the listener first"),
            "{backend}: {b}"
        );
        let (s, _) = api
            .call(
                Method::DELETE,
                &format!("/api/v1/endpoints/{first}"),
                Some(&root),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{backend}");
        let (s, b) = api
            .call(
                Method::DELETE,
                "/api/v1/endpoints/ep_missing",
                Some(&root),
                None,
            )
            .await;
        assert!(
            s == StatusCode::NOT_FOUND && b.contains("no endpoint ep_missing"),
            "{backend}: {b}"
        );

        // Least privilege: no audit:read here, and no minting it either.
        let (s, b) = api
            .call(Method::GET, "/api/v1/audit", Some(&root), None)
            .await;
        assert!(
            s == StatusCode::FORBIDDEN && b.contains("lacks scope audit:read"),
            "{backend}: {b}"
        );
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/admin-keys",
                Some(&root),
                Some(json!({ "scopes": ["audit:read"], "ttl_secs": 60 })),
            )
            .await;
        assert!(
            s == StatusCode::FORBIDDEN && b.contains("cannot grant audit:read"),
            "{backend}: {b}"
        );
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/admin-keys",
                Some(&root),
                Some(json!({ "scopes": ["listeners:read"], "ttl_secs": 60, "name": "ro" })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend}: {b}");
        let reader = serde_json::from_str::<Value>(&b).unwrap()["secret"]
            .as_str()
            .unwrap()
            .to_owned();
        let (s, b) = api
            .call(Method::GET, "/api/v1/listeners", Some(&reader), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}: {b}");
        assert_eq!(
            serde_json::from_str::<Value>(&b).unwrap()[0]["endpoints"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "{backend}"
        );
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/listeners",
                Some(&reader),
                Some(json!({ "kind": "github" })),
            )
            .await;
        assert!(
            s == StatusCode::FORBIDDEN && b.contains("lacks scope listeners:write"),
            "{backend}: {b}"
        );

        let actors: Vec<String> = sqlx::query_scalar("SELECT actor FROM audit_log ORDER BY seq")
            .fetch_all(running.state.store.pool())
            .await
            .unwrap();
        assert!(
            actors
                .iter()
                .filter(|a| a.starts_with("admin-key:key_"))
                .count()
                >= 5,
            "{backend}: {actors:?}"
        );
        running.shutdown().await;
    }
}

#[tokio::test]
async fn admin_keys_are_listed_revoked_with_what_they_minted_and_never_outlive_their_maker() {
    use reqwest::Method;
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (running, _keep) = crate::common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let api = Api {
            base: format!("http://{}", running.admin_addr),
            client: reqwest::Client::new(),
        };
        let scopes = admin_keys::parse_scopes("keys:read,keys:write,listeners:read").unwrap();
        let (root_key, root) = admin_keys::create(
            &running.state.store,
            "root",
            &scopes,
            30 * 24 * 3_600_000,
            admin_keys::Creator::Local("test"),
        )
        .await
        .unwrap();
        let root = root.expose().to_owned();
        // A 30-day key cannot mint a 10-year key.
        let (s, b) = api
            .call(
                Method::POST,
                "/api/v1/admin-keys",
                Some(&root),
                Some(json!({ "scopes": ["keys:write"], "ttl_secs": 10 * 365 * 24 * 3600, "name": "forever" })),
            )
            .await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY && b.contains("cannot outlive"),
            "{backend}: {s} {b}"
        );
        let mint = |secret: String, name: &'static str, ttl_secs: u64| {
            let api = &api;
            async move {
                let (s, b) = api
                    .call(
                        Method::POST,
                        "/api/v1/admin-keys",
                        Some(&secret),
                        Some(json!({ "scopes": ["keys:write", "listeners:read"], "ttl_secs": ttl_secs, "name": name })),
                    )
                    .await;
                assert_eq!(s, StatusCode::CREATED, "{b}");
                let v: Value = serde_json::from_str(&b).unwrap();
                (
                    v["key"]["id"].as_str().unwrap().to_owned(),
                    v["secret"].as_str().unwrap().to_owned(),
                )
            }
        };
        let (child_id, child) = mint(root.clone(), "child", 86_400).await;
        let (grandchild_id, grandchild) = mint(child.clone(), "grandchild", 3_600).await;

        let (s, b) = api
            .call(Method::GET, "/api/v1/admin-keys", Some(&root), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}: {b}");
        let listed: Value = serde_json::from_str(&b).unwrap();
        let keys = listed["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 3, "{backend}");
        for secret in [&root, &child, &grandchild] {
            assert!(!b.contains(secret.as_str()), "{backend}: a secret listed");
        }
        let child_row = keys.iter().find(|k| k["id"] == child_id).unwrap();
        assert_eq!(child_row["parent_id"], root_key.id, "{backend}");
        assert!(child_row["revoked_at"].is_null(), "{backend}");
        // Listing needs keys:read.
        let (s, _) = api
            .call(Method::GET, "/api/v1/admin-keys", Some(&child), None)
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{backend}");

        // Revoking the child revokes what it minted too; the root keeps working.
        let (s, b) = api
            .call(
                Method::DELETE,
                &format!("/api/v1/admin-keys/{child_id}"),
                Some(&root),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}: {b}");
        let revoked: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(
            revoked["revoked"],
            json!([child_id, grandchild_id]),
            "{backend}"
        );
        for secret in [&child, &grandchild] {
            let (s, b) = api
                .call(Method::GET, "/api/v1/listeners", Some(secret), None)
                .await;
            assert!(
                s == StatusCode::UNAUTHORIZED && b.contains("revoked"),
                "{backend}: {s} {b}"
            );
        }
        let (s, _) = api
            .call(Method::GET, "/api/v1/listeners", Some(&root), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{backend}");
        let (s, b) = api
            .call(
                Method::DELETE,
                &format!("/api/v1/admin-keys/{child_id}"),
                Some(&root),
                None,
            )
            .await;
        assert!(
            s == StatusCode::CONFLICT && b.contains("already revoked"),
            "{backend}: {b}"
        );
        let (s, _) = api
            .call(
                Method::DELETE,
                "/api/v1/admin-keys/key_nope",
                Some(&root),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{backend}");
        let audited: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'admin_key.revoke' AND subject = $1",
        )
        .bind(&child_id)
        .fetch_one(running.state.store.pool())
        .await
        .unwrap();
        assert_eq!(audited, 1, "{backend}");
        running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spillway_admin_key_found_in_public_is_revoked_at_once() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (running, _keep) = crate::common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let scopes = admin_keys::parse_scopes("listeners:read,keys:write").unwrap();
        let (leaked_key, leaked) = admin_keys::create(
            &running.state.store,
            "ci",
            &scopes,
            3_600_000,
            admin_keys::Creator::Local("test"),
        )
        .await
        .unwrap();
        let leaked = leaked.expose().to_owned();
        // Someone pushes it; a GitHub webhook listener sees the push.
        let secret = spillway::scanner::TokenSecret::new("hook secret");
        let (_, endpoint) = spillway::sources::listeners::create_with_secret(
            &running.state.store,
            spillway::sources::listeners::ListenerKind::GithubHmac,
            "hooks",
            "test",
            Some((&running.state.keys.sealing, &secret)),
        )
        .await
        .unwrap();
        running.state.directory.reload_now().await.unwrap();
        let body = format!(r#"{{"head_commit":{{"message":"ci: add ADMIN_KEY={leaked}"}}}}"#);
        let resp = reqwest::Client::new()
            .post(format!("http://{}{}", running.public_addr, endpoint.path))
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                crate::common::senders::github_hmac("hook secret", body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{backend}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while admin_keys::authenticate(&running.state.store, &leaked)
            .await
            .unwrap()
            .is_some()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{backend}: never revoked"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let key = admin_keys::list(&running.state.store)
            .await
            .unwrap()
            .into_iter()
            .find(|k| k.id == leaked_key.id)
            .unwrap();
        assert_eq!(key.revoked_by.as_deref(), Some("spillway"), "{backend}");
        assert!(
            key.revoked_reason.unwrap().contains("github-hmac"),
            "{backend}: the reason names the source"
        );
        let finding: (String, String) = sqlx::query_as(
            "SELECT attribution, state FROM findings WHERE token_type = 'spillway_admin_key'",
        )
        .fetch_one(running.state.store.pool())
        .await
        .unwrap();
        assert_eq!(finding, ("spillway".into(), "revoked".into()), "{backend}");
        let metrics = reqwest::get(format!("http://{}/metrics", running.admin_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains(r#"spillway_admin_keys_leaked_total{outcome="revoked"} 1"#),
            "{backend}"
        );
        running.shutdown().await;
    }
}

#[tokio::test]
async fn the_findings_list_names_a_wrong_filter() {
    use reqwest::Method;
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let (running, _keep) = crate::common::start_server(&url, "http://127.0.0.1:9/unused").await;
        let api = Api {
            base: format!("http://{}", running.admin_addr),
            client: reqwest::Client::new(),
        };
        let scopes = admin_keys::parse_scopes("installations:read").unwrap();
        let (_, key) = admin_keys::create(
            &running.state.store,
            "reader",
            &scopes,
            3_600_000,
            admin_keys::Creator::Local("test"),
        )
        .await
        .unwrap();
        let key = key.expose().to_owned();
        for (query, status, message) in [
            (
                "?state=revokd",
                StatusCode::BAD_REQUEST,
                r#"state: unknown finding state \"revokd\""#,
            ),
            (
                "?limit=0",
                StatusCode::BAD_REQUEST,
                "limit: must be 1 to 1000",
            ),
            ("?after=x", StatusCode::BAD_REQUEST, "query: "),
            ("?state=awaiting_pull", StatusCode::OK, "[]"),
        ] {
            let (s, b) = api
                .call(
                    Method::GET,
                    &format!("/api/v1/findings{query}"),
                    Some(&key),
                    None,
                )
                .await;
            assert_eq!(s, status, "{backend} {query}: {b}");
            assert!(b.contains(message), "{backend} {query}: {b}");
        }
        running.shutdown().await;
    }
}
