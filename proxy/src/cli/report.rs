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
    /// JSON instead of a table (the same as `--format json`).
    #[arg(long)]
    json: bool,
    /// text (default), json, html (one self-contained page) or pdf (printed by headless
    /// Chromium; needs --out). HTML and PDF state the integrity verification they ran.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Where html or pdf goes.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// activity: whose (`user:alice`, `key:sha256:…`, `client:10.0.0.5`,
    /// `process:/usr/bin/python3 uid=1000`, `k8s:ns/app=x`, or a user name).
    #[arg(long)]
    who: Option<String>,
    /// evidence: soc2, iso27001 or eu-ai-act.
    #[arg(long)]
    framework: Option<String>,
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
    /// Every workload that called a provider (shadow-AI discovery).
    Inventory,
    /// Everything one identity did (`--who`).
    Activity,
    /// What the ledger evidences for a framework's controls (`--framework`).
    Evidence,
}

/// `--format` of `sluice report`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
    Html,
    Pdf,
}

/// # Errors
/// The config is invalid, a bound cannot be parsed, or the ledger cannot be read.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let kind = match args.kind {
        Kind::Access => ReportKind::Access,
        Kind::Change => ReportKind::Change,
        Kind::Security => ReportKind::Security,
        Kind::Usage | Kind::Evidence => ReportKind::Usage,
        Kind::Inventory => ReportKind::Inventory,
        Kind::Activity => ReportKind::Activity,
    };
    let evidence = match (args.kind, &args.framework) {
        (Kind::Evidence, Some(f)) => Some(
            sluice::evidence::Framework::parse(f)
                .map_err(|e| anyhow::anyhow!("--framework {e}"))?,
        ),
        (Kind::Evidence, None) => {
            anyhow::bail!("--type evidence needs --framework soc2|iso27001|eu-ai-act")
        }
        (_, Some(_)) => anyhow::bail!("--framework goes with --type evidence"),
        _ => None,
    };
    if matches!(args.kind, Kind::Activity) && args.who.is_none() {
        anyhow::bail!("--type activity needs --who (e.g. user:alice, client:10.0.0.5; `report --type usage` lists principals)");
    }
    let (since, until) = args.range.parse()?;
    let options = sluice::ledger::ReportOptions {
        by: args
            .by
            .iter()
            .map(|b| sluice::ledger::By::parse(b))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("--by {e}"))?,
        top: args.top,
        who: args.who,
    };
    let format = match (args.format, args.json) {
        (Some(Format::Json), _) | (None, true) => sluice::audit::ReportFormat::Json,
        (Some(Format::Html), _) => sluice::audit::ReportFormat::Html,
        (Some(Format::Pdf), _) => sluice::audit::ReportFormat::Pdf,
        (Some(Format::Text) | None, _) => sluice::audit::ReportFormat::Text,
    };
    sluice::audit::report(
        &args.config.load()?,
        &sluice::audit::ReportRequest {
            kind,
            evidence,
            since,
            until,
            central: args.central,
            options,
            format,
            out: args.out,
        },
    )
}
