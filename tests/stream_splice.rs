//! The stream listener's zero-copy path through the real binary: a plain TCP client through
//! Pingora's listener is relayed with splice(2) (asserted on `portcullis_stream_relays_total`,
//! so a silent fallback to copying fails here), bytes sent in the ClientHello's own segment are
//! not lost (the listener must not buffer reads), a bulk exchange is byte-exact both ways and
//! the byte counters are exact.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::metrics::value;
use common::Gateway;
use openssl::ssl::{HandshakeError, SslConnector, SslMethod};

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

fn start(upstream: u16) -> Gateway {
    let builder = Gateway::builder().no_settings();
    let p = builder.ports();
    let settings = format!(
        "listeners:\n  proxy: [{{address: \"127.0.0.1:{http}\"}}]\n  stream: [{{address: \"127.0.0.1:{stream}\"}}]\n  status: {{address: \"127.0.0.1:{status}\"}}\nserver:\n  threads: 2\n",
        http = p.http,
        stream = p.stream,
        status = p.status,
    );
    let services = format!(
        "services:\n  - name: echo\n    url: tcp://127.0.0.1:{upstream}\n    routes:\n      - name: splice-route\n        protocols: [tls_passthrough]\n        snis: [\"splice.example.com\"]\n"
    );
    builder
        .file("00-listeners.yaml", settings)
        .file("gateway.yaml", services)
        .start()
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&gw.metrics(), name, labels).unwrap_or(0.0)
}

#[test]
fn plain_tcp_tunnel_is_spliced_byte_exact_with_exact_counters() {
    const BULK: usize = 3 << 20;
    let gw = start(echo_then_bye());
    let mut sent = client_hello("splice.example.com");
    // Bytes in the ClientHello's segment: a read buffer in the listener would swallow them.
    sent.extend_from_slice(b"early bytes");
    sent.extend((0..BULK).map(|i| (i * 7 % 251) as u8));

    let mut s = TcpStream::connect(("127.0.0.1", gw.stream_port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let to_send = sent.clone();
    let send = std::thread::spawn(move || {
        writer.write_all(&to_send).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the gateway closes after the upstream");
    send.join().unwrap();
    let mut expected = sent.clone();
    expected.extend_from_slice(b"bye");
    assert!(
        got == expected,
        "echo differs ({} vs {} bytes)",
        got.len(),
        expected.len()
    );

    let route = [("route", "splice-route"), ("result", "closed")];
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&gw, "portcullis_stream_connections_total", &route) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "connection not counted: {}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let relays = |path| metric(&gw, "portcullis_stream_relays_total", &[("path", path)]);
    assert_eq!((relays("splice"), relays("copy")), (1.0, 0.0));
    let bytes = |direction| {
        metric(
            &gw,
            "portcullis_stream_bytes_total",
            &[("route", "splice-route"), ("direction", direction)],
        )
    };
    assert_eq!(bytes("upstream"), sent.len() as f64);
    assert_eq!(bytes("downstream"), expected.len() as f64);
}
