//! The verbs of the `sluice` binary, one module each: their command-line arguments and the
//! library calls behind them. Nothing here decides anything the library does not; it
//! parses, loads the config once and prints.

pub mod audit;
pub mod ca;
pub mod doctor;
pub mod events;
pub mod policy;
pub mod report;
pub mod witness;

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;
use sluice::config::Config;

/// `--config FILE`, shared by every verb that reads the node's configuration.
#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// Config file (YAML). Without it, the built-in defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The configuration, parsed and validated once.
    ///
    /// # Errors
    /// The file cannot be read or is invalid; the message names the file.
    pub fn load(&self) -> anyhow::Result<Config> {
        match &self.config {
            Some(p) => Config::load(p).with_context(|| format!("invalid config {}", p.display())),
            None => Ok(Config::default()),
        }
    }
}

/// `--since`/`--until` bounds: RFC 3339, a date, or an age like `24h`.
#[derive(clap::Args, Debug)]
pub struct TimeRange {
    /// From (RFC 3339, a date, or an age like 24h).
    #[arg(long)]
    pub since: Option<String>,
    /// Until (same forms).
    #[arg(long)]
    pub until: Option<String>,
}

impl TimeRange {
    /// Both bounds, parsed.
    ///
    /// # Errors
    /// A bound in none of the accepted forms; the message lists them.
    pub fn parse(&self) -> anyhow::Result<(Option<SystemTime>, Option<SystemTime>)> {
        let one = |s: &Option<String>| s.as_deref().map(sluice::audit::parse_time).transpose();
        Ok((one(&self.since)?, one(&self.until)?))
    }
}
