//! `sluice witness`: run the witness service, or print its cosigner key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use sluice::tlog::note::NoteVerifier;
use sluice::witness::Witness;

#[derive(Subcommand)]
pub enum WitnessCommand {
    /// Serve C2SP tlog-witness `add-checkpoint` and the history auditors read.
    Serve {
        #[command(flatten)]
        store: Store,
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7380")]
        listen: SocketAddr,
        /// A node's checkpoint vkey (`sluice audit checkpoint-key` prints it); repeat
        /// for each node. Only checkpoints signed by these keys are cosigned.
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
    },
    /// Print this witness's cosigner vkey (creating the key on first use), for
    /// `ledger.witnesses[].key` on the nodes and `audit verify --witness-key`.
    Key {
        #[command(flatten)]
        store: Store,
    },
}

/// Where the witness keeps its key and history, and its name.
#[derive(clap::Args)]
pub struct Store {
    /// Directory of the key and the append-only history (created 0700).
    #[arg(long)]
    dir: PathBuf,
    /// The witness's name in its cosignatures, e.g. `witness.example.com/w1`.
    #[arg(long)]
    name: String,
}

/// # Errors
/// Bad keys, an unusable store or listen address.
pub fn run(command: WitnessCommand) -> anyhow::Result<()> {
    match command {
        WitnessCommand::Key { store } => {
            let w = Witness::open(&store.dir, &store.name, Vec::new())?;
            println!("{}", w.vkey());
        }
        WitnessCommand::Serve {
            store,
            listen,
            logs,
        } => {
            let logs = logs
                .iter()
                .map(|v| NoteVerifier::parse_vkey(v).with_context(|| format!("--log {v}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let w = Arc::new(Witness::open(&store.dir, &store.name, logs)?);
            let vkey = w.vkey();
            let handler: sluice::http::Handler =
                Arc::new(move |method, path, body| w.handle(method, path, body));
            super::serve_until_signal(listen, None, sluice::witness::MAX_BODY, handler, || {
                tracing::info!(%listen, %vkey, "witness: serving");
                println!("{vkey}");
            })?;
        }
    }
    Ok(())
}
