//! `/readyz`: whether this node can do its job right now, checked on each request.
//!
//! `/healthz` is liveness only (the process answers); `/readyz` tells the truth about the
//! subsystems a request needs, so a Kubernetes readiness probe or a load balancer sees a
//! node that would refuse traffic:
//!
//! - **ledger** — the last append did not fail, the ledger directory is writable and has
//!   room (at least 1 MiB free): under `on_ledger_failure: fail_closed` a failing ledger
//!   means refusals;
//! - **redirect** — when enabled, the eBPF programs were attached at start (attaching is
//!   part of starting, so a node that failed to attach never reports ready);
//! - **appliance** — in appliance mode, the capture (nftables table, policy routes) is in
//!   the kernel: checked every two seconds and put back when it went;
//! - **upstream trust** — the roots that verify providers were loaded.
//!
//! What it is not: a deep health check of the providers (a provider outage is the
//! provider's, and is recorded per request).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::proxy::Shared;

/// Smallest free space in the ledger's file system that counts as room.
const MIN_FREE_BYTES: u64 = 1 << 20;

/// The readiness checks of one node.
pub struct Readiness {
    /// The data plane's state (the ledger's failure mark).
    pub shared: Arc<Shared>,
    /// The ledger directory.
    pub ledger_dir: PathBuf,
    /// `Some(attached)` when the redirect is enabled.
    pub redirect: Option<bool>,
    /// In appliance mode, whether the capture is in place.
    pub appliance: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Number of trusted upstream roots loaded.
    pub upstream_roots: usize,
}

impl Readiness {
    /// Every check, `(name, Ok(what) | Err(why))`.
    pub fn checks(&self) -> Vec<(&'static str, Result<String, String>)> {
        let mut out = vec![("ledger", self.ledger())];
        if let Some(attached) = self.redirect {
            let r = if attached {
                Ok("eBPF programs attached".to_owned())
            } else {
                Err("the eBPF redirect is enabled but not attached".to_owned())
            };
            out.push(("redirect", r));
        }
        if let Some(ok) = &self.appliance {
            let r = if ok.load(Ordering::Relaxed) {
                Ok("TPROXY capture and policy routes in place".to_owned())
            } else {
                Err("the appliance capture is not in the kernel and could not be put back (see the log)".to_owned())
            };
            out.push(("appliance", r));
        }
        let trust = if self.upstream_roots > 0 {
            Ok(format!("{} trusted roots", self.upstream_roots))
        } else {
            Err("no trusted roots for provider certificates".to_owned())
        };
        out.push(("upstream_trust", trust));
        out
    }

    /// `(ready, text)`: the text lists each check, `ok` or `FAIL` with the reason.
    pub fn report(&self) -> (bool, String) {
        let mut ready = true;
        let mut text = String::new();
        for (name, r) in self.checks() {
            match r {
                Ok(what) => text.push_str(&format!("ok   {name}: {what}\n")),
                Err(why) => {
                    ready = false;
                    text.push_str(&format!("FAIL {name}: {why}\n"));
                }
            }
        }
        (ready, text)
    }

    fn ledger(&self) -> Result<String, String> {
        let failed_at = self.shared.ledger_failed_at.load(Ordering::Relaxed);
        if failed_at != 0 {
            return Err(format!(
                "the last append failed (at unix time {failed_at}); see the log for why"
            ));
        }
        let dir = &self.ledger_dir;
        nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
        let st = nix::sys::statvfs::statvfs(dir)
            .map_err(|e| format!("cannot stat {}: {e}", dir.display()))?;
        let free = st.blocks_available().saturating_mul(st.fragment_size());
        if free < MIN_FREE_BYTES {
            return Err(format!(
                "{} has {free} bytes free (full disk)",
                dir.display()
            ));
        }
        Ok(format!("writable, {} MiB free", free >> 20))
    }
}
