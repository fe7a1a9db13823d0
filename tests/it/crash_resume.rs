//! Crash-resume at each step, on every backend: the real `spillway serve` binary aborts at a named
//! point (`SPILLWAY_CRASH_AT`: like SIGKILL at that instant), is restarted, and must finish the
//! job with no duplicate effect at the reference installation, an intact audit log, and no raw
//! token in any file or log it wrote.

use std::os::unix::process::ExitStatusExt as _;
use std::time::{Duration, Instant};

use crate::common::process::Setup;
use serde_json::json;
use spillway::devtools::{fake_github, reference_installation};
use spillway::findings;

async fn crash_and_resume(point: &str, online: bool) {
    run_to(point, online, Fault::Crash).await;
}

/// What happens at the point.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The process aborts there; a second run resumes.
    Crash,
    /// The finding's task panics there, every time.
    Panic,
}

/// The findings once one of them is `done` (the run that resumed finished it), within 30 s.
async fn resumed(
    store: &spillway::platform::store::Store,
    what: &str,
    done: impl Fn(&findings::FindingView) -> bool,
) -> Vec<findings::FindingView> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = findings::list(store, &Default::default(), 0, 10)
            .await
            .unwrap();
        if all.iter().any(&done) {
            return all;
        }
        assert!(Instant::now() < deadline, "{what}: not resumed: {all:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GitHub (the fake) reports `token` of type `kind` to the listener at `endpoint`, signed.
async fn report(
    github: &fake_github::Running,
    endpoint: &str,
    token: &str,
    kind: &str,
    backend: &str,
) {
    let body = serde_json::to_vec(&json!([{
        "token": token, "type": kind, "url": "https://github.com/o/r"
    }]))
    .unwrap();
    let r = reqwest::Client::new()
        .post(endpoint)
        .header("Github-Public-Key-Identifier", &github.key_identifier)
        .header("Github-Public-Key-Signature", github.sign(&body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{backend}");
}

/// A setup whose runs call the loopback fakes with 1 s calls (so a crashed run's 5 s leases lapse
/// quickly), plus the `extra` settings, with Spillway's keys made (PostgreSQL counts as production,
/// where keys are provided, not generated); returned with a GitHub listener's endpoint URL.
fn crash_setup(
    github: &fake_github::Running,
    url: &str,
    extra: &[(&str, String)],
) -> (Setup, String) {
    let mut setup = Setup::new(github.keys_url(), Some(url));
    setup.env = vec![
        ("SPILLWAY_OUTBOUND_ALLOW_HTTP".into(), "true".into()),
        ("SPILLWAY_OUTBOUND_ALLOW_PRIVATE".into(), "true".into()),
        ("SPILLWAY_CALL_TIMEOUT_MS".into(), "1000".into()),
    ];
    setup
        .env
        .extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    spillway::platform::keyring::Keys::load(&setup.dir.path().join("spillway.keys"), true).unwrap();
    let endpoint = github_listener(&setup);
    (setup, endpoint)
}

/// Creates a GitHub listener with the CLI; returns its endpoint URL.
fn github_listener(setup: &Setup) -> String {
    let out = setup
        .command(&["listener", "create", "--kind", "github"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned()
}

/// Waits until `child` aborted (SIGABRT, as `SPILLWAY_CRASH_AT` makes it).
async fn aborted(child: &mut std::process::Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never reached the crash point"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status.signal(),
        Some(6),
        "{what}: aborted at the crash point"
    );
}

/// The audit log verifies and `token` is in no file or log the runs wrote (database, WAL,
/// checkpoints, stdout, stderr).
fn audit_intact_and_no_raw_token(setup: &Setup, token: &str, what: &str) {
    let verify = setup.command(&["audit", "verify"]).output().unwrap();
    assert!(
        verify.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    for (name, bytes) in setup.files() {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{what}: raw token in {name}"
        );
    }
}

async fn run_to(point: &str, online: bool, fault: Fault) {
    for (backend, url, _db_dir) in crate::common::fresh_databases().await {
        let github = fake_github::start(&fake_github::Args::default())
            .await
            .unwrap();
        let (setup, endpoint) = crash_setup(&github, &url, &[]);
        let secret_file = setup.dir.path().join("ri.whsec");
        let installation = reference_installation::start(&reference_installation::Args {
            secret_file: secret_file.clone(),
            rate_limit: 100.0,
            burst: 20,
            ..Default::default()
        })
        .await
        .unwrap();
        let base = installation.url();
        let (jwks, verify) = (format!("{base}/jwks.json"), format!("{base}/verify"));
        let (revoke, notify) = (format!("{base}/revoke"), format!("{base}/notify"));
        let mut args = vec![
            "installation",
            "register",
            "--name",
            "reference",
            "--token-type",
            "palantir_jwt",
            "--revoke-url",
            &revoke,
            "--notify-url",
            &notify,
            "--rate-limit",
            "100",
            "--burst",
            "20",
            "--secret-file",
        ];
        let secret_path = secret_file.display().to_string();
        args.push(&secret_path);
        if online {
            args.extend(["--verify-url", verify.as_str()]);
        } else {
            args.extend(["--jwks-url", jwks.as_str()]);
        }
        let out = setup.command(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{backend}: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let client = reqwest::Client::new();
        let token: serde_json::Value = client
            .post(format!("{base}/tokens"))
            .json(&json!({"kind": "session"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = token["token"].as_str().unwrap().to_owned();

        // Run 0 aborts at the crash point (or panics there), after acknowledging the alert.
        let mut child = match fault {
            Fault::Crash => setup.start_with(0, &[("SPILLWAY_CRASH_AT", point)]),
            Fault::Panic => setup.start_with(
                0,
                &[("SPILLWAY_PANIC_AT", point), ("SPILLWAY_MAX_ATTEMPTS", "2")],
            ),
        };
        report(
            &github,
            &endpoint,
            &token,
            "palantir_jwt",
            &format!("{backend} {point}"),
        )
        .await;
        if fault == Fault::Panic {
            panicked(&backend, &url, &setup, &mut child, &token).await;
            installation.shutdown().await;
            github.shutdown().await;
            continue;
        }
        aborted(&mut child, &format!("{backend} {point}")).await;

        // Run 1 resumes.
        let mut child = setup.start(1);
        let store = spillway::platform::store::Store::connect(&url)
            .await
            .unwrap();
        let revoked = |f: &findings::FindingView| f.state == "revoked";
        let finding = resumed(&store, &format!("{backend} {point}"), revoked)
            .await
            .into_iter()
            .find(revoked)
            .unwrap();
        assert_eq!(
            findings::list(&store, &Default::default(), 0, 10)
                .await
                .unwrap()
                .len(),
            1,
            "{backend}: one finding"
        );
        assert_eq!(finding.outcome.as_deref(), Some("revoked"));
        let stats = installation.stats();
        assert_eq!(stats.revocations, 1, "{backend} {point}: {stats:?}");
        assert_eq!(stats.duplicate_effects, 0, "{backend} {point}: {stats:?}");
        assert_eq!(stats.notifications, 1, "{backend} {point}: {stats:?}");
        assert_eq!(stats.bad_signatures, 0, "{backend} {point}: {stats:?}");

        let _ = child.kill();
        let _ = child.wait();
        audit_intact_and_no_raw_token(&setup, &token, &format!("{backend} {point}"));
        installation.shutdown().await;
        github.shutdown().await;
    }
}

/// A panic in a finding's task is caught: the service lives on, the panic is counted and audited,
/// the finding is retried at once with the attempt counted (not after its lease lapses), and fails
/// naming the panic when attempts run out.
async fn panicked(
    backend: &str,
    url: &str,
    setup: &Setup,
    child: &mut std::process::Child,
    token: &str,
) {
    let store = spillway::platform::store::Store::connect(url)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let finding = loop {
        let all = findings::list(&store, &Default::default(), 0, 10)
            .await
            .unwrap();
        if let Some(f) = all.iter().find(|f| f.state == "failed") {
            break f.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{backend}: the panicking finding never failed: {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(finding.outcome.as_deref(), Some("failed_revoke"));
    assert_eq!(finding.attempts, 2, "{backend}: {finding:?}");
    assert_eq!(
        finding.last_error.as_deref(),
        Some("worker panicked: SPILLWAY_PANIC_AT=revoke.before_call")
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "{backend}: the service died"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", setup.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let panics: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("spillway_worker_panics_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(panics, 2.0, "{backend}: {metrics}");
    let audited: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE action LIKE 'finding.%' ORDER BY seq",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        audited,
        ["finding.panicked", "finding.panicked"],
        "{backend}: the give-back and the failure are audited"
    );
    let _ = child.kill();
    let _ = child.wait();
    for (name, bytes) in setup.files() {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{backend}: raw token in {name}"
        );
    }
}

#[tokio::test]
async fn a_panic_in_a_finding_task_is_caught_counted_audited_and_ends_the_finding() {
    run_to("revoke.before_call", false, Fault::Panic).await;
}

#[tokio::test]
async fn crash_before_a_decision_commits() {
    crash_and_resume("decide.before_commit", false).await;
}

#[tokio::test]
async fn crash_before_the_revoke_call() {
    crash_and_resume("revoke.before_call", false).await;
}

#[tokio::test]
async fn crash_after_the_revoke_call_before_its_commit() {
    crash_and_resume("revoke.after_call", false).await;
}

#[tokio::test]
async fn crash_after_the_notify_call_before_its_commit() {
    crash_and_resume("notify.after_call", false).await;
}

#[tokio::test]
async fn crash_after_the_verify_call_before_its_commit() {
    crash_and_resume("verify.after_call", true).await;
}

/// An issuer's finding resumes like an installation's: the real binary aborts right after GitHub's
/// Credential Revocation API accepted the token, a second run finishes the finding (reporting the
/// token again is harmless at GitHub: it is already revoked), with one finding, an intact audit
/// log and no raw token in any file.
#[tokio::test]
async fn a_crash_after_reporting_to_github_resumes_to_one_revoked_finding() {
    use sha2::Digest as _;
    for (backend, url, _db_dir) in crate::common::fresh_databases().await {
        let github = fake_github::start(&fake_github::Args::default())
            .await
            .unwrap();
        let (setup, endpoint) = crash_setup(
            &github,
            &url,
            &[("SPILLWAY_ISSUERS_GITHUB_BASE_URL", github.api_url())],
        );
        let token = crate::common::senders::fresh_github_token();
        let mut child = setup.start_with(0, &[("SPILLWAY_CRASH_AT", "revoke.after_call")]);
        report(
            &github,
            &endpoint,
            &token,
            "github_personal_access_token",
            &backend,
        )
        .await;
        aborted(&mut child, &format!("{backend}: after the call")).await;
        let reported = github.revocation.received();
        assert_eq!(
            reported.batches,
            [1],
            "{backend}: reported before the crash"
        );

        let mut child = setup.start(1);
        let store = spillway::platform::store::Store::connect(&url)
            .await
            .unwrap();
        let all = resumed(&store, &backend, |f| f.state == "revoked").await;
        assert_eq!(all.len(), 1, "{backend}: one finding");
        assert_eq!(all[0].installation_id.as_deref(), Some("issuer:github"));
        let received = github.revocation.received();
        let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
        assert!(
            received.sha256.iter().all(|h| *h == hash) && received.sha256.len() <= 2,
            "{backend}: {received:?}"
        );
        assert_eq!((received.rate_limited, received.authenticated), (0, 0));
        let _ = child.kill();
        let _ = child.wait();
        audit_intact_and_no_raw_token(&setup, &token, &backend);
        github.shutdown().await;
    }
}

/// A self-revoking issuer's finding resumes too: the real binary aborts right after GitLab
/// revoked the token. The second run sends the revoke again, which GitLab answers "gone" (no second
/// effect), and since GitLab had said the token was live, the finding ends `already_revoked`, a
/// true positive; one finding, an intact audit log, no raw token in any file.
#[tokio::test]
async fn a_crash_after_a_token_revoked_itself_resumes_to_already_revoked() {
    use spillway::issuers::self_revoke::Spec;
    let gitlab = Spec::shipped()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "gitlab")
        .unwrap();
    let token = {
        use sha2::Digest as _;
        let digest = hex::encode(sha2::Sha256::digest(b"crash-resume"));
        format!("glpat-{}", &digest[..20])
    };
    for (backend, url, _db_dir) in crate::common::fresh_databases().await {
        let (fake, seen) = crate::issuers::generic_fake(&gitlab, &token).await;
        let github = fake_github::start(&fake_github::Args::default())
            .await
            .unwrap();
        let (setup, endpoint) = crash_setup(
            &github,
            &url,
            &[("SPILLWAY_ISSUERS_GITHUB_ENABLED", "false".into())],
        );
        std::fs::write(
            setup.dir.path().join("spillway.toml"),
            format!(
                "[issuers.gitlab]\nenabled = true\nbase_url = \"http://{}\"\n",
                fake.addr
            ),
        )
        .unwrap();
        let mut child = setup.start_with(0, &[("SPILLWAY_CRASH_AT", "revoke.after_call")]);
        report(&github, &endpoint, &token, "gitlab_access_token", &backend).await;
        aborted(&mut child, &format!("{backend}: after the call")).await;
        let before = seen.lock().unwrap().clone();
        assert_eq!(
            (before.whoamis, before.revokes),
            (1, 1),
            "{backend}: checked live and revoked before the crash"
        );

        let mut child = setup.start(1);
        let store = spillway::platform::store::Store::connect(&url)
            .await
            .unwrap();
        let all = resumed(&store, &backend, |f| {
            f.state != "revoking" && f.state != "verifying"
        })
        .await;
        assert_eq!(all.len(), 1, "{backend}: one finding");
        assert_eq!(all[0].installation_id.as_deref(), Some("issuer:gitlab"));
        assert_eq!(
            (all[0].state.as_str(), all[0].label.as_deref()),
            ("already_revoked", Some("true_positive")),
            "{backend}: {all:#?}"
        );
        let after = seen.lock().unwrap().clone();
        assert_eq!(
            after.revokes, 2,
            "{backend}: one more revoke call, answered gone"
        );
        let _ = child.kill();
        let _ = child.wait();
        audit_intact_and_no_raw_token(&setup, &token, &backend);
        github.shutdown().await;
        fake.shutdown().await;
    }
}
