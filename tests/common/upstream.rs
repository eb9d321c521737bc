//! Upstream servers the gateway proxies to, run inside the test process on 127.0.0.1:0.
//!
//! They live on one background tokio runtime so plain `#[test]` functions can use them too. The
//! echo servers answer every request with JSON describing what they received, which is how tests
//! observe what the gateway sent upstream (path, headers, client certificate, SNI...).
//!
//! Request headers that steer an echo (passed through the gateway like any header):
//! `x-echo-delay-ms: N` delays the answer, `x-echo-status: N` sets the status code,
//! `x-echo-content-type: T` replaces `application/json`, `x-echo-header: name: value` (repeatable)
//! adds a response header, `x-echo-chunked: 1` sends the body chunked in several pieces.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use openssl::ssl::{NameType, Ssl, SslAcceptor, SslFiletype, SslMethod, SslVerifyMode};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::pki::dn_string;

/// The runtime every in-process server runs on; it lives as long as the test binary.
pub static RT: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("test-upstreams")
        .enable_all()
        .build()
        .expect("build the upstream runtime")
});

/// A port on 127.0.0.1 with nothing listening (connections are refused): the 502 case.
#[allow(dead_code)]
pub fn closed_port() -> u16 {
    super::free_port()
}

/// Counters shared between a server and the test.
#[derive(Default)]
pub struct Stats {
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// HTTP requests answered.
    pub requests: AtomicUsize,
    /// TLS handshakes that completed.
    pub handshakes: AtomicUsize,
    /// TLS handshakes that failed (e.g. the client rejected our certificate).
    pub failed_handshakes: AtomicUsize,
}

#[derive(Clone, Copy)]
enum Reply {
    Echo,
    TlsBackend,
}

struct Shared {
    name: String,
    reply: Reply,
    stats: Stats,
    delay: Mutex<Duration>,
    /// Status for requests without `x-echo-status` (200 when 0): a target alive but sick.
    status: std::sync::atomic::AtomicU16,
}

/// A running server; stopping it closes the listener and every open connection.
struct Running {
    port: u16,
    shutdown: Option<watch::Sender<bool>>,
    closed: Option<std::sync::mpsc::Receiver<()>>,
}

impl Running {
    fn start(port: u16, tls: Option<Arc<SslAcceptor>>, shared: Arc<Shared>) -> Running {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = std_listener.local_addr().expect("local addr").port();
        let (tx, rx) = watch::channel(false);
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        RT.spawn(async move {
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("upstream listener: {e}");
                    return;
                }
            };
            let mut stop = rx.clone();
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        shared.stats.connections.fetch_add(1, Ordering::SeqCst);
                        let shared = shared.clone();
                        let tls = tls.clone();
                        let mut stop = rx.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stop.changed() => {}
                                _ = serve_connection(stream, tls, shared) => {}
                            }
                        });
                    }
                }
            }
            drop(listener);
            let _ = closed_tx.send(());
        });
        Running {
            port,
            shutdown: Some(tx),
            closed: Some(closed_rx),
        }
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(closed) = self.closed.take() {
            // Wait for the listener to be closed so a restart can bind the same port.
            let _ = closed.recv_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
    }
}

/// Plain HTTP/1.1 keep-alive echo server.
///
/// Answers `{"method","path","query","headers":{lowercase name: value},"body_len","body","server",
/// "tls":false,"conn_requests"}`; repeated headers are joined with `, `; `body` is the request
/// body as text.
#[allow(dead_code)]
pub struct HttpEcho {
    shared: Arc<Shared>,
    running: Running,
}

#[allow(dead_code)]
impl HttpEcho {
    pub fn start(name: &str) -> HttpEcho {
        HttpEcho::start_with_delay(name, Duration::ZERO)
    }

    /// An echo that waits `delay` before every answer (for 504 tests).
    pub fn start_with_delay(name: &str, delay: Duration) -> HttpEcho {
        let shared = Arc::new(Shared {
            name: name.to_string(),
            reply: Reply::Echo,
            stats: Stats::default(),
            delay: Mutex::new(delay),
            status: Default::default(),
        });
        let running = Running::start(0, None, shared.clone());
        HttpEcho { shared, running }
    }

