//! The stream (TLS passthrough) listener through the real binary: seed 000's "TLS passthrough"
//! commands (curl `--resolve` + `--cacert` getting the backend's own answer, `openssl s_client
//! -servername`), refusals (unknown or missing SNI, garbage, malformed TLS), a ClientHello sent one
//! byte per segment, a client that never finishes, half-close, bulk byte-exact transfers over
//! many concurrent tunnels, metrics, reload and graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::metrics::value;
use common::{Curl, Gateway, Pki, TlsBackend, TlsProbe};
use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslVerifyMode};

const SNI: &str = "httpbin-tls.example.com";

/// The stream listener settings and the passthrough routes; `extra` is appended to the stream
/// listener entry, `server` to the `server:` section, `services` to the services list.
struct Setup<'a> {
    hello_timeout: &'a str,
    server: &'a str,
    services: String,
}

fn start(setup: Setup<'_>) -> Gateway {
    let builder = Gateway::builder().no_settings();
    let p = builder.ports();
    let settings = format!(
        "listeners:\n  proxy: [{{address: \"127.0.0.1:{http}\"}}]\n  stream: [{{address: \"127.0.0.1:{stream}\", client_hello_timeout: {timeout}}}]\n  status: {{address: \"127.0.0.1:{status}\"}}\nserver:\n  threads: 2\n{server}",
        http = p.http,
        stream = p.stream,
        status = p.status,
        timeout = setup.hello_timeout,
        server = setup.server,
    );
    builder
        .file("00-listeners.yaml", settings)
        .file("gateway.yaml", format!("services:\n{}", setup.services))
        .start()
}

/// A `tcp` service with one passthrough route.
fn service(name: &str, port: u16, route: &str, snis: &[&str]) -> String {
    format!(
        "  - name: {name}\n    url: tcp://127.0.0.1:{port}\n    routes:\n      - name: {route}\n        protocols: [tls_passthrough]\n        snis: [{}]\n",
        snis.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")
    )
}

/// The seed's setup: a TLS backend holding its own certificate from the test PKI.
fn backend(pki: &Pki) -> (TlsBackend, common::Leaf) {
    let leaf = pki.server_leaf(
        "httpbin-tls",
        &["DNS:httpbin-tls.example.com", "DNS:*.wild.example.com"],
    );
    (TlsBackend::start(&leaf.chain_path, &leaf.key_path), leaf)
}

fn seed_gateway(backend_port: u16) -> Gateway {
    start(Setup {
        hello_timeout: "5s",
        server: "",
        services: service(
            "tls-backend",
            backend_port,
            "passthrough",
            &[SNI, "*.wild.example.com"],
        ),
    })
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&gw.metrics(), name, labels).unwrap_or(0.0)
}

#[test]
fn curl_through_the_stream_port_gets_the_backends_own_answer() {
    let pki = Pki::new();
    let (backend, leaf) = backend(&pki);
    let gw = seed_gateway(backend.port());

    // Seed 000: curl --cacert <root> --resolve 'httpbin-tls.example.com:9443:127.0.0.1' https://...
    let resp = Curl::at("https", SNI, gw.stream_port(), "/")
        .cacert(&pki.root.cert_path)
        .run();
    assert_eq!(resp.status, 200, "{resp:#?}");
    assert_eq!(
        resp.json(),
        serde_json::json!({"service": "tls-backend", "tls": "terminated-here"})
    );
    // The certificate verified against the root is the backend's (the gateway has none).
    let served = TlsProbe::new(gw.stream_port())
        .sni(SNI)
        .verify_with(&pki.root.cert_path)
        .run()
        .expect("verified handshake with the backend through the gateway");
    assert_eq!(served.serial, leaf.serial);
    // Wildcard SNI, and HTTP/2 negotiated end to end by ALPN.
    let resp = Curl::at("https", "api.wild.example.com", gw.stream_port(), "/")
        .cacert(&pki.root.cert_path)
        .http2()
        .run();
    assert_eq!(resp.status, 200, "{resp:#?}");
    assert_eq!(resp.json()["tls"], "terminated-here");

    wait_until("the connection metrics", Duration::from_secs(5), || {
        let m = gw.metrics();
        // curl twice and the probe (which may end with a reset: it drops unread tickets).
        value(
            &m,
            "portcullis_stream_connections_total",
            &[("route", "passthrough")],
        )
        .unwrap_or(0.0)
            >= 3.0
            && value(
                &m,
                "portcullis_stream_active_connections",
                &[("route", "passthrough")],
            ) == Some(0.0)
    });
    for direction in ["upstream", "downstream"] {
        let bytes = metric(
            &gw,
            "portcullis_stream_bytes_total",
            &[("route", "passthrough"), ("direction", direction)],
        );
        assert!(bytes > 500.0, "{direction}: {bytes}");
    }
    assert!(
        gw.wait_for_log(
            "sni=\"api.wild.example.com\" alpn=\"h2,http/1.1\"",
            Duration::from_secs(5)
        ),
        "one log line per connection with SNI and ALPN:\n{}",
        gw.log()
    );
}

