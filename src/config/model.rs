//! The validated configuration: every reference resolved, every PEM parsed, immutable.
//! A running gateway holds one `Arc<Config>` at a time and swaps it whole on reload.

use openssl::pkey::{PKey, Private};
use openssl::x509::X509;
use portcullis_plugin_api as api;
use regex::Regex;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ProxyListener {
    pub address: String,
    pub tls: bool,
    /// TLS: offer h2 in ALPN (default on). Plaintext: accept h2c with prior knowledge (default
    /// off: Pingora waits for 24 preface bytes before answering anything on such a listener).
    pub http2: bool,
    /// Connections served at once; more are closed on arrival.
    pub max_connections: usize,
    /// The whole request header must arrive within this (nginx's `client_header_timeout`).
    pub client_header_timeout: Duration,
    /// TLS listeners: the ClientHello must arrive within this.
    pub tls_handshake_timeout: Duration,
}

/// Defaults of the proxy listeners' limits.
pub const PROXY_MAX_CONNECTIONS: usize = 10_000;
pub const CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct StreamListener {
    pub address: String,
    /// `true` (default): reads the ClientHello and serves `tls_passthrough` and `tls` routes by
    /// SNI. `false`: plain TCP, serves `tcp` routes by source and destination.
    pub tls: bool,
    pub client_hello_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Tunnels one client address may hold open at once.
    pub max_connections_per_client: usize,
}

/// Defaults of the stream listeners' limits: idle tunnels close after nginx's `proxy_timeout`.
pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub const STREAM_MAX_CONNECTIONS: usize = 10_000;
pub const STREAM_MAX_CONNECTIONS_PER_CLIENT: usize = 256;

#[derive(Debug, Clone)]
pub struct Listeners {
    pub proxy: Vec<ProxyListener>,
    pub stream: Vec<StreamListener>,
    pub status: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub threads: usize,
    /// Seconds in-flight requests get to finish after SIGTERM or an upgrade hand-over.
    pub graceful_shutdown_seconds: u64,
    /// Seconds Pingora's runtimes get to stop after the drain (`runtime_shutdown_seconds`).
    pub runtime_shutdown_seconds: u64,
    /// `None`: in the private runtime directory (`server::rundir`).
    pub upgrade_sock: Option<String>,
    pub pid_file: Option<String>,
    /// `/status` shows the conf dir and reload error texts (off: they are for the log only,
    /// since the status listener has no authentication).
    pub status_details: bool,
    /// Peers whose `X-Forwarded-*` headers are trusted (appended to instead of replaced).
    pub trusted_proxies: Vec<IpNet>,
    pub log_level: Option<String>,
    pub log_json: Option<bool>,
    /// How often host names of services without an upstream entity are resolved again.
    pub dns_refresh_interval: Duration,
}

/// Default of `server.dns_refresh_interval`: the balancers' re-resolution interval.
pub const DNS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// An address range, for `trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// One `sources` / `destinations` entry of a stream route: an address range, a port, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetMatch {
    pub net: Option<IpNet>,
    pub port: Option<u16>,
}

impl NetMatch {
    pub fn matches(&self, addr: std::net::SocketAddr) -> bool {
        self.net.is_none_or(|n| n.contains(addr.ip())) && self.port.is_none_or(|p| p == addr.port())
    }
}

/// A server or client certificate with its key (Kong Certificate).
pub struct Certificate {
    pub id: String,
    pub name: Option<String>,
    /// Leaf first, then the chain.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    pub snis: Vec<String>,
    pub subject: String,
    pub not_after: i64,
    /// SHA-256 of the leaf, hex: identifies the certificate in pool keys and logs.
    pub fingerprint: String,
    /// `file:line:col: certificates[i]` of its definition, for messages after validation.
    pub origin: String,
}

impl Certificate {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

impl std::fmt::Debug for Certificate {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("subject", &self.subject)
            .field("snis", &self.snis)
            .finish()
    }
}

#[derive(Debug)]
pub struct CaCertificate {
    pub id: String,
    pub name: Option<String>,
    pub certs: Vec<X509>,
    pub pem: String,
    pub fingerprint: String,
    pub subject: String,
    pub not_after: i64,
    /// `file:line:col: ca_certificates[i]` of its definition, for messages after validation.
    pub origin: String,
}

impl CaCertificate {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Https,
    Grpc,
    Grpcs,
    Tcp,
    Tls,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s {
            "http" => Protocol::Http,
            "https" => Protocol::Https,
            "grpc" => Protocol::Grpc,
            "grpcs" => Protocol::Grpcs,
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            _ => return None,
        })
    }
    /// Kong's spelling, for messages and logs (never the Rust variant name).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Grpc => "grpc",
            Protocol::Grpcs => "grpcs",
            Protocol::Tcp => "tcp",
            Protocol::Tls => "tls",
        }
    }
    pub fn is_tls(self) -> bool {
        matches!(self, Protocol::Https | Protocol::Grpcs | Protocol::Tls)
    }
    pub fn default_port(self) -> u16 {
        if self.is_tls() {
            443
        } else {
            80
        }
    }
}

