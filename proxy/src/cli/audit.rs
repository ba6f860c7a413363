//! `sluice audit`: verify, export and re-key the ledger.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use sluice::ledger::ExportFormat;

use super::{ConfigArg, TimeRange};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain, HMACs and signed checkpoints; non-zero exit on any break.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Ed25519 public key (PEM) to check checkpoints with, e.g. one kept by an auditor.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Succeed even when a check the ledger calls for (HMACs, checkpoint signatures,
        /// witnesses) could not run; the output still lists it as not checked.
        #[arg(long)]
        allow_partial: bool,
        /// A witness to check the ledger against (`http://host:port`); repeat with one
        /// `--witness-key` each, in the same order. Default: the node's
        /// `ledger.witnesses`.
        #[arg(long = "witness", requires = "witness_keys")]
        witnesses: Vec<String>,
        /// The cosigner vkey of each `--witness` (`sluice witness key` prints it).
        #[arg(long = "witness-key")]
        witness_keys: Vec<String>,
        /// How many witnesses must answer with cosigned heads (default: all named).
        #[arg(long)]
        quorum: Option<usize>,
        /// Verify every node's chain in the fleet's central ledger (`ledger.central`)
        /// instead of this node's ledger.
        #[arg(long, conflicts_with_all = ["witnesses", "public_key"])]
        central: bool,
        /// With --central: only this node.
        #[arg(long, requires = "central")]
        node: Option<String>,
    },
    /// Central retention: delete every node's records older than `--before` from the
    /// central ledger, keeping each node's chain verifiable from an anchor (the last
    /// record pruned). The nodes' own ledgers are untouched.
    PruneCentral {
        #[command(flatten)]
        config: ConfigArg,
        /// RFC 3339, a date, or an age (`90d`).
        #[arg(long)]
        before: String,
    },
    /// Print the vkey witnesses know this node's ledger by (`sluice witness serve --log`).
    CheckpointKey {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Export records (the export is itself recorded).
    Export {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_enum)]
        format: Format,
        #[command(flatten)]
        range: TimeRange,
        /// A file, `-` for stdout, or `tcp://HOST:PORT` for a syslog server.
        #[arg(long, default_value = "-")]
        out: String,
        /// Add each record's inclusion proof against the newest (cosigned) checkpoint
        /// (`sluice_proof`), checkable offline with `audit check-record`; json or jsonl.
        #[arg(long)]
        with_proofs: bool,
        /// Every node's records, from the fleet's central ledger (`ledger.central`).
        #[arg(long, conflicts_with = "with_proofs")]
        central: bool,
    },
    /// Check exported records offline, without the ledger: each one's fields are what was
    /// hashed, its inclusion proof leads to a checkpoint signed by the node's key and
    /// cosigned by the witnesses given.
    CheckRecord {
        /// An export made with `--with-proofs` (JSON Lines or a JSON array).
        #[arg(long)]
        file: PathBuf,
        /// The node's checkpoint public key (PEM), from a trusted copy.
        #[arg(long)]
        public_key: PathBuf,
        /// The ledger's origin, when `ledger.origin` was set (default: derived from the key).
        #[arg(long)]
        origin: Option<String>,
        /// A witness's cosigner vkey; repeat for each.
        #[arg(long = "witness-key")]
        witness_keys: Vec<String>,
        /// How many of them must have cosigned (default: all given).
        #[arg(long)]
        quorum: Option<usize>,
        /// Check only the record with this seq.
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Retire the ledger's HMAC key (kept as hmac-<id>.key for verify) and make a new one
    /// (recorded as an admin record; a running proxy uses it from its next start).
    RotateKey {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `--format` of `audit export`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// RFC 5424 syslog lines.
    Syslog,
}

/// # Errors
/// The config is invalid, or the ledger cannot be read or written.
pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            config,
            public_key,
            allow_partial,
            witnesses,
            witness_keys,
            quorum,
            central,
            node,
        } => {
            if central {
                let ok = sluice::audit::verify_central(&config.load()?, node.as_deref())?;
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            if witnesses.len() != witness_keys.len() {
                anyhow::bail!(
                    "{} --witness but {} --witness-key: give each witness its key, in the same order",
                    witnesses.len(),
                    witness_keys.len()
                );
            }
            let args = sluice::audit::VerifyArgs {
                public_key,
                allow_partial,
                witnesses: witnesses.into_iter().zip(witness_keys).collect(),
                quorum,
            };
            let ok = sluice::audit::verify(&config.load()?, &args)?;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        AuditCommand::Export {
            config,
            format,
            range,
            out,
            with_proofs,
            central,
        } => {
            let format = match format {
                Format::Json => ExportFormat::Json,
                Format::Jsonl => ExportFormat::Jsonl,
                Format::Syslog => ExportFormat::Syslog,
            };
            let (since, until) = range.parse()?;
            sluice::audit::export(
                &config.load()?,
                format,
                since,
                until,
                &out,
                with_proofs,
                central,
            )?;
        }
        AuditCommand::CheckRecord {
            file,
            public_key,
            origin,
            witness_keys,
            quorum,
            seq,
        } => {
            let ok = sluice::audit::check_records(
                &file,
                &public_key,
                origin.as_deref(),
                &witness_keys,
                quorum,
                seq,
            )?;
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        AuditCommand::RotateKey { config } => sluice::audit::rotate_key(&config.load()?)?,
        AuditCommand::PruneCentral { config, before } => {
            let before = sluice::audit::parse_time(&before)?;
            sluice::audit::prune_central(&config.load()?, before)?;
        }
        AuditCommand::CheckpointKey { config } => {
            let c = config.load()?;
            println!(
                "{}",
                sluice::ledger::checkpoint_verifier(&c.ledger, None)?.vkey()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
