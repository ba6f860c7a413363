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
    /// Usage and access: group by these (comma-separated or repeated): principal, user,
    /// team, project, key, process, namespace, pod, label:<name>, model, provider, node.
    /// Default: usage by principal (the strongest stable identity); access by principal,
    /// provider and model.
    #[arg(long, value_delimiter = ',')]
    by: Vec<String>,
    /// Usage and access: the N groups with the most requests; the rest in one row.
    #[arg(long)]
    top: Option<usize>,
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
    let grouping = sluice::ledger::Grouping {
        by: args
            .by
            .iter()
            .map(|b| sluice::ledger::By::parse(b))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--by {e}"))?,
        top: args.top,
    };
    sluice::audit::report(
        &args.config.load()?,
        kind,
        since,
        until,
        args.json,
        args.central,
        &grouping,
    )
}
