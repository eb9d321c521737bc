//! Clients: the real `curl` (what users run), a tiny raw HTTP/1.1 client for the status listener
//! and malformed requests, and an in-process OpenSSL probe that reports the certificate a TLS
//! listener served (what `openssl s_client -servername` shows, without parsing its text).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use serde_json::Value;

use super::pki::{dn_string, serial_hex};

/// `GET path` on 127.0.0.1:port over plain HTTP/1.1 with `Connection: close`: (status, body).
#[allow(dead_code)]
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let raw = raw_request(port, req.as_bytes(), Duration::from_secs(5))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// Sends `bytes` to 127.0.0.1:port and reads until the peer closes or `timeout` passes.
#[allow(dead_code)]
pub fn raw_request(port: u16, bytes: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&super::upstream::local(port), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if out.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Sends `bytes` and returns as soon as one whole response arrived (head plus a
/// `Content-Length` or chunked body), or the peer closed, or `timeout` passed.
/// Unlike [`raw_request`] it does not wait for a keep-alive connection to close.
#[allow(dead_code)]
pub fn raw_exchange(port: u16, bytes: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&super::upstream::local(port), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // Written from another thread: a server that answers (e.g. 400) and stops reading before
    // it has everything must not leave us blocked in write until the timeout.
    let mut writer = s.try_clone()?;
    let data = bytes.to_vec();
    let writing = std::thread::spawn(move || writer.write_all(&data).err());
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if response_complete(&out) {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let write_err = writing.join().ok().flatten();
    match write_err {
        Some(e) if out.is_empty() => Err(e),
        _ => Ok(out),
    }
}

fn response_complete(buf: &[u8]) -> bool {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let body = &buf[head_end + 4..];
    if let Some(cl) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= cl;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// What curl got back.
#[allow(dead_code)]
#[derive(Clone)]
pub struct Response {
    /// 0 when no HTTP response arrived (see `exit_code` / `stderr`).
    pub status: u16,
    /// `1.1` or `2` (curl's `%{http_version}`).
    pub http_version: String,
    /// Lower-cased names, in order, from the last response head.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub exit_code: i32,
    pub stderr: String,
}

/// The body as text (lossy), not a list of byte values, so a failing assertion's message is
/// readable.
impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("http_version", &self.http_version)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("exit_code", &self.exit_code)
            .field("stderr", &self.stderr)
            .finish()
    }
}

#[allow(dead_code)]
impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON; panics with the whole response when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {self:#?} body={}",
                self.text()
            )
        })
    }
    /// For an echo answer: the upstream request header `name` (lower case).
    pub fn echo_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name.to_ascii_lowercase()]
            .as_str()
            .map(str::to_string)
    }
}

/// A `curl` invocation. Build with [`Curl::new`] or [`Curl::at`], run with [`Curl::run`].
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub struct Curl {
    url: String,
    args: Vec<String>,
    /// Sent from a file: a large body does not fit in one command-line argument.
    body: Option<Vec<u8>>,
}

#[allow(dead_code)]
impl Curl {
    pub fn new(url: &str) -> Curl {
        Curl {
            url: url.to_string(),
            args: Vec::new(),
            body: None,
        }
    }

    /// `scheme://host:port/path` with `--resolve host:port:127.0.0.1`, so `host` is both the
    /// SNI and the Host header while the connection goes to the local listener.
    pub fn at(scheme: &str, host: &str, port: u16, path: &str) -> Curl {
        Curl::new(&format!("{scheme}://{host}:{port}{path}")).resolve(host, port)
    }

