//! CRL downloads and OCSP queries over HTTP/1.1 (the gateway's hyper-based client).
//!
//! CRL distribution points and OCSP responders are plain-HTTP by convention (RFC 5280 §4.2.1.13,
//! RFC 6960 appendix A: the data is signed, so TLS would add nothing), so TLS, pooling and
//! redirects would be dead weight here. One request per connection, bounded in size; the caller
//! bounds the time.

use std::fmt;

use bytes::Bytes;
use portcullis_http_client::{Error as ClientError, Limits};
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
    /// The client library's reason (malformed response, timeout, ...).
    Client(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Status(s) => write!(f, "HTTP status {s}"),
            HttpError::TooLarge => write!(f, "response too large"),
            HttpError::Malformed(what) => write!(f, "malformed HTTP {what}"),
            HttpError::Client(why) => write!(f, "{why}"),
        }
    }
}

impl From<std::io::Error> for HttpError {
    fn from(e: std::io::Error) -> Self {
        HttpError::Io(e)
    }
}

/// Sends one request and returns the body of a 200 answer, at most `max_body` bytes. The
/// caller bounds the time; `MAX_TIME` is only a ceiling for a caller that forgets.
pub async fn fetch(
    url: &HttpUrl,
    post: Option<(&str, &[u8])>,
    max_body: usize,
) -> Result<Vec<u8>, HttpError> {
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(300);
    let stream = TcpStream::connect((url.host.as_str(), url.port)).await?;
    let builder = http::Request::builder()
        .method(if post.is_some() { "POST" } else { "GET" })
        .uri(url.path.as_str())
        .header(http::header::HOST, url.host_header())
        .header(http::header::USER_AGENT, "portcullis-mtls-auth")
        .header(http::header::ACCEPT, "*/*")
        .header(http::header::CONNECTION, "close");
    let request = match post {
        Some((content_type, body)) => builder
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Bytes::copy_from_slice(body)),
        None => builder.body(Bytes::new()),
    }
    .map_err(|_| HttpError::Malformed("request"))?;
    let limits = Limits {
        timeout: MAX_TIME,
        max_body: Some(max_body),
    };
    match portcullis_http_client::send(stream, request, limits).await {
        Ok(r) if r.status == http::StatusCode::OK => Ok(r.body.to_vec()),
        Ok(r) => Err(HttpError::Status(r.status.as_u16())),
        Err(ClientError::TooLarge(_)) => Err(HttpError::TooLarge),
        Err(e) => Err(HttpError::Client(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    /// A server that answers any request with `reply` verbatim.
    async fn raw_server(reply: &'static [u8]) -> HttpUrl {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
        });
        HttpUrl::parse(&format!("http://127.0.0.1:{port}/ca.crl")).unwrap()
    }

    #[tokio::test]
    async fn a_hostile_chunk_size_is_refused_without_a_panic() {
        let url = raw_server(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nx\r\n0\r\n\r\n",
        )
        .await;
        assert!(fetch(&url, None, 1 << 20).await.is_err());
    }

    #[tokio::test]
    async fn only_a_bounded_200_body_is_returned() {
        let url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").await;
        assert_eq!(fetch(&url, None, 10).await.unwrap(), b"abc");
        let url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc").await;
        assert!(matches!(
            fetch(&url, None, 2).await,
            Err(HttpError::TooLarge)
        ));
        let url = raw_server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        assert!(matches!(
            fetch(&url, None, 10).await,
            Err(HttpError::Status(404))
        ));
        let url = raw_server(b"garbage\r\n\r\n").await;
        assert!(fetch(&url, None, 10).await.is_err());
        let url = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").await;
        assert!(fetch(&url, None, 10).await.is_err());
    }
}