    pub fn port(&self) -> u16 {
        self.running.port
    }
    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.running.port)
    }
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.running.port)
    }
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn set_delay(&self, delay: Duration) {
        if let Ok(mut d) = self.shared.delay.lock() {
            *d = delay;
        }
    }
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
    pub fn connections(&self) -> usize {
        self.shared.stats.connections.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.shared.stats.requests.load(Ordering::SeqCst)
    }
    /// Closes the listener and all connections (a target going down).
    pub fn stop(&mut self) {
        self.running.stop();
    }
    /// Answers every request (health probes included) with `status`, `None` back to 200: a
    /// target that is up but failing. `x-echo-status` still wins.
    pub fn set_status(&self, status: Option<u16>) {
        self.shared
            .status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }
    /// Listens again on the same port (a target coming back).
    pub fn restart(&mut self) {
        self.running.stop();
        self.running = Running::start(self.running.port, None, self.shared.clone());
    }
}

/// TLS settings of an HTTPS upstream.
#[allow(dead_code)]
#[derive(Clone, Debug, Default)]
pub enum ClientAuth {
    /// Never asks for a client certificate.
    #[default]
    None,
    /// Asks for one, verified against the CA file, but accepts clients without one.
    Optional(std::path::PathBuf),
    /// Requires one verified against the CA file; the handshake fails without it.
    Required(std::path::PathBuf),
}

/// HTTPS echo server: like [`HttpEcho`] over TLS, adding `"tls":true`, `"sni"` (the name the client
/// sent, or null) and `"client_subject"` (the verified client certificate's subject, or null).
#[allow(dead_code)]
pub struct HttpsEcho {
    shared: Arc<Shared>,
    acceptor: Arc<SslAcceptor>,
    running: Running,
}

#[allow(dead_code)]
impl HttpsEcho {
    /// Serves `chain` (leaf first, then intermediates) with `key`.
    pub fn start(name: &str, chain: &Path, key: &Path) -> HttpsEcho {
        HttpsEcho::start_with(name, chain, key, ClientAuth::None)
    }

    pub fn start_with(name: &str, chain: &Path, key: &Path, client_auth: ClientAuth) -> HttpsEcho {
        HttpsEcho::start_reply(name, chain, key, client_auth, Reply::Echo)
    }

    /// Accepts only the key-exchange `groups` (OpenSSL list syntax), e.g. `X25519MLKEM768`.
    pub fn start_with_groups(name: &str, chain: &Path, key: &Path, groups: &str) -> HttpsEcho {
        let mut b = acceptor_builder(chain, key, &ClientAuth::None);
        b.set_groups_list(groups)
            .unwrap_or_else(|e| panic!("groups {groups}: {e}"));
        HttpsEcho::start_acceptor(name, b.build(), Reply::Echo)
    }

    fn start_reply(
        name: &str,
        chain: &Path,
        key: &Path,
        client_auth: ClientAuth,
        reply: Reply,
    ) -> HttpsEcho {
        HttpsEcho::start_acceptor(name, acceptor(chain, key, &client_auth), reply)
    }

    fn start_acceptor(name: &str, acceptor: SslAcceptor, reply: Reply) -> HttpsEcho {
        let acceptor = Arc::new(acceptor);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            reply,
            stats: Stats::default(),
            delay: Mutex::new(Duration::ZERO),
            status: Default::default(),
        });
        let running = Running::start(0, Some(acceptor.clone()), shared.clone());
        HttpsEcho {
            shared,
            acceptor,
            running,
        }
    }

    pub fn port(&self) -> u16 {
        self.running.port
    }
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.running.port)
    }
    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.running.port)
    }
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn set_delay(&self, delay: Duration) {
        if let Ok(mut d) = self.shared.delay.lock() {
            *d = delay;
        }
    }
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }
    pub fn connections(&self) -> usize {
        self.shared.stats.connections.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.shared.stats.requests.load(Ordering::SeqCst)
    }
    /// Completed TLS handshakes: with connection reuse this stays below the request count.
    pub fn handshakes(&self) -> usize {
        self.shared.stats.handshakes.load(Ordering::SeqCst)
    }
    pub fn failed_handshakes(&self) -> usize {
        self.shared.stats.failed_handshakes.load(Ordering::SeqCst)
    }
    pub fn stop(&mut self) {
        self.running.stop();
    }
    pub fn restart(&mut self) {
        self.running.stop();
        self.running = Running::start(
            self.running.port,
            Some(self.acceptor.clone()),
            self.shared.clone(),
        );
    }
}

/// A TLS server standing for a backend that terminates TLS itself (the passthrough target):
/// answers any HTTP request with `{"service":"tls-backend","tls":"terminated-here"}`.
#[allow(dead_code)]
pub struct TlsBackend {
    inner: HttpsEcho,
}

