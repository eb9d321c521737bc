//! The stream listeners. A TLS stream listener reads the ClientHello (after a PostgreSQL
//! `SSLRequest` if there is one) and routes by SNI (and addresses): a `tls_passthrough` route gets
//! the bytes replayed undecrypted, a `tls` route has TLS terminated here with the HTTPS
//! listeners' certificate for that SNI. A plain (`tls: false`) listener routes `tcp` routes by
//! source and destination without reading anything first.
//!
//! Per connection on a TLS listener, [`StreamApp`] goes through: connection limit → prelude
//! (`SSLRequest` answered `S`, `GSSENCRequest` answered `N`) → ClientHello within
//! `client_hello_timeout` → route lookup in the current [`StreamTable`] → for passthrough:
//! upstream connect (weighted round robin, next target on failure) → `SSLRequest` repeated
//! upstream when the client sent one → replay → relay; for `tls`: handshake with the client
//! (the ClientHello replayed into it) → upstream connect, TLS to a `tls` service → relay of the
//! plaintext. Anything unroutable gets a fatal TLS alert when the client spoke TLS, and nothing
//! reaches an upstream.

pub mod clienthello;
pub mod postgres;
pub mod prefixed;
pub mod relay;
pub mod table;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub use clienthello::{ClientHello, Reject, MAX_CLIENT_HELLO_BYTES};
pub use relay::{relay, Direction, RelayEnd, Totals};
pub use table::{
    ConnectError, Incoming, StreamHealth, StreamKinds, StreamRoute, StreamRouteSpec, StreamTable,
    StreamTarget,
};

use clienthello::ReadError;
use postgres::{read_prelude_and_hello, Refusal};
use prefixed::Prefixed;

/// Where a stream listener finds the route table in force: the gateway's snapshot (`runtime`)
/// implements it, so a reload swaps stream routes with everything else, at once.
pub trait TableSource: Send + Sync + 'static {
    fn current(&self) -> Arc<StreamTable>;
}

/// A table of its own, swapped by whoever holds it (the listener's unit tests).
impl TableSource for ArcSwap<StreamTable> {
    fn current(&self) -> Arc<StreamTable> {
        self.load_full()
    }
}

/// Listener-level limits of a stream listener.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `true`: a TLS listener (ClientHello first); `false`: plain TCP.
    pub tls: bool,
    /// A client that has not sent its whole ClientHello (and `SSLRequest`) by then is closed;
    /// a `tls` route's handshake gets as long again.
    pub client_hello_timeout: Duration,
    /// A tunnel where no byte moves either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections handled at once by this listener; more are closed on arrival.
    pub max_connections: usize,
    /// Connections one client address may hold at once; more from it are closed on arrival,
    /// so one host cannot take every slot.
    pub max_connections_per_client: usize,
    /// Key-exchange groups a `tls` route's handshake accepts, in the gateway's order
    /// (`tls.groups`, as the HTTPS listeners; fixed for the process's life like theirs).
    pub tls_groups: Vec<String>,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            tls: true,
            client_hello_timeout: Duration::from_secs(10),
            idle_timeout: crate::config::model::STREAM_IDLE_TIMEOUT,
            max_connections: crate::config::model::STREAM_MAX_CONNECTIONS,
            max_connections_per_client: crate::config::model::STREAM_MAX_CONNECTIONS_PER_CLIENT,
            tls_groups: crate::tls::groups::DEFAULT_GROUPS
                .iter()
                .map(|g| g.to_string())
                .collect(),
        }
    }
}

