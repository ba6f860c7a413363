//! The `sluice` binary: parses the command line and dispatches to the verb's module under
//! `cli/`, which calls into the library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::audit::AuditCommand;
use cli::ca::CaCommand;
use cli::events::EventsCommand;
use cli::policy::PolicyCommand;
use cli::report::ReportArgs;
use cli::witness::WitnessCommand;
use cli::ConfigArg;

/// mimalloc: per-thread heaps and cheap frees of memory another thread allocated (the
/// ledger's records are built by the threads appending them and freed by its indexer).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Transparent, governed, audited path for every LLM API call"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGINT/SIGTERM.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// `node` (the config decides: listeners, the eBPF redirect) or `appliance` (also
        /// capture the traffic routed through this host, as `appliance.enabled: true`).
        #[arg(long, value_enum, default_value = "node")]
        mode: RunMode,
    },
    /// Manage the organisation CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Validate configuration and policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Run the hermetic demo: mock providers, the proxy and real requests through it.
    Demo {
        /// Directory for the demo's CA, config and records.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Read the audit ledger.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Verify or export the audit ledger.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Compliance summaries from the ledger.
    Report(ReportArgs),
    /// Check what this host offers for the eBPF redirect and say how to fix what is missing.
    Doctor(cli::doctor::DoctorArgs),
    /// The Kubernetes admission webhook that makes pods trust the org CA.
    Inject {
        #[command(subcommand)]
        command: cli::inject::InjectCommand,
    },
    /// Security alerts raised by the rules over the records.
    Alerts {
        #[command(subcommand)]
        command: cli::alerts::AlertsCommand,
    },
    /// Continuous delivery of the ledger to SIEMs and webhooks.
    Sinks {
        #[command(subcommand)]
        command: cli::sinks::SinksCommand,
    },
    /// Run or set up a witness: cosigns nodes' ledger checkpoints that extend what it holds.
    Witness {
        #[command(subcommand)]
        command: WitnessCommand,
    },
}

/// What `sluice run` runs as.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RunMode {
    /// A node agent or gateway, as the config says.
    Node,
    /// The in-VPC appliance: routed traffic to the providers is captured (TPROXY).
    Appliance,
}

fn main() -> ExitCode {
    init_tracing();
    let result = match Cli::parse().command {
        Command::Run { config, mode } => config.load().and_then(|mut c| {
            c.appliance.enabled |= mode == RunMode::Appliance;
            sluice::app::run(c, config.config)
        }),
        Command::Ca { command } => cli::ca::run(command),
        Command::Policy { command } => return cli::policy::run(command),
        Command::Demo { dir } => sluice::demo::run(dir),
        Command::Events { command } => cli::events::run(command),
        Command::Audit { command } => match cli::audit::run(command) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Report(args) => cli::report::run(args),
        Command::Doctor(args) => return cli::doctor::run(args),
        Command::Witness { command } => cli::witness::run(command),
        Command::Sinks { command } => cli::sinks::run(command),
        Command::Alerts { command } => cli::alerts::run(command),
        Command::Inject { command } => cli::inject::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SLUICE_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn no_hidden_verbs_ship_in_the_product() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let hidden: Vec<_> = cli
            .get_subcommands()
            .filter(|c| c.is_hide_set())
            .map(|c| c.get_name().to_owned())
            .collect();
        assert!(hidden.is_empty(), "hidden verbs: {hidden:?}");
        for gone in ["loadgen", "mock-provider"] {
            assert!(cli.find_subcommand(gone).is_none(), "{gone} is a test tool");
        }
    }
}
