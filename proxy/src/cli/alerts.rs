//! `sluice alerts`: the alerts the rules raised, and the rules in force.

use std::io::Write;

use clap::Subcommand;

use super::ConfigArg;

#[derive(Subcommand)]
pub enum AlertsCommand {
    /// Alerts firing now (newest state per rule and group); `--all` for every alert
    /// record, resolves included.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        all: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// The rules in force (built-ins and the config's), with window and threshold.
    Rules {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// # Errors
/// Bad config, or the ledger cannot be read.
pub fn run(command: AlertsCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        AlertsCommand::List { config, all, json } => {
            let c = config.load()?;
            let (alerts, firing) = sluice::alerts::list(&c.ledger.dir)?;
            let shown: Vec<&serde_json::Value> = if all {
                alerts.iter().collect()
            } else {
                // The firing record of each alert still firing.
                alerts
                    .iter()
                    .filter(|a| {
                        a["state"] == "firing"
                            && firing.contains(a["dedup_key"].as_str().unwrap_or(""))
                    })
                    .collect()
            };
            if shown.is_empty() && !json {
                writeln!(out, "{}", if all { "no alerts" } else { "no alert firing" })?;
            }
            for a in shown {
                if json {
                    writeln!(out, "{a}")?;
                } else {
                    writeln!(
                        out,
                        "{}  {:<8} {:<9} {}",
                        a["ts"].as_str().unwrap_or("-"),
                        a["severity"].as_str().unwrap_or("-"),
                        a["state"].as_str().unwrap_or("-"),
                        a["summary"].as_str().unwrap_or("-"),
                    )?;
                }
            }
        }
        AlertsCommand::Rules { config } => {
            let c = config.load()?;
            let rules = c
                .alerts
                .rules()
                .map_err(|e| anyhow::anyhow!("alerts: {e:?}"))?;
            if !c.alerts.enabled {
                writeln!(out, "alerts are disabled (alerts.enabled: false)")?;
            }
            for r in rules {
                writeln!(
                    out,
                    "{:<28} {:<8} per {:<20} {:?} >= {} in {}s  {}",
                    r.name,
                    r.severity.as_str(),
                    r.per
                        .iter()
                        .map(sluice::ledger::By::column)
                        .collect::<Vec<_>>()
                        .join(","),
                    r.measure,
                    r.threshold,
                    r.window.as_secs(),
                    r.description
                )?;
            }
        }
    }
    Ok(())
}
