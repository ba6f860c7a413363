//! The client side of a witness: a plain HTTP/1.1 exchange with a deadline, used by the
//! ledger's outbox (`add-checkpoint`) and by `audit verify --witness` (history).
//!
//! Plain `http://` only: what travels is signed (checkpoints by the node, cosignatures
//! by the witness), so the channel needs no secrecy or integrity of its own; put a TLS
//! terminator in front of a witness reached across networks one does not control.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
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
    #[error("witness URL `{0}` is not http://host:port[/prefix]")]
    Url(String),
    #[error("witness {url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("witness {url}: malformed answer: {detail}")]
    Answer { url: String, detail: String },
}

/// The largest answer read (a history of a busy log for years stays far below).
const MAX_ANSWER: u64 = 256 << 20;

/// `http://host:port[/prefix]` → (`host:port`, `/prefix` without a trailing slash).
pub fn split_url(url: &str) -> Result<(String, String), ClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Url(url.to_owned()))?;
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
    Ok((authority.to_owned(), prefix))
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
    let (authority, prefix) = split_url(url)?;
    let io = |source| ClientError::Io {
        url: url.to_owned(),
        source,
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| ClientError::Url(url.to_owned()))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
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
    s.write_all(body.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw).map_err(io)?;
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
    let body = String::from_utf8(payload.to_vec()).map_err(|_| bad("body is not UTF-8"))?;
    Ok(Answer {
        status,
        content_type,
        body,
    })
}
