//! TLS with ALPN, plain HTTP/2, shutdown.

use super::*;

/// The process's crypto provider, installing ring's when none is.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    if let Some(provider) = rustls::crypto::CryptoProvider::get_default() {
        return provider.clone();
    }
    // Another test may win the race to install; either way one is installed after this.
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default()
        .unwrap()
        .clone()
}

/// A mock serving TLS for `localhost` and a client config trusting it.
async fn start_tls() -> (MockHandle, rustls::ClientConfig) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let provider = crypto_provider();
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    server.alpn_protocols = alpn_protocols();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock =
        MockProvider::start(listener, Some(Arc::new(server)), MockOptions::default()).unwrap();
    (mock, client)
}

/// Connect over TLS offering `alpn`; returns the sender and the protocol agreed.
async fn connect_tls(
    mock: &MockHandle,
    mut client: rustls::ClientConfig,
    alpn: &[&[u8]],
) -> (Sender, Option<Vec<u8>>) {
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(mock.local_addr()).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .unwrap();
    let agreed = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let sender = Sender::handshake(tls, agreed.as_deref() == Some(b"h2")).await;
    (sender, agreed)
}

#[tokio::test]
async fn tls_http1_and_http2_by_alpn() {
    let (mock, client) = start_tls().await;

    let (mut h1, agreed) = connect_tls(&mock, client.clone(), &[b"http/1.1"]).await;
    assert_eq!(agreed.as_deref(), Some(&b"http/1.1"[..]));
    let a = answer(
        h1.send(request(
            "POST",
            CHAT,
            &[],
            Pieces::one(chat_body(false).to_string()),
        ))
        .await,
    )
    .await;
    assert_eq!(
        a.json()["choices"][0]["message"]["content"],
        "Mock reply to: And two in Asia?"
    );

    let (mut h2, agreed) = connect_tls(&mock, client, &[b"h2", b"http/1.1"]).await;
    assert_eq!(agreed.as_deref(), Some(&b"h2"[..]));
    let req = Request::builder()
        .method("POST")
        .uri("https://api.anthropic.com/v1/messages")
        .header("x-mock-chunks", "3")
        .body(Pieces::one(anthropic_body(true).to_string()))
        .unwrap();
    let response = h2.send(req).await;
    assert_eq!(response.version(), http::Version::HTTP_2);
    // Frames come one event each.
    let mut body = response.into_body();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames.push(data);
        }
    }
    let text: String = frames.iter().map(|f| String::from_utf8_lossy(f)).collect();
    assert_eq!(sse_events(&text).len(), 3 + 3 + 3);

    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].http_version, "HTTP/1.1");
    assert_eq!(seen[1].http_version, "HTTP/2.0");
    assert_eq!(seen[1].host.as_deref(), Some("api.anthropic.com"));
    assert_eq!(seen[1].path, "/v1/messages");
    mock.shutdown().await;
}

#[tokio::test]
async fn plain_http2_prior_knowledge() {
    let mock = start(MockOptions::default()).await;
    let tcp = TcpStream::connect(mock.local_addr()).await.unwrap();
    let mut h2 = Sender::handshake(tcp, true).await;
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}{CHAT}", mock.local_addr()))
        .body(Pieces::one(chat_body(false).to_string()))
        .unwrap();
    let a = answer(h2.send(req).await).await;
    assert_eq!(a.json()["object"], "chat.completion");
    assert_eq!(mock.requests()[0].http_version, "HTTP/2.0");
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let mock = start(MockOptions::default()).await;
    let addr = mock.local_addr();
    assert_eq!(
        call(&mock, "GET", "/__mock/health", &[], "").await.status,
        StatusCode::OK
    );
    mock.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err());
}
