//! StreamApp tests on real sockets: routing, refusals with their alerts, the PostgreSQL
//! SSLRequest dance, limits, and a real OpenSSL handshake through the relay.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::test_support::hello;
use super::*;

fn spec(route: &str, snis: &[&str], port: u16) -> StreamRouteSpec {
    StreamRouteSpec {
        route: route.into(),
        service: format!("{route}-svc").into(),
        snis: snis.iter().map(|s| s.to_string()).collect(),
        targets: vec![StreamTarget {
            host: "127.0.0.1".into(),
            port,
            weight: 100,
        }],
        connect_timeout: Duration::from_secs(2),
        health: None,
        kinds: StreamKinds::PASSTHROUGH,
        sources: Vec::new(),
        destinations: Vec::new(),
        upstream_tls: None,
    }
}

fn app(routes: Vec<StreamRouteSpec>, settings: StreamSettings) -> Arc<StreamApp> {
    let table = Arc::new(ArcSwap::from_pointee(StreamTable::new(routes)));
    Arc::new(StreamApp::new(table, settings))
}

/// Serves `app` on an ephemeral port; returns the address and a channel of finished logs.
async fn serve(
    app: Arc<StreamApp>,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<ConnectionLog>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, peer)) = listener.accept().await else {
                return;
            };
            let app = app.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let log = app.handle(&mut sock, Some(peer), None).await;
                let _ = tx.send(log);
            });
        }
    });
    (addr, rx)
}

/// An upstream that records what it receives and answers with `reply` after `expect` bytes.
async fn upstream(expect: usize, reply: &'static [u8]) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut got = vec![0u8; expect];
        sock.read_exact(&mut got).await.unwrap();
        sock.write_all(reply).await.unwrap();
        sock.shutdown().await.unwrap();
        // Drain until the client half-closes too.
        let mut rest = Vec::new();
        sock.read_to_end(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        got
    });
    (port, task)
}

async fn read_all(sock: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn routes_by_sni_and_replays_the_client_hello() {
    let flight = hello(Some("db.example.com"), &[b"postgresql"]);
    let (port, upstream) = upstream(flight.len() + 5, b"server bytes").await;
    let app = app(
        vec![spec("db", &["*.example.com"], port)],
        StreamSettings::default(),
    );
    let (addr, mut logs) = serve(app).await;

    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&flight).await.unwrap();
    client.write_all(b"after").await.unwrap();
    assert_eq!(read_all(&mut client).await, b"server bytes");
    client.shutdown().await.unwrap();

    let mut expected = flight.clone();
    expected.extend_from_slice(b"after");
    assert_eq!(upstream.await.unwrap(), expected);
    let log = logs.recv().await.unwrap();
    assert_eq!(log.outcome, Some(Outcome::Closed));
    assert_eq!(log.route.as_deref(), Some("db"));
    assert_eq!(log.sni.as_deref(), Some("db.example.com"));
    assert_eq!(
        log.upstream.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(log.bytes_up, expected.len() as u64);
    assert_eq!(log.bytes_down, 12);
    assert_eq!(log.alpn, vec![b"postgresql".to_vec()]);
}

/// A listener that fails the test if anyone connects: refusals must reach no upstream.
async fn untouchable() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        if let Ok((_, peer)) = listener.accept().await {
            panic!("upstream got a connection from {peer}");
        }
    });
    (port, task)
}

async fn refused_with(input: &[u8], expected_reply: &[u8], outcome: Outcome) {
    let (port, guard) = untouchable().await;
    let app = app(
        vec![spec("only", &["only.example.com"], port)],
        StreamSettings::default(),
    );
    let (addr, mut logs) = serve(app).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(input).await.unwrap();
    assert_eq!(read_all(&mut client).await, expected_reply);
    assert_eq!(logs.recv().await.unwrap().outcome, Some(outcome));
    guard.abort();
    assert!(
        guard.await.unwrap_err().is_cancelled(),
        "upstream task panicked"
    );
}

#[tokio::test]
async fn unknown_sni_gets_unrecognized_name() {
    let flight = hello(Some("other.example.com"), &[]);
    let version = [flight[1], flight[2]];
    let alert = [21, version[0], version[1], 0, 2, 2, 112];
    refused_with(&flight, &alert, Outcome::UnknownSni).await;
}

#[tokio::test]
async fn missing_sni_gets_unrecognized_name() {
    let flight = hello(None, &[]);
    let alert = [21, flight[1], flight[2], 0, 2, 2, 112];
    refused_with(&flight, &alert, Outcome::NoSni).await;
}

#[tokio::test]
async fn malformed_hello_gets_handshake_failure() {
    refused_with(
        &[22, 3, 1, 0, 4, 2, 0, 0, 0],
        &[21, 3, 1, 0, 2, 2, 40],
        Outcome::BadClientHello,
    )
    .await;
}

