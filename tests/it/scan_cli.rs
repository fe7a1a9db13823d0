//! `spillway scan` as a user runs it: real files, real git repositories, the real binary.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::archives::{gzip, tar_of, zip_of};
use spillway::scanner::validate::crc32_base62;

/// A format-valid GitHub classic token built from `seed` (synthetic: never issued by GitHub).
pub(crate) fn github_token(seed: u64) -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let body: String = (0..30)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALNUM[(x % 62) as usize] as char
        })
        .collect();
    format!("ghp_{body}{}", crc32_base62(body.as_bytes()))
}

pub(crate) fn spillway(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spillway runs")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub(crate) fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_clean_tree_exits_zero_with_no_output() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "src/main.rs",
        "fn main() { println!(\"hello\"); }\n",
    );
    let out = spillway(&["scan", "."], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
}

#[test]
fn a_token_is_reported_with_path_line_and_column_but_never_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let token = github_token(1);
    write(
        dir.path(),
        "config/app.env",
        &format!("# app\nNAME=demo\n  GITHUB_TOKEN={token}\n"),
    );
    let out = spillway(&["scan", "config"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("config/app.env:3:16:"), "{text}");
    assert!(
        text.contains("github_personal_access_token") && text.contains("ghp_…[40]"),
        "{text}"
    );
    assert!(
        !text.contains(&token) && !stderr(&out).contains(&token),
        "secret leaked: {text}"
    );

    let shown = spillway(&["scan", "--show-secrets", "config"], dir.path());
    assert!(stdout(&shown).contains(&token));
}

#[test]
fn json_output_carries_rule_type_span_verdict_and_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let token = github_token(2);
    write(dir.path(), "a.py", &format!("x = 1\nTOKEN = \"{token}\"\n"));
    let out = spillway(&["scan", "--format", "json", "a.py"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    let f = &v.as_array().unwrap()[0];
    assert_eq!(f["path"], "a.py");
    assert_eq!(f["line"], 2);
    assert_eq!(f["column"], 10);
    assert_eq!(f["token_type"], "github_personal_access_token");
    assert_eq!(f["verdict"], "valid");
    assert_eq!(
        f["end"].as_u64().unwrap() - f["start"].as_u64().unwrap(),
        40
    );
    assert_eq!(f["fingerprint"].as_str().unwrap().len(), 32);
    assert!(f.get("secret").is_none());
}

#[test]
fn sarif_output_has_what_github_code_scanning_reads() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "dir with space/k.ts",
        &format!("const k = \"{}\";\n", github_token(3)),
    );
    let out = spillway(&["scan", "--format", "sarif", "."], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let v = crate::common::sarif::validated(&out.stdout);
    assert_eq!(v["version"], "2.1.0");
    let run = &v["runs"][0];
    let rule_ids: Vec<&str> = run["tool"]["driver"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let result = &run["results"][0];
    let rule_index = result["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(rule_ids[rule_index], result["ruleId"].as_str().unwrap());
    let loc = &result["locations"][0]["physicalLocation"];
    assert_eq!(loc["artifactLocation"]["uri"], "dir%20with%20space/k.ts");
    assert_eq!(loc["region"]["startLine"], 1);
    assert_eq!(loc["region"]["startColumn"], 12);
    assert!(
        result["partialFingerprints"]
            .as_object()
            .unwrap()
            .values()
            .all(|f| f.as_str().unwrap().len() == 32)
    );
    assert!(
        result["message"]["text"]
            .as_str()
            .unwrap()
            .contains("ghp_…")
    );
    // Rules carry what a reader needs: help (text and Markdown), a link, a severity by what the
    // token grants; fingerprints of the secret and of the secret where it is.
    let rule = &run["tool"]["driver"]["rules"][rule_index];
    assert!(rule["help"]["text"].as_str().unwrap().contains("Revoke"));
    assert!(
        rule["help"]["markdown"]
            .as_str()
            .unwrap()
            .contains("**What to do.**")
    );
    assert_eq!(
        rule["helpUri"],
        "https://github.com/spillway/spillway/blob/main/patterns/github.toml"
    );
    assert_eq!(rule["properties"]["security-severity"], "8.0");
    assert_eq!(run["automationDetails"]["id"], "spillway/files/");
    let fingerprints = result["partialFingerprints"].as_object().unwrap();
    assert_eq!(fingerprints.len(), 2);
    // The same token in a second file: same secret fingerprint, another location fingerprint.
    write(
        dir.path(),
        "other.ts",
        &format!("const k = \"{}\";\n", github_token(3)),
    );
    let out = spillway(&["scan", "--format", "sarif", "."], dir.path());
    let v = crate::common::sarif::validated(&out.stdout);
    let prints: Vec<&serde_json::Value> = v["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["partialFingerprints"])
        .collect();
    assert_eq!(prints.len(), 2);
    assert_eq!(
        prints[0]["spillwaySecret/v1"],
        prints[1]["spillwaySecret/v1"]
    );
    assert_ne!(
        prints[0]["spillwaySecretLocation/v1"],
        prints[1]["spillwaySecretLocation/v1"]
    );
}

#[test]
fn gitignored_binary_and_oversized_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), ".gitignore", "ignored/\n");
    write(dir.path(), "ignored/secret.txt", &github_token(4));
    let mut binary = github_token(5).into_bytes();
    binary.extend_from_slice(b"\0\x01\x02");
    std::fs::write(dir.path().join("blob.bin"), binary).unwrap();
    write(
        dir.path(),
        "big.txt",
        &format!("{}\n{}", "x".repeat(4096), github_token(6)),
    );
    let out = spillway(&["scan", "--max-file-size", "2K", "."], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("skipped 1 files over --max-file-size"),
        "{}",
        stderr(&out)
    );

    let all = spillway(&["scan", "--no-ignore", "."], dir.path());
    assert_eq!(all.status.code(), Some(1));
    let text = stdout(&all);
    assert!(
        text.contains("ignored/secret.txt")
            && text.contains("big.txt")
            && !text.contains("blob.bin"),
        "{text}"
    );
}

