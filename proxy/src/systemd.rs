//! The systemd service protocol, for units of `Type=notify` with `WatchdogSec=` (the
//! appliance image's): `READY=1` once the listeners are bound and the capture is in
//! place, `WATCHDOG=1` at half the watchdog interval while the data plane's runtime runs
//! (a wedged process is restarted by systemd), `STOPPING=1` at shutdown.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd, or another unit type) everything here is
//! a no-op. The protocol is one datagram per message on a unix socket; an `@` prefix names
//! an abstract socket.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Send `state` (e.g. `READY=1`) to systemd, if it listens. Errors are logged, never
/// fatal: a missed notification is systemd's to time out.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "notifying systemd failed");
    }
}

/// Half the unit's `WatchdogSec=`, when systemd asks this process for keep-alives.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Says `READY=1` when the server starts its services, then keeps the watchdog fed.
pub struct Notifier;

#[async_trait]
impl BackgroundService for Notifier {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        notify("READY=1");
        let Some(every) = watchdog_interval() else {
            return;
        };
        tracing::info!(every = ?every, "feeding the systemd watchdog");
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => notify("WATCHDOG=1"),
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        notify("STOPPING=1");
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages arrive as systemd reads them, on a path or an abstract socket.
    #[test]
    fn notifications_reach_the_socket() {
        let dir = crate::testing::TempDir::new("notify");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        // SAFETY of set_var: this test's own variable; no other test reads it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::env::set_var("WATCHDOG_USEC", "4000000");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(2)));
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None, "another process's watchdog");
        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        notify("READY=1"); // no socket: nothing, no error
    }
}