    pub fn arg(mut self, a: impl Into<String>) -> Curl {
        self.args.push(a.into());
        self
    }
    pub fn resolve(self, host: &str, port: u16) -> Curl {
        self.arg("--resolve")
            .arg(format!("{host}:{port}:127.0.0.1"))
    }
    pub fn header(self, h: &str) -> Curl {
        self.arg("-H").arg(h)
    }
    pub fn method(self, m: &str) -> Curl {
        self.arg("-X").arg(m)
    }
    /// Request body (curl then defaults to POST).
    pub fn data(mut self, d: impl AsRef<[u8]>) -> Curl {
        self.body = Some(d.as_ref().to_vec());
        self
    }
    pub fn cacert(self, p: &Path) -> Curl {
        self.arg("--cacert").arg(p.display().to_string())
    }
    pub fn cert(self, cert: &Path, key: &Path) -> Curl {
        self.arg("--cert")
            .arg(cert.display().to_string())
            .arg("--key")
            .arg(key.display().to_string())
    }
    pub fn insecure(self) -> Curl {
        self.arg("-k")
    }
    pub fn http2(self) -> Curl {
        self.arg("--http2")
    }
    pub fn http1(self) -> Curl {
        self.arg("--http1.1")
    }
    pub fn max_time(self, secs: u32) -> Curl {
        self.arg("--max-time").arg(secs.to_string())
    }

