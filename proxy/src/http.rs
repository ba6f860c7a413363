//! The small HTTP/1.1 servers of the control side — the witness and the admission
//! webhook: one request in, one [`Reply`] out, handled off the async threads — and the
//! blocking client the node uses for its own calls out ([`client`]: witnesses, S3).

pub mod client;
pub mod s3;

use std::sync::Arc;

/// An answer: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// A plain-text answer.
pub fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into(),
    }
}

/// What answers a request: `(method, path, body)` → reply. It may block (it runs on the
/// blocking pool).
pub type Handler = Arc<dyn Fn(&str, &str, &str) -> Reply + Send + Sync>;

/// Serves `handler` on `listener` (over TLS when `tls` is set) until the task is dropped.
/// Bodies over `max_body` bytes get 413, bodies that are not UTF-8 get 400.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_body: usize,
    handler: Handler,
) {
    loop {
        let Ok((sock, peer)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => match acceptor.accept(sock).await {
                    Ok(stream) => connection(stream, max_body, handler).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => connection(sock, max_body, handler).await,
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
}

async fn connection<S>(stream: S, max_body: usize, handler: Handler) -> hyper::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full, Limited};
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        async move {
            let method = req.method().as_str().to_owned();
            let path = req.uri().path().to_owned();
            let r = match Limited::new(req.into_body(), max_body).collect().await {
                Ok(b) => match String::from_utf8(b.to_bytes().to_vec()) {
                    Ok(body) => tokio::task::spawn_blocking(move || handler(&method, &path, &body))
                        .await
                        .unwrap_or_else(|_| reply(500, "internal error\n")),
                    Err(_) => reply(400, "the body is not UTF-8\n"),
                },
                Err(_) => reply(413, format!("the body exceeds {max_body} bytes\n")),
            };
            hyper::Response::builder()
                .status(r.status)
                .header("content-type", r.content_type)
                .body(Full::new(bytes::Bytes::from(r.body)))
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await
}
