//! The bare Pingora baseline of the benchmark: a reverse proxy with nothing but
//! `upstream_peer`, TLS terminated with one fixed certificate (Pingora's rustls listener,
//! `add_tls`) and re-encrypted to one upstream with verification against a given CA.
//!
//! The gap between this and `sluice run` is what Sluice's own work costs (sniffing, leaf
//! minting, provider parsing, policy, records); the gap between this and nginx/haproxy is
//! Pingora's. It is **not** a product feature and reads no configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// What [`run_with_cert`] serves.
#[derive(Clone, Debug)]
pub struct Options {
    /// TLS listener.
    pub listen: SocketAddr,
    /// The one upstream (TLS).
    pub upstream: SocketAddr,
    /// SNI sent upstream and the name its certificate must carry.
    pub sni: String,
    /// CA bundle that verifies the upstream.
    pub ca_file: PathBuf,
    /// Certificate chain of the listener (PEM).
    pub cert: PathBuf,
    /// Private key of the listener (PEM).
    pub key: PathBuf,
    /// Worker threads.
    pub threads: usize,
}

/// Serves the baseline until SIGINT/SIGTERM, with the listener certificate read from
/// `$SLUICE_MINIMAL_CERT` and `$SLUICE_MINIMAL_KEY` (one worker thread).
///
/// # Errors
/// When either variable is unset, or when the listener cannot start.
pub fn run(
    listen: SocketAddr,
    upstream: SocketAddr,
    sni: String,
    ca_file: PathBuf,
) -> anyhow::Result<()> {
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .with_context(|| format!("set {name} to the listener's PEM file"))
    };
    run_with_cert(Options {
        listen,
        upstream,
        sni,
        ca_file,
        cert: var("SLUICE_MINIMAL_CERT")?,
        key: var("SLUICE_MINIMAL_KEY")?,
        threads: 1,
    })
}

/// Serves the baseline described by `opts` until SIGINT/SIGTERM.
///
/// # Errors
/// When the certificate cannot be loaded or the listener cannot start.
pub fn run_with_cert(opts: Options) -> anyhow::Result<()> {
    pingora::tls::install_default_crypto_provider();
    let conf = ServerConf {
        threads: opts.threads.max(1),
        ca_file: Some(opts.ca_file.display().to_string()),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(
        &server.configuration,
        Minimal {
            upstream: opts.upstream,
            sni: opts.sni.clone(),
        },
    );
    service
        .add_tls(
            &opts.listen.to_string(),
            &opts.cert.display().to_string(),
            &opts.key.display().to_string(),
        )
        .map_err(|e| anyhow::anyhow!("TLS listener {}: {e}", opts.listen))?;
    server.add_service(service);
    eprintln!("pingora-minimal listening on {}", opts.listen);
    server.run_forever()
}

/// The whole proxy logic: every request goes to one upstream over TLS.
struct Minimal {
    upstream: SocketAddr,
    sni: String,
}

#[async_trait]
impl ProxyHttp for Minimal {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream,
            true,
            self.sni.clone(),
        )))
    }
}
