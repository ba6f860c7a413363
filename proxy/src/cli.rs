//! The verbs of the `sluice` binary, one module each: their command-line arguments and the
//! library calls behind them. Nothing here decides anything the library does not; it
//! parses, loads the config once and prints.

pub mod alerts;
pub mod audit;
pub mod ca;
pub mod doctor;
pub mod events;
pub mod inject;
pub mod policy;
pub mod report;
pub mod sinks;
pub mod witness;

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;
use sluice::config::Config;

/// `--config FILE`, shared by every verb that reads the node's configuration.
#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// Config file (YAML). Without it, the built-in defaults.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The configuration, parsed and validated once.
    ///
    /// # Errors
    /// The file cannot be read or is invalid; the message names the file.
    pub fn load(&self) -> anyhow::Result<Config> {
        match &self.config {
            Some(p) => Config::load(p).with_context(|| format!("invalid config {}", p.display())),
            None => Ok(Config::default()),
        }
    }
}

/// `--since`/`--until` bounds: RFC 3339, a date, or an age like `24h`.
#[derive(clap::Args, Debug)]
pub struct TimeRange {
    /// From (RFC 3339, a date, or an age like 24h).
    #[arg(long)]
    pub since: Option<String>,
    /// Until (same forms).
    #[arg(long)]
    pub until: Option<String>,
}

impl TimeRange {
    /// Both bounds, parsed.
    ///
    /// # Errors
    /// A bound in none of the accepted forms; the message lists them.
    pub fn parse(&self) -> anyhow::Result<(Option<SystemTime>, Option<SystemTime>)> {
        let one = |s: &Option<String>| s.as_deref().map(sluice::audit::parse_time).transpose();
        Ok((one(&self.since)?, one(&self.until)?))
    }
}

/// Serves `handler` on `listen` until SIGINT or SIGTERM (the witness, the webhook);
/// `ready` runs once the address is bound.
///
/// # Errors
/// The runtime cannot start or the address cannot be bound.
pub fn serve_until_signal(
    listen: std::net::SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_body: usize,
    handler: sluice::http::Handler,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        ready();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            () = sluice::http::serve(listener, tls, max_body, handler) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        anyhow::Ok(())
    })
}
