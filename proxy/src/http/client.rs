//! The node's calls out: one HTTP/1.1 exchange with a deadline, over `http://` or
//! `https://`, blocking (callers run off the request path), used by the ledger's outbox
//! (witness `add-checkpoint`, S3 `PUT`) and by `audit verify` (histories, S3 listings).
//!
//! What travels is signed (checkpoints by the node, cosignatures by the witness), so a
//! witness needs no secrecy or integrity from the channel; `https://` is there for the
//! networks one does not control and for S3 services that require it. Server
//! certificates are checked against the system's roots (`rustls-native-certs`, which
//! honours `SSL_CERT_FILE` and `SSL_CERT_DIR` for a private CA).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("URL `{0}` is not http[s]://host[:port][/prefix]")]
    Url(String),
    #[error("{url}: TLS: {detail}")]
    Tls { url: String, detail: String },
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: malformed answer: {detail}")]
    Answer { url: String, detail: String },
}

/// The largest answer read (a history of a busy log for years stays far below).
const MAX_ANSWER: u64 = 256 << 20;

/// A parsed `http[s]://host[:port][/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https`.
    pub tls: bool,
    /// `host[:port]` as written (the `Host` header).
    pub authority: String,
    /// `/prefix` without a trailing slash, or empty.
    pub prefix: String,
}

impl Endpoint {
    /// `scheme://authority`.
    pub fn base(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.authority
        )
    }

    /// The host name (for TLS) and the address to connect to.
    pub fn host_port(&self) -> (String, String) {
        let default = if self.tls { 443 } else { 80 };
        let a = &self.authority;
        let (host, port) = if let Some(rest) = a.strip_prefix('[') {
            let (h, p) = rest.split_once(']').unwrap_or((rest, ""));
            (h.to_owned(), p.strip_prefix(':').map(str::to_owned))
        } else {
            match a.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p.to_owned())),
                None => (a.clone(), None),
            }
        };
        let port = port.unwrap_or_else(|| default.to_string());
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        (host, addr)
    }
}

/// Parse `http[s]://host[:port][/prefix]`.
///
/// # Errors
/// [`ClientError::Url`] when it is not such a URL.
pub fn split_url(url: &str) -> Result<Endpoint, ClientError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(ClientError::Url(url.to_owned()));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.is_empty() || authority.contains(['@', ' ']) {
        return Err(ClientError::Url(url.to_owned()));
    }
    let path = path.trim_end_matches('/');
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    Ok(Endpoint {
        tls,
        authority: authority.to_owned(),
        prefix,
    })
}

/// The system's roots, loaded once.
static TLS: LazyLock<Arc<rustls::ClientConfig>> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    tls_config(roots)
});

/// A client configuration trusting `roots`.
pub fn tls_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("ring supports the default versions"))
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A connection, plain or TLS.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A client configuration trusting the system's roots plus, when given, the
/// certificates in `ca_file` (PEM) — for a SIEM behind a private CA.
///
/// # Errors
/// The file cannot be read or holds no certificate.
pub fn tls_with_ca(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let Some(path) = ca_file else {
        return Ok(TLS.clone());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut added = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        added += 1;
    }
    if added == 0 {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(tls_config(roots))
}

/// Connects to `ep` (TLS when it says so, the server checked against `tls`), with
/// `timeout` for connecting and for each read and write.
///
/// # Errors
/// [`ClientError`] naming `url`.
pub fn connect(
    tls: &Arc<rustls::ClientConfig>,
    ep: &Endpoint,
    url: &str,
    timeout: Duration,
) -> Result<Box<dyn Stream>, ClientError> {
    connect_tcp(tls, ep, url, timeout).map(|(s, _)| s)
}

/// [`connect`], also returning a handle on the TCP socket under it (to see whether the
/// peer has closed, see [`peer_closed`]).
///
/// # Errors
/// As [`connect`].
pub fn connect_tcp(
    tls: &Arc<rustls::ClientConfig>,
    ep: &Endpoint,
    url: &str,
    timeout: Duration,
) -> Result<(Box<dyn Stream>, TcpStream), ClientError> {
    let (host, target) = ep.host_port();
    let io = |source| ClientError::Io {
        url: url.to_owned(),
        source,
    };
    let addr = target
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| ClientError::Url(url.to_owned()))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    tcp.set_read_timeout(Some(timeout)).map_err(io)?;
    tcp.set_write_timeout(Some(timeout)).map_err(io)?;
    let handle = tcp.try_clone().map_err(io)?;
    let stream: Box<dyn Stream> = if ep.tls {
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| {
            ClientError::Tls {
                url: url.to_owned(),
                detail: format!("`{host}` is not a server name: {e}"),
            }
        })?;
        let conn =
            rustls::ClientConnection::new(tls.clone(), name).map_err(|e| ClientError::Tls {
                url: url.to_owned(),
                detail: e.to_string(),
            })?;
        Box::new(rustls::StreamOwned::new(conn, tcp))
    } else {
        Box::new(tcp)
    };
    Ok((stream, handle))
}

