//! Connection exhaustion on the proxy listeners: `client_header_timeout` closes slow-header
//! (slowloris) clients while others are served, `max_connections` caps what one listener holds,
//! `tls_handshake_timeout` closes TLS clients that never finish their ClientHello.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const CLOSED: &str = "portcullis_connections_closed_total";
/// Generous upper bound for the gateway to act; the tests wait for events, never for time.
const DEADLINE: Duration = Duration::from_secs(60);

/// A gateway whose listeners carry `http_extra` / `https_extra` setting lines.
fn gateway(http_extra: &str, https_extra: &str) -> Gateway {
    let echo = HttpEcho::start("echo");
    let b = Gateway::builder().no_settings();
    let p = b.ports();
    let pki = Pki::new();
    let leaf = pki.server_leaf("api", &["DNS:api.example.com"]);
    let gw = b
        .file("certs/api.chain.crt", &leaf.chain_pem)
        .file("certs/api.key", &leaf.key_pem)
        .file(
            "gateway.yaml",
            format!(
                r#"
listeners:
  proxy:
    - address: 127.0.0.1:{http}
{http_extra}
    - address: 127.0.0.1:{https}
      tls: true
{https_extra}
  status:
    address: 127.0.0.1:{status}
server:
  threads: 1
  graceful_shutdown_seconds: 1
certificates:
- name: api
  cert_file: certs/api.chain.crt
  key_file: certs/api.key
  snis: [api.example.com]
services:
- name: echo
  url: {echo}
  routes:
  - name: all
    paths: [/]
"#,
                http = p.http,
                https = p.https,
                status = p.status,
                echo = echo.url(),
            ),
        )
        .try_start_on(p.status)
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    // The echo lives as long as the test process; the gateway only needs its address.
    std::mem::forget(echo);
    gw
}

/// Whether the server closed this connection (EOF or reset), without blocking.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

fn closed_count(gw: &Gateway, listener_port: u16, reason: &str) -> f64 {
    let listener = format!("127.0.0.1:{listener_port}");
    metrics::value(
        &gw.metrics(),
        CLOSED,
        &[("listener", listener.as_str()), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[test]
fn slow_header_clients_are_closed_after_the_deadline_while_others_are_served() {
    let gw = gateway(
        "      client_header_timeout: 2s\n      max_connections: 5000",
        "",
    );
    let port = gw.http_port();
    const SLOW: usize = 2000;
    let request = b"GET / HTTP/1.1\r\nHost: slow.test\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut slow: Vec<(TcpStream, usize)> = (0..SLOW)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(&request[..1]).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, 1)
        })
        .collect();

    // While every slow client is open (and still trickling bytes), a normal client is served.
    let r = Curl::at("http", "fast.test", port, "/served").run();
    assert_eq!(r.status, 200, "{r:#?}");

    // One header byte at a time, each well within Pingora's 60 s per-read timeout: only a
    // deadline on the whole header ends these.
    let deadline = Instant::now() + DEADLINE;
    let mut open = SLOW;
    while open > 0 && Instant::now() < deadline {
        open = 0;
        for (s, sent) in slow.iter_mut() {
            if *sent == usize::MAX {
                continue;
            }
            if closed_by_server(s) {
                *sent = usize::MAX;
                continue;
            }
            open += 1;
            if *sent < request.len() && s.write(&request[*sent..*sent + 1]).is_ok() {
                *sent += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(open, 0, "{open} of {SLOW} slow clients still open");
    assert!(
        slow.iter().all(|(_, sent)| *sent == usize::MAX),
        "every slow client was closed by the gateway"
    );
    assert!(closed_count(&gw, port, "client_header_timeout") >= SLOW as f64);
    // And the listener still serves.
    let r = Curl::at("http", "fast.test", port, "/after").run();
    assert_eq!(r.status, 200, "{r:#?}");
}

#[test]
fn connections_over_max_connections_are_closed_and_slots_come_back() {
    let gw = gateway("      max_connections: 3", "");
    let port = gw.http_port();
    // Three keep-alive connections, each answered once, hold the three slots.
    let mut held: Vec<KeepAlive> = (0..3)
        .map(|_| {
            let mut k = KeepAlive::connect(port, "held.test").unwrap();
            assert_eq!(k.get("/held", &[]).unwrap().status, 200);
            k
        })
        .collect();
    let r = Curl::at("http", "extra.test", port, "/extra").run();
    assert_eq!(
        r.status, 0,
        "a fourth connection is closed unanswered: {r:#?}"
    );
    assert!(closed_count(&gw, port, "max_connections") >= 1.0);

    held.pop();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = Curl::at("http", "extra.test", port, "/extra").run();
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(held[0].get("/still", &[]).unwrap().status, 200);
}

#[test]
fn tls_clients_without_a_client_hello_are_closed_after_the_handshake_deadline() {
    let gw = gateway("", "      tls_handshake_timeout: 1s");
    let port = gw.https_port();
    // The first byte of a handshake record, then nothing.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent.write_all(&[22]).unwrap();
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let start = Instant::now();
    let mut b = [0u8; 16];
    let n = silent.read(&mut b);
    assert!(
        matches!(n, Ok(0)) || n.is_err() && start.elapsed() < DEADLINE,
        "still open: {n:?}"
    );
    assert!(closed_count(&gw, port, "tls_handshake_timeout") >= 1.0);
    // A client that speaks is unaffected.
    let served = TlsProbe::new(port).sni("api.example.com").run();
    assert!(served.is_ok(), "{served:?}");
}

#[test]
fn bad_listener_limits_are_refused_with_their_location() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        "listeners:\n  proxy:\n    - address: 127.0.0.1:1\n      max_connections: 0\n      client_header_timeout: soon\n",
    );
    let out = check(&conf);
    assert_ne!(out.code, 0, "{}", out.all());
    let all = out.all();
    assert!(
        all.contains("gateway.yaml:4:24: listeners.proxy[0].max_connections"),
        "{all}"
    );
    assert!(
        all.contains("gateway.yaml:5:30: listeners.proxy[0].client_header_timeout"),
        "{all}"
    );
}
