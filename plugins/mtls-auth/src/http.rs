//! A minimal HTTP/1.1 client for CRL downloads and OCSP queries.
//!
//! CRL distribution points and OCSP responders are plain-HTTP by convention (RFC 5280 §4.2.1.13,
//! RFC 6960 appendix A: the data is signed, so TLS would add nothing), so a full client with TLS,
//! pooling and redirects would be dead weight here. One request per connection, bounded in size;
//! the caller bounds the time.

use std::fmt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An `http://` URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port][/path]`; anything else (https, ldap, userinfo) is `None`.
    pub fn parse(url: &str) -> Option<HttpUrl> {
        let rest = strip_prefix_ignore_case(url.trim(), "http://")?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']')?;
            let host = &v6[..end];
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => 80,
                None => return None,
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return None;
        }
        Some(HttpUrl { host, port, path })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

#[derive(Debug)]
pub enum HttpError {
    Io(std::io::Error),
    Status(u16),
    TooLarge,
    Malformed(&'static str),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Status(s) => write!(f, "HTTP status {s}"),
            HttpError::TooLarge => write!(f, "response too large"),
            HttpError::Malformed(what) => write!(f, "malformed HTTP response: {what}"),
        }
    }
}

impl From<std::io::Error> for HttpError {
    fn from(e: std::io::Error) -> Self {
        HttpError::Io(e)
    }
}

/// Sends one request and returns the body of a 200 answer, at most `max_body` bytes.
pub async fn fetch(
    url: &HttpUrl,
    post: Option<(&str, &[u8])>,
    max_body: usize,
) -> Result<Vec<u8>, HttpError> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portcullis-mtls-auth\r\nAccept: */*\r\nConnection: close\r\n",
        if post.is_some() { "POST" } else { "GET" },
        url.path,
        url.host_header()
    );
    if let Some((content_type, body)) = post {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    if let Some((_, body)) = post {
        request.extend_from_slice(body);
    }
    stream.write_all(&request).await?;

    let limit = max_body.saturating_add(64 * 1024);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > limit {
            return Err(HttpError::TooLarge);
        }
        if let Some(done) = complete_response(&raw) {
            raw.truncate(done);
            break;
        }
    }
    parse_response(&raw, max_body)
}

/// When the response carries a Content-Length, where it ends: servers that keep the connection
/// open despite `Connection: close` must not make us wait for the timeout.
fn complete_response(raw: &[u8]) -> Option<usize> {
    let head_end = find(raw, b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let len = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    })?;
    let end = head_end.checked_add(len)?;
    (raw.len() >= end).then_some(end)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(raw: &[u8], max_body: usize) -> Result<Vec<u8>, HttpError> {
    let head_end = find(raw, b"\r\n\r\n").ok_or(HttpError::Malformed("no header end"))?;
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| HttpError::Malformed("header is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed("status code"))?;
    if status != 200 {
        return Err(HttpError::Status(status));
    }
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| HttpError::Malformed("content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let body = &raw[head_end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else if let Some(len) = content_length {
        if body.len() < len {
            return Err(HttpError::Malformed("body shorter than content-length"));
        }
        body[..len].to_vec()
    } else {
        body.to_vec()
    };
    if body.len() > max_body {
        return Err(HttpError::TooLarge);
    }
    Ok(body)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or(HttpError::Malformed("chunk size"))?;
        let size_text = std::str::from_utf8(&data[..line_end])
            .map_err(|_| HttpError::Malformed("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| HttpError::Malformed("chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(HttpError::Malformed("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            HttpUrl::parse("http://ca.example.com/crl/ca.crl"),
            Some(HttpUrl {
                host: "ca.example.com".into(),
                port: 80,
                path: "/crl/ca.crl".into()
            })
        );
        let u = HttpUrl::parse("HTTP://127.0.0.1:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/")
        );
        let u = HttpUrl::parse("http://[::1]:81/x?y").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 81, "/x?y")
        );
        assert_eq!(u.host_header(), "[::1]:81");
        assert!(HttpUrl::parse("https://ca.example.com/ca.crl").is_none());
        assert!(HttpUrl::parse("ldap://ca.example.com/cn=x").is_none());
        assert!(HttpUrl::parse("http://user@host/").is_none());
        assert!(HttpUrl::parse("http://host:99999/").is_none());
        assert!(HttpUrl::parse("http://host/a b").is_none());
    }

    #[test]
    fn parses_responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(parse_response(r, 10).unwrap(), b"abc");
        assert_eq!(complete_response(r), Some(r.len() - 3));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r, 10).unwrap(), b"abcde");
        let r = b"HTTP/1.0 200 OK\r\n\r\nabc";
        assert_eq!(parse_response(r, 10).unwrap(), b"abc");
        assert!(matches!(parse_response(r, 2), Err(HttpError::TooLarge)));
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(parse_response(r, 10), Err(HttpError::Status(404))));
        assert!(parse_response(b"garbage", 10).is_err());
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc";
        assert!(parse_response(r, 10).is_err());
    }
}
