//! Black-box tests of gRPC through the gateway (issue 3): a `grpc` service (h2c upstream) and a
//! `grpcs` service (HTTP/2 over verified TLS), reached by gRPC-style calls (HTTP/2 POST,
//! `content-type: application/grpc`, length-prefixed messages, `grpc-status` in the trailers)
//! over the TLS listener with ALPN h2 and over plaintext h2c on the HTTP listener; several
//! concurrent calls share one upstream connection (`max_h2_streams` > 1); a `grpc` service
//! whose host is an upstream balances calls over its targets.
//!
//! Client and servers use the `h2` crate so trailers are checked frame by frame, which curl
//! cannot show reliably.

mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::upstream::RT;
use common::*;
use http::{HeaderMap, Request, Response};
use openssl::ssl::{
    select_next_proto, AlpnError, SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// gRPC wire format: 1 byte compressed flag, 4 bytes big-endian length, the message.

fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// The messages of a body; panics on a malformed one (the gateway must not alter framing).
fn unframe(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "truncated gRPC frame header: {body:?}");
        assert_eq!(body[0], 0, "compressed flag set");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "truncated gRPC message");
        out.push(body[5..5 + len].to_vec());
        body = &body[5 + len..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A unary gRPC-style server: answers each call with one JSON message describing the call.

#[derive(Default)]
struct GrpcStats {
    connections: AtomicUsize,
    /// Calls whose request was fully received.
    received: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

struct GrpcServer {
    name: String,
    port: u16,
    stats: Arc<GrpcStats>,
    /// `false` holds every answer until set back to `true`.
    gate: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl GrpcServer {
    /// h2c (prior knowledge), or h2 over TLS with ALPN when `tls` is `(chain, key)`.
    fn start(name: &str, tls: Option<(&std::path::Path, &std::path::Path)>) -> GrpcServer {
        let acceptor = tls.map(|(chain, key)| {
            let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("acceptor");
            b.set_certificate_chain_file(chain).expect("chain");
            b.set_private_key_file(key, SslFiletype::PEM).expect("key");
            b.set_alpn_select_callback(|_, client| {
                select_next_proto(b"\x02h2", client).ok_or(AlpnError::NOACK)
            });
            Arc::new(b.build())
        });
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("non-blocking");
        let port = std_listener.local_addr().expect("addr").port();
        let stats = Arc::new(GrpcStats::default());
        let (gate, gate_rx) = watch::channel(true);
        let name_s = name.to_string();
        let st = stats.clone();
        let accept = RT.spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let conn_id = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let ctx = Conn {
                    server: name_s.clone(),
                    conn_id,
                    tls: acceptor.is_some(),
                    stats: st.clone(),
                    gate: gate_rx.clone(),
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_h2(tcp, ctx).await,
                        Some(a) => {
                            let Ok(ssl) = openssl::ssl::Ssl::new(a.context()) else {
                                return;
                            };
                            let Ok(mut s) = tokio_openssl::SslStream::new(ssl, tcp) else {
                                return;
                            };
                            if Pin::new(&mut s).accept().await.is_err() {
                                return;
                            }
                            serve_h2(s, ctx).await
                        }
                    }
                });
            }
        });
        GrpcServer {
            name: name.to_string(),
            port,
            stats,
            gate,
            accept,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }
    fn received(&self) -> usize {
        self.stats.received.load(Ordering::SeqCst)
    }
    fn hold(&self, hold: bool) {
        let _ = self.gate.send(!hold);
    }
}

#[derive(Clone)]
struct Conn {
    server: String,
    conn_id: usize,
    tls: bool,
    stats: Arc<GrpcStats>,
    gate: watch::Receiver<bool>,
}

async fn serve_h2<S>(io: S, ctx: Conn)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(answer(req, respond, ctx.clone()));
    }
}

async fn answer(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    ctx: Conn,
) {
    let (parts, mut body) = req.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let s = &ctx.stats;
    s.received.fetch_add(1, Ordering::SeqCst);
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let mut gate = ctx.gate.clone();
    let _ = gate.wait_for(|open| *open).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);

    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if parts.uri.path().ends_with("/Missing") {
        // Trailers-Only: one HEADERS frame with END_STREAM carrying the gRPC status.
        let resp = Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "5")
            .header("grpc-message", "no such thing")
            .body(())
            .expect("response");
        let _ = respond.send_response(resp, true);
        return;
    }
    let messages = unframe(&data);
    let reply = json!({
        "server": ctx.server,
        "conn": ctx.conn_id,
        "tls": ctx.tls,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "authority": parts.uri.authority().map(|a| a.to_string()),
        "content_type": header("content-type"),
        "te": header("te"),
        "x_request_id": header("x-request-id"),
        "messages": messages.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect::<Vec<_>>(),
    });
    let resp = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .expect("response");
    let Ok(mut stream) = respond.send_response(resp, false) else {
        return;
    };
    if stream
        .send_data(frame(reply.to_string().as_bytes()), false)
        .is_err()
    {
        return;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("value"));
    trailers.insert("grpc-message", "OK".parse().expect("value"));
    let _ = stream.send_trailers(trailers);
}

