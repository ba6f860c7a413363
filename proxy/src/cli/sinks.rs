//! `sluice sinks status`: each sink's cursor, lag, deliveries, dead letters and last
//! error, read from its state file and the ledger (while `sluice run` runs, too).

use std::io::Write;

use clap::Subcommand;

use super::ConfigArg;

#[derive(Subcommand)]
pub enum SinksCommand {
    /// Show every configured sink's cursor, lag and last error.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object per sink, a line each.
        #[arg(long)]
        json: bool,
    },
}

/// # Errors
/// Bad config, or the ledger cannot be read.
pub fn run(command: SinksCommand) -> anyhow::Result<()> {
    match command {
        SinksCommand::Status { config, json } => {
            let c = config.load()?;
            let status = sluice::delivery::status(&c.ledger.dir, &c.sinks)?;
            let mut out = std::io::stdout().lock();
            if status.is_empty() {
                writeln!(out, "no sinks configured (`sinks:` in the config)")?;
            }
            for s in &status {
                if json {
                    writeln!(out, "{}", serde_json::to_string(s)?)?;
                    continue;
                }
                writeln!(
                    out,
                    "{} ({}): lag {} records, cursor at seq {}, {} delivered, {} dead letters, last delivery {}",
                    s.name,
                    s.destination,
                    s.lag_records,
                    s.cursor,
                    s.delivered,
                    s.dead_letters,
                    s.last_delivery.as_deref().unwrap_or("never"),
                )?;
                if let Some(e) = &s.last_error {
                    writeln!(
                        out,
                        "  last error ({}): {e}",
                        s.last_error_at.as_deref().unwrap_or("?")
                    )?;
                }
            }
            Ok(())
        }
    }
}