#[tokio::test]
async fn garbage_is_closed_without_a_word() {
    refused_with(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", Outcome::NotTls).await;
    // A PostgreSQL StartupMessage in the clear cannot be routed either.
    refused_with(&[0, 0, 0, 9, 0, 3, 0, 0, 0], b"", Outcome::NotTls).await;
}

#[tokio::test]
async fn slow_client_is_closed_after_the_hello_timeout() {
    let (port, guard) = untouchable().await;
    let settings = StreamSettings {
        client_hello_timeout: Duration::from_millis(300),
        ..StreamSettings::default()
    };
    let app = app(vec![spec("only", &["only.example.com"], port)], settings);
    let (addr, mut logs) = serve(app).await;
    let flight = hello(Some("only.example.com"), &[]);
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&flight[..20]).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(read_all(&mut client).await, b"");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(
        logs.recv().await.unwrap().outcome,
        Some(Outcome::ClientHelloTimeout)
    );
    guard.abort();
}

#[tokio::test]
async fn ssl_request_is_answered_and_repeated_upstream() {
    let flight = hello(Some("pg.example.com"), &[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = flight.clone();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        sock.read_exact(&mut request).await.unwrap();
        assert_eq!(request, postgres::SSL_REQUEST);
        sock.write_all(b"S").await.unwrap();
        let mut got = vec![0u8; expected.len()];
        sock.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        sock.write_all(b"tls from server").await.unwrap();
    });
    let app = app(
        vec![spec("pg", &["pg.example.com"], port)],
        StreamSettings::default(),
    );
    let (addr, mut logs) = serve(app).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    // Like libpq: GSSENCRequest first (refused), then SSLRequest, then the ClientHello.
    client.write_all(&postgres::GSSENC_REQUEST).await.unwrap();
    let mut answer = [0u8; 1];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    client.write_all(&postgres::SSL_REQUEST).await.unwrap();
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    client.write_all(&flight).await.unwrap();
    assert_eq!(read_all(&mut client).await, b"tls from server");
    client.shutdown().await.unwrap();
    server.await.unwrap();
    let log = logs.recv().await.unwrap();
    assert!(log.postgres);
    assert_eq!(log.outcome, Some(Outcome::Closed));
    assert_eq!(log.bytes_up, flight.len() as u64);
}

#[tokio::test]
async fn upstream_refusing_ssl_closes_the_client() {
    let flight = hello(Some("pg.example.com"), &[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        sock.read_exact(&mut request).await.unwrap();
        sock.write_all(b"N").await.unwrap();
        // Nothing of the ClientHello may follow.
        let mut rest = Vec::new();
        sock.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    });
    let app = app(
        vec![spec("pg", &["pg.example.com"], port)],
        StreamSettings::default(),
    );
    let (addr, mut logs) = serve(app).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&postgres::SSL_REQUEST).await.unwrap();
    let mut answer = [0u8; 1];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    client.write_all(&flight).await.unwrap();
    assert_eq!(
        read_all(&mut client).await,
        [21, flight[1], flight[2], 0, 2, 2, 40]
    );
    server.await.unwrap();
    assert_eq!(
        logs.recv().await.unwrap().outcome,
        Some(Outcome::UpstreamRefusedTls)
    );
}

#[tokio::test]
async fn unreachable_upstream_gets_internal_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = app(
        vec![spec("down", &["down.example.com"], closed)],
        StreamSettings::default(),
    );
    let (addr, mut logs) = serve(app).await;
    let flight = hello(Some("down.example.com"), &[]);
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&flight).await.unwrap();
    assert_eq!(
        read_all(&mut client).await,
        [21, flight[1], flight[2], 0, 2, 2, 80]
    );
    let log = logs.recv().await.unwrap();
    assert_eq!(log.outcome, Some(Outcome::UpstreamUnavailable));
    assert!(log.detail.unwrap_or_default().contains(&closed.to_string()));
}

#[tokio::test]
async fn one_client_address_cannot_take_every_slot() {
    let (port, guard) = untouchable().await;
    let settings = StreamSettings {
        max_connections_per_client: 2,
        ..StreamSettings::default()
    };
    let app = app(vec![spec("only", &["only.example.com"], port)], settings);
    let (addr, mut logs) = serve(app).await;
    // Two connections from 127.0.0.1 hold its two slots while they send nothing.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&[22]).await.unwrap();
        held.push(c);
    }
    tokio::task::yield_now().await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_all(&mut third).await, b"");
    assert_eq!(
        logs.recv().await.unwrap().outcome,
        Some(Outcome::OverClientLimit)
    );
    // A slot freed is a slot the same address can use again.
    drop(held.pop());
    assert_eq!(
        logs.recv().await.unwrap().outcome,
        Some(Outcome::ClientGone)
    );
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    fourth.write_all(&[22]).await.unwrap();
    drop(held);
    for _ in 0..1 {
        assert_eq!(
            logs.recv().await.unwrap().outcome,
            Some(Outcome::ClientGone)
        );
    }
    drop(fourth);
    assert_eq!(
        logs.recv().await.unwrap().outcome,
        Some(Outcome::ClientGone)
    );
    guard.abort();
}

#[test]
fn idle_tunnels_close_after_nginx_proxy_timeout_by_default() {
    assert_eq!(
        StreamSettings::default().idle_timeout,
        Duration::from_secs(600)
    );
}

