//! The console's markup: one function per screen, written with `maud` (escaped by construction,
//! compiled into the binary). Accessible by habit: one `h1` per page, a skip link, labelled
//! controls, tables with header cells, state in words (never colour alone), plain forms that work
//! from the keyboard.
//!
//! Must not call storage or the engine (it uses their types only): it renders what the handlers
//! read and nothing else, with no side effect.

use axum::http::StatusCode;
use axum::response::Html;
use maud::{DOCTYPE, Markup, html};

use super::{Chosen, Health};
use crate::admin::api_keys::AdminKey;
use crate::admin::sessions::{self, Listed, Session};
use crate::findings::{FindingState, FindingView};
use crate::installations::{self, Installation};
use crate::platform::audit::{Entry, Verdict};
use crate::sources::listeners::Listener;

pub fn html(markup: Markup) -> Html<String> {
    Html(markup.into_string())
}

/// `ms` since the epoch as UTC, to the minute (`2026-12-07 15:30 UTC`).
fn when(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} {} UTC", &s[..10], &s[11..16])
}

/// A `<time>` element for `ms`.
fn time(ms: i64) -> Markup {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    html! { time datetime=(humantime::format_rfc3339_seconds(t).to_string()) { (when(ms)) } }
}

/// `ms` as a `datetime-local` value in UTC (`2026-12-07T15:30`).
fn local_value(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()[..16].to_owned()
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The screens, as the navigation names them.
const SCREENS: [(&str, &str); 5] = [
    ("/console/listeners", "Listeners"),
    ("/console/findings", "Findings"),
    ("/console/installations", "Installations"),
    ("/console/keys", "Admin keys"),
    ("/console/audit", "Audit log"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Spillway console" }
            link rel="stylesheet" href="/console/style.css";
        }
    }
}

