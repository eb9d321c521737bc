//! Active health probes (Kong's `healthchecks.active`) and periodic DNS re-resolution, on a
//! small dedicated thread per balancer so probes never compete with proxy worker runtimes.

use super::{re_resolve, record_active, Balancer, Outcome};
use crate::config::model::CheckKind;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

const RESOLVE_EVERY: Duration = Duration::from_secs(30);

pub(super) fn spawn(b: &Arc<Balancer>) {
    let weak = Arc::downgrade(b);
    let needs_thread = b.upstream.active.is_some()
        || b.targets
            .iter()
            .any(|t| t.host.parse::<std::net::IpAddr>().is_err());
    if !needs_thread {
        return;
    }
    let name = format!("health-{}", b.upstream.name);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "health check runtime failed to start");
                return;
            }
        };
        rt.block_on(run(weak));
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "health check thread failed to start");
    }
}

async fn run(weak: Weak<Balancer>) {
    let mut last_resolve = Instant::now();
    let mut next_probe: Vec<Instant> = Vec::new();
    loop {
        let Some(b) = weak.upgrade() else {
            return; // the balancer was replaced by a reload
        };
        if last_resolve.elapsed() >= RESOLVE_EVERY {
            last_resolve = Instant::now();
            re_resolve(&b);
        }
        if let Some(a) = b.upstream.active.clone() {
            if next_probe.len() != b.targets.len() {
                next_probe = vec![Instant::now(); b.targets.len()];
            }
            for (i, t) in b.targets.iter().enumerate() {
                let interval = if t.is_healthy() {
                    a.healthy_interval
                } else {
                    a.unhealthy_interval
                };
                if interval.is_zero() || Instant::now() < next_probe[i] {
                    continue;
                }
                next_probe[i] = Instant::now() + interval;
                let Some(addr) = t.addr() else { continue };
                let outcome = probe(&b, addr, &t.host, &a).await;
                record_active(&b, i, outcome);
            }
        }
        drop(b);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn probe(
    b: &Balancer,
    addr: std::net::SocketAddr,
    host: &str,
    a: &crate::config::model::ActiveCheck,
) -> Outcome {
    let attempt = async {
        let tcp = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => return Outcome::TcpFailure,
        };
        match a.kind {
            CheckKind::Tcp => Outcome::Status(200),
            CheckKind::Http => http_probe(tcp, host, &a.http_path, a.timeout).await,
            CheckKind::Https => {
                let sni = a.https_sni.clone().unwrap_or_else(|| {
                    b.probe_tls
                        .as_ref()
                        .map(|p| p.server_name.clone())
                        .unwrap_or_else(|| host.to_string())
                });
                match tls_connect(b, tcp, &sni, a.https_verify_certificate).await {
                    Some(s) => http_probe(s, host, &a.http_path, a.timeout).await,
                    None => Outcome::TcpFailure,
                }
            }
        }
    };
    match tokio::time::timeout(a.timeout, attempt).await {
        Ok(o) => o,
        Err(_) => Outcome::Timeout,
    }
}

async fn tls_connect(
    b: &Balancer,
    tcp: TcpStream,
    sni: &str,
    verify: bool,
) -> Option<tokio_openssl::SslStream<TcpStream>> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).ok()?;
    builder.set_verify(SslVerifyMode::NONE);
    if let Some(p) = &b.probe_tls {
        if let Some(ck) = &p.client_cert {
            builder.set_certificate(ck.leaf()).ok()?;
            for c in ck.intermediates() {
                builder.add_extra_chain_cert(c.clone()).ok()?;
            }
            builder.set_private_key(ck.key()).ok()?;
        }
    }
    let connector = builder.build();
    let mut cfg = connector.configure().ok()?;
    cfg.set_verify_hostname(false);
    let ssl = cfg.into_ssl(sni).ok()?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).ok()?;
    Pin::new(&mut stream).connect().await.ok()?;
    if verify {
        // Same verification as proxied traffic: the service's store, depth and name.
        let store = b.probe_tls.as_ref().and_then(|p| p.store.clone())?;
        if crate::tls::upstream::verify_peer(&store, stream.ssl()).is_some() {
            return None;
        }
    }
    Some(stream)
}

async fn http_probe<S>(s: S, host: &str, path: &str, timeout: Duration) -> Outcome
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(req) = portcullis_http_client::get(host, path, "portcullis-healthcheck") else {
        return Outcome::TcpFailure;
    };
    // The status decides; the body is not read.
    let limits = portcullis_http_client::Limits {
        timeout,
        max_body: None,
    };
    match portcullis_http_client::send(s, req, limits).await {
        Ok(r) => Outcome::Status(r.status.as_u16()),
        Err(portcullis_http_client::Error::Timeout(_)) => Outcome::Timeout,
        Err(_) => Outcome::TcpFailure,
    }
}
