//! The `portcullis` command: a thin CLI over the library (config → server → run).

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: the proxy path makes ~100 small allocations per request
/// (most inside Pingora and the `http` header maps), and the allocator was 12% of CPU in the
/// load benchmark's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "portcullis",
    about = "A programmable API gateway built on Pingora",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway with a conf directory.
    Run {
        /// Conf directory (default: $PORTCULLIS_CONF, else ./conf).
        #[arg(long)]
        conf: Option<PathBuf>,
        /// Take over the listening sockets of a running gateway (Pingora graceful upgrade):
        /// start the new binary with --upgrade, then send SIGQUIT to the old process.
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a conf directory without starting anything.
    Check {
        #[arg(long)]
        conf: Option<PathBuf>,
    },
    /// Print the version.
    Version,
    /// Query the status listener of a running gateway; exit 0 when it is ready (for container
    /// health checks).
    Healthcheck {
        /// Status URL (default: derived from the conf's status listener, else
        /// http://127.0.0.1:8100/status).
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        conf: Option<PathBuf>,
    },
}

fn conf_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os("PORTCULLIS_CONF").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("conf"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("portcullis {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Check { conf } => check(&conf_dir(conf)),
        Command::Run { conf, upgrade } => {
            let dir = conf_dir(conf);
            match portcullis::config::load(&dir, portcullis::plugin::registry()) {
                Ok((config, warnings)) => {
                    portcullis::logging::init(&config.server);
                    for w in &warnings {
                        tracing::warn!(warning = %w, "configuration warning");
                    }
                    if let Err(e) = portcullis::server::run(dir, config, upgrade) {
                        eprintln!("portcullis: {e:#}");
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    for d in &e.diags.errors {
                        eprintln!("{d}");
                    }
                    eprintln!(
                        "portcullis: {} error(s) in {}; not starting",
                        e.diags.errors.len(),
                        dir.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck { url, conf } => portcullis::healthcheck::run(url, &conf_dir(conf)),
    }
}

fn check(dir: &std::path::Path) -> ExitCode {
    match portcullis::config::load(dir, portcullis::plugin::registry()) {
        Ok((config, warnings)) => {
            for w in &warnings {
                println!("{w}");
            }
            println!(
                "{}: OK: {} services, {} routes ({} stream), {} certificates, {} CA certificates, {} upstreams, {} consumers, {} plugins (config {})",
                dir.display(),
                config.services.len(),
                config.routes.len() + config.stream_routes.len(),
                config.stream_routes.len(),
                config.certificates.len(),
                config.ca_certificates.len(),
                config.upstreams.len(),
                config.consumers.len(),
                config.plugins.len(),
                config.hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for w in &e.diags.warnings {
                println!("{w}");
            }
            for d in &e.diags.errors {
                println!("{d}");
            }
            println!("{}: {} error(s)", dir.display(), e.diags.errors.len());
            ExitCode::FAILURE
        }
    }
}
