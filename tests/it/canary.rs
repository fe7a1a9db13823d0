//! The canary: fresh tokens, written in every encoding a sender uses (plain, after a JSON escape,
//! spelled with `\u` escapes, JSON inside a JSON string, percent-encoded in a URL, base64 and gzip
//! then base64 in a JSON value, form values
//! after `%0A` / `%20`, GitHub's form `payload=`, gzip and deflate bodies, a body that does not
//! parse as declared), are driven through every listener kind of a real `spillway serve`; then
//! every file in its data directory (database, `-wal`, `-shm`, checkpoints), its logs, every
//! response, `/metrics` and the listeners' events streams are searched for any of them.

use std::io::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::process::Setup;
use crate::common::senders::{
    PartnerSigner, fresh_github_token, github_hmac, standard_webhooks_headers, twilio_signature,
};

/// A body as a sender would send it.
struct Case {
    name: &'static str,
    content_type: &'static str,
    content_encoding: Option<&'static str>,
    body: Vec<u8>,
    /// Form parameters (Twilio signs these, not the body).
    form: Option<Vec<(String, String)>>,
    /// Whether the body parses as its content type declares (so a redacted copy is kept).
    decodable: bool,
}

fn compress(encoding: &str, data: &[u8]) -> Vec<u8> {
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        _ => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
    }
}

