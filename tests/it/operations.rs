//! What the security team runs against: `/metrics` in both exposition formats, the dashboards and
//! alert rules naming only metrics the service exports, and the OpenAPI documents listing every
//! route the service serves (and nothing it does not).

use std::collections::BTreeSet;

use serde_json::Value;

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `spillway_...` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("spillway_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The series names a Prometheus-text exposition offers (histograms with their suffixes).
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

async fn scrape(admin: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(format!("http://{admin}/metrics"));
    if let Some(a) = accept {
        request = request.header("accept", a);
    }
    let r = request.send().await.unwrap();
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    (content_type, r.text().await.unwrap())
}

#[tokio::test]
async fn dashboards_alerts_and_runbooks_name_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let (server, _d) = crate::common::start_server_tuned(&url, "http://127.0.0.1:9/keys", |s| {
        s.poller.enabled = false
    })
    .await;
    let (content_type, text) = scrape(server.admin_addr, None).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let offered = exported(&text);
    // Families are declared even before their first sample, so every name is there from the start.
    for must in [
        "spillway_alerts_received_total",
        "spillway_time_to_revoke_seconds_bucket",
        "spillway_work_queue_depth",
        "spillway_poller_leader",
        "spillway_audit_checkpoint_age_seconds",
    ] {
        assert!(offered.contains(must), "{must} not exported:\n{text}");
    }
    let mut checked = 0;
    for file in [
        "grafana/dashboards/spillway-overview.json",
        "grafana/dashboards/spillway-installation.json",
        "deploy/prometheus/alerts.yml",
        "docs/OPERATIONS.md",
    ] {
        let source = repo_file(file);
        let names = metric_names(&source);
        assert!(!names.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = names.iter().filter(|n| !offered.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the service does not export: {unknown:?}"
        );
        checked += names.len();
    }
    // The dashboards are Grafana JSON with a PromQL expression in every target.
    for file in [
        "grafana/dashboards/spillway-overview.json",
        "grafana/dashboards/spillway-installation.json",
    ] {
        let dashboard: Value = serde_json::from_str(&repo_file(file)).unwrap();
        let panels = dashboard["panels"].as_array().unwrap();
        let exprs: Vec<&str> = panels
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .filter_map(|t| t["expr"].as_str())
            .collect();
        assert!(exprs.len() >= 5, "{file}: {} expressions", exprs.len());
        assert!(exprs.iter().all(|e| !metric_names(e).is_empty()), "{file}");
    }
    assert!(checked > 20);

    // Prometheus asks for OpenMetrics and gets it.
    let (content_type, om) = scrape(
        server.admin_addr,
        Some("application/openmetrics-text;version=1.0.0"),
    )
    .await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(om.trim_end().ends_with("# EOF"));
    server.shutdown().await;
}

/// (METHOD, path with every parameter written `{}`) for each `.route(...)` in `source`.
fn routes_in_source(source: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let parts: Vec<&str> = source.split(".route(").skip(1).collect();
    for part in parts {
        let part = part
            .split([';'])
            .next()
            .unwrap()
            .split(".merge(")
            .next()
            .unwrap()
            .split(".layer(")
            .next()
            .unwrap()
            .split(".fallback(")
            .next()
            .unwrap();
        let path = part.split('"').nth(1).expect("a route path literal");
        for method in ["get", "post", "put", "patch", "delete"] {
            let call = format!("{method}(");
            let found = part.match_indices(&call).any(|(i, _)| {
                !part[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            if found {
                out.insert((method.to_uppercase(), normalise(path)));
            }
        }
    }
    out
}

fn normalise(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

fn routes_in_openapi(document: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, ops) in document["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                out.insert((method.to_uppercase(), normalise(path)));
            }
        }
    }
    out
}

#[tokio::test]
async fn openapi_documents_list_every_route_and_are_served() {
    // The admin router: src/http/admin_api.rs plus the admin routes in src/http/mod.rs.
    let mod_rs = repo_file("src/http/mod.rs");
    let admin_part = &mod_rs[mod_rs.find("let admin = Router::new()").unwrap()..];
    let admin_part = &admin_part[..admin_part.find(".with_state(").unwrap()];
    let mut admin_routes = routes_in_source(&repo_file("src/http/admin_api.rs"));
    admin_routes.extend(routes_in_source(admin_part));
    assert!(admin_routes.len() >= 15, "{admin_routes:?}");
    let admin_doc: Value = serde_json::from_str(&repo_file("docs/openapi/admin.json")).unwrap();
    assert_eq!(admin_doc["openapi"], "3.1.0");
    assert_eq!(
        routes_in_openapi(&admin_doc),
        admin_routes,
        "docs/openapi/admin.json and the admin router differ"
    );
    // The installation contract's pull API (the installation calls Spillway).
    let pull_routes = routes_in_source(&repo_file("src/http/pull_api.rs"));
    let contract: Value =
        serde_json::from_str(&repo_file("docs/openapi/installation.json")).unwrap();
    let documented = routes_in_openapi(&contract);
    for route in &pull_routes {
        assert!(
            documented.contains(route),
            "{route:?} missing from docs/openapi/installation.json"
        );
    }

    // Both are served as they are in the repository.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let (server, _d) = crate::common::start_server(&url, "http://127.0.0.1:9/keys").await;
    for (path, file) in [
        ("/openapi.json", &admin_doc),
        ("/openapi/installation.json", &contract),
    ] {
        let served: Value = reqwest::get(format!("http://{}{path}", server.admin_addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(&served, file, "{path}");
    }
    server.shutdown().await;
}

#[test]
fn the_route_reader_reads_multiline_routes() {
    let source = r#"Router::new()
        .route("/a/{id}", get(one).patch(two))
        .route(
            "/b",
            post(get_thing),
        )
        .merge(x::routes())"#;
    let routes = routes_in_source(source);
    let expected: BTreeSet<(String, String)> =
        [("GET", "/a/{}"), ("PATCH", "/a/{}"), ("POST", "/b")]
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
    assert_eq!(routes, expected);
}