/// How a stream connection ended: the `result` label of `portcullis_stream_connections_total`
/// and the `result` field of the connection's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Relayed until both sides closed (or one closed and the other then reset).
    Closed,
    /// Relayed, then closed after `idle_timeout` without traffic.
    IdleTimeout,
    /// Relayed, then a side failed (reset, broken pipe) while both were still sending.
    Reset,
    /// ClientHello without `server_name`: alert `unrecognized_name`.
    NoSni,
    /// No route for the SNI: alert `unrecognized_name`.
    UnknownSni,
    /// The first bytes were not TLS (nor a PostgreSQL request): closed without a word.
    NotTls,
    /// TLS records, but not a usable ClientHello (malformed or over 16 KiB): alert
    /// `handshake_failure`.
    BadClientHello,
    /// No whole ClientHello within `client_hello_timeout`.
    ClientHelloTimeout,
    /// The client closed or failed before its ClientHello was complete.
    ClientGone,
    /// No target accepted a connection: alert `internal_error`.
    UpstreamUnavailable,
    /// The upstream answered a repeated `SSLRequest` with something other than `S`: alert
    /// `handshake_failure`.
    UpstreamRefusedTls,
    /// The listener was at `max_connections`.
    OverLimit,
    /// The client's address was at `max_connections_per_client`.
    OverClientLimit,
    /// Plain TCP listener: no `tcp` route for the connection's addresses; closed.
    NoRoute,
    /// A `tls` route's handshake with the client failed or timed out.
    TlsHandshakeFailed,
    /// A `tls` service's handshake or certificate verification failed (counted in
    /// `portcullis_upstream_tls_failures_total` too); the client is closed.
    UpstreamTlsFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::Reset => "reset",
            Outcome::NoSni => "no_sni",
            Outcome::UnknownSni => "unknown_sni",
            Outcome::NotTls => "not_tls",
            Outcome::BadClientHello => "bad_client_hello",
            Outcome::ClientHelloTimeout => "client_hello_timeout",
            Outcome::ClientGone => "client_gone",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::UpstreamRefusedTls => "upstream_refused_tls",
            Outcome::OverLimit => "over_limit",
            Outcome::OverClientLimit => "over_client_limit",
            Outcome::NoRoute => "no_route",
            Outcome::TlsHandshakeFailed => "tls_handshake_failed",
            Outcome::UpstreamTlsFailed => "upstream_tls_failed",
        }
    }
}

/// TLS alert descriptions sent on refusal (RFC 8446 §6).
mod alert {
    pub const HANDSHAKE_FAILURE: u8 = 40;
    pub const INTERNAL_ERROR: u8 = 80;
    pub const UNRECOGNIZED_NAME: u8 = 112;
}

/// A fatal alert record: content type 21, the client's record version, length 2, level 2.
fn alert_record(version: u16, description: u8) -> [u8; 7] {
    let [major, minor] = version.to_be_bytes();
    [21, major, minor, 0, 2, 2, description]
}

/// Record version for an alert: the client's own when it sent a sane one, else TLS 1.0 which
/// every TLS client accepts before a version is negotiated.
fn alert_version(buf: &[u8]) -> u16 {
    match buf {
        [22, 3, minor @ 1..=3, ..] => u16::from_be_bytes([3, *minor]),
        _ => 0x0301,
    }
}

