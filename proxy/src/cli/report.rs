//! `sluice report`: compliance summaries from the ledger.

use clap::Args;
use sluice::ledger::ReportKind;

use super::{ConfigArg, TimeRange};

#[derive(Args)]
pub struct ReportArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Which summary.
    #[arg(long = "type", value_enum)]
    kind: Kind,
    #[command(flatten)]
    range: TimeRange,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Over every node's records, from the fleet's central ledger (`ledger.central`).
    #[arg(long)]
    central: bool,
}

/// `--type` of `sluice report`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    /// Who used which models, at what cost.
    Access,
    /// Every admin record.
    Change,
    /// Every block, redaction, shadow decision and refused connection.
    Security,
    /// Per-identity activity.
    Usage,
}

/// # Errors
/// The config is invalid, a bound cannot be parsed, or the ledger cannot be read.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let kind = match args.kind {
        Kind::Access => ReportKind::Access,
        Kind::Change => ReportKind::Change,
        Kind::Security => ReportKind::Security,
        Kind::Usage => ReportKind::Usage,
    };
    let (since, until) = args.range.parse()?;
    sluice::audit::report(
        &args.config.load()?,
        kind,
        since,
        until,
        args.json,
        args.central,
    )
}
