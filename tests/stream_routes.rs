//! Kong's `tls` and `tcp` stream routes through the real binary: a `tls` route terminating TLS on
//! the stream listener with the certificate chosen by SNI (openssl s_client and an OpenSSL client
//! verifying it with the test CA), relaying to a plain TCP echo backend as in seed 001, or
//! re-encrypting to a verified TLS backend (a backend with the wrong certificate is refused);
//! `tcp` routes by source and destination on a plain stream listener with Kong's priorities;
//! `tls_passthrough`, `tls` and `tcp` served together by one gateway (a KIC-style config); a
//! reload swapping the certificate a `tls` route serves; and `check` refusing stream routes Kong
//! refuses.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::metrics::value;
use common::*;
use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode};

/// A TCP (or TLS) backend standing for seed 001's echo pods: greets every connection with
/// `greeting`, then echoes each line back until the client sends `quit` or closes.
struct EchoBackend {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// Subject CN of the client certificate of each TLS connection ("-" without one).
    client_cns: Arc<Mutex<Vec<String>>>,
}

impl EchoBackend {
    fn plain(greeting: &str) -> EchoBackend {
        EchoBackend::start(greeting, None)
    }

    /// Serves TLS with `leaf`; asks for a client certificate issued by `client_ca` when given.
    fn tls(greeting: &str, leaf: &Leaf, client_ca: Option<&Path>) -> EchoBackend {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        b.set_certificate_chain_file(&leaf.chain_path).unwrap();
        b.set_private_key_file(&leaf.key_path, SslFiletype::PEM)
            .unwrap();
        if let Some(ca) = client_ca {
            b.set_ca_file(ca).unwrap();
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        EchoBackend::start(greeting, Some(Arc::new(b.build())))
    }

    fn start(greeting: &str, tls: Option<Arc<SslAcceptor>>) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let client_cns = Arc::new(Mutex::new(Vec::new()));
        let greeting = greeting.to_string();
        let (count, cns) = (connections.clone(), client_cns.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let (greeting, tls, cns) = (greeting.clone(), tls.clone(), cns.clone());
                std::thread::spawn(move || match tls {
                    None => echo(stream, &greeting),
                    Some(acceptor) => {
                        let Ok(s) = acceptor.accept(stream) else {
                            return;
                        };
                        let cn = s
                            .ssl()
                            .peer_certificate()
                            .and_then(|c| {
                                c.subject_name()
                                    .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                                    .next()
                                    .and_then(|e| e.data().to_string().ok())
                            })
                            .unwrap_or_else(|| "-".into());
                        cns.lock().unwrap().push(cn);
                        echo(s, &greeting);
                    }
                });
            }
        });
        EchoBackend {
            port,
            connections,
            client_cns,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

fn echo<S: Read + Write>(s: S, greeting: &str) {
    let mut s = BufReader::new(s);
    if s.get_mut().write_all(greeting.as_bytes()).is_err() {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        match s.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line.trim() == "quit" => return,
            Ok(_) => {
                if s.get_mut().write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// Listener ports: HTTP proxy, TLS stream, two plain stream listeners, status.
struct Listeners {
    http: u16,
    tls: u16,
    tcp: u16,
    tcp2: u16,
    status: u16,
}

fn start(certs: &[(&str, &Leaf)], entities: &str) -> (Gateway, Listeners) {
    let builder = Gateway::builder().no_settings();
    let p = builder.ports();
    let [tcp, tcp2] = free_ports::<2>(&[p.http, p.https, p.status, p.stream]);
    let ports = Listeners {
        http: p.http,
        tls: p.stream,
        tcp,
        tcp2,
        status: p.status,
    };
    let settings = format!(
        "listeners:\n  proxy: [{{address: \"127.0.0.1:{http}\"}}]\n  stream:\n    - address: 127.0.0.1:{tls}\n    - address: 127.0.0.1:{tcp}\n      tls: false\n    - address: 127.0.0.1:{tcp2}\n      tls: false\n  status: {{address: \"127.0.0.1:{status}\"}}\nserver:\n  threads: 2\n",
        http = ports.http,
        tls = ports.tls,
        tcp = ports.tcp,
        tcp2 = ports.tcp2,
        status = ports.status,
    );
    let mut builder = builder.file("00-listeners.yaml", settings);
    for (name, leaf) in certs {
        builder = builder
            .file(&format!("certs/{name}.crt"), &leaf.chain_pem)
            .file(&format!("certs/{name}.key"), &leaf.key_pem);
    }
    let entities = entities
        .replace("{tcp}", &ports.tcp.to_string())
        .replace("{tcp2}", &ports.tcp2.to_string())
        .replace("{tls}", &ports.tls.to_string());
    (builder.file("gateway.yaml", entities).start(), ports)
}

/// `openssl s_client` verifying with `ca`, sending `input`; stdout and stderr together.
fn s_client(port: u16, sni: &str, ca: &Path, input: &str) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", sni, "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-brief", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An OpenSSL client verifying the gateway's certificate for `sni` with `ca`: reads the greeting,
/// checks one echoed line, says quit; returns the greeting and the served leaf's serial.
fn tls_exchange(port: u16, sni: &str, ca: &Path) -> Result<(String, String), String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_ca_file(ca).unwrap();
    let connector = b.build();
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tls = connector.connect(sni, tcp).map_err(|e| e.to_string())?;
    let serial = serial_hex(tls.ssl().peer_certificate().as_ref().unwrap());
    let mut s = BufReader::new(tls);
    let greeting = read_lines(&mut s, 2)?;
    s.get_mut().write_all(b"ping over tls\n").unwrap();
    let echoed = read_lines(&mut s, 1)?;
    assert_eq!(echoed, "ping over tls\n");
    s.get_mut().write_all(b"quit\n").unwrap();
    Ok((greeting, serial))
}

fn read_lines<R: BufRead>(r: &mut R, n: usize) -> Result<String, String> {
    let mut out = String::new();
    for _ in 0..n {
        match r.read_line(&mut out) {
            Ok(0) => return Err(format!("closed after {out:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("{e} after {out:?}")),
        }
    }
    Ok(out)
}

/// A plain TCP client from `source` (a 127.0.0.x address): the greeting line, then quit.
fn tcp_greeting(source: &str, port: u16) -> Result<String, String> {
    let tcp = connect_from(source, port).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = BufReader::new(tcp);
    let greeting = read_lines(&mut s, 1)?;
    s.get_mut().write_all(b"quit\n").unwrap();
    Ok(greeting)
}

/// Connects to 127.0.0.1:port from `source`: binding a client socket to any 127.0.0.x works on
/// Linux loopback. std cannot bind before connecting; tokio's `TcpSocket` can.
fn connect_from(source: &str, port: u16) -> std::io::Result<TcpStream> {
    let from = SocketAddr::new(source.parse().expect("an IPv4 address"), 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(from)?;
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&gw.metrics(), name, labels).unwrap_or(0.0)
}

/// A `tls` route's handshake accepts the same key-exchange groups as the HTTPS listeners: the
/// post-quantum hybrid first by default, only `tls.groups` when set.
#[test]
fn tls_route_handshake_offers_the_configured_key_exchange_groups() {
    let pki = Pki::new();
    let demo = pki.server_leaf("demo", &["DNS:demo.example.com"]);
    let backend = EchoBackend::plain(POD);
    let entities = |groups: &str| {
        format!(
            r#"{groups}
certificates:
- name: demo
  cert_file: certs/demo.crt
  key_file: certs/demo.key
  snis: [demo.example.com]
services:
- name: tcp-echo
  url: tcp://127.0.0.1:{backend}
  routes:
  - name: demo-tls
    protocols: [tls]
    snis: [demo.example.com]
"#,
            backend = backend.port,
        )
    };
    let (_gw, ports) = start(&[("demo", &demo)], &entities(""));
    let pq = TlsProbe::new(ports.tls)
        .sni("demo.example.com")
        .groups("X25519:X25519MLKEM768")
        .run()
        .expect("handshake");
    assert_eq!(pq.group.as_deref(), Some("X25519MLKEM768"));
    let classical = TlsProbe::new(ports.tls)
        .sni("demo.example.com")
        .groups("X25519")
        .run()
        .expect("a classical-only client connects");
    assert_eq!(classical.group.as_deref(), Some("x25519"));

    let (_gw, ports) = start(
        &[("demo", &demo)],
        &entities("tls:\n  groups: [P-256, X25519]"),
    );
    let err = TlsProbe::new(ports.tls)
        .sni("demo.example.com")
        .groups("X25519MLKEM768")
        .run()
        .expect_err("the hybrid group is not configured");
    assert!(!err.is_empty());
    let served = TlsProbe::new(ports.tls)
        .sni("demo.example.com")
        .groups("X25519:P-256")
        .run()
        .expect("handshake");
    assert_eq!(served.group.as_deref(), Some("secp256r1"));
}

const POD: &str = "Running on Pod example-tcproute.\nThrough TLS connection.\n";

#[test]
fn tls_route_terminates_with_the_sni_certificate_and_relays_to_a_plain_tcp_backend() {
    let pki = Pki::new();
    let demo = pki.server_leaf("demo", &["DNS:demo.example.com"]);
    let backend = EchoBackend::plain(POD);
    let idle = EchoBackend::plain("never reached\n");
    let (gw, ports) = start(
        &[("demo", &demo)],
        &format!(
            r#"certificates:
- name: demo
  cert_file: certs/demo.crt
  key_file: certs/demo.key
  snis: [demo.example.com]
services:
- name: tcp-echo
  url: tcp://127.0.0.1:{backend}
  routes:
  - name: demo-tls
    protocols: [tls]
    snis: [demo.example.com]
- name: switched-off
  url: tcp://127.0.0.1:{idle}
  enabled: false
  routes:
  - name: off-tls
    protocols: [tls]
    snis: [off.example.com]
"#,
            backend = backend.port,
            idle = idle.port,
        ),
    );
    let root = &pki.root.cert_path;

    // Seed 001's check, terminated here: s_client verifies the gateway's certificate for the SNI
    // and reads the backend's plain-TCP greeting through the TLS session.
    let out = s_client(ports.tls, "demo.example.com", root, "hello\nquit\n");
    assert!(out.contains("Verification: OK"), "{out}");
    assert!(out.contains("CN = demo.example.com"), "{out}");
    assert!(
        out.contains("Running on Pod example-tcproute.\nThrough TLS connection.\nhello\n"),
        "{out}"
    );

    let (greeting, serial) =
        tls_exchange(ports.tls, "demo.example.com", root).expect("verified exchange");
    assert_eq!(greeting, POD);
    assert_eq!(serial, demo.serial);
    assert_eq!(backend.connections(), 2);

    // A client that does not trust the certificate aborts the handshake: nothing reaches the
    // backend.
    let err = tls_exchange(ports.tls, "demo.example.com", &pki.other_root.cert_path).unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
    assert_eq!(backend.connections(), 2);

    // A route of a disabled service serves nothing: the SNI is unknown.
    let err = tls_exchange(ports.tls, "off.example.com", root).unwrap_err();
    assert!(err.contains("unrecognized name"), "{err}");
    assert_eq!(idle.connections(), 0);

    wait_until("the connection metrics", || {
        metric(
            &gw,
            "portcullis_stream_connections_total",
            &[("route", "demo-tls"), ("result", "closed")],
        ) >= 2.0
            && metric(
                &gw,
                "portcullis_stream_connections_total",
                &[("route", "demo-tls"), ("result", "tls_handshake_failed")],
            ) == 1.0
            && value(
                &gw.metrics(),
                "portcullis_stream_active_connections",
                &[("route", "demo-tls")],
            ) == Some(0.0)
    });
    // Plaintext bytes: the greeting twice, the echoes; "hello\n", "ping...", "quit\n" up.
    let down = metric(
        &gw,
        "portcullis_stream_bytes_total",
        &[("route", "demo-tls"), ("direction", "downstream")],
    );
    assert_eq!(
        down as usize,
        2 * POD.len() + "hello\n".len() + "ping over tls\n".len()
    );
    assert!(
        gw.wait_for_log("route=\"demo-tls\"", Duration::from_secs(5)),
        "one log line per connection:\n{}",
        gw.log()
    );
}

#[test]
fn tls_route_reencrypts_to_a_verified_backend_and_refuses_a_wrong_certificate() {
    let pki = Pki::new();
    let demo = pki.server_leaf("demo", &["DNS:demo.example.com", "DNS:bad.example.com"]);
    // The right backend wants a client certificate from the root: the service presents alice.
    let good = EchoBackend::tls(
        "Running on Pod example-tlsroute.\nThrough TLS connection.\n",
        &pki.server,
        Some(&pki.root.cert_path),
    );
    let bad = EchoBackend::tls("never seen\n", &pki.server_other_ca, None);
    let (gw, ports) = start(
        &[("demo", &demo), ("alice", &pki.alice)],
        &format!(
            r#"ca_certificates:
- name: root
  cert: |
{root}
certificates:
- name: demo
  cert_file: certs/demo.crt
  key_file: certs/demo.key
  snis: [demo.example.com, bad.example.com]
- name: alice
  cert_file: certs/alice.crt
  key_file: certs/alice.key
services:
- name: tls-backend
  url: tls://127.0.0.1:{good}
  tls_server_name: kong.example
  ca_certificates: [root]
  client_certificate: alice
  tls_verify_depth: 1
  routes:
  - name: reencrypt
    protocols: [tls]
    snis: [demo.example.com]
- name: bad-backend
  url: tls://127.0.0.1:{bad}
  tls_server_name: kong.example
  ca_certificates: [root]
  routes:
  - name: wrong-cert
    protocols: [tls]
    snis: [bad.example.com]
"#,
            root = indent(&pki.root.cert_pem, 4),
            good = good.port,
            bad = bad.port,
        ),
    );
    let root = &pki.root.cert_path;
    let (greeting, _) = tls_exchange(ports.tls, "demo.example.com", root).expect("re-encrypted");
    assert_eq!(
        greeting,
        "Running on Pod example-tlsroute.\nThrough TLS connection.\n"
    );
    assert_eq!(*good.client_cns.lock().unwrap(), vec!["alice".to_string()]);

    // The client's handshake with the gateway succeeds; the upstream's certificate (another
    // root) does not verify, so the client is closed before a byte of the backend arrives.
    let err = tls_exchange(ports.tls, "bad.example.com", root).unwrap_err();
    assert!(err.starts_with("closed after \"\""), "{err}");
    assert_eq!(bad.connections(), 1);
    wait_until("the failure metrics", || {
        let m = gw.metrics();
        value(
            &m,
            "portcullis_upstream_tls_failures_total",
            &[("service", "bad-backend")],
        )
        .unwrap_or(0.0)
            >= 1.0
            && value(
                &m,
                "portcullis_stream_connections_total",
                &[("route", "wrong-cert"), ("result", "upstream_tls_failed")],
            ) == Some(1.0)
    });
    assert!(
        gw.wait_for_log(
            "unable to get local issuer certificate",
            Duration::from_secs(5)
        ),
        "{}",
        gw.log()
    );
}

const TCP_ROUTES: &str = r#"services:
- name: pod-a
  url: tcp://127.0.0.1:{a}
  routes:
  - name: source-and-port
    protocols: [tcp]
    sources: [{ip: 127.0.0.2}]
    destinations: [{port: {tcp}}]
- name: pod-b
  url: tcp://127.0.0.1:{b}
  routes:
  - name: port-only
    protocols: [tcp]
    destinations: [{ip: 127.0.0.0/8, port: {tcp}}]
- name: pod-c
  url: tcp://127.0.0.1:{c}
  routes:
  - name: source-only
    protocols: [tcp]
    sources: [{ip: 127.0.0.4/32}]
"#;

#[test]
fn tcp_routes_match_sources_and_destinations_with_kongs_priority() {
    let (a, b, c) = (
        EchoBackend::plain("pod a\n"),
        EchoBackend::plain("pod b\n"),
        EchoBackend::plain("pod c\n"),
    );
    let routes = TCP_ROUTES
        .replace("{a}", &a.port.to_string())
        .replace("{b}", &b.port.to_string())
        .replace("{c}", &c.port.to_string());
    let (gw, ports) = start(&[], &routes);

    // Source and destination beat destination alone; a source beats a destination.
    assert_eq!(tcp_greeting("127.0.0.2", ports.tcp).unwrap(), "pod a\n");
    assert_eq!(tcp_greeting("127.0.0.3", ports.tcp).unwrap(), "pod b\n");
    assert_eq!(tcp_greeting("127.0.0.4", ports.tcp).unwrap(), "pod c\n");
    // The second plain listener: only the source route can match there.
    assert_eq!(tcp_greeting("127.0.0.4", ports.tcp2).unwrap(), "pod c\n");
    let refused = tcp_greeting("127.0.0.2", ports.tcp2).unwrap_err();
    assert!(refused.starts_with("closed after"), "{refused}");
    // A plain listener never parses a ClientHello: TLS bytes are relayed as they are.
    let mut raw = TcpStream::connect(("127.0.0.1", ports.tcp)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    raw.write_all(b"\x16\x03\x01 not a hello\n").unwrap();
    let mut got = vec![0u8; "pod b\n\x16\x03\x01 not a hello\n".len()];
    raw.read_exact(&mut got).unwrap();
    assert_eq!(got, b"pod b\n\x16\x03\x01 not a hello\n");
    drop(raw);
    assert_eq!((a.connections(), c.connections()), (1, 2));

    wait_until("the tcp metrics", || {
        let m = gw.metrics();
        let closed = |route| {
            value(
                &m,
                "portcullis_stream_connections_total",
                &[("route", route), ("result", "closed")],
            )
            .unwrap_or(0.0)
        };
        // The harness's readiness probe connects to every listener once: one more connection
        // for the port-only route and one more refused on the second listener.
        closed("source-and-port") == 1.0
            && closed("source-only") == 2.0
            && closed("port-only") >= 2.0
            && value(
                &m,
                "portcullis_stream_connections_total",
                &[("route", ""), ("result", "no_route")],
            )
            .unwrap_or(0.0)
                >= 2.0
    });
}

#[test]
fn kic_style_configuration_serves_tls_tcp_and_passthrough_on_one_gateway() {
    let pki = Pki::new();
    let demo = pki.server_leaf("demo", &["DNS:demo.example.com"]);
    let passthrough_leaf = pki.server_leaf("tlsecho", &["DNS:tlsecho.example.com"]);
    let tlsecho = EchoBackend::tls(
        "Running on Pod example-tlsroute-manifest.\nThrough TLS connection.\n",
        &passthrough_leaf,
        None,
    );
    let tcpecho = EchoBackend::plain(POD);
    let plain = EchoBackend::plain("Running on Pod example-tcpecho.\n");
    // The shapes Kong Ingress Controller writes for a TLSRoute (passthrough), a TCPRoute on a
    // Terminate listener and a TCPRoute on a plain listener: top-level services with nested
    // routes, tags, and destinations naming the listener port.
    let (_gw, ports) = start(
        &[("demo", &demo)],
        &format!(
            r#"_format_version: "3.0"
certificates:
- id: 5f7e2bd4-0000-4000-8000-000000000001
  cert_file: certs/demo.crt
  key_file: certs/demo.key
  snis:
  - name: demo.example.com
  tags: [k8s-name:demo.example.com]
services:
- name: default.tlsecho.1030
  protocol: tcp
  host: 127.0.0.1
  port: {tlsecho}
  routes:
  - name: default.demo-example-passthrough.0.0
    protocols: [tls_passthrough]
    snis: [tlsecho.example.com]
    tags: [k8s-kind:TLSRoute]
- name: default.tcpecho.1025
  protocol: tcp
  host: 127.0.0.1
  port: {tcpecho}
  routes:
  - name: default.demo-example-terminate.0.0
    protocols: [tls]
    snis: [demo.example.com]
    tags: [k8s-kind:TCPRoute]
- name: default.plain.1026
  protocol: tcp
  host: 127.0.0.1
  port: {plain}
  routes:
  - name: default.demo-example-tcp.0.0
    protocols: [tcp]
    destinations:
    - port: {{tcp}}
    tags: [k8s-kind:TCPRoute]
"#,
            tlsecho = tlsecho.port,
            tcpecho = tcpecho.port,
            plain = plain.port,
        ),
    );
    let root = &pki.root.cert_path;
    // Passthrough: the backend's own certificate, verified end to end.
    let (greeting, serial) =
        tls_exchange(ports.tls, "tlsecho.example.com", root).expect("passthrough");
    assert_eq!(
        greeting,
        "Running on Pod example-tlsroute-manifest.\nThrough TLS connection.\n"
    );
    assert_eq!(serial, passthrough_leaf.serial);
    // Terminated on the same listener: the gateway's certificate for the SNI.
    let (greeting, serial) = tls_exchange(ports.tls, "demo.example.com", root).expect("tls");
    assert_eq!(greeting, POD);
    assert_eq!(serial, demo.serial);
    // Plain TCP on the second listener.
    assert_eq!(
        tcp_greeting("127.0.0.1", ports.tcp).unwrap(),
        "Running on Pod example-tcpecho.\n"
    );
}

#[test]
fn check_refuses_stream_routes_kong_refuses() {
    let conf = ConfDir::new().with(
        "gateway.yaml",
        r#"services:
- name: plain
  url: tcp://127.0.0.1:9000
  routes:
  - name: tcp-with-sni
    protocols: [tcp]
    snis: [a.example.com]
  - name: tls-without-match
    protocols: [tls]
  - name: tcp-with-path
    protocols: [tcp]
    destinations: [{port: 9000}]
    paths: [/x]
  - name: mixed
    protocols: [tcp, http]
    destinations: [{port: 9000}]
  - name: empty-net
    protocols: [tcp]
    sources: [{}]
- name: web
  url: http://127.0.0.1:8080
  routes:
  - name: http-with-sources
    paths: [/]
    sources: [{ip: 10.0.0.0/8}]
  - name: tls-to-http
    protocols: [tls]
    snis: [b.example.com]
  - name: bad-cidr
    protocols: [tcp]
    sources: [{ip: 10.0.0.0/40}]
"#,
    );
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    let all = out.all();
    for expected in [
        "conf/gateway.yaml:7:12: services[0].routes[0].snis: 'snis' can only be set when 'protocols' is https, grpcs, tls or tls_passthrough",
        "conf/gateway.yaml:8:5: services[0].routes[1]: a tls route needs at least one of `snis`, `sources` or `destinations`",
        "conf/gateway.yaml:13:13: services[0].routes[2].paths: cannot set 'paths' when 'protocols' is tcp",
        "conf/gateway.yaml:15:17: services[0].routes[3].protocols: tcp and tls (stream) cannot be combined with http, https, grpc or grpcs",
        "conf/gateway.yaml:19:15: services[0].routes[4].sources[0]: needs `ip`, `port` or both",
        "conf/gateway.yaml:25:15: services[1].routes[0].sources: cannot set 'sources' when 'protocols' is http, https, grpc or grpcs",
        "conf/gateway.yaml:26:5: services[1].routes[1]: a tls route needs a service with protocol tcp or tls (service \"web\" is http)",
        "conf/gateway.yaml:31:20: services[1].routes[2].sources[0].ip: invalid prefix length in \"10.0.0.0/40\"",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn check_warns_about_a_tcp_route_no_listener_serves() {
    // Without `listeners`, the default TLS stream port serves tls routes; no plain TCP listener
    // exists by default (as in Kong), so a tcp route is flagged, not refused.
    let conf = ConfDir::new().with(
        "gateway.yaml",
        r#"services:
- name: plain
  url: tcp://127.0.0.1:9000
  routes:
  - name: by-port
    protocols: [tcp]
    destinations: [{port: 9000}]
  - name: terminated
    protocols: [tls]
    snis: [demo.example.com]
"#,
    );
    let out = check(&conf);
    assert_eq!(out.code, 0, "{}", out.all());
    let all = out.all();
    assert!(
        all.contains("conf/gateway.yaml:5:5: services[0].routes[0]")
            && all.contains("no stream listener serves this route: add a listeners.stream entry with `tls: false`"),
        "{all}"
    );
    assert!(!all.contains("routes[1]"), "{all}");
}

#[test]
fn reload_swaps_the_certificate_a_tls_route_terminates_with() {
    let pki = Pki::new();
    let first = pki.server_leaf("first", &["DNS:demo.example.com"]);
    let second = pki.server_leaf("second", &["DNS:demo.example.com"]);
    let backend = EchoBackend::plain(POD);
    let entities = |cert: &str| {
        format!(
            "certificates:\n- name: demo\n  cert_file: certs/{cert}.crt\n  key_file: certs/{cert}.key\n  snis: [demo.example.com]\nservices:\n- name: tcp-echo\n  url: tcp://127.0.0.1:{}\n  routes:\n  - name: demo-tls\n    protocols: [tls]\n    snis: [demo.example.com]\n",
            backend.port
        )
    };
    let (gw, ports) = start(
        &[("first", &first), ("second", &second)],
        &entities("first"),
    );
    let root = &pki.root.cert_path;
    let (_, serial) = tls_exchange(ports.tls, "demo.example.com", root).unwrap();
    assert_eq!(serial, first.serial);

    gw.conf().write("gateway.yaml", entities("second"));
    wait_until("the new certificate", || {
        tls_exchange(ports.tls, "demo.example.com", root)
            .map(|(_, serial)| serial == second.serial)
            .unwrap_or(false)
    });
}

#[test]
fn check_refuses_a_plugin_on_a_stream_route() {
    // Plugins run in HTTP phases: an access-control plugin on a stream route would silently let
    // everyone in, so any is refused; prometheus (metrics are always on) is accepted.
    let conf = ConfDir::new().with(
        "gateway.yaml",
        r#"services:
- name: plain
  url: tcp://127.0.0.1:9000
  routes:
  - name: by-sni
    protocols: [tls]
    snis: [a.example.com]
    plugins:
    - name: prometheus
    - name: request-termination
      config: {status_code: 403}
"#,
    );
    let out = check(&conf);
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(
        out.lines_starting("conf/gateway.yaml:"),
        vec![
            "conf/gateway.yaml:10:13: services[0].routes[0].plugins[1].name: plugin \"request-termination\" cannot run on stream route \"by-sni\" (plugins apply to HTTP routes only here); remove it".to_string()
        ],
        "{}",
        out.all()
    );
}