/// A signed-in page: navigation, who is signed in, sign out, and the screen.
fn page(session: &Session, current: &str, title: &str, body: Markup) -> Markup {
    html! {
                (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    span.brand { "Spillway" }
                    nav aria-label="Console screens" {
                        ul {
                            @for (href, name) in SCREENS {
                                li {
                                    @if href == current {
                                        a href=(href) aria-current="page" { (name) }
                                    } @else {
                                        a href=(href) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    form.signout method="post" action="/console/logout" {
                        input type="hidden" name="csrf" value=(session.csrf());
                        span {
                            "Signed in with admin key "
                            strong { (session.key.name) }
                            " (" code { (session.key.id) } "), until " (time(session.expires_at))
                        }
                        button type="submit" { "Sign out" }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf()); }
}

fn notice(done: Option<&str>) -> Markup {
    let text = match done {
        Some("extended") => "The endpoint's expiry was extended.",
        Some("deleted") => "The endpoint was deleted.",
        Some("revoked") => "The admin key, and every key it minted, was revoked.",
        Some("retired") => "The old shared secret was retired.",
        Some("session_revoked") => "The console session was ended.",
        _ => return html! {},
    };
    html! { p.notice role="status" { (text) } }
}

pub fn problem(status: StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    html! {
                (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                main #main {
                    h1 { (status.as_u16()) " " (title) }
                    p.error role="alert" { (message) }
                    p { a href="/console/" { "Back to the console" } }
                }
            }
        }
    }
}

pub fn signin(form_token: &str, note: Option<&str>, error: Option<&str>) -> Markup {
    html! {
                (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body {
                main #main.signin {
                    h1 { "Sign in to the Spillway console" }
                    @if let Some(note) = note { p.notice role="status" { (note) } }
                    @if let Some(error) = error { p.error role="alert" #signin-error { (error) } }
                    form method="post" action="/console/login" {
                        input type="hidden" name="form_token" value=(form_token);
                        label for="admin_key" { "Admin key" }
                        input #admin_key type="password" name="admin_key" required
                            autocomplete="off" spellcheck="false" autofocus
                            aria-describedby=[error.map(|_| "signin-error")];
                        p.hint {
                            "An admin key (" code { "spillway_…" } ") from "
                            code { "spillway admin-key create" }
                            ". It is sent once; the console keeps a session of at most "
                            (sessions::TTL_MS / 3_600_000) " hours, and only what the key's scopes allow."
                        }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// An endpoint's state in words.
fn endpoint_state(expires_at: Option<i64>, now: i64) -> Markup {
    match expires_at {
        None => html! { span.state.ok { "Active" } },
        Some(at) if at <= now => html! { span.state.bad { "Expired " (time(at)) } },
        Some(at) => html! { span.state.warn { "Expiring " (time(at)) } },
    }
}

pub fn listeners(
    session: &Session,
    all: &[Listener],
    once: &str,
    kinds: &[&str],
    done: Option<&str>,
    now: i64,
) -> Markup {
    let body = html! {
        (notice(done))
        @if all.is_empty() { p { "No listeners yet." } }
        @for listener in all {
            section.listener aria-labelledby=(format!("l-{}", listener.id)) {
                h2 #(format!("l-{}", listener.id)) {
                    @if listener.name.is_empty() { (listener.id) } @else { (listener.name) }
                    " " small { "(" (listener.kind) ", " code { (listener.id) } ")" }
                }
                table {
                    caption { "Endpoints of " (listener.id) }
                    thead { tr {
                        th scope="col" { "Endpoint" }
                        th scope="col" { "Created" }
                        th scope="col" { "State" }
                        th scope="col" { "Change" }
                    } }
                    tbody {
                        @for endpoint in &listener.endpoints {
                            tr {
                                th scope="row" { code { (endpoint.id) } }
                                td { (time(endpoint.created_at)) }
                                td { (endpoint_state(endpoint.expires_at, now)) }
                                td.actions {
                                    @if let Some(at) = endpoint.expires_at {
                                        @if at > now {
                                            form.inline method="post" action=(format!("/console/endpoints/{}/extend", endpoint.id)) {
                                                (csrf(session))
                                                label for=(format!("x-{}", endpoint.id)) {
                                                    "New expiry of " (endpoint.id) " (UTC)"
                                                }
                                                input #(format!("x-{}", endpoint.id)) type="datetime-local"
                                                    name="expires_at" required value=(local_value(at + DAY_MS));
                                                button type="submit" { "Extend" }
                                            }
                                        }
                                        form.inline method="post" action=(format!("/console/endpoints/{}/delete", endpoint.id)) {
                                            (csrf(session))
                                            button.danger type="submit" aria-label=(format!("Delete endpoint {}", endpoint.id)) { "Delete" }
                                        }
                                    } @else {
                                        "Receives events"
                                    }
                                }
                            }
                        }
                    }
                }
                p {
                    a.button href=(format!("/console/listeners/{}/rotate", listener.id)) {
                        "Rotate endpoints of " (listener.id)
                    }
                }
            }
        }
        section aria-labelledby="new-listener" {
            h2 #new-listener { "New listener" }
            form method="post" action="/console/listeners" {
                (csrf(session))
                input type="hidden" name="once" value=(once);
                label for="kind" { "Kind" }
                select #kind name="kind" required {
                    @for kind in kinds { option value=(kind) { (kind) } }
                }
                label for="name" { "Name" }
                input #name type="text" name="name" maxlength="200";
                label for="secret" { "Shared secret (for kinds that take one; left empty, one is generated where the kind allows)" }
                input #secret type="password" name="secret" autocomplete="off";
                button type="submit" { "Create listener" }
            }
        }
    };
    page(session, "/console/listeners", "Listeners", body)
}

/// The "Rotate endpoints" dialog: a new endpoint now; the old one expires at a date or goes now.
pub fn rotate(session: &Session, listener: &Listener, now: i64) -> Markup {
    let body = html! {
        section.dialog role="dialog" aria-labelledby="rotate-title" {
            h2 #rotate-title { "Rotate endpoints of " (listener.id) }
            p {
                "A new endpoint is made at once. Choose what happens to the endpoint in use now: "
                "keep it working until a date, so senders can move without losing events, or delete it now."
            }
            form method="post" action=(format!("/console/listeners/{}/rotate", listener.id)) {
                (csrf(session))
                @if let Some(active) = listener.endpoints.iter().find(|e| e.expires_at.is_none()) {
                    input type="hidden" name="expected_active" value=(active.id);
                }
                fieldset {
                    legend { "The old endpoint" }
                    div {
                        input #old-expire type="radio" name="old" value="expire" checked;
                        label for="old-expire" { "Expires at the date below" }
                    }
                    label for="expires_at" { "Old endpoint expires at (UTC)" }
                    input #expires_at type="datetime-local" name="expires_at" value=(local_value(now + DAY_MS));
                    div {
                        input #old-delete type="radio" name="old" value="delete";
                        label for="old-delete" { "Delete it now (senders still using it fail at once)" }
                    }
                }
                button type="submit" { "Rotate" }
                " "
                a href="/console/listeners" { "Cancel" }
            }
        }
    };
    page(session, "/console/listeners", "Rotate endpoints", body)
}

/// A new endpoint URL and/or secret, shown this once.
pub fn shown_once(
    session: &Session,
    current: &str,
    title: &str,
    what: &str,
    url: &str,
    secret: Option<&str>,
) -> Markup {
    let body = html! {
        p { (what) }
        p.notice role="status" { "Shown once: copy it now. Spillway keeps only a hash or a sealed copy and cannot show it again." }
        dl.once {
            @if !url.is_empty() {
                dt { "Endpoint URL" }
                dd { output #new-url { (url) } }
            }
            @if let Some(secret) = secret {
                dt { "Secret" }
                dd { output #new-secret { (secret) } }
            }
        }
        p { a href="/console/listeners" { "Back to listeners" } " · " a href="/console/installations" { "Installations" } }
    };
    page(session, current, title, body)
}

fn select(id: &str, label: &str, chosen: &str, options: &[&str]) -> Markup {
    html! {
        label for=(id) { (label) }
        select #(id) name=(id) {
            option value="" selected[chosen.is_empty()] { "any" }
            @for value in options {
                option value=(value) selected[*value == chosen] { (value) }
            }
        }
    }
}

pub fn findings(
    session: &Session,
    rows: &[FindingView],
    chosen: &Chosen<'_>,
    registered: &[&Installation],
    issuers: &[&str],
    sources: &[String],
    older: Option<i64>,
) -> Markup {
    let states: Vec<&str> = FindingState::ALL.iter().map(|s| s.as_str()).collect();
    let registered: Vec<&str> = registered.iter().map(|i| i.id.as_str()).collect();
    let sources: Vec<&str> = sources.iter().map(String::as_str).collect();
    let body = html! {
        form.filters method="get" action="/console/findings" role="search" aria-label="Filter findings" {
            (select("state", "State", chosen.state, &states))
            (select("installation", "Installation", chosen.installation, &registered))
            (select("issuer", "Issuer", chosen.issuer, issuers))
            (select("source", "Source", chosen.source, &sources))
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() {
            p { "No findings match." }
        } @else {
            table {
                caption { "Findings, newest first" }
                thead { tr {
                    th scope="col" { "Finding" }
                    th scope="col" { "Received" }
                    th scope="col" { "Token type" }
                    th scope="col" { "Installation" }
                    th scope="col" { "Source" }
                    th scope="col" { "State" }
                    th scope="col" { "Attempts" }
                } }
                tbody {
                    @for f in rows {
                        tr {
                            th scope="row" { a href=(format!("/console/findings/{}", f.id)) { (f.id) } }
                            td { (time(f.received_at)) }
                            td { code { (f.token_type) } }
                            td { (f.installation_id.as_deref().unwrap_or("—")) }
                            td { (f.source) }
                            td { span.state { (f.state) } }
                            td { (f.attempts) }
                        }
                    }
                }
            }
        }
        @if let Some(before) = older {
            p { a href=(format!(
                "/console/findings?state={}&installation={}&issuer={}&source={}&before={before}",
                query(chosen.state), query(chosen.installation), query(chosen.issuer), query(chosen.source)
            )) { "Older findings" } }
        }
    };
    page(session, "/console/findings", "Findings", body)
}

/// `s` as a query-string value.
fn query(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn finding(session: &Session, f: &FindingView, timeline: Option<&[Entry]>) -> Markup {
    let body = html! {
        dl.facts {
            dt { "Token type" } dd { code { (f.token_type) } }
            dt { "Fingerprint" } dd { code { (f.fingerprint) } }
            dt { "Installation" } dd { (f.installation_id.as_deref().unwrap_or("—")) " (" (f.attribution) ")" }
            dt { "Source" } dd { (f.source) }
            @if let Some(at) = &f.found_at { dt { "Found at" } dd { (at) } }
            dt { "Received" } dd { (time(f.received_at)) }
            dt { "State" } dd { span.state #finding-state { (f.state) } }
            @if let Some(outcome) = &f.outcome { dt { "Outcome" } dd { (outcome) } }
            @if let Some(label) = &f.label { dt { "Label" } dd { (label) } }
            dt { "Attempts" } dd { (f.attempts) }
            @if let Some(e) = &f.last_error { dt { "Last error" } dd { (e) } }
        }
        section aria-labelledby="timeline" {
            h2 #timeline { "Timeline" }
            @match timeline {
                None => p { "The timeline comes from the audit log: the signed-in key lacks scope audit:read." },
                Some([]) => p { "No audit entries name this finding yet." },
                Some(entries) => ol.timeline {
                    @for e in entries {
                        li {
                            (time(e.at)) " — "
                            strong { (e.action) } " by " code { (e.actor) }
                            " (entry " (e.seq) ")"
                            pre { (serde_json::to_string_pretty(&e.details).unwrap_or_default()) }
                        }
                    }
                },
            }
        }
        p { a href="/console/findings" { "All findings" } }
    };
    page(
        session,
        "/console/findings",
        &format!("Finding {}", f.id),
        body,
    )
}

pub fn installations(session: &Session, all: &[Health], done: Option<&str>) -> Markup {
    let body = html! {
        (notice(done))
        @if all.is_empty() { p { "No installations registered." } }
        @else {
            table {
                caption { "Installations and issuers, with the health of their calls on this replica" }
                thead { tr {
                    th scope="col" { "Installation" }
                    th scope="col" { "Token types" }
                    th scope="col" { "Rate limit" }
                    th scope="col" { "Breaker" }
                    th scope="col" { "Last error" }
                    th scope="col" { "Shared secret" }
                } }
                tbody {
                    @for h in all {
                        @let i = &h.installation;
                        tr {
                            th scope="row" { (i.spec.name) br; code { (i.id) } }
                            td { (i.spec.token_types.join(", ")) }
                            td {
                                @if installations::is_issuer(i) {
                                    "the issuer's own (an hourly budget for GitHub: "
                                    code { "[issuers.NAME] hourly_limit" } ")"
                                } @else {
                                    (i.spec.rate_per_sec) "/s, burst " (i.spec.burst) ", " (i.spec.concurrency) " at once"
                                }
                            }
                            td {
                                span.state.ok[h.breaker == "closed"] .bad[h.breaker != "closed"] { (h.breaker) }
                                @if let Some(secs) = h.open_for_secs { " (calls resume in " (secs) " s)" }
                            }
                            td {
                                @match &h.last_error {
                                    Some((row, at, e)) => {
                                        (e) " (" a href=(format!("/console/findings/fnd_{row}")) { "fnd_" (row) }
                                        ", received " (time(*at)) ")"
                                    },
                                    None => "none",
                                }
                            }
                            td.actions {
                                @if installations::is_issuer(i) {
                                    "none (an issuer)"
                                } @else {
                                    (i.live_secrets) " live, newest " (time(i.secret_created_at))
                                    form.inline method="post" action=(format!("/console/installations/{}/secret", i.id)) {
                                        (csrf(session))
                                        @if i.live_secrets < 2 {
                                            input type="hidden" name="action" value="add";
                                            button type="submit" aria-label=(format!("Rotate the shared secret of {}", i.id)) { "Rotate secret" }
                                        } @else {
                                            input type="hidden" name="action" value="retire_old";
                                            button type="submit" aria-label=(format!("Retire the old shared secret of {}", i.id)) { "Retire old secret" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(session, "/console/installations", "Installations", body)
}

pub fn keys(
    session: &Session,
    keys: &[AdminKey],
    live: &[Listed],
    done: Option<&str>,
    now: i64,
) -> Markup {
    let body = html! {
        (notice(done))
        table {
            caption { "Admin keys (never the keys themselves: only their hashes are stored)" }
            thead { tr {
                th scope="col" { "Key" }
                th scope="col" { "Scopes" }
                th scope="col" { "Created" }
                th scope="col" { "Expires" }
                th scope="col" { "Last used" }
                th scope="col" { "State" }
            } }
            tbody {
                @for k in keys {
                    tr {
                        th scope="row" { (k.name) br; code { (k.id) } }
                        td { (k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) }
                        td { (time(k.created_at)) " by " code { (k.created_by) } }
                        td { (time(k.expires_at)) }
                        td { @match k.last_used_at { Some(at) => (time(at)), None => "never" } }
                        td.actions {
                            @if let Some(at) = k.revoked_at {
                                span.state.bad { "Revoked " (time(at)) }
                                @if let Some(reason) = &k.revoked_reason { " (" (reason) ")" }
                            } @else if k.expires_at <= now {
                                span.state.bad { "Expired" }
                            } @else {
                                span.state.ok { "Active" }
                                @if k.id == session.key.id { " (signed in with it)" }
                                form.inline method="post" action=(format!("/console/keys/{}/revoke", k.id)) {
                                    (csrf(session))
                                    button.danger type="submit" aria-label=(format!("Revoke admin key {}", k.id)) { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let body = html! {
        (body)
        section aria-labelledby="sessions" {
            h2 #sessions { "Console sessions" }
            table {
                caption { "Signed-in console sessions (a session is named by a prefix of its hash; it opens nothing)" }
                thead { tr {
                    th scope="col" { "Session" }
                    th scope="col" { "Admin key" }
                    th scope="col" { "Signed in" }
                    th scope="col" { "Ends" }
                    th scope="col" { "End it" }
                } }
                tbody {
                    @for l in live {
                        tr {
                            th scope="row" { code { (l.handle) } @if l.handle == session.handle { " (this session)" } }
                            td { code { (l.key_id) } }
                            td { (time(l.created_at)) }
                            td { (time(l.expires_at)) }
                            td.actions {
                                form.inline method="post" action=(format!("/console/sessions/{}/revoke", l.handle)) {
                                    (csrf(session))
                                    button.danger type="submit" aria-label=(format!("End session {}", l.handle)) { "End" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(session, "/console/keys", "Admin keys", body)
}

pub fn audit(session: &Session, verdict: &Verdict, checked_at: i64) -> Markup {
    let body = html! {
        @match verdict {
            Verdict::Intact { entries, checkpoints, unwitnessed } => {
                p.state.ok #audit-verdict role="status" {
                    "Intact: " (entries) " entries chained, " (checkpoints)
                    " signed checkpoints match, " (unwitnessed)
                    " newest entries not yet witnessed by a checkpoint."
                }
            }
            Verdict::Broken { seq, reason } => {
                p.state.bad #audit-verdict role="alert" {
                    "BROKEN at entry " (seq) ": " (reason)
                }
            }
        }
        p {
            "Checked " (time(checked_at)) " (at most once a minute): the hash chain recomputed from the "
            "first entry and compared with the signed checkpoints written outside the database. "
            "Export the log with "
            code { "GET /api/v1/audit" } " or " code { "spillway audit export" } "."
        }
    };
    page(session, "/console/audit", "Audit log", body)
}