#[test]
fn stdin_is_scanned_with_a_dash() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["scan", "-"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("leak: {}\n", github_token(7)).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("-:1:7:"), "{}", stdout(&out));
}

#[test]
fn a_missing_path_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = spillway(&["scan", "no/such/dir"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no/such/dir: no such file or directory"),
        "{}",
        stderr(&out)
    );
    let bad_rules = spillway(&["scan", "--rules", "missing-rules", "."], dir.path());
    assert_eq!(bad_rules.status.code(), Some(2));
    assert!(
        stderr(&bad_rules).contains("missing-rules"),
        "{}",
        stderr(&bad_rules)
    );
}

#[test]
fn a_failed_checksum_is_not_a_finding_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut token = github_token(8);
    let last = if token.ends_with('0') { "1" } else { "0" };
    token.replace_range(39..40, last);
    write(dir.path(), "t.txt", &token);
    assert_eq!(
        spillway(&["scan", "t.txt"], dir.path()).status.code(),
        Some(0)
    );
    let out = spillway(&["scan", "--include-invalid", "t.txt"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("invalid (checksum does not match)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_baseline_suppresses_known_findings_but_not_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "old.txt", &github_token(9));
    let wrote = spillway(
        &["scan", "--write-baseline", "baseline.json", "old.txt"],
        dir.path(),
    );
    assert_eq!(wrote.status.code(), Some(0), "{}", stderr(&wrote));
    let baseline = std::fs::read_to_string(dir.path().join("baseline.json")).unwrap();
    assert!(
        !baseline.contains(&github_token(9)),
        "baseline holds the secret"
    );
    assert_eq!(
        spillway(
            &["scan", "--baseline", "baseline.json", "old.txt"],
            dir.path()
        )
        .status
        .code(),
        Some(0)
    );
    write(dir.path(), "new.txt", &github_token(10));
    let out = spillway(
        &["scan", "--baseline", "baseline.json", "old.txt", "new.txt"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("new.txt") && !stdout(&out).contains("old.txt"));
}

fn git(dir: &Path, args: &[&str]) -> String {
    git_at(dir, args, "2020-01-01T00:00:00Z")
}

/// Runs git with author and committer dates fixed, so history order does not depend on the clock.
fn git_at(dir: &Path, args: &[&str], date: &str) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_DATE", date)
        .env("GIT_COMMITTER_DATE", date)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn git_history_reports_the_commit_and_path_that_introduced_a_deleted_token() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    git(repo, &["init", "-q", "-b", "main"]);
    write(repo, "README.md", "hello\n");
    git(repo, &["add", "."]);
    git_at(
        repo,
        &["commit", "-q", "-m", "first"],
        "2020-01-01T00:00:00Z",
    );
    write(
        repo,
        "deploy/settings.yml",
        &format!("token: {}\n", github_token(11)),
    );
    git(repo, &["add", "."]);
    git_at(
        repo,
        &["commit", "-q", "-m", "leak"],
        "2020-01-02T00:00:00Z",
    );
    let leak = git(repo, &["rev-parse", "HEAD"]);
    // The same blob again under another name, then the token is removed: still one finding.
    std::fs::copy(repo.join("deploy/settings.yml"), repo.join("copy.yml")).unwrap();
    git(repo, &["add", "."]);
    git_at(
        repo,
        &["commit", "-q", "-m", "copy"],
        "2020-01-03T00:00:00Z",
    );
    git(repo, &["rm", "-q", "deploy/settings.yml", "copy.yml"]);
    git_at(
        repo,
        &["commit", "-q", "-m", "remove"],
        "2020-01-04T00:00:00Z",
    );

    assert_eq!(
        spillway(&["scan", "."], repo).status.code(),
        Some(0),
        "working tree is clean"
    );
    let out = spillway(&["scan", "--git", "--format", "json", "."], repo);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let findings = v.as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["commit"], leak.as_str());
    assert_eq!(findings[0]["path"], "deploy/settings.yml");
    assert_eq!(findings[0]["line"], 1);

    // SARIF names the repository and revision, with credentials stripped from the remote's URL,
    // and keeps history scans apart from working-tree scans.
    git(
        repo,
        &[
            "remote",
            "add",
            "origin",
            "https://ci:hunter2hunter2@git.example.com/acme/app.git",
        ],
    );
    let out = spillway(&["scan", "--git", "--format", "sarif", "."], repo);
    let run = &crate::common::sarif::validated(&out.stdout)["runs"][0];
    assert_eq!(run["automationDetails"]["id"], "spillway/git/");
    let provenance = &run["versionControlProvenance"][0];
    assert_eq!(
        provenance["repositoryUri"],
        "https://git.example.com/acme/app.git"
    );
    assert_eq!(
        provenance["revisionId"],
        git(repo, &["rev-parse", "HEAD"]).as_str()
    );
    assert_eq!(provenance["branch"], "refs/heads/main");
    assert_eq!(run["results"][0]["properties"]["commitSha"], leak.as_str());
}

#[test]
fn gitleaks_rule_files_are_imported_with_their_allowlists() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "rules/gitleaks.toml",
        r#"
title = "team rules"

[[rules]]
id = "myco-key"
description = "MyCo internal key"
regex = '''\b(myco_[a-z0-9]{16})\b'''
keywords = ["myco_"]
entropy = 2.0

[[rules.allowlists]]
stopwords = ["testtesttest"]
"#,
    );
    write(
        dir.path(),
        "src/a.txt",
        "k = myco_q8w7e6r5t4y3u2i1\nj = myco_testtesttest0000\n",
    );
    let out = spillway(
        &["scan", "--rules", "rules", "--format", "json", "src"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<(&str, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["rule_id"].as_str().unwrap(), f["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(ids, [("gitleaks.myco-key", 1)]);
}

/// Parses `spillway rules --stats`: the summary's `name=value` pairs and each searcher's fingerprints.
fn rules_stats(out: &Output) -> (std::collections::HashMap<String, u64>, Vec<Vec<String>>) {
    let text = stdout(out);
    let mut lines = text.lines();
    let summary = lines
        .next()
        .expect("a summary line")
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("name=value");
            (k.to_owned(), v.parse().expect("a number"))
        })
        .collect();
    let searchers = lines
        .map(|l| {
            let (_, fps) = l.split_once(": ").expect("searcher N: ...");
            fps.split(' ').map(str::to_owned).collect()
        })
        .collect();
    (summary, searchers)
}

#[test]
fn rules_stats_cover_extra_rules_and_list_every_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let extended = concat!(env!("CARGO_MANIFEST_DIR"), "/patterns/extended");
    let default = spillway(&["rules", "--stats"], dir.path());
    let more = spillway(&["rules", "--stats", "--rules", extended], dir.path());
    assert_eq!(default.status.code(), Some(0), "{}", stderr(&default));
    assert_eq!(more.status.code(), Some(0), "{}", stderr(&more));
    let (d, d_searchers) = rules_stats(&default);
    let (m, m_searchers) = rules_stats(&more);
    assert!(m["rules"] > d["rules"] && m["fingerprints"] > d["fingerprints"]);
    for (summary, searchers) in [(&d, &d_searchers), (&m, &m_searchers)] {
        assert_eq!(summary["searchers"], searchers.len() as u64);
        let listed: Vec<&String> = searchers.iter().flatten().collect();
        assert_eq!(summary["fingerprints"], listed.len() as u64);
        // Every fingerprint once, none above the slim Teddy limit of 32 per searcher.
        let distinct: std::collections::BTreeSet<&&String> = listed.iter().collect();
        assert_eq!(distinct.len(), listed.len());
        assert!(searchers.iter().all(|s| s.len() <= 32));
    }
    // The listing without --stats names the extra rules too; a missing path is named.
    let list = stdout(&spillway(&["rules", "--rules", extended], dir.path()));
    assert_eq!(list.lines().count() as u64, m["rules"]);
    let missing = spillway(&["rules", "--rules", "no/such/dir"], dir.path());
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("no/such/dir"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn tokens_inside_archives_and_encodings_are_found_and_say_how() {
    let dir = tempfile::tempdir().unwrap();
    // Seed 001: a data connector's deployment tarball carries its coordinator token.
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let coordinator = spillway::platform::jwt::mint(
        &key,
        "Y29vcmRpbmF0b3I",
        &serde_json::json!({"sub": "data-connector-agent", "exp": 4102444800u64}),
    );
    let json = format!("{{\n  \"token\": \"{coordinator}\"\n}}\n");
    let tarball = gzip(&tar_of(&[
        ("bootvisor/README", b"agent bundle"),
        ("var/data/coordinator-token.json", json.as_bytes()),
    ]));
    std::fs::create_dir_all(dir.path().join("deploy")).unwrap();
    std::fs::write(dir.path().join("deploy/bundle.tar.gz"), &tarball).unwrap();
    // A Kubernetes Secret: the token base64-encoded in `data:`, inside a zip.
    let gh = github_token(18);
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &gh);
    let secret = format!("apiVersion: v1\nkind: Secret\ndata:\n  token: {b64}\n");
    std::fs::write(
        dir.path().join("manifests.zip"),
        zip_of(&[("k8s/secret.yaml", secret.as_bytes())]),
    )
    .unwrap();
    // A JSON escape and a percent-encoded URL, in plain text.
    let escaped_gh = github_token(19);
    let url_gh = github_token(20);
    write(
        dir.path(),
        "config.json",
        &format!(
            "{{\"a\":\"x\\n{escaped_gh}\"}}\nhttps://example.com/?t=%22{}%22\n",
            url_gh
        ),
    );
    // Token-free archives and random base64 produce nothing.
    let noise: Vec<u8> = (0..600u32).map(|i| (i * 7919 % 251) as u8).collect();
    let random = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &noise);
    std::fs::write(
        dir.path().join("clean.zip"),
        zip_of(&[("a.txt", b"hello"), ("b.txt", random.as_bytes())]),
    )
    .unwrap();

    let out = spillway(&["scan", "--format", "json", "."], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let found: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut seen: Vec<(String, String, serde_json::Value)> = found
        .iter()
        .map(|f| {
            (
                f["path"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("./")
                    .to_owned(),
                f["token_type"].as_str().unwrap().to_owned(),
                f.get("decoded").cloned().unwrap_or(serde_json::json!([])),
            )
        })
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            (
                "config.json".into(),
                "github_personal_access_token".into(),
                serde_json::json!(["escape"])
            ),
            (
                "config.json".into(),
                "github_personal_access_token".into(),
                serde_json::json!(["percent"])
            ),
            (
                "deploy/bundle.tar.gz!var/data/coordinator-token.json".into(),
                "palantir_jwt".into(),
                serde_json::json!([])
            ),
            (
                "manifests.zip!k8s/secret.yaml".into(),
                "github_personal_access_token".into(),
                serde_json::json!(["base64"])
            ),
        ],
        "{}",
        stdout(&out)
    );
    let coordinator_line = found
        .iter()
        .find(|f| f["token_type"] == "palantir_jwt")
        .unwrap();
    assert_eq!(coordinator_line["line"], 2);
    // Nothing raw in the output.
    for t in [&coordinator, &gh, &escaped_gh, &url_gh] {
        assert!(!stdout(&out).contains(t.as_str()));
    }

    // Text and SARIF say how too; SARIF points code scanning at the archive.
    let text = stdout(&spillway(&["scan", "manifests.zip"], dir.path()));
    assert!(
        text.starts_with("manifests.zip!k8s/secret.yaml:4:10: ") && text.contains("via base64"),
        "{text}"
    );
    let sarif = crate::common::sarif::validated(
        &spillway(&["scan", "--format", "sarif", "deploy"], dir.path()).stdout,
    );
    let result = &sarif["runs"][0]["results"][0];
    assert_eq!(
        result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
        "deploy/bundle.tar.gz"
    );
    assert_eq!(
        result["properties"]["memberPath"],
        "deploy/bundle.tar.gz!var/data/coordinator-token.json"
    );

    // --no-decode: raw bytes only; --max-decode-depth 1: the zip is opened, base64 inside not.
    let raw = spillway(
        &["scan", "--format", "json", "--no-decode", "."],
        dir.path(),
    );
    assert_eq!(raw.status.code(), Some(0), "{}", stdout(&raw));
    let shallow = spillway(
        &[
            "scan",
            "--format",
            "json",
            "--max-decode-depth",
            "1",
            "manifests.zip",
        ],
        dir.path(),
    );
    assert_eq!(shallow.status.code(), Some(0), "{}", stdout(&shallow));
}