// ---------------------------------------------------------------------------------------------
// The client side.

type Sender = h2::client::SendRequest<Bytes>;

/// HTTP/2 over TLS with ALPN h2 to the gateway's TLS listener (its certificate is not checked:
/// downstream TLS is tested elsewhere).
async fn connect_tls(port: u16, sni: &str) -> Sender {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect TLS listener");
    let mut b = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    b.set_verify(SslVerifyMode::NONE);
    b.set_alpn_protos(b"\x02h2").expect("alpn");
    let mut cfg = b.build().configure().expect("configure");
    cfg.set_verify_hostname(false);
    let ssl = cfg.into_ssl(sni).expect("ssl");
    let mut s = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
    Pin::new(&mut s).connect().await.expect("TLS handshake");
    assert_eq!(
        s.ssl().selected_alpn_protocol(),
        Some(&b"h2"[..]),
        "the TLS listener must negotiate h2"
    );
    let (send, conn) = h2::client::handshake(s).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// HTTP/2 with prior knowledge (h2c) to the plaintext listener.
async fn connect_h2c(port: u16) -> Sender {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect HTTP listener");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    messages: Vec<Vec<u8>>,
    trailers: Option<HeaderMap>,
}

impl Reply {
    /// `grpc-status` from the trailers, or from the headers of a Trailers-Only answer.
    fn grpc_status(&self) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
    }
    /// The one reply message, as the server's JSON.
    fn json(&self) -> Value {
        assert_eq!(self.messages.len(), 1, "one reply message: {self:?}");
        serde_json::from_slice(&self.messages[0]).expect("reply message is JSON")
    }
}

/// One unary call: `POST scheme://authority/path` with a framed `msg`.
async fn call(send: &Sender, scheme: &str, authority: &str, path: &str, msg: &str) -> Reply {
    let req = Request::builder()
        .method("POST")
        .uri(format!("{scheme}://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "10S")
        .body(())
        .expect("request");
    let mut send = send.clone().ready().await.expect("connection ready");
    let (resp, mut body_tx) = send.send_request(req, false).expect("send request");
    body_tx
        .send_data(frame(msg.as_bytes()), true)
        .expect("send message");
    let resp = tokio::time::timeout(DEADLINE, resp)
        .await
        .expect("answer in time")
        .expect("response");
    let (parts, mut body) = resp.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("response data");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers");
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        messages: unframe(&data),
        trailers,
    }
}

#[track_caller]
fn assert_ok(r: &Reply, msg: &str) -> Value {
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/grpc"),
        "{r:?}"
    );
    let trailers = r
        .trailers
        .as_ref()
        .unwrap_or_else(|| panic!("no trailers: {r:?}"));
    assert_eq!(
        trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("0"),
        "grpc-status trailer: {r:?}"
    );
    assert_eq!(
        trailers.get("grpc-message").and_then(|v| v.to_str().ok()),
        Some("OK"),
        "{r:?}"
    );
    let j = r.json();
    assert_eq!(j["messages"], json!([msg]), "{j}");
    assert_eq!(j["method"], "POST");
    assert_eq!(j["content_type"], "application/grpc");
    assert_eq!(
        j["te"], "trailers",
        "gRPC servers may insist on `te: trailers`: {j}"
    );
    j
}

fn grpc_route(name: &str, host: &str) -> String {
    format!(
        "  routes:\n  - name: {name}\n    protocols: [grpc, grpcs]\n    hosts: [{host}]\n    paths: [/echo.Echo/]\n    strip_path: false\n"
    )
}

// ---------------------------------------------------------------------------------------------

