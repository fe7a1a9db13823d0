//! The operator console (`/console/` on the admin address): its sessions, CSRF tokens and scopes
//! over plain HTTP on both backends, then the screens in a real browser (Debian's headless Chromium
//! driven over WebDriver by chromedriver): sign in from the keyboard, rotate an endpoint with an
//! expiry, extend it, a revoked finding's timeline, installations, keys, the audit verdict, sign
//! out. Screenshots of each screen go to `SPILLWAY_CONSOLE_SCREENSHOTS` when set (docs/console).
//!
//! Without chromium and chromedriver (`.ci/browser-deps` installs them) the browser test says so
//! loudly and passes outside CI; under CI (`CI` set) it fails.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;
use spillway::admin::api_keys::{self, Creator, Scope};
use spillway::platform::store::now_ms;
use spillway::sources::listeners;

use crate::common::revocation::Rig;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// A browser-less console client: keeps the cookies it is given, follows nothing by itself.
struct Console {
    base: String,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

/// The value of the hidden input `name` in `html`.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// `path` sends `console` to the sign-in page: its session is over.
async fn assert_signed_out(console: &mut Console, path: &str, backend: &str) {
    let (status, location, _) = console.get(path).await;
    assert_eq!(
        (status.as_u16(), location.as_str()),
        (303, "/console/login"),
        "{backend}: {path}"
    );
}

impl Console {
    fn new(base: String) -> Console {
        Console {
            base,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Takes the response's cookies (a `Max-Age=0` one is dropped); answers the raw headers.
    fn keep(&mut self, response: &reqwest::Response) -> Vec<String> {
        let raw: Vec<String> = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for line in &raw {
            let (pair, _) = line.split_once(';').unwrap_or((line, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !line.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
        raw
    }

    async fn get(&mut self, path: &str) -> (StatusCode, String, String) {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> (StatusCode, String, String) {
        let request = self.http.post(format!("{}{path}", self.base)).form(form);
        self.send(request).await
    }

    /// Sends `request` with the cookies held; answers (status, Location, body).
    async fn send(&mut self, request: reqwest::RequestBuilder) -> (StatusCode, String, String) {
        let r = request
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        self.keep(&r);
        let location = r
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (r.status(), location, r.text().await.unwrap())
    }

    /// Signs in with `key`; answers the session cookie's `Set-Cookie` line.
    async fn sign_in(&mut self, key: &str) -> String {
        let (status, _, page) = self.get("/console/login").await;
        assert_eq!(status, 200, "{page}");
        let token = hidden(&page, "form_token");
        let r = self
            .http
            .post(format!("{}/console/login", self.base))
            .header(COOKIE, self.cookie_header())
            .form(&[("form_token", token.as_str()), ("admin_key", key)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{:?}", r.text().await);
        let raw = self.keep(&r);
        raw.into_iter()
            .find(|l| l.starts_with("spillway_session="))
            .expect("a session cookie")
    }

    async fn csrf(&mut self) -> String {
        let (status, _, page) = self.get("/console/listeners").await;
        assert_eq!(status, 200, "{page}");
        hidden(&page, "csrf")
    }
}

async fn admin_key(store: &spillway::platform::store::Store, scopes: &[Scope]) -> String {
    let scopes: BTreeSet<Scope> = scopes.iter().copied().collect();
    let (_, secret) = api_keys::create(
        store,
        "console",
        &scopes,
        30 * DAY_MS,
        Creator::Local("test"),
    )
    .await
    .unwrap();
    secret.expose().to_owned()
}

#[tokio::test]
async fn console_sessions_csrf_and_scopes() {
    for (backend, url, _dir) in crate::common::fresh_databases().await {
        let rig = Rig::start(&url, |_| {}, |_| {}, |_| {}).await;
        let store = &rig.server.state.store;
        let base = format!("http://{}", rig.server.admin_addr);
        let all = admin_key(store, &Scope::ALL).await;
        let readonly = admin_key(store, &[Scope::ListenersRead]).await;
        // A revoked finding (before the installation's secret is rotated below).
        let token = rig.mint("session", None).await;
        rig.alert(&json!([{"token": token, "type": "palantir_jwt", "url": ""}]))
            .await;
        let finding = rig.settled(1, Duration::from_secs(20)).await.remove(0);
        assert_eq!(finding.state, "revoked", "{backend}");

        // Not signed in: every screen sends the browser to the sign-in page.
        let mut anonymous = Console::new(base.clone());
        for path in ["/console/listeners", "/console/findings", "/console/audit"] {
            let (status, location, _) = anonymous.get(path).await;
            assert_eq!(
                (status.as_u16(), location.as_str()),
                (303, "/console/login"),
                "{backend} {path}"
            );
        }
        // A sign-in form posted without its own cookie (another site's form) is refused, even
        // with a valid key; a wrong key is refused naming the field.
        let (_, _, page) = anonymous.get("/console/login").await;
        let token = hidden(&page, "form_token");
        let forged = anonymous
            .http
            .post(format!("{base}/console/login"))
            .form(&[("form_token", token.as_str()), ("admin_key", all.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403, "{backend}");
        assert!(forged.text().await.unwrap().contains("form_token:"));
        // ...and so is one whose cookie is present but another form's.
        let mismatched = anonymous
            .http
            .post(format!("{base}/console/login"))
            .header(COOKIE, format!("spillway_signin={}", "ab".repeat(32)))
            .form(&[("form_token", token.as_str()), ("admin_key", all.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(mismatched.status(), 403, "{backend}");
        let (status, _, page) = anonymous
            .post(
                "/console/login",
                &[("form_token", &token), ("admin_key", "spillway_nope")],
            )
            .await;
        assert_eq!(status, 401, "{backend}");
        assert!(page.contains("admin_key: unknown, malformed, expired or revoked admin key"));
        assert!(
            !page.contains("spillway_nope"),
            "the presented key is not echoed"
        );

        // Signing in: the cookie's attributes, and no raw admin key anywhere in the page.
        let mut console = Console::new(base.clone());
        let line = console.sign_in(&all).await;
        for attribute in ["Path=/console", "HttpOnly", "SameSite=Strict"] {
            assert!(line.contains(attribute), "{backend}: {line}");
        }
        let max_age: i64 = line
            .split("Max-Age=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((16 * 3600 - 5..=16 * 3600).contains(&max_age), "{line}");
        assert!(
            !line.contains("Secure"),
            "plain http on loopback: no Secure attribute"
        );
        let secret = console
            .cookies
            .iter()
            .find(|(n, _)| n == "spillway_session")
            .unwrap()
            .1
            .clone();
        let stored: Vec<String> = sqlx::query_scalar("SELECT id_hash FROM console_sessions")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let hashed = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()));
        assert_eq!(
            stored,
            vec![hashed],
            "{backend}: only the cookie's SHA-256 is stored"
        );
        let (status, _, page) = console.get("/console/listeners").await;
        assert_eq!(status, 200, "{backend}: {page}");
        assert!(!page.contains(&all));
        // Behind https (a proxy says so, in either header; the browser's hop is the first), the
        // cookie is Secure.
        let mut proxied = Console::new(base.clone());
        for (header, value, secure) in [
            ("x-forwarded-proto", "https", true),
            ("x-forwarded-proto", "https, http", true),
            ("x-forwarded-proto", "http, https", false),
            ("forwarded", "for=192.0.2.1;proto=https", true),
            ("forwarded", "for=192.0.2.1;proto=http", false),
        ] {
            let (_, _, page) = proxied.get("/console/login").await;
            let token = hidden(&page, "form_token");
            let r = proxied
                .http
                .post(format!("{base}/console/login"))
                .header(COOKIE, proxied.cookie_header())
                .header(header, value)
                .form(&[("form_token", token.as_str()), ("admin_key", all.as_str())])
                .send()
                .await
                .unwrap();
            let line = proxied
                .keep(&r)
                .into_iter()
                .find(|l| l.starts_with("spillway_session="))
                .unwrap();
            assert_eq!(
                line.ends_with("; Secure"),
                secure,
                "{header}: {value}: {line}"
            );
        }
        // A second session's valid token is not this session's.
        let (_, _, page) = proxied.get("/console/listeners").await;
        let other_csrf = hidden(&page, "csrf");
        // The console's headers: no caching, no framing, no script.
        let r = console
            .http
            .get(format!("{base}/console/findings"))
            .header(COOKIE, console.cookie_header())
            .send()
            .await
            .unwrap();
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(r.headers()["cache-control"], "no-store");

        // A form without this session's CSRF token changes nothing.
        let listener = &listeners::list(store).await.unwrap()[0];
        let rotate = format!("/console/listeners/{}/rotate", listener.id);
        let active = listener.endpoints[0].id.clone();
        for wrong in ["0".repeat(64), other_csrf.clone()] {
            let (status, _, page) = console
                .post(
                    &rotate,
                    &[
                        ("csrf", &wrong),
                        ("expected_active", &active),
                        ("old", "delete"),
                    ],
                )
                .await;
            assert_eq!(status, 403, "{backend}: {page}");
            assert!(page.contains("csrf:"));
        }
        let (status, _, page) = console
            .post(&rotate, &[("expected_active", &active), ("old", "delete")])
            .await;
        assert_eq!(
            status, 422,
            "{backend}: a form without its token is refused"
        );
        assert!(page.contains("form:") && page.contains("csrf"), "{page}");
        assert_eq!(listeners::list(store).await.unwrap()[0].endpoints.len(), 1);
        // Bad input names the field.
        let csrf = console.csrf().await;
        let (status, _, page) = console
            .post(
                &rotate,
                &[
                    ("csrf", &csrf),
                    ("expected_active", &active),
                    ("old", "expire"),
                    ("expires_at", "tomorrow"),
                ],
            )
            .await;
        assert_eq!(status, 422, "{backend}");
        assert!(
            page.contains("expires_at: expected a UTC date and time"),
            "{page}"
        );
        let (status, _, page) = console
            .post(
                &rotate,
                &[
                    ("csrf", &csrf),
                    ("expected_active", &active),
                    ("old", "expire"),
                    ("expires_at", "2001-01-01T00:00"),
                ],
            )
            .await;
        assert_eq!(
            (
                status.as_u16(),
                page.contains("expires_at: must be in the future")
            ),
            (422, true)
        );

        // A new listener: its endpoint URL and generated secret are on the answer page, once.
        let (_, _, listing) = console.get("/console/listeners").await;
        let once = hidden(&listing, "once");
        let create = [
            ("csrf", csrf.as_str()),
            ("once", once.as_str()),
            ("kind", "standard-webhooks"),
            ("name", "ops hooks \"><script>alert(1)</script>"),
            ("secret", ""),
        ];
        let (status, _, page) = console.post("/console/listeners", &create).await;
        assert_eq!(status, 200, "{backend}: {page}");
        assert!(page.contains("https://hooks.example.test/l/"), "{page}");
        assert!(
            page.contains("whsec_"),
            "the generated secret is shown: {page}"
        );
        // The same form sent again (a reload) creates nothing.
        let (status, _, again) = console.post("/console/listeners", &create).await;
        assert_eq!(status, 409, "{backend}: {again}");
        assert!(again.contains("once:"), "{again}");
        let named: Vec<_> = listeners::list(store)
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.name.starts_with("ops hooks"))
            .collect();
        assert_eq!(named.len(), 1, "{backend}: one listener");
        let made = named.into_iter().next().unwrap();
        let (_, _, listing) = console.get("/console/listeners").await;
        assert!(
            listing.contains("ops hooks &quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;")
                && !listing.contains("<script>"),
            "a hostile name is text: {listing}"
        );
        assert!(
            !listing.contains("whsec_"),
            "shown once: the list never shows a secret"
        );
        // Rotate with "delete it now": one endpoint again, the old one gone.
        let rotate_made = format!("/console/listeners/{}/rotate", made.id);
        let delete_now = [
            ("csrf", csrf.as_str()),
            ("expected_active", made.endpoints[0].id.as_str()),
            ("old", "delete"),
        ];
        let (status, _, page) = console.post(&rotate_made, &delete_now).await;
        assert_eq!(status, 200, "{backend}: {page}");
        // The same form sent again (a reload) finds another endpoint active and changes nothing:
        // the endpoint just shown once is not deleted.
        let (status, _, page) = console.post(&rotate_made, &delete_now).await;
        assert_eq!(status, 409, "{backend}: {page}");
        assert!(page.contains("expected_active:"), "{page}");
        let after = listeners::list(store)
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.id == made.id)
            .unwrap();
        assert_eq!(
            after.endpoints.len(),
            1,
            "{backend}: the reload deleted nothing"
        );
        assert_ne!(after.endpoints[0].id, made.endpoints[0].id);
        // Rotate with an expiry, then delete the expiring endpoint from the table.
        let (status, _, _) = console
            .post(
                &rotate_made,
                &[
                    ("csrf", &csrf),
                    ("expected_active", &after.endpoints[0].id),
                    ("old", "expire"),
                    ("expires_at", "2030-01-01T00:00"),
                ],
            )
            .await;
        assert_eq!(status, 200);
        let expiring = after.endpoints[0].id.clone();
        let (_, _, listing) = console.get("/console/listeners").await;
        assert!(
            listing.contains(
                "Expiring <time datetime=\"2030-01-01T00:00:00Z\">2030-01-01 00:00 UTC</time>"
            ),
            "{listing}"
        );
        let (status, location, _) = console
            .post(
                &format!("/console/endpoints/{expiring}/delete"),
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(
            (status.as_u16(), location.as_str()),
            (303, "/console/listeners?done=deleted")
        );
        let (status, _, page) = console
            .post(
                &format!("/console/endpoints/{expiring}/extend"),
                &[("csrf", &csrf), ("expires_at", "2030-01-02T00:00")],
            )
            .await;
        assert_eq!(
            (
                status.as_u16(),
                page.contains(&format!("no endpoint {expiring}"))
            ),
            (404, true),
            "{page}"
        );
        // An installation's shared secret: a new one shown once, then the old one retired.
        let installation = &rig.installation_id;
        let path = format!("/console/installations/{installation}/secret");
        let (status, _, page) = console
            .post(&path, &[("csrf", &csrf), ("action", "add")])
            .await;
        assert_eq!(status, 200, "{backend}: {page}");
        assert!(page.contains("whsec_"), "{page}");
        let (_, _, page) = console.get("/console/installations").await;
        assert!(page.contains("Retire old secret"), "{page}");
        let (status, location, _) = console
            .post(&path, &[("csrf", &csrf), ("action", "retire_old")])
            .await;
        assert_eq!(
            (status.as_u16(), location.as_str()),
            (303, "/console/installations?done=retired")
        );
        let (status, _, page) = console
            .post(&path, &[("csrf", &csrf), ("action", "retire_old")])
            .await;
        assert_eq!(
            (status.as_u16(), page.contains("nothing to retire")),
            (409, true),
            "{page}"
        );

        // Scopes as in the API: a read-only key sees listeners, cannot rotate, cannot see keys.
        let mut reader = Console::new(base.clone());
        reader.sign_in(&readonly).await;
        let csrf_reader = reader.csrf().await;
        let (status, _, page) = reader.get(&rotate).await;
        assert_eq!(status, 403, "{backend}");
        assert!(page.contains("lacks scope listeners:write"), "{page}");
        let active_now = listeners::list(store).await.unwrap()[0].endpoints[0]
            .id
            .clone();
        let (status, _, _) = reader
            .post(
                &rotate,
                &[
                    ("csrf", &csrf_reader),
                    ("expected_active", &active_now),
                    ("old", "delete"),
                ],
            )
            .await;
        assert_eq!(status, 403);
        for (path, scope) in [
            ("/console/keys", "keys:read"),
            ("/console/findings", "installations:read"),
            ("/console/installations", "installations:read"),
            ("/console/audit", "audit:read"),
        ] {
            let (status, _, page) = reader.get(path).await;
            assert_eq!(
                (
                    status.as_u16(),
                    page.contains(&format!("lacks scope {scope}"))
                ),
                (403, true),
                "{backend} {path}"
            );
        }
        let installation = &rig.installation_id;
        let before = spillway::installations::get(store, installation)
            .await
            .unwrap();
        let (status, _, _) = reader
            .post(
                &format!("/console/installations/{installation}/secret"),
                &[("csrf", &csrf_reader), ("action", "add")],
            )
            .await;
        assert_eq!(status, 403, "{backend}");
        let after_refusal = spillway::installations::get(store, installation)
            .await
            .unwrap();
        assert_eq!(
            before.live_secrets, after_refusal.live_secrets,
            "nothing changed"
        );
        let (status, _, _) = reader
            .post(
                &format!("/console/keys/{}/revoke", "key_x"),
                &[("csrf", &csrf_reader)],
            )
            .await;
        assert_eq!(status, 403, "{backend}: revoking a key needs keys:write");
        // Without audit:read, a finding is shown without its timeline.
        let finder = admin_key(store, &[Scope::InstallationsRead]).await;
        let mut finder_console = Console::new(base.clone());
        finder_console.sign_in(&finder).await;
        let (status, _, page) = finder_console
            .get(&format!("/console/findings/{}", finding.id))
            .await;
        assert_eq!(status, 200, "{backend}: {page}");
        assert!(
            page.contains("lacks scope audit:read") && !page.contains("finding.revoked"),
            "{page}"
        );
        let (_, _, page) = console
            .get(&format!("/console/findings/{}", finding.id))
            .await;
        assert!(page.contains("finding.revoked"), "{backend}: {page}");
        assert!(!page.contains(&token), "no raw token on the page");
        let (status, _, _) = console.get("/console/findings/fnd_+1").await;
        assert_eq!(status, 404);

        // A session past its end in the database is refused, whatever the cookie says; a key
        // that ends sooner than 16 hours caps its sessions.
        sqlx::query("UPDATE console_sessions SET expires_at = 1 WHERE key_id = (SELECT id FROM admin_keys WHERE key_hash = $1)")
            .bind(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(finder.as_bytes())))
            .execute(store.pool())
            .await
            .unwrap();
        assert_signed_out(&mut finder_console, "/console/findings", &backend).await;
        let (_, short) = api_keys::create(
            store,
            "short",
            &[Scope::ListenersRead].into_iter().collect(),
            3_600_000,
            Creator::Local("test"),
        )
        .await
        .unwrap();
        let line = Console::new(base.clone()).sign_in(short.expose()).await;
        let max_age: i64 = line
            .split("Max-Age=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3590..=3600).contains(&max_age), "{line}");

        // Sessions are listed on the keys screen and can be ended one by one.
        let (_, _, page) = console.get("/console/keys").await;
        let reader_session = {
            let hash = sqlx::query_scalar::<_, String>(
                "SELECT s.id_hash FROM console_sessions s JOIN admin_keys k ON k.id = s.key_id \
                 WHERE k.key_hash = $1",
            )
            .bind(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                readonly.as_bytes(),
            )))
            .fetch_one(store.pool())
            .await
            .unwrap();
            hash[..16].to_owned()
        };
        assert!(page.contains(&reader_session), "{page}");
        let (status, location, _) = console
            .post(
                &format!("/console/sessions/{reader_session}/revoke"),
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(
            (status.as_u16(), location.as_str()),
            (303, "/console/keys?done=session_revoked")
        );
        assert_signed_out(&mut reader, "/console/listeners", &backend).await;
        reader.sign_in(&readonly).await;

        // Revoking a key ends its sessions at once.
        let reader_id = api_keys::authenticate(store, &readonly)
            .await
            .unwrap()
            .unwrap()
            .id;
        let (status, location, _) = console
            .post(
                &format!("/console/keys/{reader_id}/revoke"),
                &[("csrf", &csrf)],
            )
            .await;
        assert_eq!(
            (status.as_u16(), location.as_str()),
            (303, "/console/keys?done=revoked")
        );
        assert_signed_out(&mut reader, "/console/listeners", &backend).await;

        // Signing out ends the session: the same cookie, replayed, opens nothing.
        let stolen = console.cookies.clone();
        let (status, location, _) = console.post("/console/logout", &[("csrf", &csrf)]).await;
        assert_eq!(
            (status.as_u16(), location.as_str()),
            (303, "/console/login?signed_out=1")
        );
        let mut replay = Console::new(base.clone());
        replay.cookies = stolen;
        assert_signed_out(&mut replay, "/console/listeners", &backend).await;
        let actions: Vec<String> = spillway::platform::audit::about(
            store,
            &format!("admin-key:{}", {
                api_keys::list(store)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|k| k.scopes.len() == Scope::ALL.len())
                    .unwrap()
                    .id
            }),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
        assert!(
            actions.contains(&"console.signed_in".to_owned()),
            "{actions:?}"
        );
        assert!(
            actions.contains(&"console.signed_out".to_owned()),
            "{actions:?}"
        );
        rig.stop().await;
    }
}

/// chromedriver on a free loopback port, ended on drop.
struct Driver {
    child: std::process::Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn browser_installed() -> bool {
    ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| std::path::Path::new(p).exists())
}

async fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("/usr/bin/chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver {
        child,
        port,
        _profile: tempfile::tempdir().unwrap(),
    }
}

async fn browser(driver: &Driver) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,900", "--lang=en-US",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    fantoccini::ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in headless Chromium")
}

/// Saves a screenshot of the page as `name`.png where the environment asks; checks it is a PNG,
/// and that the page keeps the console's accessibility habits ([`accessibility_problems`]).
async fn screenshot(client: &fantoccini::Client, name: &str) {
    let problems = accessibility_problems(client).await;
    assert!(problems.is_empty(), "{name}: {problems:?}");
    let png = client.screenshot().await.unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{name}"
    );
    if let Some(dir) = std::env::var_os("SPILLWAY_CONSOLE_SCREENSHOTS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// What the page gets wrong of the console's habits: a visible control without a label (its own
/// `<label for>`, or an `aria-label` / text for a button), a page without exactly one `h1`, a
/// table without header cells, or no `lang`. Run in the page by WebDriver (the page itself runs no
/// script).
async fn accessibility_problems(client: &fantoccini::Client) -> Vec<String> {
    let found = client
        .execute(
            r#"
            const problems = [];
            for (const c of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
              const labelled = (c.id && document.querySelector(`label[for="${c.id}"]`)) || c.getAttribute('aria-label');
              if (!labelled) problems.push(`unlabelled ${c.outerHTML}`);
            }
            for (const b of document.querySelectorAll('button, a')) {
              if (!(b.textContent.trim() || b.getAttribute('aria-label'))) problems.push(`nameless ${b.outerHTML}`);
            }
            if (document.querySelectorAll('h1').length !== 1) problems.push('not exactly one h1');
            for (const t of document.querySelectorAll('table')) {
              if (!t.querySelector('th')) problems.push('table without header cells');
            }
            if (!document.documentElement.lang) problems.push('no lang');
            return problems;
            "#,
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(found).unwrap()
}

async fn text_of(client: &fantoccini::Client, css: &str) -> String {
    client
        .find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// The page's URL once `want` holds (a click starts a navigation; it may not have ended).
async fn url_when(client: &fantoccini::Client, want: impl Fn(&url::Url) -> bool) -> url::Url {
    let mut last = None;
    for _ in 0..400 {
        let url = client.current_url().await.unwrap();
        if want(&url) {
            return url;
        }
        last = Some(url);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the browser stayed at {last:?}");
}

async fn path_is(client: &fantoccini::Client, path: &str) -> url::Url {
    url_when(client, |u| u.path() == path).await
}

async fn click(client: &fantoccini::Client, css: &str) {
    client
        .find(fantoccini::Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

#[tokio::test]
async fn console_in_a_real_browser() {
    if !browser_installed() {
        if std::env::var_os("CI").is_some() {
            panic!("CI must run the browser test: run .ci/browser-deps first");
        }
        eprintln!(
            "SKIPPED console_in_a_real_browser: chromium and chromedriver are not installed \
             (apt-get install chromium chromium-driver, or .ci/browser-deps)"
        );
        return;
    }
    let (_, url, _dir) = crate::common::fresh_databases().await.remove(0);
    let rig = Rig::start(&url, |_| {}, |_| {}, |_| {}).await;
    let store = rig.server.state.store.clone();
    let base = format!("http://{}", rig.server.admin_addr);
    let key = admin_key(&store, &Scope::ALL).await;
    // A revoked finding, with its timeline in the audit log.
    let token = rig.mint("session", None).await;
    let (status, body) = rig
        .alert(&json!([{"token": token, "type": "palantir_jwt", "url": "https://github.com/o/r/blob/1/a.env", "source": "commit"}]))
        .await;
    assert_eq!(status, 200, "{body}");
    let settled = rig.settled(1, Duration::from_secs(20)).await;
    assert_eq!(settled[0].state, "revoked");
    let finding_id = settled[0].id.clone();
    let listener = listeners::list(&store).await.unwrap().remove(0);

    let driver = start_driver().await;
    let client = browser(&driver).await;

    // Sign in, from the keyboard: the key typed into the labelled field, Enter submits.
    client.goto(&format!("{base}/console/")).await.unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/console/login");
    screenshot(&client, "signin").await;
    let field = client
        .find(fantoccini::Locator::Css(
            "label[for=admin_key] + input#admin_key",
        ))
        .await
        .unwrap();
    field.send_keys(&format!("{key}\u{E007}")).await.unwrap();
    path_is(&client, "/console/listeners").await;
    assert_eq!(text_of(&client, "h1").await, "Listeners");
    let cookie = client.get_named_cookie("spillway_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    screenshot(&client, "listeners").await;

    // Rotate with an expiry: the dialog's default keeps the old endpoint a day.
    let before_rotation = now_ms();
    click(
        &client,
        &format!("a[href='/console/listeners/{}/rotate']", listener.id),
    )
    .await;
    path_is(
        &client,
        &format!("/console/listeners/{}/rotate", listener.id),
    )
    .await;
    assert!(
        text_of(&client, "[role=dialog] h2")
            .await
            .starts_with("Rotate endpoints")
    );
    screenshot(&client, "rotate").await;
    click(&client, "[role=dialog] button[type=submit]").await;
    // The answer has the form's own address: wait for what only the answer holds.
    client
        .wait()
        .for_element(fantoccini::Locator::Css("#new-url"))
        .await
        .unwrap();
    let new_url = text_of(&client, "#new-url").await;
    assert!(
        new_url.starts_with("https://hooks.example.test/l/"),
        "{new_url}"
    );
    screenshot(&client, "rotated").await;
    let after = listeners::list(&store).await.unwrap().remove(0);
    assert_eq!(after.endpoints.len(), 2);
    let old = after
        .endpoints
        .iter()
        .find(|e| e.id == listener.endpoints[0].id)
        .unwrap();
    let expiry = old.expires_at.expect("the old endpoint now expires");
    assert!(
        (before_rotation + DAY_MS - 61_000..=now_ms() + DAY_MS).contains(&expiry),
        "old endpoint expires a day from now: {expiry}"
    );
    // The new endpoint takes alerts (the URL shown is the real one).
    let secret = new_url.trim_start_matches("https://hooks.example.test/l/");
    let resolved = listeners::resolve(&store, secret).await.unwrap();
    assert_eq!(resolved.map(|(id, _)| id), Some(listener.id.clone()));

    // Extend it: the table offers a day more than its expiry.
    client
        .goto(&format!("{base}/console/listeners"))
        .await
        .unwrap();
    // The old endpoint's row says when it expires, the new one's that it is active.
    let row_state = |id: String| {
        let client = &client;
        async move {
            client
                .find(fantoccini::Locator::XPath(&format!(
                    "//tr[th/code='{id}']/td[2]"
                )))
                .await
                .unwrap_or_else(|e| panic!("row of {id}: {e}"))
                .text()
                .await
                .unwrap()
        }
    };
    let state = row_state(old.id.clone()).await;
    assert!(state.starts_with("Expiring 20"), "{state}");
    let new_id = after
        .endpoints
        .iter()
        .find(|e| e.expires_at.is_none())
        .unwrap()
        .id
        .clone();
    assert_eq!(row_state(new_id).await, "Active");
    click(
        &client,
        &format!("form[action='/console/endpoints/{}/extend'] button", old.id),
    )
    .await;
    url_when(&client, |u| u.query() == Some("done=extended")).await;
    assert!(text_of(&client, "[role=status]").await.contains("extended"));
    let extended = listeners::list(&store).await.unwrap().remove(0);
    let new_expiry = extended
        .endpoints
        .iter()
        .find(|e| e.id == old.id)
        .unwrap()
        .expires_at
        .unwrap();
    assert!(
        (expiry + DAY_MS - 61_000..=expiry + DAY_MS).contains(&new_expiry),
        "{expiry} -> {new_expiry}"
    );
    screenshot(&client, "extended").await;

    // Findings, filtered to revoked ones, and the finding's timeline.
    client
        .goto(&format!("{base}/console/findings"))
        .await
        .unwrap();
    client
        .find(fantoccini::Locator::Css("select#state"))
        .await
        .unwrap()
        .select_by_value("revoked")
        .await
        .unwrap();
    click(&client, "form.filters button").await;
    url_when(&client, |u| {
        u.query().is_some_and(|q| q.contains("state=revoked"))
    })
    .await;
    screenshot(&client, "findings").await;
    click(
        &client,
        &format!("a[href='/console/findings/{finding_id}']"),
    )
    .await;
    path_is(&client, &format!("/console/findings/{finding_id}")).await;
    assert_eq!(text_of(&client, "#finding-state").await, "revoked");
    let timeline = text_of(&client, "ol.timeline").await;
    assert!(timeline.contains("finding.revoked"), "{timeline}");
    assert!(
        !client.source().await.unwrap().contains(&token),
        "no raw token on the page"
    );
    screenshot(&client, "finding").await;

    // Installations with their health, admin keys, the audit log's verdict.
    client
        .goto(&format!("{base}/console/installations"))
        .await
        .unwrap();
    assert!(text_of(&client, "tbody").await.contains("closed"));
    screenshot(&client, "installations").await;
    client.goto(&format!("{base}/console/keys")).await.unwrap();
    assert!(
        text_of(&client, "tbody")
            .await
            .contains("(signed in with it)")
    );
    screenshot(&client, "keys").await;
    client.goto(&format!("{base}/console/audit")).await.unwrap();
    assert!(
        text_of(&client, "#audit-verdict")
            .await
            .starts_with("Intact")
    );
    screenshot(&client, "audit").await;

    // Sign out: back at the sign-in page, and the console is closed to this browser.
    click(&client, "form.signout button").await;
    path_is(&client, "/console/login").await;
    assert!(
        text_of(&client, "[role=status]")
            .await
            .contains("signed out")
    );
    client
        .goto(&format!("{base}/console/findings"))
        .await
        .unwrap();
    assert_eq!(client.current_url().await.unwrap().path(), "/console/login");
    client.close().await.unwrap();
    drop(driver);
    rig.stop().await;
}
