//! The load generator (`sluice-bench run` and `hold`) as the suite drives it: one pinned
//! process per run, its JSON read back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

use super::command_line;
use super::json::JsonExt;
use super::peers::{self, Running};
use super::profile::Profile;

/// The load generator, pinned to the rig CPU.
pub(super) struct Loadgen {
    pub(super) bench: PathBuf,
    pub(super) cpu: Option<u32>,
    pub(super) mock: std::net::SocketAddr,
    pub(super) mock_ca: PathBuf,
}

impl Loadgen {
    pub(super) fn run(
        &self,
        addr: std::net::SocketAddr,
        ca: &Path,
        args: &[String],
        p: &Profile,
        timeout: f64,
    ) -> Result<Json> {
        self.run_for(addr, ca, args, p.duration, p.warmup, timeout)
    }

    pub(super) fn run_for(
        &self,
        addr: std::net::SocketAddr,
        ca: &Path,
        args: &[String],
        duration: f64,
        warmup: f64,
        timeout: f64,
    ) -> Result<Json> {
        let mut cmd = peers::pinned(self.cpu, &self.bench);
        cmd.args(["run", "--threads", "1"])
            .args(["--url", "https://api.openai.com/v1/chat/completions"])
            .arg("--connect")
            .arg(addr.to_string())
            .arg("--ca")
            .arg(ca)
            .arg("--reference-connect")
            .arg(self.mock.to_string())
            .arg("--reference-ca")
            .arg(&self.mock_ca)
            .args([
                "--duration",
                &duration.to_string(),
                "--warmup",
                &warmup.to_string(),
            ])
            .args(["--timeout", &timeout.to_string()])
            .args(args);
        let line = command_line(&cmd);
        let out = cmd
            .output()
            .with_context(|| format!("cannot start `{line}`"))?;
        if !out.status.success() {
            bail!(
                "load generator failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Json::parse(text.trim()).with_context(|| format!("load generator output: {text}"))
    }
}

impl Loadgen {
    /// `sluice-bench hold`: sets up `p.hold_conns` connections (or streams) to the
    /// path, calls `measure` while they are all open, then lets them go.
    pub(super) fn hold(
        &self,
        running: &Running,
        p: &Profile,
        stream: bool,
        measure: impl Fn() -> u64,
    ) -> Result<(Json, u64)> {
        use std::io::BufRead;
        let mut cmd = peers::pinned(self.cpu, &self.bench);
        cmd.args(["hold", "--threads", "1"])
            .args(["--url", "https://api.openai.com/v1/chat/completions"])
            .arg("--connect")
            .arg(running.addr.to_string())
            .arg("--ca")
            .arg(&running.client_ca)
            .args(["--connections", &p.hold_conns.to_string()])
            .args(["--prompt-bytes", "1024", "--timeout", "60"]);
        if stream {
            // Long, slow streams: all stay open while memory is read.
            cmd.args(["--stream", "--sse-chunks", "600", "--mock-delay-ms", "100"]);
        }
        let line = command_line(&cmd);
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut first);
            let _ = tx.send(first);
        });
        let first = rx.recv_timeout(Duration::from_secs(120));
        let during = measure();
        drop(child.stdin.take()); // let go of every connection
        let _ = child.wait();
        let first = first.map_err(|_| anyhow::anyhow!("`{line}` did not report within 120 s"))?;
        let report =
            Json::parse(first.trim()).with_context(|| format!("`{line}` printed {first:?}"))?;
        Ok((report, during))
    }
}
