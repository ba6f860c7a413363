//! `sluice ca`: the organisation CA.

use clap::Subcommand;

use super::ConfigArg;

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the CA certificate and a 0600 key; refuses to overwrite.
    Init {
        #[command(flatten)]
        config: ConfigArg,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "Sluice Organisation CA")]
        name: String,
    },
    /// Print the CA certificate (PEM) to distribute to clients.
    Show {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// # Errors
/// The config is invalid, or the CA cannot be created or read.
pub fn run(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { config, name } => sluice::audit::ca_init(&config.load()?, &name),
        CaCommand::Show { config } => {
            let c = config.load()?;
            let ca = sluice::ca::Ca::load(&c.ca_cert_path(), &c.ca_key_path())?;
            print!("{}", ca.cert_pem());
            Ok(())
        }
    }
}
