//! The `spillway` command line. `main.rs` only calls [`run`]; each subcommand lives in its module.
//!
//! Must not import HTTP: `serve` goes through `service`.

pub mod admin;
pub mod baseline;
pub mod git_history;
pub mod installation;
pub mod report;
pub mod scan;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "spillway",
    version,
    about = "Finds leaked tokens, proves them live, revokes and records them."
)]
pub struct Cli {
    /// Settings file (default: ./spillway.toml when present). Environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// More log lines on stderr: -v info, -vv debug (each file scanned or skipped), -vvv trace.
    /// Default: warnings and errors only (`serve`: SPILLWAY_LOG, else info).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log level (error, warn, info, debug, trace); overrides -v and SPILLWAY_LOG.
    #[arg(long, global = true, value_name = "LEVEL",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout, e.g.
    /// `spillway completions bash > /etc/bash_completion.d/spillway`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run the service: listener endpoints on SPILLWAY_LISTEN_ADDR, health and metrics on
    /// SPILLWAY_ADMIN_ADDR (embedded SQLite by default).
    Serve,
    /// Scan files, directories, stdin or git history for tokens.
    Scan(scan::ScanArgs),
    /// Manage listeners and their rotatable endpoints (works directly on the database).
    #[command(subcommand)]
    Listener(admin::ListenerCommand),
    /// Create admin API keys (local bootstrap).
    #[command(subcommand, name = "admin-key")]
    AdminKey(admin::AdminKeyCommand),
    /// Manage installations: who issues which tokens and where Spillway verifies and revokes them.
    #[command(subcommand)]
    Installation(installation::InstallationCommand),
    /// Verify or export the audit log.
    #[command(subcommand)]
    Audit(admin::AuditCommand),
    /// Check Spillway's own credential hygiene: admin keys, installation secrets, expired
    /// endpoints, development keys or settings in production. Exit 1 when anything is severe.
    Doctor {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: DoctorFormat,
    },
    /// List the rules (id, token type, engine pass, name, severity): the default ones plus any
    /// --rules.
    Rules {
        /// Print the keyword prefilter's cost instead: fingerprints, SIMD passes (searchers) and
        /// their fingerprints, estimated stops per MB of code.
        #[arg(long)]
        stats: bool,
        /// Check rules against their own examples instead (the rule tests' verdict, no compiler
        /// needed): every example found alone and wrapped in JSON, YAML, .env, shell and source
        /// code, no negative example found, no example claimed by another token type. Checks the
        /// --rules files when given, else the default rules. Exit 1 when anything is wrong.
        #[arg(long, conflicts_with = "stats")]
        check: bool,
        /// Extra rule files or directories (Spillway or Gitleaks TOML). Repeatable.
        #[arg(long = "rules", value_name = "DIR")]
        rules: Vec<std::path::PathBuf>,
        /// Use only the rules given with --rules.
        #[arg(long)]
        no_default_rules: bool,
    },
    /// Run the reference installation: issues Foundry-style tokens and answers Spillway's signed
    /// verify, revoke and notify calls (a test and demo tool; bind it to loopback).
    #[command(name = "reference-installation")]
    ReferenceInstallation(crate::devtools::reference_installation::Args),
    /// Run a stand-in for GitHub's secret scanning: publishes a key and sends signed alerts
    /// (a test and demo tool; bind it to loopback).
    #[command(name = "fake-github")]
    FakeGithub(crate::devtools::fake_github::Args),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DoctorFormat {
    Text,
    Json,
}

/// Parses the command line and runs it; returns the process exit code.
pub fn run() -> u8 {
    let cli = Cli::parse();
    let level = cli.log_level.clone().or(match cli.verbose {
        0 => None,
        1 => Some("info".into()),
        2 => Some("debug".into()),
        _ => Some("trace".into()),
    });
    let level = level.as_deref();
    if !matches!(
        cli.command,
        Command::Serve | Command::ReferenceInstallation(_) | Command::FakeGithub(_)
    ) {
        use crate::platform::logging::{Style, init};
        if let Err(e) = init(level, "warn", Style::Text) {
            eprintln!("spillway: error: {e:#}");
            return 2;
        }
    }
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "spillway", &mut out);
            print_quietly(&out)
        }
        Command::Serve => serve(cli.config.as_ref(), level),
        Command::Doctor { format } => doctor(cli.config.as_ref(), format),
        Command::Scan(args) => scan::run(args),
        Command::Listener(c) => admin::listener(cli.config.as_ref(), c),
        Command::AdminKey(c) => admin::admin_key(cli.config.as_ref(), c),
        Command::Audit(c) => admin::audit(cli.config.as_ref(), c),
        Command::Installation(c) => installation::installation(cli.config.as_ref(), c),
        Command::ReferenceInstallation(args) => devtool(
            "reference-installation",
            level,
            crate::devtools::reference_installation::run(args),
        ),
        Command::FakeGithub(args) => devtool(
            "fake-github",
            level,
            crate::devtools::fake_github::run(args),
        ),
        Command::Rules {
            stats,
            check,
            rules,
            no_default_rules,
        } => match scan::rule_set(&rules, no_default_rules, Default::default()) {
            Ok(set) if check => check_rules(&set, !rules.is_empty() && !no_default_rules),
            Ok(set) if stats => {
                use std::fmt::Write as _;
                let p = set.prefilter_stats();
                let mut out = format!(
                    "rules={} fingerprints={} searchers={} estimated_candidates_per_mb={}\n",
                    set.rules().len(),
                    p.fingerprints,
                    p.searchers,
                    p.estimated_candidates_per_mb
                );
                for (i, group) in set.prefilter_fingerprints().iter().enumerate() {
                    let shown: Vec<String> = group
                        .iter()
                        .map(|f| f.escape_ascii().to_string().replace(' ', "\\x20"))
                        .collect();
                    let _ = writeln!(out, "searcher {i}: {}", shown.join(" "));
                }
                print_quietly(out.as_bytes())
            }
            Ok(set) => {
                let mut out = String::new();
                for r in set.rules() {
                    out.push_str(&format!(
                        "{}\t{}\t{:?}\t{}\t{}\n",
                        r.id,
                        r.token_type,
                        r.pass,
                        r.name,
                        r.severity.as_str()
                    ));
                }
                print_quietly(out.as_bytes())
            }
            Err(e) => {
                eprintln!("spillway rules: error: {e:#}");
                2
            }
        },
    }
}

