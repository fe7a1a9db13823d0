//! The public address and the outbound client against hostile peers: answers that never end,
//! bodies that exhaust the memory budget, too many connections from one address, and the JSON
//! errors the layers give by themselves. Timings and RSS under a full attack are in `bench/hostile`.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use serde_json::Value;
use spillway::sources::listeners::{self, ListenerKind};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// 1 GiB of chunks, with no declared length.
struct Endless(usize);

impl http_body::Body for Endless {
    type Data = axum::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        let chunk = axum::body::Bytes::from(vec![b'x'; 64 << 10]);
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

/// A server whose every answer is an endless stream of chunks (1 GiB if read to the end).
async fn endless_server() -> String {
    let endless = || async {
        (
            [("content-type", "application/json")],
            Body::new(Endless(16_384)),
        )
    };
    let app = Router::new()
        .route("/", get(endless).post(endless))
        .fallback(endless);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_endless_answer_is_abandoned_at_the_cap() {
    let base = endless_server().await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = client.get(&base).send().await.unwrap();
    let read = spillway::platform::outbound::read_capped(response, 64 << 10).await;
    assert_eq!(
        read,
        Err(spillway::platform::outbound::ReadError::TooLarge(64 << 10))
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A JWKS behind it is refused with the reason, not buffered.
    let outbound = spillway::platform::outbound::Outbound::new(
        spillway::platform::outbound::Policy {
            allow_http: true,
            allow_private: true,
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let cache = spillway::installations::signing_keys::KeyCache::new(outbound);
    let err = cache
        .fetch_jwks(&format!("{base}/jwks.json"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("larger than"), "{err:#}");
}

async fn server_with_endpoint(
    tune: impl FnOnce(&mut spillway::platform::config::Settings),
) -> (
    spillway::service::Running,
    tempfile::TempDir,
    tempfile::TempDir,
    String,
) {
    let (_, url, db_dir) = crate::common::fresh_databases().await.remove(0);
    let (running, keep) =
        crate::common::start_server_tuned(&url, "http://127.0.0.1:9/unused", tune).await;
    let (_, endpoint) = listeners::create(&running.state.store, ListenerKind::Github, "gh", "test")
        .await
        .unwrap();
    running.state.directory.reload_now().await.unwrap();
    (running, keep, db_dir, endpoint.path)
}

#[tokio::test]
async fn big_bodies_over_the_memory_budget_get_503_while_small_ones_still_fit() {
    // 4 MiB: the first 256 KiB of four bodies in the small tier, 3 MiB for the rest.
    let (running, _keep, _db, path) = server_with_endpoint(|s| {
        s.ingress.body_memory_bytes = 4 << 20;
    })
    .await;
    let addr = running.public_addr;
    let head = |length: usize| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nGithub-Public-Key-Identifier: k\r\n\
             Github-Public-Key-Signature: c2ln\r\nContent-Length: {length}\r\n\r\n"
        )
    };
    // Six clients each start a 1.5 MiB body and pause before its end: the budget holds two.
    let mut holders = Vec::new();
    for _ in 0..6 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head(1536 << 10).as_bytes()).await.unwrap();
        s.write_all(&vec![b' '; 1400 << 10]).await.unwrap();
        holders.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A small body meanwhile is read (and refused for its malformed signature, not for memory).
    let mut small = tokio::net::TcpStream::connect(addr).await.unwrap();
    small.write_all(head(2).as_bytes()).await.unwrap();
    small.write_all(b"[]").await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), small.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("github-public-key-signature"),
        "{answer}"
    );
    let mut refused = 0;
    for mut s in holders {
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                let answer = String::from_utf8_lossy(&buf[..n]);
                assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
                assert!(
                    answer.to_ascii_lowercase().contains("retry-after: 1"),
                    "{answer}"
                );
                assert!(answer.contains("retry later"), "{answer}");
                refused += 1;
            }
            _ => {} // still reading: inside the budget
        }
    }
    assert!(refused >= 3, "{refused} refused");
    let metrics = reqwest::get(format!("http://{}/metrics", running.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"spillway_ingress_refusals_total{reason="over_budget"}"#),
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let (running, _keep, _db, _path) = server_with_endpoint(|s| {
        s.ingress.max_connections_per_ip = 2;
    })
    .await;
    let addr = running.public_addr;
    let a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
        .await
        .expect("the third connection is closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop((a, b));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/l/nothing-here"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        404,
        "a slot is free again once the others closed"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn errors_the_layers_give_themselves_are_json_too() {
    let (running, _keep, _db, path) = server_with_endpoint(|_| {}).await;
    let client = reqwest::Client::new();
    let public = format!("http://{}", running.public_addr);
    let json = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let headers = format!("{:?}", r.headers());
        let text = r.text().await.unwrap();
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{status} {headers}: not JSON: {text:?}"));
        (
            status,
            body["error"].as_str().unwrap_or_default().to_owned(),
        )
    };
    let (s, e) = json(client.get(format!("{public}{path}")).send().await.unwrap()).await;
    assert_eq!(s, 405, "{e}");
    let (s, e) = json(
        client
            .get(format!("{public}/nowhere"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, e.as_str()), (404, "no such endpoint"));
    let long = "a".repeat(10_000);
    let (s, e) = json(client.get(format!("{public}/{long}")).send().await.unwrap()).await;
    assert_eq!(s, 414, "{e}");
    assert!(e.contains("uri"), "{e}");
    let admin = format!("http://{}", running.admin_addr);
    let (s, _) = json(client.get(format!("{admin}/nowhere")).send().await.unwrap()).await;
    assert_eq!(s, 404);
    let (s, e) = json(
        client
            .post(format!("{admin}/api/v1/listeners"))
            .body(vec![b'x'; 2 << 20])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(s == 413 || s == 401, "{s} {e}");
    running.shutdown().await;
}
