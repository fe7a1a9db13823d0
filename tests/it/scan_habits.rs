//! The command-line habits Gitleaks and Kingfisher users bring: `--exit-code`, `-o`, a summary on
//! stderr (`-q` silences it), `-v`/`--log-level`, a quiet end on a closed pipe, shell completions,
//! a note of files the ignore files kept out, exit codes in `--help`, `rules --check`.

use std::io::Read;
use std::process::{Command, Stdio};

use crate::scan_cli::{github_token, spillway, stderr, stdout, write};

fn leaky_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "app/config.py",
        &format!("TOKEN = \"{}\"\n", github_token(21)),
    );
    write(dir.path(), "app/main.py", "print('hello')\n");
    dir
}

#[test]
fn exit_code_sets_the_status_for_findings_only() {
    let dir = leaky_tree();
    assert_eq!(spillway(&["scan", "."], dir.path()).status.code(), Some(1));
    let zero = spillway(&["scan", "--exit-code", "0", "."], dir.path());
    assert_eq!(zero.status.code(), Some(0));
    assert!(
        stdout(&zero).contains("github.pat-classic"),
        "still reported"
    );
    assert_eq!(
        spillway(&["scan", "--exit-code", "7", "."], dir.path())
            .status
            .code(),
        Some(7)
    );
    // An error is still 2, whatever --exit-code says.
    assert_eq!(
        spillway(&["scan", "--exit-code", "0", "no/such/path"], dir.path())
            .status
            .code(),
        Some(2)
    );
    let help = stdout(&spillway(&["scan", "--help"], dir.path()));
    assert!(
        help.contains("Exit codes:") && help.contains("2  an error"),
        "{help}"
    );
}

#[test]
fn output_goes_to_a_file_and_a_summary_to_stderr() {
    let dir = leaky_tree();
    let out = spillway(
        &["scan", "-f", "json", "-o", "report.json", "app"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "the report went to the file");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(report.as_array().unwrap().len(), 1);
    let summary = stderr(&out);
    assert!(
        summary.contains("spillway scan: 2 files, ") && summary.contains(", 1 findings in "),
        "{summary}"
    );
    let quiet = spillway(&["scan", "-q", "app"], dir.path());
    assert_eq!(stderr(&quiet), "");
    // A report that cannot be written is an error naming the file.
    let bad = spillway(&["scan", "-o", "no/such/dir/r.json", "app"], dir.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("no/such/dir/r.json"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn files_kept_out_by_ignore_files_are_counted() {
    let dir = leaky_tree();
    write(dir.path(), ".gitignore", "build/\n*.log\n");
    write(dir.path(), "build/a.txt", "a\n");
    write(dir.path(), "build/b.txt", "b\n");
    write(
        dir.path(),
        "debug.log",
        &format!("token {}\n", github_token(22)),
    );
    let out = spillway(&["scan", "."], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "3 files skipped by .gitignore, .ignore or git excludes (--no-ignore scans them)"
        ),
        "{}",
        stderr(&out)
    );
    let all = spillway(&["scan", "--no-ignore", "-f", "json", "."], dir.path());
    let found: Vec<serde_json::Value> = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(found.len(), 2, "the ignored log's token too");
    assert!(!stderr(&all).contains("skipped by"));
}

#[test]
fn verbose_logs_each_file_and_never_a_token() {
    let dir = leaky_tree();
    let token = github_token(21);
    let out = spillway(&["scan", "-vv", "app"], dir.path());
    let log = stderr(&out);
    assert!(
        log.contains("DEBUG") && log.contains("scanned") && log.contains("app/config.py"),
        "{log}"
    );
    assert!(!log.contains(&token) && !stdout(&out).contains(&token));
    let quiet = spillway(&["scan", "--log-level", "error", "app"], dir.path());
    assert!(!stderr(&quiet).contains("DEBUG"));
    let bad = spillway(&["scan", "--log-level", "loud", "app"], dir.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("--log-level"), "{}", stderr(&bad));
}

/// `spillway ... | head -1`: the reader goes away; spillway stops without an error message.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    // Enough findings that the report outgrows the pipe's buffer.
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!("t{i} = \"{}\"\n", github_token(1000 + i)));
    }
    write(dir.path(), "many.txt", &text);
    // The scan's report (1.5 MB) outgrows the pipe; the others may fit in its buffer, and must end
    // quietly either way.
    for (args, code) in [
        (vec!["scan", "-f", "json", "many.txt"], 1),
        (vec!["rules"], 0),
        (vec!["completions", "bash"], 0),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
            .args(&args)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 16];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The read end is dropped here: every later write fails with EPIPE.
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}: {err}");
        assert!(
            !err.contains("error") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn completions_are_printed_for_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef spillway"),
        ("fish", "complete -c spillway"),
    ] {
        let out = spillway(&["completions", shell], dir.path());
        assert_eq!(out.status.code(), Some(0));
        let script = stdout(&out);
        assert!(
            script.contains(marker) && script.contains("exit-code"),
            "{shell}"
        );
    }
    let bad = spillway(&["completions", "tcsh"], dir.path());
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("tcsh"));
}

#[test]
fn rules_check_names_each_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "mine.toml",
        r#"
[[rules]]
id = "acme.api-key"
name = "Acme API key"
token_type = "acme_api_key"
description = "Acme API key. Revoke: Acme console > API keys."
regex = '''(?-u:\b)(acme_[A-Za-z0-9]{32})(?-u:\b)'''
keywords = ["acme_"]
examples = ['''ACME_KEY=acme_Zq8wTn3vLp2xRk5mYb7cHd9fJg4sNa6e''']
negative_examples = ['''acme_Zq8wTn3vLp2xRk5mYb7cHd9fJg4sNa6e''']
"#,
    );
    let out = spillway(&["rules", "--check", "--rules", "mine.toml"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "acme.api-key: negative example 1 is a finding\n"
    );
    assert!(stderr(&out).contains("1 rules checked, 1 problems"));
    // The shipped defaults pass.
    let defaults = spillway(&["rules", "--check"], dir.path());
    assert_eq!(defaults.status.code(), Some(0), "{}", stdout(&defaults));
}

/// The image's ENTRYPOINT is the binary alone, so `docker run IMAGE scan /src` runs a scan and
/// `docker run IMAGE` still serves. No Docker daemon here: the test reads the final stage's exec
/// form and runs what Docker would run, with this build standing in for the image's binary.
#[test]
fn the_image_runs_any_subcommand() {
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/Dockerfile")).unwrap();
    let last = |instruction: &str| -> Vec<String> {
        let line = dockerfile
            .lines()
            .rev()
            .find(|l| l.starts_with(instruction))
            .unwrap_or_else(|| panic!("no {instruction}"));
        serde_json::from_str(line[instruction.len()..].trim())
            .unwrap_or_else(|e| panic!("{instruction} is not in exec form: {e}"))
    };
    let entrypoint = last("ENTRYPOINT ");
    let cmd = last("CMD ");
    assert_eq!(entrypoint, ["spillway"]);
    assert_eq!(cmd, ["serve"], "the default is the service");
    let dir = leaky_tree();
    let src = dir.path().join("app");
    let out = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(&entrypoint[1..])
        .args(["scan", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("github.pat-classic"));
}
