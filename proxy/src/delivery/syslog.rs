//! RFC 5424 syslog over TCP or TLS (RFC 5425), octet-counting framing (RFC 6587
//! §3.4.1: `<length> <message>`), each record formatted exactly as `sluice audit export
//! --format syslog` does. One connection is kept and reopened after an error.
//!
//! Syslog has no acknowledgement: a batch counts as delivered once written and flushed
//! to the connection. A collector that dies with messages in its socket buffer loses
//! them — the price of the protocol; choose a sink that answers (HEC, `_bulk`, a webhook)
//! where that matters.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use super::config::SyslogConfig;
use super::{retry, Destination, Failure, Item, Sent};
use crate::http::client::{self, Endpoint, Stream};

pub(crate) struct Syslog {
    url: String,
    ep: Endpoint,
    node: String,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    conn: Option<(Box<dyn Stream>, std::net::TcpStream)>,
}

/// `tcp://host:port` or `tls://host:port` as an endpoint.
pub(crate) fn endpoint(url: &str) -> Option<Endpoint> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("tls://") {
        (true, r)
    } else {
        (false, url.strip_prefix("tcp://")?)
    };
    let authority = rest.trim_end_matches('/');
    // A port is required: syslog has two customary ones (514, 6514).
    let (_, port) = authority.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    (!authority.is_empty() && !authority.contains(['/', '@', ' '])).then(|| Endpoint {
        tls,
        authority: authority.to_owned(),
        prefix: String::new(),
    })
}

impl Syslog {
    pub(super) fn new(
        c: &SyslogConfig,
        node: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Syslog, String> {
        let ep = endpoint(&c.url)
            .ok_or_else(|| format!("`{}` is not tcp:// or tls://host:port", c.url))?;
        Ok(Syslog {
            url: c.url.clone(),
            ep,
            node: node.to_owned(),
            tls,
            timeout,
            conn: None,
        })
    }
}

impl Destination for Syslog {
    fn send(&mut self, items: &[Item]) -> Result<Sent, Failure> {
        let mut frames = Vec::new();
        let pid = std::process::id();
        for item in items {
            let line = crate::ledger::syslog_line(&item.record, &self.node, pid);
            frames.extend_from_slice(format!("{} ", line.len()).as_bytes());
            frames.extend_from_slice(line.as_bytes());
        }
        // A collector that restarted closed the old connection: writing to it would
        // look fine and lose the batch.
        if self
            .conn
            .as_ref()
            .is_some_and(|(_, tcp)| client::peer_closed(tcp))
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(
                client::connect_tcp(&self.tls, &self.ep, &self.url, self.timeout).map_err(retry)?,
            );
        }
        let Some((conn, _)) = self.conn.as_mut() else {
            return Err(Failure::Retry("not connected".into()));
        };
        if let Err(e) = conn.write_all(&frames).and_then(|()| conn.flush()) {
            self.conn = None;
            return Err(retry(format!("{}: {e}", self.url)));
        }
        Ok(Sent::default())
    }
}
