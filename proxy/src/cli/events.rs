//! `sluice events tail`: the newest records of the ledger.

use clap::Subcommand;

use super::{ConfigArg, TimeRange};

#[derive(Subcommand)]
pub enum EventsCommand {
    /// The newest records, oldest first; a table, or JSON lines with --json.
    Tail {
        #[command(flatten)]
        config: ConfigArg,
        /// How many records.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Keep printing new records as they arrive.
        #[arg(long)]
        follow: bool,
        /// JSON lines.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        model: Option<String>,
        /// allow, redact, block, shadow_block, shadow_redact.
        #[arg(long)]
        decision: Option<String>,
        /// Substring of the identity (user, process, pid, client address, …).
        #[arg(long)]
        identity: Option<String>,
        /// interaction, connection or admin.
        #[arg(long)]
        kind: Option<String>,
        /// Every node's records, from the fleet's central ledger (`ledger.central`).
        #[arg(long, conflicts_with = "follow")]
        central: bool,
        #[command(flatten)]
        range: TimeRange,
    },
}

/// # Errors
/// The config is invalid, a bound cannot be parsed, or the ledger cannot be read.
pub fn run(command: EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::Tail {
        config,
        limit,
        follow,
        json,
        provider,
        model,
        decision,
        identity,
        kind,
        central,
        range,
    } = command;
    let (since, until) = range.parse()?;
    let filter = sluice::ledger::Filter {
        limit,
        provider,
        model,
        decision,
        identity,
        kind,
        since,
        until,
    };
    if central {
        return sluice::audit::tail_central(&config.load()?, &filter, json);
    }
    sluice::audit::tail(&config.load()?, &filter, json, follow)
}
