//! `sluice policy lint`: check a config file before it is deployed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use sluice::config::{Config, ConfigError};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Check a config file: line-numbered errors, non-zero exit when invalid.
    Lint {
        /// The file to check.
        #[arg(long, short)]
        file: PathBuf,
    },
}

/// Exit 0 when valid without warnings, 1 when invalid or with warnings (rules that cannot
/// take effect as written), 2 when the file cannot be read.
pub fn run(command: PolicyCommand) -> ExitCode {
    let PolicyCommand::Lint { file } = command;
    match Config::load(&file) {
        Ok(c) if c.warnings.is_empty() => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("warning: {w}");
            }
            eprintln!(
                "{}: valid, with {} warning(s): rules that cannot take effect as written",
                file.display(),
                c.warnings.len()
            );
            ExitCode::FAILURE
        }
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