/// `openssl s_client` with stdin closed; returns stdout and stderr together.
fn s_client(port: u16, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn openssl_s_client_sees_the_backend_or_an_alert() {
    let pki = Pki::new();
    let (backend, _leaf) = backend(&pki);
    let gw = seed_gateway(backend.port());
    let root = pki.root.cert_path.display().to_string();

    // Seed 000's routing check: the backend presents its own certificate.
    let out = s_client(
        gw.stream_port(),
        &[
            "-servername",
            SNI,
            "-CAfile",
            &root,
            "-verify_return_error",
            "-brief",
        ],
    );
    assert!(out.contains("Verification: OK"), "{out}");
    assert!(out.contains("CN = httpbin-tls.example.com"), "{out}");
    let handshakes = backend.handshakes();

    for args in [
        &["-servername", "unknown.example.com"][..],
        &["-noservername"],
    ] {
        let out = s_client(gw.stream_port(), args);
        assert!(
            out.contains("unrecognized name") && out.contains("alert number 112"),
            "{args:?}: {out}"
        );
    }
    assert_eq!(
        backend.handshakes(),
        handshakes,
        "refused clients reached the backend"
    );
    assert!(gw.wait_for_log("result=\"unknown_sni\"", Duration::from_secs(5)));
    assert!(gw.wait_for_log("result=\"no_sni\"", Duration::from_secs(5)));
}

/// Sends `bytes` and returns what came back before the gateway closed (a reset counts as
/// closed: the gateway may close with unread garbage in its receive buffer).
fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the stream port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read from the stream port: {e}"),
        }
    }
    out
}

#[test]
fn garbage_is_dropped_and_malformed_tls_gets_handshake_failure() {
    let pki = Pki::new();
    let (backend, _leaf) = backend(&pki);
    let gw = seed_gateway(backend.port());
    let port = gw.stream_port();

    assert_eq!(exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), b"");
    let noise: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8 + 1).collect();
    assert_eq!(exchange(port, &noise), b"");
    // PostgreSQL StartupMessage in the clear (sslmode=disable): nothing to route by.
    assert_eq!(exchange(port, &[0, 0, 0, 9, 0, 3, 0, 0, 0]), b"");
    // A TLS record holding a ServerHello instead of a ClientHello.
    assert_eq!(
        exchange(port, &[22, 3, 1, 0, 4, 2, 0, 0, 0]),
        [21, 3, 1, 0, 2, 2, 40]
    );
    // A ClientHello claiming 64 KiB: refused as soon as its header is in.
    assert_eq!(
        exchange(port, &[22, 3, 1, 0x40, 0, 1, 1, 0, 0]),
        [21, 3, 1, 0, 2, 2, 40]
    );
    assert_eq!(backend.connections(), 0, "garbage reached the backend");
    wait_until("refusal metrics", Duration::from_secs(5), || {
        let m = gw.metrics();
        value(
            &m,
            "portcullis_stream_connections_total",
            &[("result", "not_tls")],
        ) == Some(3.0)
            && value(
                &m,
                "portcullis_stream_connections_total",
                &[("result", "bad_client_hello")],
            ) == Some(2.0)
    });
}

/// Writes the first `trickle` bytes one per TCP segment (Nagle off, a pause between bytes), then
/// passes writes through.
#[derive(Debug)]
struct Trickle {
    sock: TcpStream,
    trickle: usize,
    written: usize,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.read(buf)
    }
}

