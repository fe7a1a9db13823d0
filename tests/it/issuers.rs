//! Issuer drivers against fakes that speak the issuers' documented wire formats. GitHub's
//! Credential Revocation API: the fake (`spillway fake-github`) enforces 1 to 1,000 credentials a
//! call, refuses authenticated calls and answers over its hourly limit as GitHub's primary rate
//! limit does.

use std::time::Duration;

use spillway::devtools::fake_github;
use spillway::issuers::Outcome;
use spillway::issuers::github::{BatchOptions, Batcher, Client, hourly_budget};
use spillway::platform::outbound::{Outbound, Policy};
use spillway::scanner::TokenSecret;

fn outbound() -> Outbound {
    Outbound::new(
        Policy {
            allow_http: true,
            allow_private: true,
        },
        Duration::from_secs(5),
    )
    .unwrap()
}

fn token(i: usize) -> TokenSecret {
    // The API takes any string; the fake keeps only hashes.
    TokenSecret::new(format!("ghp_{i:036}"))
}

async fn fake(limit: usize) -> fake_github::Running {
    fake_github::start(&fake_github::Args {
        revocation_limit: limit,
        ..fake_github::Args::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_found_together_are_reported_a_thousand_a_call() {
    let github = fake(60).await;
    let batcher = Batcher::spawn(
        Client::new(outbound(), &github.api_url()),
        BatchOptions {
            linger: Duration::from_millis(300),
            ..BatchOptions::default()
        },
    );
    let tokens: Vec<TokenSecret> = (0..2_500).map(token).collect();
    let calls: Vec<_> = tokens
        .iter()
        .map(|t| {
            let (b, t) = (batcher.clone(), t.clone());
            tokio::spawn(async move { b.submit(t).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), Outcome::Accepted);
    }
    let received = github.revocation.received();
    assert_eq!(received.batches.iter().sum::<usize>(), 2_500);
    assert!(
        received.batches.iter().all(|&n| n <= 1_000),
        "{:?}",
        received.batches
    );
    assert!(received.batches.len() <= 3, "{:?}", received.batches);
    let mut sent: Vec<String> = tokens.iter().map(TokenSecret::sha256_hex).collect();
    let mut got = received.sha256.clone();
    sent.sort();
    got.sort();
    assert_eq!(sent, got, "every token reported once");
    assert_eq!(received.authenticated, 0, "Spillway never authenticates");
    github.shutdown().await;
}

/// Over the hourly budget a caller is told at once when to come back, and the API never sees a
/// call past its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hourly_limit_is_kept_and_callers_are_told_when_to_return() {
    let github = fake(6).await;
    let batcher = Batcher::spawn(
        Client::new(outbound(), &github.api_url()),
        BatchOptions {
            linger: Duration::from_millis(5),
            hourly_limit: 6,
            ..BatchOptions::default()
        },
    );
    let mut accepted = 0;
    let mut told = Vec::new();
    for i in 0..20 {
        let started = std::time::Instant::now();
        match batcher.submit(token(i)).await {
            Outcome::Accepted => accepted += 1,
            Outcome::RetryLater {
                retry_after: Some(wait),
                ..
            } => {
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "answered at once"
                );
                told.push(wait);
            }
            other => panic!("{other:?}"),
        }
    }
    // A burst of a sixth of the limit, the rest spread over the hour (10 minutes apart here).
    assert_eq!(accepted, 1);
    assert_eq!(told.len(), 19);
    assert!(
        told.iter()
            .all(|w| *w > Duration::from_secs(500) && *w <= Duration::from_secs(721)),
        "{told:?}"
    );
    let received = github.revocation.received();
    assert_eq!(received.batches.len(), 1);
    assert_eq!(received.rate_limited, 0, "never past the API's limit");
    github.shutdown().await;
}

/// GitHub's own rate-limit answer (403, `x-ratelimit-remaining: 0`, `x-ratelimit-reset`) is read
/// as "come back at the reset", not as a refusal.
#[tokio::test]
async fn githubs_rate_limit_answer_says_when_to_return() {
    let github = fake(1).await;
    let client = Client::new(outbound(), &github.api_url());
    assert_eq!(client.revoke(&[token(1)]).await, Outcome::Accepted);
    match client.revoke(&[token(2)]).await {
        Outcome::RetryLater {
            reason,
            retry_after: Some(wait),
        } => {
            assert!(
                reason.contains("403") && reason.contains("rate limited"),
                "{reason}"
            );
            assert!(
                wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
                "{wait:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(github.revocation.received().rate_limited, 1);
    github.shutdown().await;
}

/// The fake holds GitHub's rules (so the tests above could fail): more than 1,000 credentials or
/// an authenticated call are refused. The client refuses to build such a call at all.
#[tokio::test]
async fn batches_outside_githubs_rules_are_never_sent() {
    let github = fake(60).await;
    let url = format!("{}/credentials/revoke", github.api_url());
    let http = reqwest::Client::new();
    let many: Vec<String> = (0..1_001).map(|i| format!("ghp_{i:036}")).collect();
    let too_many = http
        .post(&url)
        .json(&serde_json::json!({ "credentials": many }))
        .send()
        .await
        .unwrap();
    assert_eq!(too_many.status(), 422);
    let body: serde_json::Value = too_many.json().await.unwrap();
    assert_eq!(body["message"], "Validation Failed");
    let authenticated = http
        .post(&url)
        .bearer_auth("ghp_caller")
        .json(&serde_json::json!({ "credentials": ["ghp_x"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(authenticated.status(), 403);

    let client = Client::new(outbound(), &github.api_url());
    let tokens: Vec<TokenSecret> = (0..1_001).map(token).collect();
    assert!(matches!(
        client.revoke(&tokens).await,
        Outcome::Refused { .. }
    ));
    assert!(matches!(client.revoke(&[]).await, Outcome::Refused { .. }));
    // Plain http to a loopback address is refused unless the operator allows it.
    let strict = Client::new(
        Outbound::new(Policy::default(), Duration::from_secs(5)).unwrap(),
        &github.api_url(),
    );
    match strict.revoke(&[token(1)]).await {
        Outcome::Refused { reason } => {
            assert!(reason.contains("issuers.github.base_url"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let received = github.revocation.received();
    assert_eq!(received.batches.len(), 0);
    assert_eq!((received.invalid, received.authenticated), (1, 1));
    github.shutdown().await;
}

/// A 422 ("validation failed, or the endpoint has been spammed") backs off for a minute; a huge
/// answer is read only up to the cap.
#[tokio::test]
async fn a_422_backs_off_and_answers_are_read_bounded() {
    use axum::routing::post;
    let huge = "x".repeat(8 << 20);
    let app = axum::Router::new().route(
        "/credentials/revoke",
        post(move || {
            let huge = huge.clone();
            async move { (axum::http::StatusCode::UNPROCESSABLE_ENTITY, huge) }
        }),
    );
    let served = spillway::devtools::Served::bind("127.0.0.1:0", app)
        .await
        .unwrap();
    let client = Client::new(outbound(), &format!("http://{}", served.addr));
    assert_eq!(
        client.revoke(&[token(1)]).await,
        Outcome::RetryLater {
            reason: "answered 422 (validation failed or spammed)".into(),
            retry_after: Some(Duration::from_secs(60)),
        }
    );
    served.shutdown().await;
}

/// In any hour the budget allows at most the limit: the burst, then one call per share of the hour.
#[test]
fn the_budget_allows_a_sixth_at_once_and_no_more() {
    for (limit, burst) in [(60, 10), (6, 1), (1, 1), (1_000, 166)] {
        let budget = hourly_budget(limit);
        let mut now = 0;
        while budget.check().is_ok() {
            now += 1;
            assert!(now <= limit, "more than the limit at once");
        }
        assert_eq!(now, burst, "limit {limit}");
    }
}