/// The Pingora application behind one stream listener.
pub struct StreamApp {
    table: Arc<dyn TableSource>,
    settings: StreamSettings,
    slots: Arc<Semaphore>,
    /// Open connections per client address (entries removed at zero).
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted against its client address until dropped.
struct ClientSlot<'a> {
    app: &'a StreamApp,
    ip: IpAddr,
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        let Ok(mut map) = self.app.per_client.lock() else {
            return;
        };
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl StreamApp {
    /// `table` is read once per connection, so a reload swaps it for new connections only.
    pub fn new(table: Arc<dyn TableSource>, settings: StreamSettings) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_connections));
        StreamApp {
            table,
            settings,
            slots,
            per_client: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for `ip`, or `None` when it holds `max_connections_per_client` already.
    fn client_slot(&self, ip: IpAddr) -> Option<ClientSlot<'_>> {
        let mut map = self.per_client.lock().ok()?;
        let n = map.entry(ip).or_insert(0);
        if *n >= self.settings.max_connections_per_client {
            return None;
        }
        *n += 1;
        Some(ClientSlot { app: self, ip })
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    /// Handles one accepted connection to its end; returns how it ended with the details logged.
    /// `local` is the address the client connected to (for `destinations`).
    pub async fn handle<S>(
        &self,
        client: &mut S,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> ConnectionLog
    where
        S: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let mut log = ConnectionLog::new(peer);
        log.local = local;
        let outcome = match self.slots.clone().try_acquire_owned() {
            Ok(_permit) => match peer.map(|p| self.client_slot(p.ip())) {
                Some(None) => Outcome::OverClientLimit,
                slot => {
                    let _slot = slot;
                    self.serve(client, &mut log).await
                }
            },
            Err(_) => Outcome::OverLimit,
        };
        log.finish(outcome);
        log
    }

    async fn serve<S>(&self, client: &mut S, log: &mut ConnectionLog) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        if !self.settings.tls {
            return self.serve_tcp(client, log).await;
        }
        let mut buf = Vec::new();
        let hello = tokio::time::timeout(
            self.settings.client_hello_timeout,
            read_prelude_and_hello(client, &mut buf),
        )
        .await;
        let (mut hello, postgres) = match hello {
            Err(_) => return Outcome::ClientHelloTimeout,
            Ok(Err(refusal)) => return refuse(client, &buf, refusal, log).await,
            Ok(Ok(found)) => found,
        };
        log.postgres = postgres;
        log.alpn = std::mem::take(&mut hello.alpn);
        log.sni = hello.sni.take();
        // One table per connection: a reload mid-tunnel does not move the tunnel.
        let table = self.table.current();
        let conn = Incoming {
            sni: log.sni.as_deref(),
            client: log.client,
            local: log.local,
        };
        let Some(route) = table.lookup_tls(&conn).cloned() else {
            send_alert(client, hello.record_version, alert::UNRECOGNIZED_NAME).await;
            return if log.sni.is_none() {
                Outcome::NoSni
            } else {
                Outcome::UnknownSni
            };
        };
        log.route = Some(route.name.clone());
        log.service = Some(route.service.clone());
        route.active.inc();
        let _active = scopeguard(|| route.active.dec());
        if !route.kinds.passthrough {
            return self
                .terminate(client, buf, &route, &table, postgres, log)
                .await;
        }

        let (mut upstream, addr) = match route.connect().await {
            Ok(connected) => connected,
            Err(e) => {
                log.detail = Some(e.to_string());
                send_alert(client, hello.record_version, alert::INTERNAL_ERROR).await;
                return Outcome::UpstreamUnavailable;
            }
        };
        log.upstream = Some(addr);
        if postgres {
            match negotiate_postgres_upstream(&mut upstream, route.connect_timeout).await {
                Ok(()) => {}
                Err(why) => {
                    log.detail = Some(why);
                    send_alert(client, hello.record_version, alert::HANDSHAKE_FAILURE).await;
                    return Outcome::UpstreamRefusedTls;
                }
            }
        }
        if let Err(e) = upstream.write_all(&buf).await {
            log.detail = Some(format!("replaying the ClientHello: {e}"));
            return Outcome::Reset;
        }
        route.bytes_up.inc_by(buf.len() as u64);
        log.bytes_up = buf.len() as u64;
        drop(buf);
        self.tunnel(client, &mut upstream, &route, log).await
    }

    /// A `tls` route: the handshake with the client (its ClientHello, already read, replayed
    /// into OpenSSL) with the certificate the HTTPS listeners serve for that SNI, then the
    /// plaintext to the upstream.
    async fn terminate<S>(
        &self,
        client: &mut S,
        hello: Vec<u8>,
        route: &StreamRoute,
        table: &StreamTable,
        postgres: bool,
        log: &mut ConnectionLog,
    ) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let version = alert_version(&hello);
        let ssl = match table.certs() {
            Some(certs) => {
                crate::tls::stream_server_ssl(certs, log.sni.as_deref(), &self.settings.tls_groups)
                    .map_err(|e| e.to_string())
            }
            None => Err("no certificate store".to_string()),
        };
        let ssl = match ssl {
            Ok(ssl) => ssl,
            Err(e) => {
                log.detail = Some(format!("setting up the handshake: {e}"));
                send_alert(client, version, alert::INTERNAL_ERROR).await;
                return Outcome::TlsHandshakeFailed;
            }
        };
        let mut tls = match tokio_openssl::SslStream::new(ssl, Prefixed::new(hello, &mut *client)) {
            Ok(tls) => tls,
            Err(e) => {
                log.detail = Some(format!("setting up the handshake: {e}"));
                return Outcome::TlsHandshakeFailed;
            }
        };
        let accepted = tokio::time::timeout(
            self.settings.client_hello_timeout,
            std::pin::Pin::new(&mut tls).accept(),
        )
        .await;
        match accepted {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                log.detail = Some(format!("handshake with the client: {e}"));
                return Outcome::TlsHandshakeFailed;
            }
            Err(_) => {
                log.detail = Some("handshake with the client timed out".into());
                return Outcome::TlsHandshakeFailed;
            }
        }
        // PostgreSQL 17's direct SSL (ALPN `postgresql`, no SSLRequest) arrives decrypted just
        // like the classic kind: toward a TLS upstream both start with an SSLRequest, which
        // every PostgreSQL version answers.
        let postgres = postgres || log.alpn.iter().any(|p| p == b"postgresql");
        let outcome = self.to_upstream(&mut tls, route, postgres, log).await;
        // After a refusal the client gets a close_notify rather than a bare FIN; after a
        // relay the write half is already shut and this does nothing.
        let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
        outcome
    }

    /// A plain TCP listener: route by addresses, connect, relay.
    async fn serve_tcp<S>(&self, client: &mut S, log: &mut ConnectionLog) -> Outcome
    where
        S: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let table = self.table.current();
        let conn = Incoming {
            sni: None,
            client: log.client,
            local: log.local,
        };
        let Some(route) = table.lookup_tcp(&conn).cloned() else {
            return Outcome::NoRoute;
        };
        log.route = Some(route.name.clone());
        log.service = Some(route.service.clone());
        route.active.inc();
        let _active = scopeguard(|| route.active.dec());
        self.to_upstream(client, &route, false, log).await
    }

    /// Connects to the route's upstream (with TLS for a `tls` service) and relays.
    async fn to_upstream<C>(
        &self,
        client: &mut C,
        route: &StreamRoute,
        postgres: bool,
        log: &mut ConnectionLog,
    ) -> Outcome
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let (mut upstream, addr) = match route.connect().await {
            Ok(connected) => connected,
            Err(e) => {
                log.detail = Some(e.to_string());
                return Outcome::UpstreamUnavailable;
            }
        };
        log.upstream = Some(addr);
        let Some(tls) = &route.upstream_tls else {
            return self.tunnel(client, &mut upstream, route, log).await;
        };
        if postgres {
            // The client's PostgreSQL session arrives decrypted; a TLS upstream expects its
            // SSLRequest first, as libpq would send it.
            if let Err(why) =
                negotiate_postgres_upstream(&mut upstream, route.connect_timeout).await
            {
                log.detail = Some(why);
                return Outcome::UpstreamRefusedTls;
            }
        }
        let failure = match tokio::time::timeout(route.connect_timeout, tls.connect(upstream)).await
        {
            Ok(Ok(mut upstream)) => return self.tunnel(client, &mut upstream, route, log).await,
            Ok(Err(e)) => (e.reason, e.detail),
            Err(_) => (
                "handshake timeout".to_string(),
                "upstream TLS handshake timed out".to_string(),
            ),
        };
        crate::metrics::UPSTREAM_TLS_FAILURES
            .with_label_values(&[&*route.service, &failure.0])
            .inc();
        tracing::warn!(route = %route.name, service = %route.service, reason = %failure.0, "stream upstream TLS failed");
        log.detail = Some(format!("upstream TLS: {}", failure.1));
        Outcome::UpstreamTlsFailed
    }

    /// Relays until the tunnel ends and names how it ended.
    async fn tunnel<C, U>(
        &self,
        client: &mut C,
        upstream: &mut U,
        route: &StreamRoute,
        log: &mut ConnectionLog,
    ) -> Outcome
    where
        C: AsyncRead + AsyncWrite + Unpin + ?Sized,
        U: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let (end, totals) = relay(
            client,
            upstream,
            self.settings.idle_timeout,
            &route.bytes_up,
            &route.bytes_down,
        )
        .await;
        log.bytes_up += totals.up;
        log.bytes_down = totals.down;
        match end {
            RelayEnd::Closed => Outcome::Closed,
            RelayEnd::IdleTimeout => Outcome::IdleTimeout,
            RelayEnd::ClosedWithError(direction, e) => {
                log.detail = Some(format!("after EOF, {direction:?}: {e}"));
                Outcome::Closed
            }
            RelayEnd::Error(direction, e) => {
                log.detail = Some(format!("{direction:?}: {e}"));
                Outcome::Reset
            }
        }
    }
}