impl Write for Trickle {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written >= self.trickle || buf.is_empty() {
            return self.sock.write(buf);
        }
        std::thread::sleep(Duration::from_millis(1));
        let n = self.sock.write(&buf[..1])?;
        self.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.sock.flush()
    }
}

#[test]
fn client_hello_written_one_byte_at_a_time_is_routed() {
    let pki = Pki::new();
    let (backend, _leaf) = backend(&pki);
    let gw = seed_gateway(backend.port());

    let sock = TcpStream::connect(("127.0.0.1", gw.stream_port())).unwrap();
    sock.set_nodelay(true).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(&pki.root.cert_path).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    let connector = b.build();
    let trickle = Trickle {
        sock,
        trickle: 4096,
        written: 0,
    };
    let mut tls = connector
        .connect(SNI, trickle)
        .expect("handshake through the gateway");
    assert!(tls.get_ref().written > 200, "the ClientHello was trickled");
    tls.get_mut().trickle = 0;
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: {SNI}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"terminated-here\""),
        "{answer}"
    );
}

#[test]
fn client_that_never_finishes_its_hello_is_closed_after_the_timeout() {
    let pki = Pki::new();
    let (backend, _leaf) = backend(&pki);
    let gw = start(Setup {
        hello_timeout: "1s",
        server: "",
        services: service("tls-backend", backend.port(), "passthrough", &[SNI]),
    });
    let hello = client_hello(SNI);
    let mut s = TcpStream::connect(("127.0.0.1", gw.stream_port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).expect("closed, not reset or timed out");
    let waited = started.elapsed();
    assert_eq!(n, 0, "nothing is sent to a client that timed out");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(backend.connections(), 0);
    assert!(gw.wait_for_log("result=\"client_hello_timeout\"", Duration::from_secs(5)));
}

/// The first flight of a real OpenSSL client for `sni`, captured without a server.
fn client_hello(sni: &str) -> Vec<u8> {
    #[derive(Debug)]
    struct Capture(Vec<u8>);
    impl Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let connector = SslConnector::builder(SslMethod::tls_client())
        .unwrap()
        .build();
    match connector.connect(sni, Capture(Vec::new())) {
        Err(HandshakeError::WouldBlock(mid)) => mid.get_ref().0.clone(),
        other => panic!("expected the handshake to wait for the server: {other:?}"),
    }
}

/// A plain TCP upstream echoing every byte; after the client's EOF it sends `bye` and closes.
/// Passthrough does not care what follows the ClientHello, so this checks the relay itself.
fn echo_then_bye() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match sock.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if sock.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = sock.write_all(b"bye");
            });
        }
    });
    port
}

