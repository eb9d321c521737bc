//! Builds the Pingora server from a configuration: one proxy service per proxy listener (TLS
//! ones with our SNI acceptor), one stream service per stream listener, the status listener, the
//! reload watcher. Pingora's own server settings are derived from the `server:` section.

pub mod reload;
pub mod rundir;
pub mod status;

use crate::config::model::Config;
use crate::proxy::request_line::GuardedApp;
use crate::proxy::GatewayProxy;
use crate::runtime::{self, Runtime, Shared};
use crate::stream::{StreamApp, StreamSettings};
use crate::tls::Acceptor;
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::Arc;

/// The state shared by every listener and the reload machinery.
pub struct Gateway {
    pub conf_dir: PathBuf,
    pub shared: Shared,
    pub fallback_cert: Arc<crate::config::model::Certificate>,
    pub started: std::time::SystemTime,
    /// Why the last reload attempt was refused; `None` once one succeeds.
    pub last_reload_error: std::sync::Mutex<Option<ReloadFailure>>,
}

/// A refused reload, as `/status` reports it.
#[derive(Debug, Clone)]
pub struct ReloadFailure {
    pub at: std::time::SystemTime,
    pub message: String,
}

/// Warnings a running gateway logs once per (re)load.
pub fn log_config_warnings(config: &Config) {
    for s in &config.services {
        if s.protocol.is_tls() && !s.tls.verify {
            tracing::warn!(service = %s.name, "tls_verify is false: the upstream certificate is NOT verified (man-in-the-middle risk)");
        }
    }
}

pub fn build_runtime(
    config: Arc<Config>,
    fallback: Arc<crate::config::model::Certificate>,
    previous: Option<&Runtime>,
) -> anyhow::Result<Runtime> {
    runtime::compile(config, fallback, previous)
}

