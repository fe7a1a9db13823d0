//! The admin API over real HTTP: authentication (401), authorisation by scope (403), listener
//! rotation rules, and keys that cannot mint wider keys. On every backend.

use reqwest::StatusCode;
use serde_json::{Value, json};
use spillway::admin_keys;

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
            "test",
            None,
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
            s == StatusCode::UNAUTHORIZED && b.contains("unknown, malformed or expired"),
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
