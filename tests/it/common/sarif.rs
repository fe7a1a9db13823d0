//! Every SARIF log the tests produce goes through Microsoft's SARIF validator (the npm package
//! `@microsoft/sarif-multitool-linux`, installed by `.ci/conformance-deps`) with its SARIF 2.1.0
//! schema rules and GitHub's ingestion rules (`--rule-kind "Gh;Sarif"`: GitHub Advanced Security's
//! required `help`, relative URIs, rule count limits...). Outside CI a missing validator skips only
//! the validation, saying so; under CI it fails the test.

use std::path::PathBuf;
use std::process::Command;

fn validator() -> Option<PathBuf> {
    let path = std::env::var_os("SPILLWAY_CONFORMANCE_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/conformance/node/node_modules")
        })
        .join("@microsoft/sarif-multitool-linux/Sarif.Multitool");
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI must validate SARIF: run .ci/conformance-deps first");
    }
    eprintln!(
        "\n*** SARIF VALIDATION SKIPPED: run .ci/conformance-deps to install the validator ***\n"
    );
    None
}

/// Parses `bytes` as JSON and asserts that the SARIF validator reports no error and no warning.
pub fn validated(bytes: &[u8]) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_slice(bytes).expect("SARIF is JSON");
    if let Some(tool) = validator() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("spillway.sarif");
        std::fs::write(&input, bytes).unwrap();
        let out = Command::new(tool)
            .args([
                "validate",
                "--rule-kind",
                "Gh;Sarif",
                "--log",
                "ForceOverwrite",
                "-o",
            ])
            .arg(dir.path().join("validation.sarif"))
            .arg(&input)
            .env("DOTNET_SYSTEM_GLOBALIZATION_INVARIANT", "1")
            .output()
            .expect("the SARIF validator runs");
        let console = String::from_utf8_lossy(&out.stdout);
        let problems: Vec<&str> = console
            .lines()
            .filter(|l| l.contains(": error ") || l.contains(": warning "))
            .collect();
        assert!(
            out.status.success() && console.contains("Analysis completed successfully"),
            "the SARIF validator failed: {console}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            problems.is_empty(),
            "SARIF rejected:\n{}",
            problems.join("\n")
        );
    }
    value
}