#[allow(dead_code)]
impl TlsBackend {
    pub fn start(chain: &Path, key: &Path) -> TlsBackend {
        TlsBackend {
            inner: HttpsEcho::start_reply(
                "tls-backend",
                chain,
                key,
                ClientAuth::None,
                Reply::TlsBackend,
            ),
        }
    }
    pub fn start_with(chain: &Path, key: &Path, client_auth: ClientAuth) -> TlsBackend {
        TlsBackend {
            inner: HttpsEcho::start_reply(
                "tls-backend",
                chain,
                key,
                client_auth,
                Reply::TlsBackend,
            ),
        }
    }
    pub fn port(&self) -> u16 {
        self.inner.port()
    }
    pub fn addr(&self) -> String {
        self.inner.addr()
    }
    pub fn handshakes(&self) -> usize {
        self.inner.handshakes()
    }
    pub fn connections(&self) -> usize {
        self.inner.connections()
    }
    pub fn stop(&mut self) {
        self.inner.stop();
    }
}

fn acceptor(chain: &Path, key: &Path, client_auth: &ClientAuth) -> SslAcceptor {
    acceptor_builder(chain, key, client_auth).build()
}

fn acceptor_builder(
    chain: &Path,
    key: &Path,
    client_auth: &ClientAuth,
) -> openssl::ssl::SslAcceptorBuilder {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("ssl acceptor");
    b.set_certificate_chain_file(chain)
        .unwrap_or_else(|e| panic!("chain {}: {e}", chain.display()));
    b.set_private_key_file(key, SslFiletype::PEM)
        .unwrap_or_else(|e| panic!("key {}: {e}", key.display()));
    b.check_private_key().expect("key matches certificate");
    match client_auth {
        ClientAuth::None => {}
        ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
            b.set_ca_file(ca)
                .unwrap_or_else(|e| panic!("client CA {}: {e}", ca.display()));
            let mut mode = SslVerifyMode::PEER;
            if matches!(client_auth, ClientAuth::Required(_)) {
                mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
            }
            b.set_verify(mode);
        }
    }
    b
}

/// What the connection knows about TLS, reported in each echo.
#[derive(Default, Clone)]
struct ConnInfo {
    tls: bool,
    sni: Option<String>,
    client_subject: Option<String>,
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    tls: Option<Arc<SslAcceptor>>,
    shared: Arc<Shared>,
) {
    let Some(acceptor) = tls else {
        serve_http(stream, ConnInfo::default(), shared).await;
        return;
    };
    let Ok(ssl) = Ssl::new(acceptor.context()) else {
        return;
    };
    let Ok(mut tls_stream) = tokio_openssl::SslStream::new(ssl, stream) else {
        return;
    };
    if Pin::new(&mut tls_stream).accept().await.is_err() {
        shared
            .stats
            .failed_handshakes
            .fetch_add(1, Ordering::SeqCst);
        return;
    }
    shared.stats.handshakes.fetch_add(1, Ordering::SeqCst);
    let ssl = tls_stream.ssl();
    let info = ConnInfo {
        tls: true,
        sni: ssl.servername(NameType::HOST_NAME).map(str::to_string),
        client_subject: ssl.peer_certificate().map(|c| dn_string(c.subject_name())),
    };
    serve_http(tls_stream, info, shared).await;
}

/// One parsed request head.
struct Head {
    method: String,
    target: String,
    keep_alive: bool,
    headers: Vec<(String, String)>,
}

const MAX_HEAD: usize = 64 * 1024;

