//! A persistent HTTP/1.1 client over one TCP (or TLS) connection, for load that must survive
//! reloads and upgrades: it never reconnects on its own, so every failure is visible to the test.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};

use super::pki::serial_hex;

enum Stream {
    Plain(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One answer on a keep-alive connection.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub struct KaResponse {
    pub status: u16,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[allow(dead_code)]
impl KaResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request that got no complete answer.
#[allow(dead_code)]
#[derive(Debug)]
pub struct KaError {
    /// Requests this connection had already answered: > 0 means the server may have closed an
    /// idle keep-alive connection just as the request was sent (RFC 9112 §9.3.1: a client
    /// retries an idempotent request on a new connection then).
    pub answered_before: usize,
    /// Whether any byte of the answer arrived before the failure.
    pub partial: bool,
    pub error: io::Error,
}

impl std::fmt::Display for KaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({:?}; {} earlier answers on this connection; partial answer: {})",
            self.error,
            self.error.kind(),
            self.answered_before,
            self.partial
        )
    }
}

/// A persistent HTTP/1.1 connection to 127.0.0.1:port.
#[allow(dead_code)]
pub struct KeepAlive {
    stream: Stream,
    host: String,
    buf: Vec<u8>,
    answered: usize,
    closed: bool,
    peer_serial: Option<String>,
}

#[allow(dead_code)]
impl KeepAlive {
    /// Plain HTTP; `host` goes into the `Host` header.
    pub fn connect(port: u16, host: &str) -> io::Result<KeepAlive> {
        let tcp = tcp(port)?;
        Ok(KeepAlive::new(Stream::Plain(tcp), host, None))
    }

    /// TLS with `sni` as server name and `Host`; the certificate is not verified (the serial
    /// it carried is in [`KeepAlive::peer_serial`]).
    pub fn connect_tls(port: u16, sni: &str) -> io::Result<KeepAlive> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(io::Error::other)?;
        b.set_verify(SslVerifyMode::NONE);
        b.set_alpn_protos(b"\x08http/1.1")
            .map_err(io::Error::other)?;
        let connector = b.build();
        let cfg = connector.configure().map_err(io::Error::other)?;
        let stream = cfg
            .connect(sni, tcp(port)?)
            .map_err(|e| io::Error::other(format!("TLS handshake: {e}")))?;
        let serial = stream.ssl().peer_certificate().map(|c| serial_hex(&c));
        Ok(KeepAlive::new(Stream::Tls(Box::new(stream)), sni, serial))
    }

    fn new(stream: Stream, host: &str, peer_serial: Option<String>) -> KeepAlive {
        KeepAlive {
            stream,
            host: host.to_string(),
            buf: Vec::new(),
            answered: 0,
            closed: false,
            peer_serial,
        }
    }

    /// Requests answered on this connection so far.
    pub fn answered(&self) -> usize {
        self.answered
    }

    /// Whether the server announced (`Connection: close`) or performed a close.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Serial (upper-case hex) of the certificate the TLS handshake presented.
    pub fn peer_serial(&self) -> Option<&str> {
        self.peer_serial.as_deref()
    }

    /// `GET path` with extra header lines (`"name: value"`).
    pub fn get(&mut self, path: &str, headers: &[&str]) -> Result<KaResponse, KaError> {
        let answered_before = self.answered;
        let mut partial = false;
        let res = self.exchange(path, headers, &mut partial);
        match res {
            Ok(r) => {
                self.answered += 1;
                Ok(r)
            }
            Err(error) => {
                self.closed = true;
                Err(KaError {
                    answered_before,
                    partial,
                    error,
                })
            }
        }
    }

    fn exchange(
        &mut self,
        path: &str,
        headers: &[&str],
        partial: &mut bool,
    ) -> io::Result<KaResponse> {
        if self.closed {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection already closed",
            ));
        }
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes())?;
        self.stream.flush()?;

        // Head.
        let (status, headers, head_len) = loop {
            let mut hdrs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hdrs);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let headers: Vec<(String, String)> = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (status, headers, n);
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(io::Error::other(format!("bad response head: {e}"))),
            }
            self.fill(partial)?;
        };
        self.buf.drain(..head_len);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        let body = if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            self.read_chunked(partial)?
        } else {
            let len: usize = find("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while self.buf.len() < len {
                self.fill(partial)?;
            }
            self.buf.drain(..len).collect()
        };
        if find("connection").is_some_and(|v| v.contains("close")) {
            self.closed = true;
        }
        Ok(KaResponse {
            status,
            headers,
            body,
        })
    }

    fn read_chunked(&mut self, partial: &mut bool) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                self.fill(partial)?;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| io::Error::other(format!("bad chunk size {line:?}: {e}")))?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                self.fill(partial)?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    fn fill(&mut self, partial: &mut bool) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        *partial = true;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn tcp(port: u16) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&super::upstream::local(port), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(15)))?;
    s.set_nodelay(true)?;
    Ok(s)
}