/// `spillway rules --check`: the extra rules (or, with none, the defaults) against their examples.
fn check_rules(set: &crate::scanner::RuleSet, only_extra: bool) -> u8 {
    let defaults: std::collections::HashSet<String> = if only_extra {
        crate::scanner::rule::default_rules()
            .map(|rules| rules.into_iter().map(|r| r.id).collect())
            .unwrap_or_default()
    } else {
        Default::default()
    };
    let checked = set
        .rules()
        .iter()
        .filter(|r| !defaults.contains(&r.id))
        .count();
    let problems = crate::scanner::rule_check::check(set, |r| !defaults.contains(&r.id));
    let listed: String = problems.iter().map(|p| format!("{p}\n")).collect();
    let code = print_quietly(listed.as_bytes());
    eprintln!("{checked} rules checked, {} problems", problems.len());
    code.max(u8::from(!problems.is_empty()))
}

/// Writes `bytes` to stdout; a reader that went away (`spillway rules | head`) ends it quietly.
/// Returns the exit code: 0, or 2 when stdout fails otherwise.
fn print_quietly(bytes: &[u8]) -> u8 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("spillway: error: cannot write output: {e}");
            2
        }
    }
}

/// JSON logs on stderr, redacted by the scanner (see [`crate::platform::logging`]).
fn init_tracing(level: Option<&str>) -> anyhow::Result<()> {
    use crate::platform::logging::{Style, init};
    init(level, "info", Style::Json)
}

fn serve(config: Option<&std::path::PathBuf>, level: Option<&str>) -> u8 {
    let result = init_tracing(level)
        .and_then(|()| crate::platform::config::Settings::load(config.map(|p| p.as_path())))
        .and_then(|settings| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(crate::service::run(settings))
        });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("spillway serve: error: {e:#}");
            2
        }
    }
}

/// `spillway doctor`: 0 when nothing is severe, 1 when something is, 2 when it cannot check.
fn doctor(config: Option<&std::path::PathBuf>, format: DoctorFormat) -> u8 {
    let result =
        crate::platform::config::Settings::load(config.map(|p| p.as_path())).and_then(|settings| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let store =
                        crate::platform::store::Store::connect(settings.database_url.expose())
                            .await?;
                    crate::admin::doctor::run(&settings, &store).await
                })
        });
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("spillway doctor: error: {e:#}");
            return 2;
        }
    };
    match format {
        DoctorFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serialises")
        ),
        DoctorFormat::Text => {
            for f in &report.findings {
                println!(
                    "{:<8} {:<40} {}: {}",
                    f.severity.as_str().to_uppercase(),
                    f.check,
                    f.subject,
                    f.message
                );
            }
            println!(
                "{} severe, {} warnings ({} configuration)",
                report.severe,
                report.warnings,
                if report.production {
                    "production"
                } else {
                    "development"
                }
            );
        }
    }
    u8::from(report.severe > 0)
}

/// Runs a development tool's future on a multi-thread runtime; returns the exit code.
fn devtool(
    name: &str,
    level: Option<&str>,
    tool: impl std::future::Future<Output = anyhow::Result<()>>,
) -> u8 {
    let result = init_tracing(level)
        .and_then(|()| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
        })
        .and_then(|runtime| runtime.block_on(tool));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("spillway {name}: error: {e:#}");
            2
        }
    }
}