/// Construct and run the server; returns only on startup failure.
pub fn run(conf_dir: PathBuf, config: Arc<Config>, upgrade: bool) -> anyhow::Result<()> {
    // First, so a SIGHUP sent as soon as the process exists reloads instead of killing it.
    reload::spawn_sighup_listener();
    raise_fd_limit(&config);
    let fallback = crate::tls::self_signed()?;
    log_config_warnings(&config);
    let rt = build_runtime(config.clone(), fallback.clone(), None)?;
    let shared: Shared = Arc::new(ArcSwap::from_pointee(rt));
    let gw = Arc::new(Gateway {
        conf_dir,
        shared: shared.clone(),
        fallback_cert: fallback,
        started: std::time::SystemTime::now(),
        last_reload_error: std::sync::Mutex::new(None),
    });

    if !upgrade {
        // Pingora binds inside its service threads and a failure there would leave the process
        // running without that listener; fail before starting anything instead. (With
        // --upgrade the sockets come from the old process.)
        let addrs = config
            .listeners
            .proxy
            .iter()
            .map(|l| l.address.as_str())
            .chain(config.listeners.stream.iter().map(|l| l.address.as_str()))
            .chain(config.listeners.status.iter().map(String::as_str));
        for a in addrs {
            if let Err(e) = std::net::TcpListener::bind(a) {
                anyhow::bail!("cannot listen on {a}: {e}");
            }
        }
    }

    let mut conf = ServerConf::default();
    let s = &config.server;
    conf.threads = s.threads;
    conf.work_stealing = false;
    // Kong's default `upstream_keepalive_pool_size`. Pingora's 128 is below the concurrency of a
    // single busy HTTP/2 client (100 streams per connection): past it every request closed its
    // upstream connection and the next one connected anew (S6 in BENCHMARKS.md).
    conf.upstream_keepalive_pool_size = UPSTREAM_KEEPALIVE_POOL;
    // On SIGTERM (and after handing sockets over on SIGQUIT) Pingora stops accepting, sleeps
    // `grace_period_seconds` while in-flight requests finish, then shuts its runtimes down with
    // `graceful_shutdown_timeout_seconds` — and that shutdown drops whatever is still running.
    // So the drain time users configure is Pingora's grace period (its default, 300 s, is far
    // too long for a rollout); the runtime timeout only covers blocking work after it.
    conf.grace_period_seconds = Some(s.graceful_shutdown_seconds);
    conf.graceful_shutdown_timeout_seconds = Some(s.runtime_shutdown_seconds);
    let (upgrade_sock, pid_file) = match (&s.upgrade_sock, &s.pid_file) {
        (Some(sock), Some(pid)) => (sock.clone(), pid.clone()),
        (sock, pid) => {
            let dir = rundir::default_dir()?;
            rundir::ensure_private_dir(&dir).map_err(|e| {
                anyhow::anyhow!("runtime directory for the upgrade socket and pid file: {e} (or set server.upgrade_sock and server.pid_file)")
            })?;
            let at = |name: &str| dir.join(name).display().to_string();
            (
                sock.clone().unwrap_or_else(|| at("upgrade.sock")),
                pid.clone().unwrap_or_else(|| at("portcullis.pid")),
            )
        }
    };
    conf.upgrade_sock = upgrade_sock;
    conf.pid_file = pid_file.clone();
    let opt = Opt {
        upgrade,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    let server_conf = server.configuration.clone();

    for (i, l) in config.listeners.proxy.iter().enumerate() {
        let proxy = GatewayProxy::new(shared.clone(), l.tls, &l.address);
        let mut app = pingora::proxy::http_proxy(&server_conf, proxy);
        // h2c with prior knowledge on plaintext listeners that ask for it (`http2: true`,
        // Kong's `http2` listen flag; gRPC without TLS): Pingora peeks for the HTTP/2
        // preface and falls back to HTTP/1.1. Opt-in, because that peek waits for 24 bytes
        // with no time limit before answering anything.
        if !l.tls && l.http2 {
            let mut options = pingora::apps::HttpServerOptions::default();
            options.h2c = true;
            app.server_options = Some(options);
        }
        // Outermost the connection cap; then the request-line guard, which reads the raw bytes
        // (Pingora rewrites malformed request lines before any hook could see them,
        // `proxy::request_line`); then the header deadline around Pingora's proxy (see guard.rs
        // for why these live outside Pingora).
        let app = crate::proxy::guard::ConnectionCap::new(
            GuardedApp::new(crate::proxy::guard::HeaderDeadline::new(
                app,
                l.client_header_timeout,
                &l.address,
            )),
            l.max_connections,
            &l.address,
        );
        let mut svc = Service::new(format!("proxy-{i}"), app);
        if l.tls {
            let mut tls = TlsSettings::with_callbacks(Box::new(Acceptor {
                certs: shared.clone(),
                listener: l.address.clone(),
            }))?;
            // Post-quantum hybrid first by default (SPEC §5); fixed for the process's life,
            // like the listener itself (a reload changing `tls.groups` says so).
            tls.set_groups_list(&crate::tls::groups::server_list(&config.tls_groups))?;
            // ALPN: `h2` when enabled, and `acme-tls/1` for TLS-ALPN-01 validations answered
            // by a certificate provider (see tls::select_alpn).
            let (alpn_certs, http2) = (shared.clone(), l.http2);
            tls.set_alpn_select_callback(move |ssl, offered| {
                crate::tls::select_alpn(&*alpn_certs, http2, ssl, offered)
            });
            tls.set_min_proto_version(Some(pingora::tls::ssl::SslVersion::TLS1_2))?;
            // Before add_listener: Pingora copies the callback into each endpoint it adds.
            svc.endpoints().set_pre_tls_callback(Arc::new(
                crate::proxy::guard::ClientHelloDeadline {
                    timeout: l.tls_handshake_timeout,
                    listener: l.address.clone(),
                },
            ));
            // OpenSSL reads a record's header and body separately. With read-ahead it reads
            // whatever has arrived into its own buffer, which it frees when empty
            // (SSL_MODE_RELEASE_BUFFERS, set by Mozilla's profile): one read per burst like a
            // buffer underneath would give, without that buffer's 20 KiB held by every idle
            // keep-alive connection (measured: 70.8 → 50.4 KiB per idle TLS connection).
            tls.set_read_ahead(true);
            svc.add_listener(
                ListenerConfig::tcp(l.address.as_str())
                    .tls(tls)
                    .l4_buffer(read_buffer(0)),
            );
        } else {
            // Pingora's HTTP/1 code reads into its own buffers; a read buffer underneath only
            // adds a copy of every byte and 64 KiB per connection.
            svc.add_listener(ListenerConfig::tcp(l.address.as_str()).l4_buffer(read_buffer(0)));
        }
        server.add_service(svc);
    }

    for (i, l) in config.listeners.stream.iter().enumerate() {
        let app = StreamApp::new(
            shared.clone(),
            StreamSettings {
                tls: l.tls,
                client_hello_timeout: l.client_hello_timeout,
                idle_timeout: l.idle_timeout,
                max_connections: l.max_connections,
                max_connections_per_client: l.max_connections_per_client,
                tls_groups: config.tls_groups.clone(),
            },
        );
        let mut svc = Service::new(format!("stream-{i}"), app);
        // The ClientHello is read and the tunnel relayed with our own buffers: unbuffered reads
        // save a copy of every tunnelled byte and a zeroed 64 KiB per connection.
        svc.add_listener(ListenerConfig::tcp(l.address.as_str()).l4_buffer(read_buffer(0)));
        server.add_service(svc);
    }

    if let Some(addr) = &config.listeners.status {
        let app = status::StatusApp::new(gw.clone());
        let mut svc = Service::new(
            "status".to_string(),
            pingora::apps::http_app::HttpServer::new_app(app),
        );
        svc.add_tcp(addr);
        server.add_service(svc);
    }

    server.add_service(pingora::services::background::background_service(
        "plugin-flush",
        FlushOnShutdown {
            shared: shared.clone(),
        },
    ));

    reload::start(gw);
    crate::runtime::spawn_dns_refresher(shared.clone());
    // Pingora writes its pid file only when daemonised; operators (and `kill -QUIT $(cat ...)`
    // for upgrades) expect it either way.
    if let Err(e) = rundir::write_pid_file(std::path::Path::new(&pid_file)) {
        tracing::warn!(pid_file = %pid_file, error = %e, "cannot write the pid file");
    }
    tracing::info!(
        proxy = ?config.listeners.proxy.iter().map(|l| l.address.as_str()).collect::<Vec<_>>(),
        stream = ?config.listeners.stream.iter().map(|l| l.address.as_str()).collect::<Vec<_>>(),
        status = ?config.listeners.status,
        config_hash = %config.hash,
        "portcullis starting"
    );
    server.run_forever();
}

/// On graceful shutdown, plugins flush what they queued (log batches, exporters) while the
/// drain period runs, so a SIGTERM does not lose them.
struct FlushOnShutdown {
    shared: Shared,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for FlushOnShutdown {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let _ = shutdown.changed().await;
        // The exit follows the drain without a hook: from now on access lines are written as
        // they come.
        crate::logging::access::shutdown();
        let rt = self.shared.load_full();
        let plugins = rt.config.plugins.iter().map(|p| p.plugin.clone()).collect();
        let flushing = crate::plugin::chain::flush_all(plugins);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), flushing).await;
        tracing::info!("plugins flushed for shutdown");
    }
}

/// Every connection is a file descriptor (two when proxied): lift the soft `RLIMIT_NOFILE`
/// to the hard limit, as nginx's `worker_rlimit_nofile` would, and warn when even that is
/// below what the configured connection limits need.
fn raise_fd_limit(config: &Config) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
        }
    }
    let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(s, _)| s);
    let wanted: u64 = config
        .listeners
        .proxy
        .iter()
        .map(|l| 2 * l.max_connections as u64)
        .chain(
            config
                .listeners
                .stream
                .iter()
                .map(|l| 2 * l.max_connections as u64),
        )
        .sum();
    if limit < wanted {
        tracing::warn!(
            open_files_limit = limit,
            wanted,
            "the open-files limit is below twice the listeners' max_connections: connections beyond it fail at accept"
        );
    }
}

/// Idle upstream connections kept, all upstreams together (Kong: 512 per pool).
const UPSTREAM_KEEPALIVE_POOL: usize = 512;

/// Listener buffers: `read` bytes of read buffer (0: unbuffered), Pingora's default write
/// buffer (one MSS, which coalesces a response's header and short body into one send).
fn read_buffer(read: usize) -> L4BufferSettings {
    L4BufferSettings {
        read: Some(read),
        write: None,
    }
}
