//! One benchmark client connection: TCP to the address under test, TLS with the SNI of the
//! URL's host (trusting only the given CAs), HTTP/1.1 or HTTP/2, and one exchange at a time
//! whose response is read frame by frame, timestamped and checked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What the generator asks for and where it sends it.
#[derive(Clone)]
pub struct Target {
    /// Address actually connected to (the listener under test).
    pub connect: SocketAddr,
    /// Host of the URL: SNI and `Host` / `:authority`.
    pub host: String,
    /// Path and query of the URL.
    pub path: String,
    /// `None` for plain HTTP.
    pub tls: Option<TlsConnector>,
    /// Offer HTTP/2 (ALPN h2, prior knowledge over plain HTTP).
    pub http2: bool,
    /// The request body (same bytes for every request).
    pub body: Bytes,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Read the answer as an SSE stream.
    pub sse: bool,
    /// The status a correct answer has (200, or the refusal a policy gives).
    pub expect_status: StatusCode,
    /// A correct plain answer contains these bytes.
    pub expect: Bytes,
    /// Streams: let go of the answer after this many events, as a client that cancels
    /// does (the connection is closed with the stream unfinished).
    pub cancel_after: Option<usize>,
    /// Stop reading an answer after this long.
    pub timeout: Duration,
}

/// A TLS client configuration trusting exactly the PEM CAs in `ca_files`.
///
/// # Errors
/// When a file cannot be read or holds no certificate.
pub fn tls_connector(
    ca_files: &[std::path::PathBuf],
    http2: bool,
    resume: bool,
) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for path in ca_files {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert?)?;
            n += 1;
        }
        if n == 0 {
            bail!("{} holds no PEM certificate", path.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if !resume {
        // Every new connection pays a full handshake: what "new TLS connections/s" means.
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(TlsConnector::from(Arc::new(config)))
}

/// An open HTTP connection.
pub enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// Opens a connection to `target.connect`.
///
/// # Errors
/// Connect, TLS and HTTP handshake failures.
pub async fn connect(target: &Target) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(target.connect)
        .await
        .with_context(|| format!("connecting to {}", target.connect))?;
    tcp.set_nodelay(true)?;
    match &target.tls {
        Some(tls) => {
            let name = ServerName::try_from(target.host.clone())?;
            let stream = tls.connect(name, tcp).await.context("TLS handshake")?;
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            handshake(stream, h2).await
        }
        None => handshake(tcp, target.http2).await,
    }
}

async fn handshake<IO>(io: IO, h2: bool) -> anyhow::Result<Conn>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Conn::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Conn::H1(sender))
    }
}

/// What one exchange produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Arrival time of each SSE event (frame arrival time of the frame completing it).
    pub events: Vec<Instant>,
    /// Body bytes received.
    pub bytes: usize,
    /// The client let go before the end ([`Target::cancel_after`]): the connection must
    /// be dropped.
    pub cancelled: bool,
}

/// Why an exchange is counted as an error.
#[derive(Debug)]
pub enum Failure {
    /// Transport or protocol failure; the connection must be dropped.
    Io(anyhow::Error),
    /// An answer arrived but is wrong (status, missing reply text, stream not finished).
    Bad(String),
}

/// Sends one request on `conn` and reads the whole answer.
pub async fn exchange(conn: &mut Conn, target: &Target) -> Result<Outcome, Failure> {
    match tokio::time::timeout(target.timeout, exchange_inner(conn, target)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Io(anyhow!(
            "no complete answer within {:?}",
            target.timeout
        ))),
    }
}

/// Sends one request on `conn` and returns once the answer's status and first body frame
/// have arrived; the rest of the body stays unread (the exchange stays open while the
/// returned body lives).
pub async fn open(conn: &mut Conn, target: &Target) -> Result<Incoming, Failure> {
    let response = send(conn, target).await?;
    if response.status() != StatusCode::OK {
        return Err(Failure::Bad(format!("status {}", response.status())));
    }
    let mut body = response.into_body();
    match body.frame().await {
        Some(Ok(_)) => Ok(body),
        Some(Err(e)) => Err(Failure::Io(e.into())),
        None => Err(Failure::Bad("the answer ended at once".into())),
    }
}

async fn send(conn: &mut Conn, target: &Target) -> Result<http::Response<Incoming>, Failure> {
    let h2 = matches!(conn, Conn::H2(_));
    let uri = if h2 {
        let scheme = if target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{}", target.host, target.path)
    } else {
        target.path.clone()
    };
    let mut builder = Request::post(uri)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench-not-a-real-key");
    if !h2 {
        builder = builder.header("host", &target.host);
    }
    for (k, v) in &target.headers {
        builder = builder.header(k, v);
    }
    let request = builder
        .body(Full::new(target.body.clone()))
        .map_err(|e| Failure::Io(e.into()))?;
    match conn {
        Conn::H1(s) => {
            s.ready().await.map_err(|e| Failure::Io(e.into()))?;
            s.send_request(request).await
        }
        Conn::H2(s) => {
            s.ready().await.map_err(|e| Failure::Io(e.into()))?;
            s.send_request(request).await
        }
    }
    .map_err(|e| Failure::Io(e.into()))
}

async fn exchange_inner(conn: &mut Conn, target: &Target) -> Result<Outcome, Failure> {
    let response = send(conn, target).await?;
    let mut out = Outcome::default();
    let status = response.status();
    let mut body = response.into_body();
    // Plain answers are kept whole for the check; streams only need their last bytes.
    let mut kept: Vec<u8> = Vec::new();
    let mut sse = SseScanner::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::Io(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        out.bytes += data.len();
        if target.sse {
            for _ in 0..sse.feed(&data) {
                out.events.push(now);
            }
            kept.extend_from_slice(&data);
            if kept.len() > 256 {
                kept.drain(..kept.len() - 64);
            }
            if status == target.expect_status
                && target.cancel_after.is_some_and(|n| out.events.len() >= n)
            {
                out.cancelled = true;
                return Ok(out);
            }
        } else {
            kept.extend_from_slice(&data);
        }
    }
    if status != target.expect_status {
        return Err(Failure::Bad(format!("status {status}")));
    }
    if target.sse && status == StatusCode::OK {
        if !contains(&kept, b"data: [DONE]") {
            return Err(Failure::Bad("stream ended without data: [DONE]".into()));
        }
    } else if !contains(&kept, &target.expect) {
        return Err(Failure::Bad(format!(
            "answer lacks {:?}",
            String::from_utf8_lossy(&target.expect)
        )));
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Counts SSE events (blank-line terminated) across arbitrary frame boundaries.
#[derive(Debug, Default)]
pub struct SseScanner {
    /// Whether the previous byte ended a line (`\n`), carried across frames.
    at_line_end: bool,
}

impl SseScanner {
    /// Events completed by `data`.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let mut n = 0;
        for &b in data {
            match b {
                b'\n' if self.at_line_end => {
                    n += 1;
                    self.at_line_end = false;
                }
                b'\n' => self.at_line_end = true,
                b'\r' => {}
                _ => self.at_line_end = false,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_counted_across_frames() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut s = SseScanner::default();
            let n = s.feed(&stream[..split]) + s.feed(&stream[split..]);
            assert_eq!(n, 3, "split at {split}");
        }
        let mut s = SseScanner::default();
        assert_eq!(s.feed(b"event: x\r\ndata: y\r\n\r\n"), 1);
    }
}
