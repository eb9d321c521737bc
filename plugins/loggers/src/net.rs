//! tcp-log and udp-log: records sent to `host:port` — over TCP (optionally TLS), one JSON
//! object per line; over UDP, one datagram per record.

use crate::fields::Record;
use crate::queue::{QueueConfig, Shipper, Sink};
use portcullis_plugin_api::{
    async_trait, parse_config, BuildContext, ConfigError, LogEntry, Phases, Plugin, PluginFactory,
    RequestCtx,
};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn d_timeout() -> f64 {
    10000.0
}
fn d_keepalive() -> f64 {
    60000.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpConfig {
    host: String,
    port: u16,
    #[serde(default = "d_timeout")]
    timeout: f64,
    #[serde(default = "d_keepalive")]
    keepalive: f64,
    #[serde(default)]
    tls: bool,
    #[serde(default)]
    tls_sni: Option<String>,
    /// Lua: accepted so Kong files load, never run (a located warning says so).
    #[serde(default)]
    custom_fields_by_lua: Option<serde::de::IgnoredAny>,
    /// Portcullis's stand-in for `custom_fields_by_lua`: record fields set from values and
    /// templates (see `fields.rs`).
    #[serde(default)]
    custom_fields: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UdpConfig {
    host: String,
    port: u16,
    #[serde(default = "d_timeout")]
    timeout: f64,
    /// Lua: accepted so Kong files load, never run (a located warning says so).
    #[serde(default)]
    custom_fields_by_lua: Option<serde::de::IgnoredAny>,
    /// Portcullis's stand-in for `custom_fields_by_lua`: record fields set from values and
    /// templates (see `fields.rs`).
    #[serde(default)]
    custom_fields: Option<serde_json::Value>,
}

fn check_common(host: &str, port: u16, timeout: f64, errors: &mut Vec<ConfigError>) {
    if host.is_empty() {
        errors.push(ConfigError::new("host", "required field missing"));
    }
    if port == 0 {
        errors.push(ConfigError::new(
            "port",
            "value should be between 1 and 65535",
        ));
    }
    if !(timeout.is_finite() && timeout > 0.0) {
        errors.push(ConfigError::new(
            "timeout",
            "must be a positive number of milliseconds",
        ));
    }
}

type Conn = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

struct TcpSink {
    host: String,
    port: u16,
    timeout: Duration,
    keepalive: Duration,
    tls: Option<(tokio_native_tls::TlsConnector, String)>,
    conn: tokio::sync::Mutex<Option<(Conn, tokio::time::Instant)>>,
}

impl TcpSink {
    async fn connect(&self) -> Result<Conn, String> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| format!("connecting to {addr}: timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, sni)) => {
                let s = tokio::time::timeout(self.timeout, connector.connect(sni, tcp))
                    .await
                    .map_err(|_| format!("TLS handshake with {addr}: timed out"))?
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                Ok(Box::new(s))
            }
        }
    }
}

impl Sink for TcpSink {
    type Item = Vec<u8>;

    async fn send(&self, batch: &[Vec<u8>]) -> Result<(), String> {
        let mut buf = Vec::with_capacity(batch.iter().map(|l| l.len() + 1).sum());
        for line in batch {
            buf.extend_from_slice(line);
            buf.push(b'\n');
        }
        let mut slot = self.conn.lock().await;
        let fresh = match slot.take() {
            Some((c, used)) if used.elapsed() < self.keepalive => c,
            _ => self.connect().await?,
        };
        let mut c = fresh;
        let wrote = tokio::time::timeout(self.timeout, async {
            c.write_all(&buf).await?;
            c.flush().await
        })
        .await;
        match wrote {
            Ok(Ok(())) => {
                *slot = Some((c, tokio::time::Instant::now()));
                Ok(())
            }
            Ok(Err(e)) => Err(format!("sending to {}:{}: {e}", self.host, self.port)),
            Err(_) => Err(format!("sending to {}:{}: timed out", self.host, self.port)),
        }
    }
}

struct UdpSink {
    target: String,
    socket: tokio::sync::Mutex<Option<tokio::net::UdpSocket>>,
}

impl Sink for UdpSink {
    type Item = Vec<u8>;