#[test]
fn half_close_reaches_the_upstream_and_its_answer_still_arrives() {
    let port = echo_then_bye();
    let gw = start(Setup {
        hello_timeout: "5s",
        server: "",
        services: service("raw", port, "raw-route", &["raw.example.com"]),
    });
    let mut sent = client_hello("raw.example.com");
    sent.extend_from_slice(b"last words before EOF");
    let mut s = TcpStream::connect(("127.0.0.1", gw.stream_port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&sent).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the gateway closes after the upstream");
    let mut expected = sent.clone();
    expected.extend_from_slice(b"bye");
    assert_eq!(got, expected);
    assert!(gw.wait_for_log("route=\"raw-route\"", Duration::from_secs(5)));
    assert!(gw.log().contains("result=\"closed\""), "{}", gw.log());
}

/// 64-bit xorshift stream: reproducible bulk data without storing it.
fn fill(state: &mut u64, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

const TUNNELS: usize = 12;
const BULK: usize = 4 << 20;

/// Writes `BULK` pseudo-random bytes seeded by `seed` while reading `BULK` bytes; returns the
/// SHA-256 of what was sent and of what was received.
async fn bulk_exchange<S>(stream: S, seed: u64) -> ([u8; 32], [u8; 32])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(stream);
    let send = async move {
        let mut hash = openssl::sha::Sha256::new();
        let mut state = seed;
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = BULK;
        while left > 0 {
            let n = left.min(buf.len());
            fill(&mut state, &mut buf[..n]);
            hash.update(&buf[..n]);
            wr.write_all(&buf[..n]).await.expect("bulk write");
            left -= n;
        }
        wr.flush().await.expect("bulk flush");
        (hash.finish(), wr)
    };
    let recv = async move {
        let mut hash = openssl::sha::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = BULK;
        while left > 0 {
            let n = rd
                .read(&mut buf[..left.min(64 * 1024)])
                .await
                .expect("bulk read");
            assert!(n > 0, "EOF with {left} bytes missing");
            hash.update(&buf[..n]);
            left -= n;
        }
        hash.finish()
    };
    let ((sent, _wr), received) = tokio::join!(send, recv);
    (sent, received)
}

#[test]
fn many_concurrent_tunnels_move_mebibytes_byte_exact() {
    use openssl::ssl::{Ssl, SslAcceptor, SslFiletype};
    use std::pin::Pin;
    use std::sync::Arc;

    let pki = Pki::new();
    let leaf = pki.server_leaf("bulk", &["DNS:bulk.example.com"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let backend_port = listener.local_addr().unwrap().port();
    let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    acceptor
        .set_certificate_chain_file(&leaf.chain_path)
        .unwrap();
    acceptor
        .set_private_key_file(&leaf.key_path, SslFiletype::PEM)
        .unwrap();
    let acceptor = Arc::new(acceptor.build());
    // The backend reports, per connection, (hash sent, hash received), keyed by the first byte
    // the client sends after the handshake (its tunnel number).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    rt.spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let ssl = Ssl::new(acceptor.context()).unwrap();
                let mut tls = tokio_openssl::SslStream::new(ssl, sock).unwrap();
                Pin::new(&mut tls)
                    .accept()
                    .await
                    .expect("backend handshake");
                let id = tls.read_u8().await.expect("tunnel id") as u64;
                let hashes = bulk_exchange(tls, 1000 + id).await;
                let _ = tx.send((id, hashes));
            });
        }
    });

    let gw = start(Setup {
        hello_timeout: "5s",
        server: "",
        services: service("bulk", backend_port, "bulk", &["bulk.example.com"]),
    });
    let stream_port = gw.stream_port();
    let root = pki.root.cert_path.clone();
    let started = Instant::now();
    let client_results = rt.block_on(async move {
        let mut tasks = Vec::new();
        for id in 0..TUNNELS as u64 {
            let root = root.clone();
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
                b.set_ca_file(&root).unwrap();
                let config = b.build().configure().unwrap();
                let ssl = config.into_ssl("bulk.example.com").unwrap();
                let sock = tokio::net::TcpStream::connect(("127.0.0.1", stream_port))
                    .await
                    .unwrap();
                let mut tls = tokio_openssl::SslStream::new(ssl, sock).unwrap();
                Pin::new(&mut tls)
                    .connect()
                    .await
                    .expect("verified handshake with the backend");
                tls.write_u8(id as u8).await.unwrap();
                (id, bulk_exchange(tls, 1 + id).await)
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("tunnel task"));
        }
        out
    });
    let elapsed = started.elapsed();
    let mut backend_results = std::collections::HashMap::new();
    for _ in 0..TUNNELS {
        let (id, hashes) = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), rx.recv()).await })
            .expect("backend finished in time")
            .expect("backend result");
        backend_results.insert(id, hashes);
    }
    for (id, (client_sent, client_received)) in client_results {
        let (backend_sent, backend_received) = backend_results[&id];
        assert_eq!(
            client_sent, backend_received,
            "tunnel {id}: client → backend"
        );
        assert_eq!(
            backend_sent, client_received,
            "tunnel {id}: backend → client"
        );
    }
    eprintln!(
        "{TUNNELS} tunnels × {} MiB each way in {elapsed:?}",
        BULK >> 20
    );
    let up = metric(
        &gw,
        "portcullis_stream_bytes_total",
        &[("route", "bulk"), ("direction", "upstream")],
    );
    assert!(up >= (TUNNELS * BULK) as f64, "{up}");
}