/// Whether the peer of `tcp` has closed or reset the connection (a write would vanish
/// into a dead socket), without blocking or consuming data.
pub fn peer_closed(tcp: &TcpStream) -> bool {
    if tcp.set_nonblocking(true).is_err() {
        return true;
    }
    let closed = match tcp.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    closed || tcp.set_nonblocking(false).is_err()
}

/// One request, `connection: close`, with `timeout` for connecting and for each read.
///
/// # Errors
/// [`ClientError`] for a bad URL, a network failure or an answer that is not HTTP.
pub fn exchange(
    url: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    exchange_with(url, method, path, &[], body, timeout)
}

/// [`exchange`] with extra request headers (`(lowercase name, value)`).
///
/// # Errors
/// As [`exchange`].
pub fn exchange_with(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    exchange_trusting(&TLS, url, method, path, headers, body, timeout)
}

/// [`exchange_with`], checking an `https://` server against `tls` instead of the
/// system's roots.
///
/// # Errors
/// As [`exchange`].
pub fn exchange_trusting(
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let (status, content_type, payload) =
        roundtrip(tls, url, method, path, headers, body.as_bytes(), timeout)?;
    let body = String::from_utf8(payload).map_err(|_| ClientError::Answer {
        url: url.to_owned(),
        detail: "body is not UTF-8".into(),
    })?;
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

/// [`exchange_trusting`] for a binary body (S3 objects), the answer's body kept as text
/// (invalid UTF-8 replaced).
///
/// # Errors
/// As [`exchange`].
pub fn exchange_raw(
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let (status, content_type, payload) =
        roundtrip(tls, url, method, path, headers, body, timeout)?;
    Ok(Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&payload).into_owned(),
    })
}

/// The client configuration trusting the system's roots.
pub fn system_tls() -> Arc<rustls::ClientConfig> {
    TLS.clone()
}

/// [`exchange_with`] for a binary body (OTLP protobuf); the answer's body is not kept.
///
/// # Errors
/// As [`exchange`].
pub fn exchange_bytes(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, ClientError> {
    let (status, content_type, _) = roundtrip(&TLS, url, method, path, headers, body, timeout)?;
    Ok(Answer {
        status,
        content_type,
        body: String::new(),
    })
}

/// One request and its answer: (status, content type, body bytes).
fn roundtrip(
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String, Vec<u8>), ClientError> {
    let ep = split_url(url)?;
    let (authority, prefix) = (ep.authority.clone(), ep.prefix.clone());
    let io = |source| ClientError::Io {
        url: url.to_owned(),
        source,
    };
    let mut s = connect(tls, &ep, url, timeout)?;
    let mut head = format!("{method} {prefix}{path} HTTP/1.1\r\nhost: {authority}\r\n");
    if !headers.iter().any(|(k, _)| k == "content-type") {
        head.push_str("content-type: text/plain\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    s.flush().map_err(io)?;
    let mut raw = Vec::new();
    match s.take(MAX_ANSWER).read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS server that closes without close_notify: the answer is complete when
        // its length says so (checked below).
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(io(e)),
    }
    let bad = |detail: &str| ClientError::Answer {
        url: url.to_owned(),
        detail: detail.to_owned(),
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let at = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return Err(bad("not an HTTP/1.1 response")),
    };
    let status = resp.code.ok_or_else(|| bad("no status"))?;
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let content_type = header("content-type").unwrap_or("").to_owned();
    let mut payload = &raw[at..];
    if let Some(n) = header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        payload = payload
            .get(..n)
            .ok_or_else(|| bad("body shorter than its length"))?;
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return Err(bad("chunked answers are not expected from a witness"));
    }
    Ok((status, content_type, payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTPS server on loopback with a certificate from a throw-away CA.
    fn https_once(pki: &sluice_mock::pki::TestPki) -> u16 {
        let config = pki.server_config(vec![b"http/1.1".to_vec()]).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for sock in listener.incoming().take(2) {
                let Ok(sock) = sock else { continue };
                let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nok\n",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        port
    }

    #[test]
    fn https_checks_the_server_against_the_roots_given() {
        let pki =
            sluice_mock::pki::TestPki::mint("witness test CA", &["localhost".into()]).unwrap();
        let port = https_once(&pki);
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut pki.ca_pem().as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let url = format!("https://localhost:{port}");
        let t = Duration::from_secs(5);
        let a = exchange_trusting(&tls_config(roots), &url, "GET", "/key", &[], "", t).unwrap();
        assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
        // A server the roots do not vouch for is refused.
        let e = exchange_trusting(
            &tls_config(rustls::RootCertStore::empty()),
            &url,
            "GET",
            "/key",
            &[],
            "",
            t,
        )
        .unwrap_err();
        assert!(e.to_string().contains("https://localhost"), "{e}");
        assert_eq!(
            split_url("https://s3.example.com/p/").unwrap(),
            Endpoint {
                tls: true,
                authority: "s3.example.com".into(),
                prefix: "/p".into()
            }
        );
        assert_eq!(
            split_url("http://[::1]:9000").unwrap().host_port(),
            ("::1".into(), "[::1]:9000".into())
        );
        assert!(split_url("ftp://x").is_err());
    }
}
