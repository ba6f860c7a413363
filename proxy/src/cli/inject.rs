//! `sluice inject`: serve the admission webhook that makes pods trust the org CA, or
//! write the CA bundle (what the injected init container runs).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use sluice::inject::{InjectConfig, DEFAULT_BUNDLE_PATHS, ORG_CA_ENV};

#[derive(Subcommand)]
pub enum InjectCommand {
    /// Serve the mutating admission webhook (POST /mutate, GET /healthz) over TLS.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8443")]
        listen: SocketAddr,
        /// The webhook's TLS certificate chain (PEM), for the Service's DNS name.
        #[arg(long)]
        tls_cert: PathBuf,
        /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
        #[arg(long)]
        tls_key: PathBuf,
        /// The organisation CA certificate (PEM) pods must trust.
        #[arg(long)]
        org_ca: PathBuf,
        /// The Sluice image the injected init container runs.
        #[arg(long)]
        image: String,
        /// Its pull policy.
        #[arg(long, default_value = "IfNotPresent")]
        image_pull_policy: String,
        /// A path the bundle is mounted over in every container; repeat. Default: the
        /// Debian, RHEL and Alpine bundle paths.
        #[arg(long = "bundle-path")]
        bundle_paths: Vec<String>,
    },
    /// Write the system roots followed by the org CA (from $SLUICE_ORG_CA) to a file.
    Bundle {
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
        /// The system roots to start from (the image's Debian bundle).
        #[arg(long, default_value = "/etc/ssl/certs/ca-certificates.crt")]
        system_roots: PathBuf,
    },
}

/// # Errors
/// Unreadable certificates or keys, an unusable listen address, a missing org CA.
pub fn run(command: InjectCommand) -> anyhow::Result<()> {
    match command {
        InjectCommand::Bundle { out, system_roots } => {
            let org = std::env::var(ORG_CA_ENV).unwrap_or_default();
            let n = sluice::inject::write_bundle(&system_roots, &org, &out)?;
            println!(
                "{}: {n} certificates (system roots and the org CA)",
                out.display()
            );
            Ok(())
        }
        InjectCommand::Serve {
            listen,
            tls_cert,
            tls_key,
            org_ca,
            image,
            image_pull_policy,
            bundle_paths,
        } => {
            let pem = std::fs::read_to_string(&org_ca)
                .with_context(|| format!("reading --org-ca {}", org_ca.display()))?;
            let mut config = InjectConfig::new(pem, image)?;
            config.image_pull_policy = image_pull_policy;
            if !bundle_paths.is_empty() {
                config.bundle_paths = bundle_paths;
            }
            tracing::debug!(defaults = ?DEFAULT_BUNDLE_PATHS, paths = ?config.bundle_paths, "bundle paths");
            let tls = server_tls(&tls_cert, &tls_key)?;
            let handler: sluice::http::Handler =
                Arc::new(move |method, path, body| config.handle(method, path, body));
            super::serve_until_signal(listen, Some(tls), sluice::inject::MAX_BODY, handler, || {
                tracing::info!(%listen, "inject: serving the admission webhook");
            })
        }
    }
}

fn server_tls(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate in it",
        cert.display()
    );
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .with_context(|| format!("{}: not a PEM private key", key.display()))?
        .with_context(|| format!("{}: no private key in it", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the webhook's certificate and key do not match")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
