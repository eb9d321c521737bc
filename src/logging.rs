//! Structured logs through `tracing`: plain text by default, JSON with
//! `PORTCULLIS_LOG_FORMAT=json` (or `server.log_format: json`); level from `PORTCULLIS_LOG`
//! (an env-filter directive such as `info` or `portcullis=debug`) or `server.log_level`.
//! Pingora logs through the `log` crate; those records are bridged into the same output.

use crate::config::model::ServerSettings;
use tracing_subscriber::EnvFilter;

pub fn init(settings: &ServerSettings) {
    let level = std::env::var("PORTCULLIS_LOG")
        .ok()
        .or_else(|| settings.log_level.clone())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("PORTCULLIS_LOG_FORMAT").ok().as_deref() {
        Some("json") => true,
        Some(_) => false,
        None => settings.log_json.unwrap_or(false),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("portcullis: logging already initialised: {e}");
    }
}