    pub fn run(&self) -> Response {
        let dir = tempfile::tempdir().expect("curl temp dir");
        let head_path: PathBuf = dir.path().join("head");
        let body_path: PathBuf = dir.path().join("body");
        let mut cmd = Command::new("curl");
        if let Some(body) = &self.body {
            let body_in = dir.path().join("request-body");
            std::fs::write(&body_in, body).expect("write request body");
            cmd.arg("--data-binary")
                .arg(format!("@{}", body_in.display()));
        }
        cmd.arg("-sS")
            .arg("--noproxy")
            .arg("*")
            .arg("--max-time")
            .arg("30")
            .arg("-D")
            .arg(&head_path)
            .arg("-o")
            .arg(&body_path)
            .arg("-w")
            .arg("%{http_code} %{http_version}")
            .args(&self.args)
            .arg(&self.url);
        for var in [
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("run curl (is it installed?): {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = stdout.split_whitespace();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let http_version = parts.next().unwrap_or("").to_string();
        let head = std::fs::read_to_string(&head_path).unwrap_or_default();
        // With `100 Continue` or proxies curl dumps several heads; the last one is the response.
        let last_head = head
            .split("\r\n\r\n")
            .filter(|h| !h.trim().is_empty())
            .last()
            .unwrap_or("");
        let headers = last_head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Response {
            status,
            http_version,
            headers,
            body: std::fs::read(&body_path).unwrap_or_default(),
            exit_code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// What a TLS listener served.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct Served {
    /// Leaf subject, `O=..., CN=...` (see [`dn_string`]).
    pub subject: String,
    /// Leaf serial, upper-case hex.
    pub serial: String,
    pub issuer: String,
    /// Number of certificates the server sent (leaf included).
    pub chain_len: usize,
    /// Negotiated ALPN protocol, if any.
    pub alpn: Option<String>,
    /// `TLSv1.2`, `TLSv1.3`...
    pub version: String,
    /// Negotiated key-exchange group (`X25519MLKEM768`, `X25519`, ...), when known.
    pub group: Option<String>,
}

/// An in-process `openssl s_client`: connects, handshakes without verifying, reports the leaf.
#[allow(dead_code)]
#[derive(Clone, Debug, Default)]
pub struct TlsProbe {
    port: u16,
    sni: Option<String>,
    alpn: Vec<String>,
    client_cert: Option<(PathBuf, PathBuf)>,
    max_version: Option<SslVersion>,
    verify_ca: Option<PathBuf>,
    groups: Option<String>,
}

#[allow(dead_code)]
impl TlsProbe {
    pub fn new(port: u16) -> TlsProbe {
        TlsProbe {
            port,
            ..TlsProbe::default()
        }
    }
    pub fn sni(mut self, name: &str) -> TlsProbe {
        self.sni = Some(name.to_string());
        self
    }
    pub fn alpn(mut self, protos: &[&str]) -> TlsProbe {
        self.alpn = protos.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn client_cert(mut self, cert: &Path, key: &Path) -> TlsProbe {
        self.client_cert = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }
    pub fn max_version(mut self, v: SslVersion) -> TlsProbe {
        self.max_version = Some(v);
        self
    }
    /// Key-exchange groups to offer, in OpenSSL's list syntax. This client links the vendored
    /// OpenSSL (3.6), so unlike the system's `openssl` it speaks X25519MLKEM768.
    pub fn groups(mut self, list: &str) -> TlsProbe {
        self.groups = Some(list.to_string());
        self
    }
    /// Verify the served chain against this CA file (and the SNI as host name).
    pub fn verify_with(mut self, ca: &Path) -> TlsProbe {
        self.verify_ca = Some(ca.to_path_buf());
        self
    }

    /// Handshakes; `Err` carries OpenSSL's reason when the handshake fails.
    pub fn run(&self) -> Result<Served, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
        match &self.verify_ca {
            Some(ca) => {
                b.set_ca_file(ca).map_err(|e| e.to_string())?;
                b.set_verify(SslVerifyMode::PEER);
            }
            None => b.set_verify(SslVerifyMode::NONE),
        }
        if !self.alpn.is_empty() {
            let mut wire = Vec::new();
            for p in &self.alpn {
                wire.push(p.len() as u8);
                wire.extend_from_slice(p.as_bytes());
            }
            b.set_alpn_protos(&wire).map_err(|e| e.to_string())?;
        }
        if let Some((cert, key)) = &self.client_cert {
            b.set_certificate_chain_file(cert)
                .map_err(|e| e.to_string())?;
            b.set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| e.to_string())?;
        }
        if let Some(v) = self.max_version {
            // Old protocol versions are refused by OpenSSL's default security level on our side.
            b.set_security_level(0);
            b.set_min_proto_version(None).map_err(|e| e.to_string())?;
            b.set_max_proto_version(Some(v))
                .map_err(|e| e.to_string())?;
        }
        if let Some(g) = &self.groups {
            b.set_groups_list(g).map_err(|e| e.to_string())?;
        }
        let connector = b.build();
        let mut cfg = connector.configure().map_err(|e| e.to_string())?;
        cfg.set_use_server_name_indication(self.sni.is_some());
        cfg.set_verify_hostname(self.verify_ca.is_some() && self.sni.is_some());
        let tcp =
            TcpStream::connect_timeout(&super::upstream::local(self.port), Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let domain = self.sni.clone().unwrap_or_else(|| "127.0.0.1".to_string());
        let stream = cfg.connect(&domain, tcp).map_err(|e| e.to_string())?;
        let ssl = stream.ssl();
        let leaf = ssl
            .peer_certificate()
            .ok_or_else(|| "server sent no certificate".to_string())?;
        Ok(Served {
            subject: dn_string(leaf.subject_name()),
            serial: serial_hex(&leaf),
            issuer: dn_string(leaf.issuer_name()),
            chain_len: ssl.peer_cert_chain().map(|c| c.len()).unwrap_or(0),
            alpn: ssl
                .selected_alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            version: ssl.version_str().to_string(),
            group: portcullis_openssl_ext::negotiated_group(ssl).map(str::to_string),
        })
    }
}

/// The real `openssl s_client` (for what the in-process probe cannot do, e.g.
/// `-starttls postgres`): connects to 127.0.0.1:port with `-servername sni` when given plus
/// `extra` arguments, and reports the leaf it printed. `Err` has s_client's output.
#[allow(dead_code)]
pub fn s_client(port: u16, sni: Option<&str>, extra: &[&str]) -> Result<Served, String> {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-showcerts");
    match sni {
        Some(name) => cmd.arg("-servername").arg(name),
        None => cmd.arg("-noservername"),
    };
    cmd.args(extra).stdin(std::process::Stdio::null());
    let out = cmd
        .output()
        .map_err(|e| format!("run openssl s_client: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let certs = openssl::x509::X509::stack_from_pem(text.as_bytes()).unwrap_or_default();
    let leaf = certs
        .first()
        .ok_or_else(|| format!("no certificate:\n{all}"))?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
    };
    Ok(Served {
        subject: dn_string(leaf.subject_name()),
        serial: serial_hex(leaf),
        issuer: dn_string(leaf.issuer_name()),
        chain_len: certs.len(),
        alpn: field("ALPN protocol:"),
        version: field("Protocol  :")
            .or_else(|| field("Protocol:"))
            .unwrap_or_default(),
        group: field("Negotiated TLS1.3 group:"),
    })
}