#[test]
fn reload_adds_a_route_without_disturbing_an_open_tunnel() {
    let port = echo_then_bye();
    let gw = start(Setup {
        hello_timeout: "5s",
        server: "",
        services: service("raw", port, "first", &["first.example.com"]),
    });
    let mut tunnel = TcpStream::connect(("127.0.0.1", gw.stream_port())).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let hello = client_hello("first.example.com");
    tunnel.write_all(&hello).unwrap();
    let mut echoed = vec![0u8; hello.len()];
    tunnel.read_exact(&mut echoed).unwrap();

    gw.conf().write(
        "gateway.yaml",
        format!(
            "services:\n{}{}",
            service("raw", port, "first", &["first.example.com"]),
            service("raw2", port, "second", &["second.example.com"])
        ),
    );
    let second = client_hello("second.example.com");
    wait_until("the reloaded route", Duration::from_secs(15), || {
        let mut s = TcpStream::connect(("127.0.0.1", gw.stream_port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&second).unwrap();
        let mut first = [0u8; 1];
        // Echoed ClientHello (starts with 22) once routed; alert (21) before.
        matches!(s.read(&mut first), Ok(1) if first[0] == 22)
    });
    tunnel.write_all(b"still here").unwrap();
    let mut answer = [0u8; 10];
    tunnel.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"still here");
}

#[test]
fn graceful_shutdown_stops_accepting_and_lets_tunnels_finish() {
    let port = echo_then_bye();
    let mut gw = start(Setup {
        hello_timeout: "5s",
        server: "  graceful_shutdown_seconds: 5\n",
        services: service("raw", port, "raw", &["raw.example.com"]),
    });
    let stream_port = gw.stream_port();
    let hello = client_hello("raw.example.com");
    let mut tunnel = TcpStream::connect(("127.0.0.1", stream_port)).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    tunnel.write_all(&hello).unwrap();
    let mut echoed = vec![0u8; hello.len()];
    tunnel.read_exact(&mut echoed).unwrap();

    gw.signal("TERM");
    wait_until(
        "the stream listener to stop accepting",
        Duration::from_secs(5),
        || !accepts_tunnel(stream_port, &hello),
    );
    tunnel.write_all(b"during grace").unwrap();
    let mut answer = [0u8; 12];
    tunnel
        .read_exact(&mut answer)
        .expect("the open tunnel still relays");
    assert_eq!(&answer, b"during grace");
    tunnel.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye");
    assert!(
        gw.wait_exit(Duration::from_secs(20)).is_some(),
        "gateway did not exit after the grace period"
    );
}

/// Whether a new connection on `port` gets routed (its ClientHello echoed back).
fn accepts_tunnel(port: u16, hello: &[u8]) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(hello).is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(s.read(&mut first), Ok(1))
}

#[test]
fn passthrough_to_an_upstream_uses_its_health_checks() {
    // A passthrough service naming an upstream shares the HTTP side's balancer: a refused connect
    // counts as a passive failure, the target is ejected (and exported as unhealthy), and new
    // connections go only to healthy targets.
    let good = echo_then_bye();
    let dead = common::closed_port();
    let services = format!(
        "  - name: pool\n    host: db-pool\n    port: 5432\n    protocol: tcp\n    routes:\n      - name: pooled\n        protocols: [tls_passthrough]\n        snis: [\"db.example.com\"]\nupstreams:\n  - name: db-pool\n    healthchecks:\n      passive:\n        unhealthy:\n          tcp_failures: 1\n    targets:\n      - target: 127.0.0.1:{good}\n      - target: 127.0.0.1:{dead}\n"
    );
    let gw = start(Setup {
        hello_timeout: "5s",
        server: "",
        services,
    });
    let hello = client_hello("db.example.com");
    for i in 0..6 {
        assert!(
            accepts_tunnel(gw.stream_port(), &hello),
            "connection {i} was not routed to the healthy target"
        );
    }
    let dead_label = format!("127.0.0.1:{dead}");
    let good_label = format!("127.0.0.1:{good}");
    wait_until(
        "the dead target to be ejected",
        Duration::from_secs(5),
        || {
            metric(
                &gw,
                "portcullis_upstream_target_health",
                &[("target", dead_label.as_str()), ("state", "unhealthy")],
            ) == 1.0
        },
    );
    assert_eq!(
        metric(
            &gw,
            "portcullis_upstream_target_health",
            &[("target", good_label.as_str()), ("state", "healthy")],
        ),
        1.0
    );
    // Once ejected, the dead target is no longer tried: no further connect warnings for it.
    let warnings_before = gw.log().matches("stream upstream connect failed").count();
    for _ in 0..4 {
        assert!(accepts_tunnel(gw.stream_port(), &hello));
    }
    assert_eq!(
        gw.log().matches("stream upstream connect failed").count(),
        warnings_before,
        "an ejected target was still tried"
    );
}
