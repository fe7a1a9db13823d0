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
    /// List the rules in use (id, token type, engine pass).
    Rules,
}

/// Parses the command line and runs it; returns the process exit code.
pub fn run() -> u8 {
    let cli = Cli::parse();
    match cli.command {
        Command::Scan(args) => scan::run(args),
        Command::Rules => match crate::scanner::rule::default_rules() {
            Ok(rules) => {
                for r in rules {
                    println!("{}\t{}\t{:?}\t{}", r.id, r.token_type, r.pass, r.name);
                }
                0
            }
            Err(e) => {
                eprintln!("spillway rules: error: {e}");
                2
            }
        },
    }
}