#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let (port, guard) = untouchable().await;
    let settings = StreamSettings {
        max_connections: 1,
        ..StreamSettings::default()
    };
    let app = app(vec![spec("only", &["only.example.com"], port)], settings);
    let (addr, mut logs) = serve(app).await;
    // The first connection holds the only slot while it has not sent its ClientHello.
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(&[22]).await.unwrap();
    tokio::task::yield_now().await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_all(&mut second).await, b"");
    assert_eq!(logs.recv().await.unwrap().outcome, Some(Outcome::OverLimit));
    drop(first);
    assert_eq!(
        logs.recv().await.unwrap().outcome,
        Some(Outcome::ClientGone)
    );
    guard.abort();
}

#[tokio::test]
async fn reload_swaps_routes_for_new_connections() {
    let (port, upstream) = upstream(0, b"").await;
    let table = Arc::new(ArcSwap::from_pointee(StreamTable::new(vec![])));
    let app = Arc::new(StreamApp::new(table.clone(), StreamSettings::default()));
    let (addr, mut logs) = serve(app).await;
    let flight = hello(Some("late.example.com"), &[]);

    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&flight).await.unwrap();
    let _ = read_all(&mut client).await;
    assert_eq!(
        logs.recv().await.unwrap().outcome,
        Some(Outcome::UnknownSni)
    );

    table.store(Arc::new(StreamTable::new(vec![spec(
        "late",
        &["late.example.com"],
        port,
    )])));
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&flight).await.unwrap();
    client.shutdown().await.unwrap();
    let _ = read_all(&mut client).await;
    assert_eq!(upstream.await.unwrap(), flight);
    assert_eq!(logs.recv().await.unwrap().outcome, Some(Outcome::Closed));
}

#[tokio::test]
async fn metrics_count_connections_and_bytes_per_route() {
    let flight = hello(Some("metrics.example.com"), &[]);
    let (port, upstream) = upstream(flight.len(), b"0123456789").await;
    let app = app(
        vec![spec("metrics-route", &["metrics.example.com"], port)],
        StreamSettings::default(),
    );
    let (addr, mut logs) = serve(app).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&flight).await.unwrap();
    client.shutdown().await.unwrap();
    assert_eq!(read_all(&mut client).await, b"0123456789");
    upstream.await.unwrap();
    logs.recv().await.unwrap();
    let m = &crate::metrics::STREAM_CONNECTIONS;
    assert_eq!(m.with_label_values(&["metrics-route", "closed"]).get(), 1);
    let bytes = &crate::metrics::STREAM_BYTES;
    assert_eq!(
        bytes
            .with_label_values(&["metrics-route", "upstream"])
            .get(),
        flight.len() as u64
    );
    assert_eq!(
        bytes
            .with_label_values(&["metrics-route", "downstream"])
            .get(),
        10
    );
    assert_eq!(
        crate::metrics::STREAM_ACTIVE
            .with_label_values(&["metrics-route"])
            .get(),
        0
    );
}

/// A real TLS server behind the relay: the client verifies the backend's own certificate, which
/// is only possible if the gateway passed the handshake through untouched.
#[tokio::test]
async fn openssl_handshake_passes_through_end_to_end() {
    use openssl::ssl::{SslAcceptor, SslConnector, SslMethod, SslVerifyMode};

    let (cert, key) = self_signed("backend.example.com");
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let server_cert = cert.clone();
    let server = std::thread::spawn(move || {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
        acceptor.set_certificate(&server_cert).unwrap();
        acceptor.set_private_key(&key).unwrap();
        let acceptor = acceptor.build();
        let (sock, _) = std_listener.accept().unwrap();
        let mut tls = acceptor.accept(sock).unwrap();
        use std::io::{Read, Write};
        let mut line = [0u8; 4];
        tls.read_exact(&mut line).unwrap();
        tls.write_all(b"pong from backend").unwrap();
        tls.shutdown().unwrap();
    });
    let app = app(
        vec![spec("tls", &["backend.example.com"], port)],
        StreamSettings::default(),
    );
    let (addr, mut logs) = serve(app).await;

    let client = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
        builder.cert_store_mut().add_cert(cert).unwrap();
        builder.set_verify(SslVerifyMode::PEER);
        let connector = builder.build();
        let sock = std::net::TcpStream::connect(addr).unwrap();
        let mut tls = connector.connect("backend.example.com", sock).unwrap();
        tls.write_all(b"ping").unwrap();
        let mut answer = String::new();
        let _ = tls.read_to_string(&mut answer);
        answer
    });
    assert_eq!(client.await.unwrap(), "pong from backend");
    server.join().unwrap();
    let log = logs.recv().await.unwrap();
    assert_eq!(log.route.as_deref(), Some("tls"));
    assert!(
        matches!(log.outcome, Some(Outcome::Closed) | Some(Outcome::Reset)),
        "{log:?}"
    );
}

fn self_signed(
    name: &str,
) -> (
    openssl::x509::X509,
    openssl::pkey::PKey<openssl::pkey::Private>,
) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    let subject = subject.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&subject).unwrap();
    b.set_issuer_name(&subject).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns(name)
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}