#[test]
fn a_decompression_bomb_is_skipped_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 256 << 20];
    let bomb = zip_of(&[
        ("zeros.bin", &zeros),
        ("ok.txt", github_token(21).as_bytes()),
    ]);
    drop(zeros);
    std::fs::write(dir.path().join("bomb.zip"), &bomb).unwrap();
    let out = spillway(&["scan", "--format", "json", "."], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not opened: ./bomb.zip!zeros.bin: expansion_cap"),
        "{}",
        stderr(&out)
    );
    let found: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["path"], "./bomb.zip!ok.txt");
}

/// (rule id, path, line) of every finding in a JSON report.
pub(crate) fn located(out: &Output) -> Vec<(String, String, u64)> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found: Vec<(String, String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule_id"].as_str().unwrap().to_owned(),
                f["path"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("./")
                    .to_owned(),
                f["line"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Files that exercise Gitleaks' default config where it differs from a plain regex scan: short
/// keywords (`ey`, `sk`), a path-only rule (`*.p12`), the global allowlist's paths
/// (`node_modules`), `gitleaks:allow`, a generic finding giving way to a specific one on its line.
/// What Gitleaks 8.30.1 itself reports on them is [`GITLEAKS_FIXTURE_FINDINGS`] (the conformance
/// tests run Gitleaks on the same files).
pub(crate) fn write_gitleaks_fixture(dir: &Path) {
    let pat = "ghp_Zq8W7e6R5t4Y3u2I1o0PaSdFgHjKlMnBvCxZ";
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
    write(
        dir,
        "src/app.py",
        &format!(
            "import os\n\
             github = \"{pat}\"\n\
             ignored = \"ghp_Aq8W7e6R5t4Y3u2I1o0PaSdFgHjKlMnBvCxQ\"  # gitleaks:allow\n\
             session = \"{jwt}\"\n\
             twilio = \"SK0123456789abcdef0123456789abcdef\"\n\
             api_key = \"{pat}\"\n\
             db_password = \"Kq9dLx2mZ7vB4nR8\"\n"
        ),
    );
    write(
        dir,
        "node_modules/dep/index.js",
        &format!("t = \"{pat}\"\n"),
    );
    std::fs::create_dir_all(dir.join("certs")).unwrap();
    std::fs::write(
        dir.join("certs/client.p12"),
        [0x30u8, 0x82, 0x0a, 0x01, 0, 7],
    )
    .unwrap();
}

/// (Gitleaks rule id, path, line) of what Gitleaks 8.30.1 reports on [`write_gitleaks_fixture`].
pub(crate) const GITLEAKS_FIXTURE_FINDINGS: [(&str, &str, u64); 6] = [
    ("pkcs12-file", "certs/client.p12", 0),
    ("github-pat", "src/app.py", 2),
    ("jwt", "src/app.py", 4),
    ("twilio-api-key", "src/app.py", 5),
    // `api_key = "ghp_…"`: the generic match gives way to github-pat.
    ("github-pat", "src/app.py", 6),
    ("generic-api-key", "src/app.py", 7),
];

/// `spillway scan --rules builtin:gitleaks --format json .` in `dir`.
pub(crate) fn scan_with_gitleaks_config(dir: &Path) -> Output {
    spillway(
        &[
            "scan",
            "--no-default-rules",
            "--rules",
            "builtin:gitleaks",
            "--format",
            "json",
            ".",
        ],
        dir,
    )
}

/// `spillway scan --rules builtin:gitleaks` (Gitleaks' own default config, vendored in patterns/gitleaks)
/// on the fixture, then the same config through `[extend] useDefault` with disabled rules and a
/// rule of the team's own.
#[test]
fn gitleaks_default_config_runs_as_gitleaks_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    write_gitleaks_fixture(dir.path());
    let out = scan_with_gitleaks_config(dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let expect = |items: &[(&str, &str, u64)]| -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = items
            .iter()
            .map(|(r, p, l)| (format!("gitleaks.{r}"), p.to_string(), *l))
            .collect();
        v.sort();
        v
    };
    assert_eq!(located(&out), expect(&GITLEAKS_FIXTURE_FINDINGS));

    write(
        dir.path(),
        "team.toml",
        r#"
title = "team"
[extend]
useDefault = true
disabledRules = ["github-pat", "generic-api-key"]

[[rules]]
id = "myco-key"
regex = '''\b(myco_[a-z0-9]{16})\b'''
keywords = ["myco_"]
"#,
    );
    write(dir.path(), "src/more.txt", "k = myco_q8w7e6r5t4y3u2i1\n");
    let out = spillway(
        &[
            "scan",
            "--no-default-rules",
            "--rules",
            "team.toml",
            "--format",
            "json",
            "src",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        located(&out),
        expect(&[
            ("jwt", "src/app.py", 4),
            ("twilio-api-key", "src/app.py", 5),
            ("myco-key", "src/more.txt", 1),
        ])
    );
}

#[test]
fn a_gitleaks_file_spillway_cannot_honour_is_refused_by_rule_and_field() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", "nothing\n");
    for (text, expected) in [
        (
            "[[rules]]\nid = \"x\"\nregex = \"x\"\nkeyword = [\"abc\"]\n",
            "unknown field `keyword`",
        ),
        (
            "[[rules]]\nid = \"combo\"\nregex = \"x\"\n[[rules.required]]\nid = \"y\"\n",
            "rule `gitleaks.combo`: [[rules.required]] (composite rules) is not supported",
        ),
        (
            "[[rules]]\nid = \"x\"\nregex = \"x\"\n[[allowlists]]\ntargetRules = [\"nope\"]\nstopwords = [\"s\"]\n",
            "targetRules names \"nope\"",
        ),
    ] {
        write(dir.path(), "bad.toml", text);
        let out = spillway(
            &["scan", "--no-default-rules", "--rules", "bad.toml", "a.txt"],
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(err.contains("bad.toml") && err.contains(expected), "{err}");
    }
}

/// One thread reads every file into the same buffer: a short file after a long one is only its own
/// bytes, never the long file's tail (the buffer keeps its size from file to file). Ten long files
/// among thirty short ones, so that whatever order the directory lists them in, some short file
/// comes after a long one.
#[test]
fn a_short_file_after_a_long_one_is_only_its_own_bytes() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..10 {
        // The token sits past the end of every short file.
        write(
            dir.path(),
            &format!("long{i}.txt"),
            &format!("{}\nGITHUB_TOKEN={}\n", "x".repeat(64), github_token(i)),
        );
    }
    for i in 0..30 {
        write(dir.path(), &format!("short{i}.txt"), "x\n");
    }
    write(dir.path(), "empty.txt", "");
    let out = spillway(
        &["scan", "--threads", "1", "--format", "json", "."],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let findings: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut paths: Vec<&str> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    paths.sort();
    let expected: Vec<String> = (0..10).map(|i| format!("./long{i}.txt")).collect();
    assert_eq!(paths, expected, "{}", stdout(&out));
    assert!(stderr(&out).contains("41 files"), "{}", stderr(&out));
}