async fn serve_http<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    info: ConnInfo,
    shared: Arc<Shared>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut conn_requests = 0usize;
    loop {
        let head = match read_head(&mut stream, &mut buf).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(status) => {
                let _ = stream
                    .write_all(
                        format!("HTTP/1.1 {status} Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .await;
                return;
            }
        };
        let request_body = match read_body(&mut stream, &mut buf, &head.headers).await {
            Some(b) => b,
            None => return,
        };
        let body_len = request_body.len();
        conn_requests += 1;
        shared.stats.requests.fetch_add(1, Ordering::SeqCst);

        let header = |name: &str| {
            head.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut delay = shared.delay.lock().map(|d| *d).unwrap_or_default();
        if let Some(ms) = header("x-echo-delay-ms").and_then(|v| v.trim().parse::<u64>().ok()) {
            delay = Duration::from_millis(ms);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let forced = shared.status.load(Ordering::SeqCst);
        let status = header("x-echo-status")
            .and_then(|v| v.trim().parse::<u16>().ok())
            .unwrap_or(if forced == 0 { 200 } else { forced });

        let body = match shared.reply {
            Reply::TlsBackend => json!({"service": "tls-backend", "tls": "terminated-here"}),
            Reply::Echo => {
                let (path, query) = match head.target.split_once('?') {
                    Some((p, q)) => (p.to_string(), q.to_string()),
                    None => (head.target.clone(), String::new()),
                };
                let mut headers: BTreeMap<String, String> = BTreeMap::new();
                for (k, v) in &head.headers {
                    headers
                        .entry(k.clone())
                        .and_modify(|e| {
                            e.push_str(", ");
                            e.push_str(v);
                        })
                        .or_insert_with(|| v.clone());
                }
                json!({
                    "method": head.method,
                    "path": path,
                    "query": query,
                    "headers": headers,
                    "body_len": body_len,
                    "body": String::from_utf8_lossy(&request_body),
                    "server": shared.name,
                    "tls": info.tls,
                    "sni": info.sni,
                    "client_subject": info.client_subject,
                    "conn_requests": conn_requests,
                })
            }
        };
        let body = body.to_string();
        let content_type =
            header("x-echo-content-type").unwrap_or_else(|| "application/json".to_string());
        let mut extra = String::new();
        for (k, v) in &head.headers {
            if k == "x-echo-header" {
                extra.push_str(v);
                extra.push_str("\r\n");
            }
        }
        let chunked = header("x-echo-chunked").is_some();
        let (framing, payload) = if chunked {
            // Three pieces, so the gateway sees the body in several chunks.
            let b = body.as_bytes();
            let third = b.len() / 3;
            let mut p = Vec::new();
            for piece in [&b[..third], &b[third..2 * third], &b[2 * third..]] {
                p.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                p.extend_from_slice(piece);
                p.extend_from_slice(b"\r\n");
            }
            p.extend_from_slice(b"0\r\n\r\n");
            ("transfer-encoding: chunked".to_string(), p)
        } else {
            (format!("content-length: {}", body.len()), body.into_bytes())
        };
        let mut response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\n{framing}\r\nx-echo-server: {}\r\n{extra}{}\r\n",
            reason(status),
            shared.name,
            if head.keep_alive { "" } else { "connection: close\r\n" },
        )
        .into_bytes();
        response.extend_from_slice(&payload);
        if stream.write_all(&response).await.is_err() {
            return;
        }
        let _ = stream.flush().await;
        if !head.keep_alive {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Reads one request head; `Ok(None)` when the client closed cleanly between requests,
/// `Err(status)` on a malformed or oversized head.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Option<Head>, u16> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let version = req.version.unwrap_or(1);
                let headers: Vec<(String, String)> = req
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let conn = headers
                    .iter()
                    .find(|(k, _)| k == "connection")
                    .map(|(_, v)| v.to_ascii_lowercase())
                    .unwrap_or_default();
                let keep_alive = if version == 0 {
                    conn.contains("keep-alive")
                } else {
                    !conn.contains("close")
                };
                let head = Head {
                    method: req.method.unwrap_or("").to_string(),
                    target: req.path.unwrap_or("").to_string(),
                    keep_alive,
                    headers,
                };
                buf.drain(..n);
                return Ok(Some(head));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD {
                    return Err(431);
                }
            }
            Err(_) => return Err(400),
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>, want: usize) -> bool {
    while buf.len() < want {
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

async fn read_line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
            buf.drain(..pos + 2);
            return Some(line);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let want = buf.len() + 1;
        if !fill(stream, buf, want).await {
            return None;
        }
    }
}

/// Reads the body; `None` if the connection broke.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    headers: &[(String, String)],
) -> Option<Vec<u8>> {
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let mut total = Vec::new();
        loop {
            let line = read_line(stream, buf).await?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).ok()?;
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    let t = read_line(stream, buf).await?;
                    if t.is_empty() {
                        return Some(total);
                    }
                }
            }
            if !fill(stream, buf, size + 2).await {
                return None;
            }
            total.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if !fill(stream, buf, len).await {
        return None;
    }
    Some(buf.drain(..len).collect())
}

/// Address helper for tests that want a `SocketAddr`.
#[allow(dead_code)]
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