/// JSON bodies, each holding `t` in one encoding.
fn json_cases(t: &str) -> Vec<(&'static str, Vec<u8>, bool)> {
    let first = t.as_bytes()[0];
    vec![
        (
            "json plain",
            json!({ "event": "config.changed", "value": format!("TOKEN={t}") })
                .to_string()
                .into_bytes(),
            true,
        ),
        (
            r"json \n",
            format!(r#"{{"value":"line one\n{t}"}}"#).into_bytes(),
            true,
        ),
        (
            r"json \t",
            format!(r#"{{"value":"k\t{t}"}}"#).into_bytes(),
            true,
        ),
        (
            r"json \u0020",
            format!(r#"{{"value":"k\u0020{t}"}}"#).into_bytes(),
            true,
        ),
        (
            r"json \u-spelled",
            format!(r#"{{"value":"x \u{first:04x}{}"}}"#, &t[1..]).into_bytes(),
            true,
        ),
        (
            "json in a json string",
            json!({ "payload": json!({ "k": format!("\n{t}") }).to_string() })
                .to_string()
                .into_bytes(),
            true,
        ),
        (
            "percent-encoded url in json",
            format!(r#"{{"callback":"https://x.test/cb?note=%0A{t}"}}"#).into_bytes(),
            true,
        ),
        (
            "base64 in json (a Kubernetes Secret's data)",
            json!({ "data": { "token": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("TOKEN={t}\n"),
            ) } })
            .to_string()
            .into_bytes(),
            true,
        ),
        (
            "gzip then base64 in json",
            json!({ "blob": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                compress("gzip", format!("config:\n  token: {t}\n").as_bytes()),
            ) })
            .to_string()
            .into_bytes(),
            true,
        ),
        (
            "declared json that does not parse",
            format!(r#"{{"value":"line\n{t}""#).into_bytes(),
            false,
        ),
    ]
}

fn form_cases(t: &str) -> Vec<(&'static str, Vec<(String, String)>)> {
    let payload = format!(r#"{{"commits":[{{"message":"oops\n{t}"}}]}}"#);
    vec![
        (
            "form %0A",
            vec![
                ("Body".into(), format!("line one\n{t}")),
                ("From".into(), "+15550000".into()),
            ],
        ),
        ("form %20", vec![("Body".into(), format!("key {t}"))]),
        ("form payload= (GitHub)", vec![("payload".into(), payload)]),
    ]
}

fn encode_form(params: &[(String, String)]) -> Vec<u8> {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
        .into_bytes()
}

/// Every case a generic listener gets, each with its own fresh token (recorded in `tokens`).
fn generic_cases(tokens: &mut Vec<String>) -> Vec<Case> {
    let mut fresh = || {
        let t = fresh_github_token();
        tokens.push(t.clone());
        t
    };
    let mut cases = Vec::new();
    for i in 0..json_cases("x").len() {
        let (name, body, decodable) = json_cases(&fresh()).swap_remove(i);
        cases.push(Case {
            name,
            content_type: "application/json",
            content_encoding: None,
            body,
            form: None,
            decodable,
        });
    }
    for i in 0..form_cases("x").len() {
        let (name, params) = form_cases(&fresh()).swap_remove(i);
        cases.push(Case {
            name,
            content_type: "application/x-www-form-urlencoded",
            content_encoding: None,
            body: encode_form(&params),
            form: Some(params),
            decodable: true,
        });
    }
    for (name, encoding) in [(r"gzip json \n", "gzip"), (r"deflate json \n", "deflate")] {
        let plain = format!(r#"{{"value":"line\n{}"}}"#, fresh());
        cases.push(Case {
            name,
            content_type: "application/json",
            content_encoding: Some(encoding),
            body: compress(encoding, plain.as_bytes()),
            form: None,
            decodable: true,
        });
    }
    cases
}

fn last_line(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_owned()
}

/// Creates a listener from the command line; returns (listener id, endpoint URL).
fn create_listener(setup: &Setup, kind: &str, secret: Option<&str>) -> (String, String) {
    let mut args = vec!["listener", "create", "--kind", kind];
    let file = setup.dir.path().join(format!("{kind}.secret"));
    if let Some(s) = secret {
        std::fs::write(&file, s).unwrap();
        args.extend(["--secret-file", file.to_str().unwrap()]);
    }
    let out = setup.command(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let id = stdout
        .split_whitespace()
        .nth(1)
        .expect("listener <id> ...")
        .to_owned();
    let _ = std::fs::remove_file(&file);
    (id, last_line(out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_any_encoding_leaks_from_any_listener_kind() {
    let signer = PartnerSigner::new("k1");
    let keys_url = signer.serve_keys().await;
    let mut setup = Setup::new(keys_url.clone(), None);
    setup
        .env
        .push(("SPILLWAY_GITLAB_KEYS_URL".into(), keys_url.clone()));
    setup
        .env
        .push(("SPILLWAY_DEPSDEV_KEYS_URL".into(), keys_url));

    let whsec_key = b"canary standard webhooks key";
    let whsec = format!(
        "whsec_{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, whsec_key)
    );
    let generic = [
        ("standard-webhooks", Some(whsec.as_str())),
        ("twilio", Some("canary-twilio-auth-token")),
        ("github-hmac", Some("canary-hmac-secret")),
    ];
    let mut listeners = Vec::new();
    for (kind, secret) in generic {
        listeners.push((kind, create_listener(&setup, kind, secret)));
    }
    let partner: Vec<(&str, (String, String))> = ["github", "gitlab", "depsdev"]
        .into_iter()
        .map(|k| (k, create_listener(&setup, k, None)))
        .collect();
    let gitlab_revocation = create_listener(&setup, "gitlab-revocation", Some("canary-gl-secret"));
    let admin_key = last_line(
        setup
            .command(&[
                "admin-key",
                "create",
                "--scopes",
                "listeners:read,audit:read",
                "--ttl",
                "1d",
            ])
            .output()
            .unwrap(),
    );

    let mut child = setup.start(0);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut tokens: Vec<String> = Vec::new();
    let mut responses: Vec<String> = Vec::new();
    let mut driven = 0;

    for (kind, (_, endpoint)) in &listeners {
        let twilio = *kind == "twilio";
        for (i, case) in generic_cases(&mut tokens).into_iter().enumerate() {
            // Twilio sends form bodies, or JSON whose hash the signed URL carries.
            let mut target = endpoint.clone();
            if twilio && case.form.is_none() {
                let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&case.body));
                target = format!("{endpoint}?bodySHA256={hash}");
            }
            let mut request = match *kind {
                "standard-webhooks" => {
                    let mut r = client.post(&target);
                    for (k, v) in
                        standard_webhooks_headers(whsec_key, &format!("msg_{i}"), &case.body)
                    {
                        r = r.header(k, v);
                    }
                    r
                }
                "twilio" => {
                    let params: Vec<(&str, &str)> = case
                        .form
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    client.post(&target).header(
                        "x-twilio-signature",
                        twilio_signature("canary-twilio-auth-token", &target, &params, false),
                    )
                }
                _ => client.post(&target).header(
                    "x-hub-signature-256",
                    github_hmac("canary-hmac-secret", &case.body),
                ),
            };
            request = request.header("content-type", case.content_type);
            if let Some(e) = case.content_encoding {
                request = request.header("content-encoding", e);
            }
            let resp = request.body(case.body.clone()).send().await.unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert_eq!(status, 200, "{kind} / {}: {text}", case.name);
            let answer: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                answer["tokens_found"], 1,
                "{kind} / {}: the token was not seen through its encoding",
                case.name
            );
            responses.push(text);
            driven += 1;
        }
    }

    // Partner alerts and the GitLab revocation API carry the token in a JSON field, plain or
    // written with escapes.
    for (kind, (_, endpoint)) in &partner {
        for escaped in [false, true] {
            let t = fresh_github_token();
            tokens.push(t.clone());
            let field = if escaped {
                format!("\\u{:04x}{}", t.as_bytes()[0], &t[1..])
            } else {
                t.clone()
            };
            let body = format!(
                r#"[{{"token":"{field}","type":"github_personal_access_token","url":"","source":"content"}}]"#
            );
            let header = match *kind {
                "github" => "Github",
                "gitlab" => "Gitlab",
                _ => "DepsDev",
            };
            let resp = client
                .post(endpoint)
                .header(format!("{header}-Public-Key-Identifier"), "k1")
                .header(
                    format!("{header}-Public-Key-Signature"),
                    signer.sign(body.as_bytes()),
                )
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert_eq!(status, 200, "{kind}: {text}");
            responses.push(text);
            driven += 1;
        }
    }
    for escaped in [false, true] {
        let t = fresh_github_token();
        tokens.push(t.clone());
        let field = if escaped {
            format!("\\u{:04x}{}", t.as_bytes()[0], &t[1..])
        } else {
            t.clone()
        };
        let body = format!(
            r#"[{{"type":"gitleaks_rule_id_github_personal_access_token","token":"{field}","location":"https://gitlab.example/x"}}]"#
        );
        let resp = client
            .post(format!("{}/v1/revoke_tokens", gitlab_revocation.1))
            .header("authorization", "canary-gl-secret")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        responses.push(resp.text().await.unwrap());
        driven += 1;
    }

    // The events streams: every event redacted; a body that did not parse is kept as metadata only.
    let admin = format!("http://127.0.0.1:{}", setup.admin);
    for (kind, (id, _)) in &listeners {
        let stream = client
            .get(format!("{admin}/api/v1/listeners/{id}/events"))
            .bearer_auth(&admin_key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events: Vec<Value> = stream
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), generic_cases(&mut Vec::new()).len(), "{kind}");
        for e in &events {
            match e["body"].as_str() {
                Some(body) => assert!(
                    body.contains("[REDACTED github_personal_access_token "),
                    "{kind}: {body}"
                ),
                None => assert!(e["note"].as_str().unwrap().contains("not valid JSON")),
            }
        }
        let undecodable = generic_cases(&mut Vec::new())
            .iter()
            .filter(|c| !c.decodable)
            .count();
        assert_eq!(
            events.iter().filter(|e| e["body"].is_null()).count(),
            undecodable,
            "{kind}: only bodies that do not parse as declared are kept as metadata"
        );
        responses.push(stream);
    }
    let metrics = client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("spillway_"));
    responses.push(metrics);

    // Let the engine decide everything (it logs and audits as it goes), then look everywhere:
    // first while serve runs (the WAL and shm exist), then after it stopped.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let any_token = aho_corasick::AhoCorasick::new(&tokens).unwrap();
    assert!(any_token.is_match(format!("x {} y", tokens[0]).as_bytes()));
    let check = |label: &str| {
        let files = setup.files();
        assert!(files.iter().any(|(n, _)| n == "spillway.db"), "{label}");
        assert!(
            files
                .iter()
                .any(|(n, b)| n == "stderr.0.log" && !b.is_empty()),
            "{label}: debug logs were written"
        );
        for (name, bytes) in &files {
            assert!(!any_token.is_match(bytes), "{label}: raw token in {name}");
        }
    };
    check("running");
    for r in &responses {
        assert!(
            !any_token.is_match(r.as_bytes()),
            "raw token in a response: {r}"
        );
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    check("stopped");
    eprintln!(
        "canary: {driven} requests, {} tokens, {} encodings x 3 generic kinds + 2 x 4 JSON-field kinds",
        tokens.len(),
        generic_cases(&mut Vec::new()).len()
    );
}
