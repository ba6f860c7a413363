//! TLS on both legs: reading the ClientHello before any handshake, the downstream
//! acceptor that terminates with minted leaves, and the upstream trust bundle.
//!
//! The ClientHello reader only *looks*: it parses the SNI and ALPN from the first
//! handshake message without consuming it, so the connection can still be relayed
//! byte for byte when the host is not inspected.

use std::path::Path;
use std::sync::Arc;

use pingora::listeners::tls::Acceptor;

use crate::ca::LeafResolver;

/// Largest ClientHello we are willing to buffer (post-quantum key shares make them
/// ~2 KiB; 64 KiB leaves ample room while bounding memory per connection).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// A complete TLS ClientHello.
    Tls(ClientHelloInfo),
    /// More bytes are needed to decide.
    NeedMore,
    /// Not TLS (e.g. plain HTTP).
    NotTls,
    /// Looks like TLS but is malformed.
    Malformed(&'static str),
}

/// The parts of a ClientHello Sluice decides on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHelloInfo {
    /// Server name indication, lower-cased, without a trailing dot.
    pub sni: Option<String>,
    /// ALPN protocols offered, in client order.
    pub alpn: Vec<Vec<u8>>,
}

/// Inspect the bytes read so far from a new connection.
pub fn sniff(buf: &[u8]) -> Sniffed {
    let Some(&first) = buf.first() else {
        return Sniffed::NeedMore;
    };
    // 0x16 = TLS handshake record.
    if first != 0x16 {
        return Sniffed::NotTls;
    }
    // Reassemble the handshake message from consecutive records.
    let mut hs = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return Sniffed::NeedMore;
        }
        if rest[0] != 0x16 {
            return Sniffed::Malformed("handshake interrupted by another record type");
        }
        if rest[1] != 0x03 {
            return Sniffed::Malformed("unknown record version");
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > 16384 + 256 {
            return Sniffed::Malformed("bad record length");
        }
        if rest.len() < 5 + len {
            return Sniffed::NeedMore;
        }
        hs.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if hs.len() >= 4 {
            if hs[0] != 0x01 {
                return Sniffed::Malformed("first handshake message is not a ClientHello");
            }
            let body_len = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if body_len + 4 > MAX_CLIENT_HELLO {
                return Sniffed::Malformed("ClientHello too large");
            }
            if hs.len() >= 4 + body_len {
                return match parse_client_hello(&hs[4..4 + body_len]) {
                    Some(info) => Sniffed::Tls(info),
                    None => Sniffed::Malformed("ClientHello does not parse"),
                };
            }
        }
    }
}

/// A bounds-checked big-endian reader.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn parse_client_hello(body: &[u8]) -> Option<ClientHelloInfo> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut info = ClientHelloInfo::default();
    if r.0.is_empty() {
        return Some(info); // no extensions at all
    }
    let mut exts = Reader(r.vec16()?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let mut data = Reader(exts.vec16()?);
        match ty {
            0 => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    let name_type = list.u8()?;
                    let name = list.vec16()?;
                    if name_type == 0 && info.sni.is_none() {
                        let name = std::str::from_utf8(name).ok()?;
                        info.sni = Some(name.trim_end_matches('.').to_ascii_lowercase());
                    }
                }
            }
            16 => {
                let mut list = Reader(data.vec16()?);
                while !list.0.is_empty() {
                    info.alpn.push(list.vec8()?.to_vec());
                }
            }
            _ => {}
        }
    }
    Some(info)
}

/// The downstream acceptor: TLS 1.2/1.3, ALPN h2 + http/1.1, leaves from `resolver`.
pub fn acceptor(resolver: Arc<LeafResolver>) -> Acceptor {
    pingora::tls::install_default_crypto_provider();
    let mut config = rustls::ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Acceptor::from_server_config(Arc::new(config))
}

/// Errors building the upstream trust bundle.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A configured CA file could not be read.
    #[error("cannot read upstream.ca_file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The configured CA file holds no certificate.
    #[error("upstream.ca_file {0} holds no PEM certificate")]
    Empty(String),
    /// The bundle could not be written.
    #[error("cannot write the upstream trust bundle {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Write the upstream trust bundle (system roots plus `extra`) to `out` and return the
/// number of certificates in it. Pingora's connector reads one CA file; combining keeps
/// real providers verifiable while tests add their own root.
///
/// # Errors
/// [`TrustError`] naming the file.
pub fn write_trust_bundle(extra: Option<&Path>, out: &Path) -> Result<usize, TrustError> {
    let mut pem = String::new();
    let mut count = 0;
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        pem.push_str(&to_pem(&cert));
        count += 1;
    }
    if let Some(path) = extra {
        let text = std::fs::read_to_string(path).map_err(|source| TrustError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut text.as_bytes())
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(TrustError::Empty(path.display().to_string()));
        }
        for cert in certs {
            pem.push_str(&to_pem(&cert));
            count += 1;
        }
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|source| TrustError::Write {
            path: dir.display().to_string(),
            source,
        })?;
    }
    std::fs::write(out, pem).map_err(|source| TrustError::Write {
        path: out.display().to_string(),
        source,
    })?;
    Ok(count)
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello produced by rustls for `api.openai.com` with ALPN h2,http/1.1.
    fn real_client_hello(sni: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn parses_sni_and_alpn_from_a_real_hello() {
        let hello = real_client_hello("API.OpenAI.com");
        let Sniffed::Tls(info) = sniff(&hello) else {
            panic!("expected a ClientHello");
        };
        assert_eq!(info.sni.as_deref(), Some("api.openai.com"));
        assert_eq!(info.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn every_prefix_asks_for_more() {
        let hello = real_client_hello("api.anthropic.com");
        for n in 1..hello.len() {
            assert_eq!(sniff(&hello[..n]), Sniffed::NeedMore, "at {n} bytes");
        }
    }

    #[test]
    fn hello_split_across_records_is_reassembled() {
        let hello = real_client_hello("generativelanguage.googleapis.com");
        let body = &hello[5..];
        let (a, b) = body.split_at(100);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[0x16, 0x03, 0x01]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        let Sniffed::Tls(info) = sniff(&split) else {
            panic!("expected a ClientHello");
        };
        assert_eq!(
            info.sni.as_deref(),
            Some("generativelanguage.googleapis.com")
        );
    }

    #[test]
    fn plain_http_and_garbage() {
        assert_eq!(
            sniff(b"POST /v1/chat/completions HTTP/1.1\r\n"),
            Sniffed::NotTls
        );
        assert!(matches!(
            sniff(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0, 0, 1, 0]),
            Sniffed::Malformed(_)
        ));
        assert!(matches!(
            sniff(&[0x16, 0x03, 0x01, 0x00, 0x06, 0x01, 0, 0, 2, 3, 3]),
            Sniffed::Malformed(_)
        ));
        assert!(matches!(
            sniff(&[0x16, 0x09, 0x01, 0x00, 0x06]),
            Sniffed::Malformed(_)
        ));
        // Random bytes after a handshake header never panic.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut buf = vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00, 0x00, 0x3c];
            for _ in 0..0x40 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            let _ = sniff(&buf);
        }
    }
}