#[async_trait]
impl ServerApp for StreamApp {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Pingora's accept loop stops taking connections on shutdown; tunnels already open are
        // left to finish within the grace period, so the watch needs no handling here.
        // Kept as an address: formatted only if the connection log line is written.
        let digest = stream.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        self.handle(&mut stream, peer, local).await;
        // A passthrough connection is never reused for anything else.
        None
    }
}

/// Answers a refused client (an alert if it spoke TLS) and names the outcome.
async fn refuse<S>(client: &mut S, buf: &[u8], refusal: Refusal, log: &mut ConnectionLog) -> Outcome
where
    S: AsyncWrite + Unpin + ?Sized,
{
    match refusal {
        Refusal::UnroutablePostgres => {
            log.detail = Some("PostgreSQL message other than SSLRequest".into());
            Outcome::NotTls
        }
        Refusal::Read(ReadError::Reject(Reject::NotTls)) => Outcome::NotTls,
        Refusal::Read(ReadError::Reject(reject)) => {
            log.detail = Some(reject.reason().into());
            send_alert(client, alert_version(buf), alert::HANDSHAKE_FAILURE).await;
            Outcome::BadClientHello
        }
        Refusal::Read(ReadError::Eof) => Outcome::ClientGone,
        Refusal::Read(ReadError::Io(e)) => {
            log.detail = Some(e.to_string());
            Outcome::ClientGone
        }
    }
}