/// Everything that decides whether an upstream TLS connection may be trusted and reused.
#[derive(Debug)]
pub struct UpstreamTls {
    pub verify: bool,
    pub verify_depth: Option<u8>,
    pub ca_certificates: Vec<Arc<CaCertificate>>,
    pub client_certificate: Option<Arc<Certificate>>,
    /// SNI sent and name verified.
    pub server_name: String,
    /// Hash of the whole profile: connections are pooled per profile, never across.
    pub group_key: u64,
}

#[derive(Debug)]
pub struct Service {
    pub id: String,
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub retries: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub tls: Arc<UpstreamTls>,
    /// When `host` names an upstream, its index in `Config::upstreams`.
    pub upstream: Option<usize>,
    pub enabled: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Protocols {
    pub http: bool,
    pub https: bool,
    pub grpc: bool,
    pub grpcs: bool,
    pub tls_passthrough: bool,
    /// Stream: TLS terminated by the stream listener.
    pub tls: bool,
    /// Stream: plain TCP.
    pub tcp: bool,
}

impl Protocols {
    /// Served by the stream listeners rather than the HTTP proxy.
    pub fn is_stream(&self) -> bool {
        self.tls_passthrough || self.tls || self.tcp
    }
}

#[derive(Debug, Clone)]
pub enum PathSpec {
    Prefix(String),
    Regex { source: String, re: Regex },
}

#[derive(Debug)]
pub struct Route {
    pub id: String,
    pub name: Arc<str>,
    pub service: Arc<Service>,
    pub protocols: Protocols,
    pub hosts: Vec<String>,
    pub paths: Vec<PathSpec>,
    pub methods: Vec<String>,
    /// Lower-cased header name → accepted values (`~*` prefix: regex).
    pub headers: Vec<(String, Vec<String>)>,
    pub snis: Vec<String>,
    /// Stream routes: client address ranges / ports (any entry matches).
    pub sources: Vec<NetMatch>,
    /// Stream routes: the address / port the client connected to.
    pub destinations: Vec<NetMatch>,
    pub strip_path: bool,
    pub preserve_host: bool,
    pub regex_priority: i64,
    pub https_redirect_status_code: u16,
    /// Position in the configuration, the router's last tie-breaker (Kong: created_at).
    pub order: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
    ConsistentHashing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    None,
    Ip,
    Header(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveCheck {
    pub kind: CheckKind,
    pub http_path: String,
    pub timeout: Duration,
    pub https_verify_certificate: bool,
    pub https_sni: Option<String>,
    /// 0 disables probing of healthy targets (Kong's default).
    pub healthy_interval: Duration,
    pub healthy_successes: u32,
    pub healthy_http_statuses: Vec<u16>,
    pub unhealthy_interval: Duration,
    pub unhealthy_http_failures: u32,
    pub unhealthy_tcp_failures: u32,
    pub unhealthy_timeouts: u32,
    pub unhealthy_http_statuses: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Http,
    Https,
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PassiveCheck {
    pub healthy_successes: u32,
    pub healthy_http_statuses: Vec<u16>,
    pub unhealthy_http_failures: u32,
    pub unhealthy_tcp_failures: u32,
    pub unhealthy_timeouts: u32,
    pub unhealthy_http_statuses: Vec<u16>,
}

#[derive(Debug)]
pub struct Upstream {
    pub id: String,
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_on: HashOn,
    pub host_header: Option<String>,
    pub targets: Vec<Target>,
    pub active: Option<ActiveCheck>,
    pub passive: Option<PassiveCheck>,
}

/// Where a plugin instance applies (Kong scoping).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub service: Option<String>,
    pub route: Option<String>,
    pub consumer: Option<String>,
}

pub struct PluginInstance {
    pub name: String,
    pub scope: Scope,
    pub plugin: Arc<dyn api::Plugin>,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish()
    }
}

#[derive(Debug)]
pub struct Config {
    pub dir: PathBuf,
    pub listeners: Listeners,
    pub server: ServerSettings,
    pub certificates: Vec<Arc<Certificate>>,
    pub default_certificate: Option<Arc<Certificate>>,
    /// Key-exchange groups in order of preference (`tls.groups`), checked against OpenSSL.
    pub tls_groups: Vec<String>,
    pub ca_certificates: Vec<Arc<CaCertificate>>,
    pub services: Vec<Arc<Service>>,
    /// HTTP routes (everything but `tls_passthrough`, `tls` and `tcp`).
    pub routes: Vec<Arc<Route>>,
    /// `tls_passthrough`, `tls` and `tcp` routes.
    pub stream_routes: Vec<Arc<Route>>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub consumers: Vec<Arc<api::Consumer>>,
    pub credentials: Vec<api::MtlsCredential>,
    pub plugins: Vec<PluginInstance>,
    /// Every file the configuration was read from or references, for the reload watcher.
    pub files: Vec<PathBuf>,
    /// SHA-256 over every file's content: the configuration's version.
    pub hash: String,
}