    async fn send(&self, batch: &[Vec<u8>]) -> Result<(), String> {
        let mut slot = self.socket.lock().await;
        if slot.is_none() {
            let bind = if self.target.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let s = tokio::net::UdpSocket::bind(bind)
                .await
                .map_err(|e| format!("udp socket: {e}"))?;
            s.connect(&self.target)
                .await
                .map_err(|e| format!("udp {}: {e}", self.target))?;
            *slot = Some(s);
        }
        let Some(s) = slot.as_ref() else {
            return Err("no socket".into());
        };
        for record in batch {
            s.send(record)
                .await
                .map_err(|e| format!("udp {}: {e}", self.target))?;
        }
        Ok(())
    }
}

struct NetLog<S: Sink> {
    name: &'static str,
    priority: i32,
    shipper: Arc<Shipper<S>>,
    record: Record,
}

#[async_trait]
impl<S: Sink<Item = Vec<u8>>> Plugin for NetLog<S> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn phases(&self) -> Phases {
        self.record.phases()
    }

    fn log(&self, entry: &LogEntry<'_>, ctx: &RequestCtx) {
        self.shipper.queue.push(self.record.bytes(entry, ctx));
    }

    async fn flush(&self) {
        self.shipper.flush().await;
    }
}

fn batch_queue() -> QueueConfig {
    // Kong sends each record as it comes; what is queued goes in one write.
    QueueConfig {
        max_batch_size: 100,
        max_coalescing_delay: 0.0,
        max_retry_time: 10.0,
        ..QueueConfig::default()
    }
}

pub struct TcpLogFactory;

impl PluginFactory for TcpLogFactory {
    fn name(&self) -> &'static str {
        "tcp-log"
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let c: TcpConfig = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        check_common(&c.host, c.port, c.timeout, &mut errors);
        crate::warn_lua(ctx, c.custom_fields_by_lua);
        let record = Record::from_config(c.custom_fields.as_ref()).unwrap_or_else(|e| {
            errors.extend(e);
            Record::default()
        });
        if !(c.keepalive.is_finite() && c.keepalive >= 0.0) {
            errors.push(ConfigError::new(
                "keepalive",
                "must be a number of milliseconds",
            ));
        }
        let tls = if c.tls {
            // Verified against the system store: a log pipeline is an upstream like any other.
            match native_tls_connector() {
                Ok(conn) => Some((conn, c.tls_sni.clone().unwrap_or_else(|| c.host.clone()))),
                Err(e) => {
                    errors.push(ConfigError::new("tls", e));
                    None
                }
            }
        } else {
            None
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let sink = TcpSink {
            host: c.host,
            port: c.port,
            timeout: Duration::from_millis(c.timeout as u64),
            keepalive: Duration::from_millis(c.keepalive as u64),
            tls,
            conn: tokio::sync::Mutex::new(None),
        };
        Ok(Arc::new(NetLog {
            name: "tcp-log",
            priority: 7,
            shipper: Shipper::new("tcp-log", batch_queue(), sink),
            record,
        }))
    }
}

fn native_tls_connector() -> Result<tokio_native_tls::TlsConnector, String> {
    tokio_native_tls::native_tls::TlsConnector::new()
        .map(tokio_native_tls::TlsConnector::from)
        .map_err(|e| format!("cannot set up TLS: {e}"))
}

pub struct UdpLogFactory;

impl PluginFactory for UdpLogFactory {
    fn name(&self) -> &'static str {
        "udp-log"
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &BuildContext,
    ) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let c: UdpConfig = parse_config(config).map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        check_common(&c.host, c.port, c.timeout, &mut errors);
        crate::warn_lua(ctx, c.custom_fields_by_lua);
        let record = Record::from_config(c.custom_fields.as_ref()).unwrap_or_else(|e| {
            errors.extend(e);
            Record::default()
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        let target = if c.host.contains(':') {
            format!("[{}]:{}", c.host, c.port)
        } else {
            format!("{}:{}", c.host, c.port)
        };
        let sink = UdpSink {
            target,
            socket: tokio::sync::Mutex::new(None),
        };
        Ok(Arc::new(NetLog {
            name: "udp-log",
            priority: 8,
            shipper: Shipper::new("udp-log", batch_queue(), sink),
            record,
        }))
    }
}
