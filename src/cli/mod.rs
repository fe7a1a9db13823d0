//! The `spillway` command line. `main.rs` only calls [`run`]; each subcommand lives in its module.

pub mod baseline;
pub mod git_history;
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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scan files, directories, stdin or git history for tokens.
    Scan(scan::ScanArgs),
    /// List the default rules (id, token type, engine pass, name).
    Rules {
        /// Print only the engine's cost drivers: rules, keywords' distinct three-byte fingerprints.
        #[arg(long)]
        stats: bool,
    },
}

/// Parses the command line and runs it; returns the process exit code.
pub fn run() -> u8 {
    let cli = Cli::parse();
    match cli.command {
        Command::Scan(args) => scan::run(args),
        Command::Rules { stats } => {
            match crate::scanner::RuleSet::default_rules(Default::default()) {
                Ok(set) if stats => {
                    println!(
                        "rules={} fingerprints={}",
                        set.rules().len(),
                        set.fingerprint_count()
                    );
                    0
                }
                Ok(set) => {
                    for r in set.rules() {
                        println!("{}\t{}\t{:?}\t{}", r.id, r.token_type, r.pass, r.name);
                    }
                    0
                }
                Err(e) => {
                    eprintln!("spillway rules: error: {e}");
                    2
                }
            }
        }
    }
}
