//! The `sluice` binary: parses the command line and calls into the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::config::{Config, ConfigError};

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
        /// Config file (YAML). Without it, the built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
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
    Report {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// access (who used which models, at what cost), change (every admin record),
        /// security (every block, redaction, shadow decision, refused connection),
        /// usage (per-identity activity).
        #[arg(long = "type", value_parser = ["access", "change", "security", "usage"])]
        kind: String,
        /// From (RFC 3339, a date, or an age like 24h).
        #[arg(long)]
        since: Option<String>,
        /// Until.
        #[arg(long)]
        until: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check what this host offers for the eBPF redirect and say how to fix what is missing.
    Doctor,
    /// Load generator of the benchmark harness (`cargo xtask bench` drives it).
    #[command(hide = true, disable_help_flag = true)]
    Loadgen {
        /// Arguments for the load generator (see `sluice loadgen --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Serve the mock LLM provider (tests and benchmarks).
    #[command(hide = true)]
    MockProvider {
        /// Address(es) to listen on (repeat or comma-separate; one TLS identity for all).
        #[arg(long, required = true, value_delimiter = ',')]
        listen: Vec<std::net::SocketAddr>,
        /// Serve TLS for these host names (comma-separated); plain HTTP when absent.
        #[arg(long, value_delimiter = ',')]
        tls_hosts: Vec<String>,
        /// Where to write the PEM of the CA that signed the mock's certificate.
        #[arg(long)]
        ca_out: Option<PathBuf>,
        /// Delay between SSE chunks, milliseconds.
        #[arg(long, default_value_t = 0)]
        chunk_delay_ms: u64,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the CA certificate and a 0600 key; refuses to overwrite.
    Init {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "Sluice Organisation CA")]
        name: String,
    },
    /// Print the CA certificate (PEM) to distribute to clients.
    Show {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// The newest records, oldest first; a table, or JSON lines with --json.
    Tail {
        #[arg(long, short)]
        config: Option<PathBuf>,
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
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain, HMACs and signed checkpoints; non-zero exit on any break.
    Verify {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Ed25519 public key (PEM) to check checkpoints with, e.g. one kept by an auditor.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Export records (the export is itself recorded).
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, value_parser = ["json", "jsonl", "syslog"])]
        format: String,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// A file, `-` for stdout, or `tcp://HOST:PORT` for a syslog server.
        #[arg(long, default_value = "-")]
        out: String,
    },
    /// Retire the ledger's HMAC key (kept as hmac-<id>.key for verify) and make a new one
    /// (recorded as an admin record; a running proxy uses it from its next start).
    RotateKey {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a config file: line-numbered errors, non-zero exit when invalid.
    Lint {
        /// The file to check.
        #[arg(long, short)]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            sluice::app::run(load(config.as_deref())?, config)?;
        }
        Command::Ca { command } => match command {
            CaCommand::Init { config, name } => {
                let c = load(config.as_deref())?;
                sluice::ca::init(&c.ca_cert_path(), &c.ca_key_path(), &name)?;
                sluice::audit::record_admin(
                    &c.ledger().dir,
                    sluice::record::Admin::new(
                        sluice::record::AdminAction::Create,
                        sluice::record::AdminOutcome::Success,
                        sluice::audit::local_initiator(),
                        sluice::record::Target {
                            kind: "ca".into(),
                            id: c.ca_cert_path().display().to_string(),
                        },
                        serde_json::json!({ "common_name": name }),
                    ),
                )?;
                println!("CA certificate: {}", c.ca_cert_path().display());
                println!("CA key (0600):  {}", c.ca_key_path().display());
                println!("Distribute the certificate to clients (`sluice ca show`).");
            }
            CaCommand::Show { config } => {
                let c = load(config.as_deref())?;
                let ca = sluice::ca::Ca::load(&c.ca_cert_path(), &c.ca_key_path())?;
                print!("{}", ca.cert_pem());
            }
        },
        Command::Policy {
            command: PolicyCommand::Lint { file },
        } => {
            return Ok(match Config::load(&file) {
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
            });
        }
        Command::Events {
            command:
                EventsCommand::Tail {
                    config,
                    limit,
                    follow,
                    json,
                    provider,
                    model,
                    decision,
                    identity,
                    kind,
                    since,
                    until,
                },
        } => {
            let filter = sluice::ledger::Filter {
                limit,
                provider,
                model,
                decision,
                identity,
                kind,
                since: time_arg(since)?,
                until: time_arg(until)?,
            };
            sluice::audit::tail(&load(config.as_deref())?, &filter, json, follow)?;
        }
        Command::Audit {
            command: AuditCommand::Verify { config, public_key },
        } => {
            if !sluice::audit::verify(&load(config.as_deref())?, public_key.as_deref())? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Audit {
            command:
                AuditCommand::Export {
                    config,
                    format,
                    since,
                    until,
                    out,
                },
        } => {
            let format = match format.as_str() {
                "json" => sluice::ledger::ExportFormat::Json,
                "jsonl" => sluice::ledger::ExportFormat::Jsonl,
                _ => sluice::ledger::ExportFormat::Syslog,
            };
            sluice::audit::export(
                &load(config.as_deref())?,
                format,
                time_arg(since)?,
                time_arg(until)?,
                &out,
            )?;
        }
        Command::Audit {
            command: AuditCommand::RotateKey { config },
        } => {
            sluice::audit::rotate_key(&load(config.as_deref())?)?;
        }
        Command::Report {
            config,
            kind,
            since,
            until,
            json,
        } => {
            let kind = match kind.as_str() {
                "access" => sluice::ledger::ReportKind::Access,
                "change" => sluice::ledger::ReportKind::Change,
                "security" => sluice::ledger::ReportKind::Security,
                _ => sluice::ledger::ReportKind::Usage,
            };
            sluice::audit::report(
                &load(config.as_deref())?,
                kind,
                time_arg(since)?,
                time_arg(until)?,
                json,
            )?;
        }
        Command::Doctor => {
            let checks = sluice_probe::doctor();
            let mut ok = true;
            for c in &checks {
                ok &= c.ok;
                println!(
                    "[{}] {}: {}",
                    if c.ok { " ok " } else { "FAIL" },
                    c.name,
                    c.detail
                );
                if let (false, Some(fix)) = (c.ok, &c.fix) {
                    println!("       fix: {fix}");
                }
            }
            if !ok {
                println!("\nThe eBPF redirect cannot run here as is. {IPTABLES_FALLBACK}");
                return Ok(ExitCode::FAILURE);
            }
            println!("\nThis host can run the eBPF redirect (`redirect.enabled: true`).");
        }
        Command::Loadgen { args } => {
            sluice::loadgen::run_cli(args)?;
        }
        Command::Demo { dir } => {
            sluice::demo::run(dir)?;
        }
        Command::MockProvider {
            listen,
            tls_hosts,
            ca_out,
            chunk_delay_ms,
        } => {
            sluice::demo::serve_mock(&listen, &tls_hosts, ca_out.as_deref(), chunk_delay_ms)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn time_arg(s: Option<String>) -> anyhow::Result<Option<std::time::SystemTime>> {
    s.map(|s| sluice::audit::parse_time(&s)).transpose()
}

fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(p).with_context(|| format!("invalid config {}", p.display())),
        None => Ok(Config::default()),
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

/// What `sluice doctor` offers when the host cannot run the eBPF redirect.
const IPTABLES_FALLBACK: &str = "Fallback without cgroup BPF: let iptables (or nftables) \
redirect provider traffic and have Sluice ask the kernel where each connection was going:

  # sluice.yaml
  listen: [\"0.0.0.0:15443\"]
  original_dst: {so_original_dst: true}   # getsockopt(SO_ORIGINAL_DST) on each connection

  # processes on this host; Sluice's own upstream sockets carry SO_MARK 0x534c (redirect.mark)
  iptables -t nat -A OUTPUT -p tcp -d <provider CIDR> --dport 443 \\
      -m mark ! --mark 0x534c -j REDIRECT --to-ports 15443
  # pods or routed clients whose traffic crosses this host
  iptables -t nat -A PREROUTING -p tcp -d <provider CIDR> --dport 443 -j REDIRECT --to-ports 15443
  (ip6tables likewise for IPv6; one rule per provider CIDR, kept current by you)

What you give up: provider addresses are not refreshed from DNS for you, records carry the
client address but not the connecting process (no connect-time attribution), and UDP/443
(HTTP/3) is not refused. `original_dst.static` and `local_addr` also work without the probe.";
