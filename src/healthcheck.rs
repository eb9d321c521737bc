//! `portcullis healthcheck`: an HTTP GET of the status listener's `/status` (the gateway's own
//! hyper-based client), for container HEALTHCHECK lines (distroless-friendly: no curl needed
//! in the image).

use std::net::ToSocketAddrs;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Where the status listener of the conf dir listens, read straight from the YAML
/// (`listeners.status.address`, default `0.0.0.0:8100` when no file has `listeners`) without
/// validating anything else: the health check must find a running gateway even while the conf
/// dir holds an edit that gateway refused (it keeps serving the previous configuration). `None`
/// when `listeners` exists without a status listener.
fn status_address(conf: &Path) -> Option<String> {
    let files = crate::config::conf_files(conf).unwrap_or_default();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name: Arc<str> = Arc::from(f.display().to_string());
        let Ok(doc) = crate::config::yaml::parse(&name, &text) else {
            continue;
        };
        // `listeners` may appear in one file only.
        if let Some(listeners) = doc.get("listeners") {
            return listeners
                .get("status")
                .and_then(|s| s.get("address"))
                .and_then(|a| a.as_str())
                .map(str::to_string);
        }
    }
    Some("0.0.0.0:8100".to_string())
}

fn default_url(conf: &Path) -> Result<String, String> {
    let addr = status_address(conf).ok_or_else(|| {
        format!(
            "{}: no status listener configured (listeners.status)",
            conf.display()
        )
    })?;
    // A wildcard bind address is reached through loopback.
    let addr = addr
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    Ok(format!("http://{addr}/status"))
}

pub fn run(url: Option<String>, conf: &Path) -> ExitCode {
    let url = match url.map(Ok).unwrap_or_else(|| default_url(conf)) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("not ready: {e}");
            return ExitCode::FAILURE;
        }
    };
    match probe(&url) {
        Ok(()) => {
            println!("ready: {url}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("not ready: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/status"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("address resolved to nothing")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let response = rt.block_on(async {
        let tcp = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let req = portcullis_http_client::get(authority, path, "portcullis-healthcheck")
            .map_err(|e| e.to_string())?;
        let limits = portcullis_http_client::Limits {
            timeout: TIMEOUT,
            max_body: Some(MAX_BODY),
        };
        portcullis_http_client::send(tcp, req, limits)
            .await
            .map_err(|e| e.to_string())
    })?;
    let body = String::from_utf8_lossy(&response.body);
    if response.status == http::StatusCode::OK && body.contains("\"ready\"") {
        Ok(())
    } else {
        Err(format!("HTTP {}", response.status))
    }
}

/// Per step (connect, then the exchange): a container health check wants a quick answer.
const TIMEOUT: Duration = Duration::from_secs(3);
/// `/status` is a few hundred bytes; anything far larger is not our status listener.
const MAX_BODY: usize = 1024 * 1024;
