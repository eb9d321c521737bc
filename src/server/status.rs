//! The status listener: `GET /status` (readiness and what is loaded, JSON) and `GET /metrics`
//! (Prometheus text format of the default registry).

use super::Gateway;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::Encoder;
use std::sync::Arc;

pub struct StatusApp {
    pub gw: Arc<Gateway>,
    /// Set once every proxy and stream listener accepts connections.
    pub ready: std::sync::atomic::AtomicBool,
}

impl StatusApp {
    pub fn new(gw: Arc<Gateway>) -> StatusApp {
        StatusApp {
            gw,
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Pingora starts each listening service on its own runtime and in no guaranteed order, so
    /// the status listener can be up before the proxy is. "Ready" means every listener of the
    /// configuration accepts a connection (checked until it does once).
    async fn listeners_up(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.ready.load(Ordering::Relaxed) {
            return true;
        }
        let config = self.gw.shared.load().config.clone();
        let addrs = config
            .listeners
            .proxy
            .iter()
            .map(|l| l.address.clone())
            .chain(config.listeners.stream.iter().map(|l| l.address.clone()));
        for a in addrs {
            let a = a
                .replace("0.0.0.0:", "127.0.0.1:")
                .replace("[::]:", "[::1]:");
            let connect = tokio::net::TcpStream::connect(a);
            match tokio::time::timeout(std::time::Duration::from_millis(500), connect).await {
                Ok(Ok(_)) => {}
                _ => return false,
            }
        }
        self.ready.store(true, Ordering::Relaxed);
        true
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn status_json(gw: &Gateway) -> serde_json::Value {
    let rt = gw.shared.load();
    let c = &rt.config;
    let details = c.server.status_details;
    let last_error = gw
        .last_reload_error
        .lock()
        .map(|e| e.clone())
        .unwrap_or_else(|poisoned| poisoned.into_inner().clone());
    let mut v = serde_json::json!({
        "status": "ready",
        "version": env!("CARGO_PKG_VERSION"),
        "config_hash": c.hash,
        "loaded_at": rfc3339(rt.loaded_at),
        "started_at": rfc3339(gw.started),
        "counts": {
            "services": c.services.len(),
            "routes": c.routes.len() + c.stream_routes.len(),
            "stream_routes": c.stream_routes.len(),
            "certificates": c.certificates.len(),
            "ca_certificates": c.ca_certificates.len(),
            "upstreams": c.upstreams.len(),
            "targets": c.upstreams.iter().map(|u| u.targets.len()).sum::<usize>(),
            "consumers": c.consumers.len(),
            "plugins": c.plugins.len(),
        },
        "listeners": {
            "proxy": c.listeners.proxy.iter().map(|l| serde_json::json!({"address": l.address, "tls": l.tls})).collect::<Vec<_>>(),
            "stream": c.listeners.stream.iter().map(|l| l.address.clone()).collect::<Vec<_>>(),
            "status": c.listeners.status,
        },
        // Whether the files on disk are what runs: `null` after a successful reload.
        "last_reload_error": last_error.map(|e| serde_json::json!({
            "at": rfc3339(e.at),
            // Error texts name files, entities and paths: for the log, unless asked for here.
            "message": if details {
                e.message
            } else {
                "configuration rejected; the reason is in the gateway log".to_string()
            },
        })),
    });
    // The status listener has no authentication: where the configuration lives is shown only
    // when `server.status_details` asks for it.
    if details {
        v["conf_dir"] = gw.conf_dir.display().to_string().into();
    }
    v
}

fn response(status: u16, content_type: &str, body: Vec<u8>) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for StatusApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/status" | "/status/ready" => {
                if self.listeners_up().await {
                    response(
                        200,
                        "application/json",
                        status_json(&self.gw).to_string().into_bytes(),
                    )
                } else {
                    response(
                        503,
                        "application/json",
                        br#"{"status":"starting"}"#.to_vec(),
                    )
                }
            }
            "/metrics" => {
                let mut buf = Vec::new();
                let encoder = prometheus::TextEncoder::new();
                if let Err(e) = encoder.encode(&prometheus::gather(), &mut buf) {
                    return response(
                        500,
                        "text/plain",
                        format!("encoding metrics: {e}").into_bytes(),
                    );
                }
                response(200, encoder.format_type(), buf)
            }
            _ => response(
                404,
                "application/json",
                br#"{"message":"Not found"}"#.to_vec(),
            ),
        }
    }
}
