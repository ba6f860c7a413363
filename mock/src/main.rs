//! `sluice-mock`: serve the mock LLM provider until interrupted.
//!
//! The end-to-end tests run it inside their "provider" network namespace and the benchmark
//! harness runs it as every path's upstream. See the library's docs for what it answers
//! and the `x-mock-*` controls.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_mock::pki::TestPki;
use sluice_mock::{alpn_protocols, MockOptions, MockProvider};

#[derive(Parser)]
#[command(name = "sluice-mock", version, about = "Serve the mock LLM provider")]
struct Cli {
    /// Address(es) to listen on (repeat or comma-separate; one TLS identity for all).
    #[arg(long, required = true, value_delimiter = ',')]
    listen: Vec<SocketAddr>,
    /// Serve TLS for these host names (comma-separated); plain HTTP when absent.
    #[arg(long, value_delimiter = ',')]
    tls_hosts: Vec<String>,
    /// Where to write the PEM of the CA that signed the mock's certificate.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Delay between SSE chunks, milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let tls = if cli.tls_hosts.is_empty() {
        None
    } else {
        let pki = TestPki::mint("Sluice mock provider test CA", &cli.tls_hosts)?;
        if let Some(path) = &cli.ca_out {
            std::fs::write(path, pki.ca_pem())
                .with_context(|| format!("cannot write the mock CA to {}", path.display()))?;
        }
        Some(pki.server_config(alpn_protocols())?)
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut handles = Vec::new();
        for addr in &cli.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let opts = MockOptions {
                chunk_delay: Duration::from_millis(cli.chunk_delay_ms),
                ..MockOptions::default()
            };
            let handle = MockProvider::start(listener, tls.clone(), opts)?;
            println!("mock provider listening on {}", handle.local_addr());
            handles.push(handle);
        }
        std::io::stdout().flush()?;
        tokio::signal::ctrl_c().await?;
        for h in handles {
            h.shutdown().await;
        }
        anyhow::Ok(())
    })
}
