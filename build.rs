//! Embeds the default rule files (`patterns/*.toml`) and the issuers' self-revocation files
//! (`patterns/issuers/*.toml`) into the binary, so `spillway` needs no data directory at run time
//! and the files the tests check are the files that ship.
use std::{env, fs, path::PathBuf};

fn main() {
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
            .join("patterns");
    embed(
        &root,
        "DEFAULT_RULE_FILES",
        "every default rule file",
        "default_rules.rs",
    );
    embed(
        &root.join("issuers"),
        "ISSUER_FILES",
        "every issuer's self-revocation file",
        "issuer_files.rs",
    );
    revision();
}

/// `SPILLWAY_REVISION` for `spillway_build_info`: as given to the build (release pipelines), else
/// the checkout's commit, else `unknown` (a source archive without git).
fn revision() {
    println!("cargo:rerun-if-env-changed=SPILLWAY_REVISION");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let revision = env::var("SPILLWAY_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            // Rebuilt when the checkout moves: HEAD itself, and the branch it points at.
            // Only paths that exist: cargo counts a missing one as always changed.
            let watch = |p: String| {
                if std::path::Path::new(&p).exists() {
                    println!("cargo:rerun-if-changed={p}");
                }
            };
            // logs/HEAD grows with every commit and checkout, even when the branch ref is packed.
            for path in ["HEAD", "packed-refs", "logs/HEAD"] {
                git(&["rev-parse", "--git-path", path]).map(watch);
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                git(&["rev-parse", "--git-path", &branch]).map(watch);
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        });
    println!(
        "cargo:rustc-env=SPILLWAY_REVISION={}",
        revision.unwrap_or_else(|| "unknown".into())
    );
}

/// Writes `OUT_DIR/dest` declaring `pub static NAME: &[(&str, &str)]`: (file name, contents) of
/// every `.toml` in `dir`.
fn embed(dir: &PathBuf, name: &str, what: &str, dest: &str) {
    let mut out = String::new();
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("the directory exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    out.push_str(&format!(
        "/// (file name, contents) of {what}, sorted by name.\npub static {name}: &[(&str, &str)] = &[\n"
    ));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 file name");
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            f.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join(dest);
    fs::write(dest, out).expect("write the embedded file list");
}
