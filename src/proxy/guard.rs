//! Connection limits of the HTTP proxy listeners, against connection exhaustion (slowloris and
//! friends). Pingora 0.9 has no connection cap, its HTTP/1 read timeout is per read (a client
//! sending one byte every 59 s keeps a socket forever), and its TLS handshake timeout is a fixed
//! 60 s. Three layers, each where Pingora's public API leaves room for it:
//!
//! - [`ConnectionCap`] wraps the listener's application: at most `max_connections` connections
//!   are served at once; one more is closed at once (nginx's `worker_connections`).
//! - [`HeaderDeadline`] wraps Pingora's HTTP proxy: the whole request header must arrive within
//!   `client_header_timeout` (nginx's), or the connection is closed without an answer. Whether
//!   the header arrived is learnt from [`header_received`], which the proxy calls when Pingora
//!   creates a request's context, right after parsing the header.
//! - [`ClientHelloDeadline`] runs before the TLS handshake: the ClientHello must arrive within
//!   `tls_handshake_timeout`; the rest of the handshake stays under Pingora's 60 s.

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::listeners::PreTlsProcess;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

/// How long Pingora keeps an idle HTTP/1 keep-alive connection waiting for its next request.
const KEEPALIVE: Duration = Duration::from_secs(60);

/// What one downstream connection's task knows about its current request.
#[derive(Default)]
struct ConnState {
    header_read: AtomicBool,
    requests: AtomicU64,
}

tokio::task_local! {
    static CONN: Arc<ConnState>;
}

/// Called by the proxy once Pingora has parsed a request header on this connection. A no-op
/// outside a guarded connection's task (HTTP/2 streams run in tasks of their own).
pub fn header_received() {
    let _ = CONN.try_with(|c| c.header_read.store(true, Ordering::Relaxed));
}

/// Serves at most `permits` connections at once; the next ones are closed when accepted.
pub struct ConnectionCap<A> {
    inner: Arc<A>,
    permits: Arc<Semaphore>,
    listener: String,
}

impl<A> ConnectionCap<A> {
    pub fn new(inner: A, max_connections: usize, listener: &str) -> Self {
        ConnectionCap {
            inner: Arc::new(inner),
            permits: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            listener: listener.to_string(),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for ConnectionCap<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let Ok(_permit) = self.permits.clone().try_acquire_owned() else {
            crate::metrics::CONNECTIONS_REFUSED
                .with_label_values(&[&self.listener, "max_connections"])
                .inc();
            return None;
        };
        CONN.scope(
            Arc::new(ConnState::default()),
            self.inner.process_new(stream, shutdown),
        )
        .await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Closes an HTTP/1 connection whose request header has not fully arrived in time: within
/// `timeout` for a connection's first request, within Pingora's keep-alive idle time plus
/// `timeout` for the next ones.
pub struct HeaderDeadline<P> {
    inner: Arc<P>,
    timeout: Duration,
    listener: String,
}

impl<P> HeaderDeadline<P> {
    pub fn new(inner: P, timeout: Duration, listener: &str) -> Self {
        HeaderDeadline {
            inner: Arc::new(inner),
            timeout,
            listener: listener.to_string(),
        }
    }
}

#[async_trait]
impl<P: HttpServerApp + Send + Sync + 'static> HttpServerApp for HeaderDeadline<P> {
    async fn process_new_http(
        self: &Arc<Self>,
        session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let Ok(conn) = CONN.try_with(Arc::clone) else {
            return self.inner.process_new_http(session, shutdown).await;
        };
        conn.header_read.store(false, Ordering::Relaxed);
        let limit = if conn.requests.fetch_add(1, Ordering::Relaxed) == 0 {
            self.timeout
        } else {
            KEEPALIVE + self.timeout
        };
        let request = self.inner.process_new_http(session, shutdown);
        tokio::pin!(request);
        tokio::select! {
            biased;
            done = &mut request => return done,
            _ = tokio::time::sleep(limit) => {}
        }
        if conn.header_read.load(Ordering::Relaxed) {
            return request.await;
        }
        crate::metrics::CONNECTIONS_REFUSED
            .with_label_values(&[&self.listener, "client_header_timeout"])
            .inc();
        // Dropping the request drops the connection: nginx closes without an answer too.
        None
    }

    fn h2_options(&self) -> Option<pingora::protocols::http::v2::server::H2Options> {
        self.inner.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner
            .clone()
            .process_custom_session(stream, shutdown)
            .await
    }
}

/// Largest ClientHello record waited for (a TLS record's plaintext limit plus its header).
const MAX_RECORD: usize = 16 * 1024 + 5;

/// Waits (up to `timeout`) for the first TLS record, the ClientHello, before OpenSSL's
/// handshake starts, then hands the bytes back to the stream.
pub struct ClientHelloDeadline {
    pub timeout: Duration,
    pub listener: String,
}

#[async_trait]
impl PreTlsProcess for ClientHelloDeadline {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let mut record = vec![0u8; 5];
        let read = async {
            stream.read_exact(&mut record).await?;
            // A record that is not a handshake is OpenSSL's to refuse; only the length is ours.
            let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
            let total = (5 + len).min(MAX_RECORD);
            record.resize(total, 0);
            stream.read_exact(&mut record[5..]).await?;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(())) => {
                stream.rewind(&record);
                Ok(())
            }
            Ok(Err(e)) => Err(pingora::Error::because(
                pingora::ErrorType::ReadError,
                "reading the ClientHello",
                e,
            )),
            Err(_) => {
                crate::metrics::CONNECTIONS_REFUSED
                    .with_label_values(&[&self.listener, "tls_handshake_timeout"])
                    .inc();
                Err(pingora::Error::explain(
                    pingora::ErrorType::ReadTimedout,
                    "no ClientHello within tls_handshake_timeout",
                ))
            }
        }
    }
}
