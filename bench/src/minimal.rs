//! The bare Pingora baseline of the benchmark: a reverse proxy with nothing but
//! `upstream_peer`, TLS terminated with one fixed certificate (Pingora's rustls listener,
//! `add_tls`) and re-encrypted to one upstream with verification against a given CA.
//!
//! The gap between this and `sluice run` is what Sluice's own work costs (sniffing, leaf
//! minting, provider parsing, policy, records); the gap between this and nginx/haproxy is
//! Pingora's. It is **not** a product feature and reads no configuration file.

use std::net::SocketAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

/// What [`run`] serves (`sluice-bench minimal-proxy`).
#[derive(clap::Args, Clone, Debug)]
pub struct Options {
    /// Listener (TLS with `--cert`/`--key`).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Upstream TLS server.
    #[arg(long)]
    pub upstream: SocketAddr,
    /// SNI and `Host` sent upstream; the name its certificate must carry.
    #[arg(long, default_value = "api.openai.com")]
    pub sni: String,
    /// CA bundle that verifies the upstream.
    #[arg(long = "upstream-ca")]
    pub ca_file: PathBuf,
    /// Certificate chain of the listener (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// Private key of the listener (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Serves the baseline described by `opts` until SIGINT/SIGTERM.
///
/// # Errors
/// When the certificate cannot be loaded or the listener cannot start.
pub fn run(opts: Options) -> anyhow::Result<()> {
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
