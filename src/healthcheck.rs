//! `portcullis healthcheck`: a dependency-free HTTP GET of the status listener's `/status`, for
//! container HEALTHCHECK lines (distroless-friendly: no curl needed in the image).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

fn default_url(conf: &Path) -> String {
    let addr = crate::config::load(conf)
        .ok()
        .and_then(|(c, _)| c.listeners.status.clone())
        .unwrap_or_else(|| "127.0.0.1:8100".to_string());
    // A wildcard bind address is reached through loopback.
    let addr = addr
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{addr}/status")
}

pub fn run(url: Option<String>, conf: &Path) -> ExitCode {
    let url = url.unwrap_or_else(|| default_url(conf));
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
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.1 200") && text.contains("\"ready\"") {
        Ok(())
    } else {
        Err(text.lines().next().unwrap_or("no response").to_string())
    }
}