/// Sends a fatal alert and the FIN after it. Failures are ignored: the client is being dropped.
async fn send_alert<S>(client: &mut S, version: u16, description: u8)
where
    S: AsyncWrite + Unpin + ?Sized,
{
    let record = alert_record(version, description);
    let sent = async {
        client.write_all(&record).await?;
        client.flush().await?;
        client.shutdown().await
    };
    // A client that does not read cannot hold the connection open through a full send buffer.
    let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
}

/// Repeats the client's `SSLRequest` to the upstream and expects its `S`.
async fn negotiate_postgres_upstream<U>(upstream: &mut U, limit: Duration) -> Result<(), String>
where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        upstream.write_all(&postgres::SSL_REQUEST).await?;
        // Exactly one byte: anything after `S` already belongs to the TLS handshake.
        let mut answer = [0u8; 1];
        upstream.read_exact(&mut answer).await?;
        Ok::<u8, std::io::Error>(answer[0])
    };
    match tokio::time::timeout(limit, exchange).await {
        Err(_) => Err("upstream did not answer SSLRequest in time".into()),
        Ok(Err(e)) => Err(format!("SSLRequest to upstream: {e}")),
        Ok(Ok(postgres::ACCEPT_TLS)) => Ok(()),
        Ok(Ok(postgres::REFUSE)) => Err("upstream answered SSLRequest with N (ssl off)".into()),
        Ok(Ok(other)) => Err(format!(
            "upstream answered SSLRequest with byte {other:#04x}"
        )),
    }
}

/// Runs `f` when dropped, so a gauge is decremented on every exit path.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// What is known about one connection; logged once when it ends.
#[derive(Debug, Clone)]
pub struct ConnectionLog {
    pub client: Option<SocketAddr>,
    /// The listener address the client connected to.
    pub local: Option<SocketAddr>,
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    pub postgres: bool,
    pub route: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub outcome: Option<Outcome>,
    pub detail: Option<String>,
    started: Instant,
    pub duration: Duration,
}

impl ConnectionLog {
    fn new(client: Option<SocketAddr>) -> Self {
        ConnectionLog {
            client,
            local: None,
            sni: None,
            alpn: Vec::new(),
            postgres: false,
            route: None,
            service: None,
            upstream: None,
            bytes_up: 0,
            bytes_down: 0,
            outcome: None,
            detail: None,
            started: Instant::now(),
            duration: Duration::ZERO,
        }
    }

    /// Counts the connection and writes its one log line.
    fn finish(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.duration = self.started.elapsed();
        let route = self.route.as_deref().unwrap_or("");
        crate::metrics::STREAM_CONNECTIONS
            .with_label_values(&[route, outcome.as_str()])
            .inc();
        if !tracing::enabled!(target: "portcullis::stream", tracing::Level::INFO) {
            return;
        }
        let mut alpn = String::new();
        for (i, p) in self.alpn.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(alpn, "{sep}{}", String::from_utf8_lossy(p));
        }
        let client = match self.client {
            Some(a) => a.to_string(),
            None => "-".to_string(),
        };
        tracing::info!(
            target: "portcullis::stream",
            client = client.as_str(),
            sni = self.sni.as_deref().unwrap_or("-"),
            alpn = alpn.as_str(),
            postgres_ssl_request = self.postgres,
            route = self.route.as_deref().unwrap_or("-"),
            service = self.service.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            bytes_up = self.bytes_up,
            bytes_down = self.bytes_down,
            duration_ms = self.duration.as_millis() as u64,
            result = outcome.as_str(),
            detail = self.detail.as_deref().unwrap_or(""),
            "stream connection"
        );
    }
}