#[test]
fn grpc_and_grpcs_services_answer_calls_over_tls_h2_and_h2c() {
    let pki = Pki::new();
    let plain = GrpcServer::start("h2c-upstream", None);
    let tls = GrpcServer::start(
        "h2-tls-upstream",
        Some((&pki.server.chain_path, &pki.server.key_path)),
    );
    let yaml = format!(
        "ca_certificates:
- name: root
  cert_file: certs/root.crt
services:
- name: grpc-plain
  url: grpc://{}
{}- name: grpc-tls
  url: grpcs://{}
  ca_certificates: [root]
{}",
        plain.addr(),
        grpc_route("grpc-plain", "grpc.test"),
        tls.addr(),
        grpc_route("grpc-tls", "grpcs.test"),
    );
    let gw = Gateway::builder()
        .with_h2c()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("gateway.yaml", yaml)
        .start();
    let (http, https) = (gw.http_port(), gw.https_port());

    RT.block_on(async {
        // Over the TLS listener, ALPN h2.
        let s = connect_tls(https, "grpc.test").await;
        let r = call(&s, "https", "grpc.test", "/echo.Echo/Say", "hello plain").await;
        let j = assert_ok(&r, "hello plain");
        assert_eq!(j["server"], "h2c-upstream");
        assert_eq!(j["tls"], false);
        assert_eq!(j["path"], "/echo.Echo/Say");
        let rid = r
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id on the answer");
        assert_eq!(j["x_request_id"], rid, "the request id is passed upstream");

        let s = connect_tls(https, "grpcs.test").await;
        let r = call(&s, "https", "grpcs.test", "/echo.Echo/Say", "hello tls").await;
        let j = assert_ok(&r, "hello tls");
        assert_eq!(j["server"], "h2-tls-upstream");
        assert_eq!(j["tls"], true);

        // A gRPC error status (Trailers-Only answer) reaches the client unchanged.
        let r = call(&s, "https", "grpcs.test", "/echo.Echo/Missing", "?").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.grpc_status(), Some("5"), "{r:?}");

        // Plaintext h2c on the HTTP listener.
        let s = connect_h2c(http).await;
        for (host, server) in [
            ("grpc.test", "h2c-upstream"),
            ("grpcs.test", "h2-tls-upstream"),
        ] {
            let r = call(&s, "http", host, "/echo.Echo/Say", "over h2c").await;
            let j = assert_ok(&r, "over h2c");
            assert_eq!(j["server"], server);
        }
    });

    // HTTP/1.1 still works on the same plaintext listener (h2c is detected by its preface).
    let r = Curl::at("http", "nothing.test", http, "/").run();
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.http_version, "1.1");
}

#[test]
fn concurrent_calls_share_one_upstream_connection() {
    let pki = Pki::new();
    let plain = GrpcServer::start("h2c-upstream", None);
    let tls = GrpcServer::start(
        "h2-tls-upstream",
        Some((&pki.server.chain_path, &pki.server.key_path)),
    );
    let yaml = format!(
        "ca_certificates:
- name: root
  cert_file: certs/root.crt
services:
- name: grpc-plain
  url: grpc://{}
{}- name: grpc-tls
  url: grpcs://{}
  ca_certificates: [root]
{}",
        plain.addr(),
        grpc_route("grpc-plain", "grpc.test"),
        tls.addr(),
        grpc_route("grpc-tls", "grpcs.test"),
    );
    let gw = Gateway::builder()
        .with_h2c()
        .file("certs/root.crt", &pki.root.cert_pem)
        .file("gateway.yaml", yaml)
        .start();
    let https = gw.https_port();
    const N: usize = 6;

    for (server, host) in [(&plain, "grpc.test"), (&tls, "grpcs.test")] {
        RT.block_on(async {
            let s = connect_tls(https, host).await;
            // Each call starts once the previous one reached the upstream, so Pingora has put
            // the connection back into its in-use pool; the upstream holds every answer until
            // all N are in flight at once.
            server.hold(true);
            let mut calls = Vec::new();
            for k in 0..N {
                let s = s.clone();
                let host = host.to_string();
                calls.push(tokio::spawn(async move {
                    call(&s, "https", &host, "/echo.Echo/Say", &format!("call {k}")).await
                }));
                let deadline = Instant::now() + DEADLINE;
                while server.received() < k + 1 {
                    assert!(
                        Instant::now() < deadline,
                        "{}: call {k} never reached the upstream ({} connections)",
                        server.name,
                        server.connections()
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            assert_eq!(
                server.stats.in_flight.load(Ordering::SeqCst),
                N,
                "{}: all calls in flight together",
                server.name
            );
            server.hold(false);
            for (k, c) in calls.into_iter().enumerate() {
                let r = c.await.expect("call task");
                assert_ok(&r, &format!("call {k}"));
            }
        });
        assert_eq!(
            server.connections(),
            1,
            "{}: {N} concurrent calls must share one HTTP/2 connection (max_h2_streams > 1)",
            server.name
        );
        assert_eq!(server.stats.max_in_flight.load(Ordering::SeqCst), N);
    }
}

#[test]
fn a_grpc_service_balances_over_upstream_targets() {
    let a = GrpcServer::start("a", None);
    let b = GrpcServer::start("b", None);
    let yaml = format!(
        "upstreams:
- name: grpc-up
  targets:
  - target: {}
  - target: {}
services:
- name: grpc-lb
  url: grpc://grpc-up
{}",
        a.addr(),
        b.addr(),
        grpc_route("grpc-lb", "lb.test"),
    );
    let gw = Gateway::start(&yaml);
    let https = gw.https_port();
    RT.block_on(async {
        let s = connect_tls(https, "lb.test").await;
        let mut seen = std::collections::BTreeMap::new();
        for k in 0..10 {
            let msg = format!("m{k}");
            let r = call(&s, "https", "lb.test", "/echo.Echo/Say", &msg).await;
            let j = assert_ok(&r, &msg);
            *seen
                .entry(j["server"].as_str().unwrap_or("").to_string())
                .or_insert(0) += 1;
        }
        assert_eq!(
            seen,
            std::collections::BTreeMap::from([("a".to_string(), 5), ("b".to_string(), 5)]),
            "round-robin over two h2c targets"
        );
    });
}
