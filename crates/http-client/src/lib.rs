//! The gateway's own HTTP/1.1 requests — active health probes, CRL and OCSP fetches, the
//! `healthcheck` command — on one maintained client (hyper 1), instead of three hand-written
//! parsers. The caller connects the stream (TCP, or TLS with the gateway's OpenSSL), so no
//! second TLS stack comes in; every exchange is bounded in time and in body size.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// Bounds of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connection to end of body (the caller's connect time is its own).
    pub timeout: Duration,
    /// Largest body read; `None` reads no body (the status is all the caller wants).
    pub max_body: Option<usize>,
}

/// Largest response head accepted (hyper's read buffer; its minimum is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("response body over {0} bytes")]
    TooLarge(usize),
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Body(String),
}

#[derive(Debug)]
pub struct Response {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    /// Empty when `Limits::max_body` is `None`.
    pub body: Bytes,
}

/// Sends `req` on `io` and reads the answer within `limits`. The request should carry `Host`
/// (hyper does not add it on a bare connection) and usually `Connection: close`.
pub async fn send<S>(io: S, req: http::Request<Bytes>, limits: Limits) -> Result<Response, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(limits.timeout, exchange(io, req, limits.max_body)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(limits.timeout)),
    }
}

async fn exchange<S>(
    io: S,
    req: http::Request<Bytes>,
    max_body: Option<usize>,
) -> Result<Response, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD.max(8192))
        .handshake(TokioIo::new(io))
        .await?;
    let (parts, body) = req.into_parts();
    let req = http::Request::from_parts(parts, Full::new(body));
    let request = async move {
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = match max_body {
            None => Bytes::new(),
            Some(max) => Limited::new(body, max)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        Error::TooLarge(max)
                    } else {
                        Error::Body(e.to_string())
                    }
                })?
                .to_bytes(),
        };
        // Dropping the sender lets the connection future finish.
        drop(sender);
        Ok::<_, Error>(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    // The connection future moves the bytes; it ends when the exchange is over (or fails, in
    // which case the request side fails too and carries the reason).
    let (response, _conn) = tokio::join!(request, conn);
    response
}

/// A `GET path` request with `Host` and `Connection: close`.
pub fn get(host: &str, path: &str, user_agent: &str) -> Result<http::Request<Bytes>, http::Error> {
    http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, user_agent)
        .header(http::header::CONNECTION, "close")
        .body(Bytes::new())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A raw server that reads one request head and writes `reply` verbatim, then closes.
    async fn raw_server(reply: &'static [u8]) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let _ = s.write_all(reply).await;
            let _ = s.shutdown().await;
        });
        addr
    }

    async fn fetch(reply: &'static [u8], max_body: Option<usize>) -> Result<Response, Error> {
        let addr = raw_server(reply).await;
        let io = TcpStream::connect(addr).await.unwrap();
        let limits = Limits {
            timeout: Duration::from_secs(5),
            max_body,
        };
        send(io, get("t", "/", "test").unwrap(), limits).await
    }

    #[tokio::test]
    async fn reads_status_and_body() {
        let r = fetch(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            Some(100),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"hello");
        let r = fetch(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            Some(100),
        )
        .await
        .unwrap();
        assert_eq!(&r.body[..], b"abcde");
    }

    #[tokio::test]
    async fn a_hostile_chunk_size_is_an_error_not_a_panic() {
        let r = fetch(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nx\r\n",
            Some(1 << 20),
        )
        .await;
        assert!(r.is_err(), "{r:?}");
        let r = fetch(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nfffffffffffffffff\r\nx\r\n",
            Some(1 << 20),
        )
        .await;
        assert!(r.is_err(), "{r:?}");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let r = fetch(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789",
            Some(4),
        )
        .await;
        assert!(matches!(r, Err(Error::TooLarge(4))), "{r:?}");
        // Declared small, sent big: still at most the limit is kept.
        let r = fetch(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
            Some(4),
        )
        .await;
        assert!(matches!(r, Err(Error::TooLarge(4))), "{r:?}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let io = TcpStream::connect(addr).await.unwrap();
        let limits = Limits {
            timeout: Duration::from_millis(200),
            max_body: Some(10),
        };
        let r = send(io, get("t", "/", "test").unwrap(), limits).await;
        assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    }

    #[tokio::test]
    async fn huge_heads_are_refused() {
        static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let head = HEAD.get_or_init(|| {
            let mut h = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
            h.extend(std::iter::repeat_n(b'a', 100_000));
            h.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
            h
        });
        let r = fetch(head, Some(10)).await;
        assert!(r.is_err(), "{r:?}");
    }
}
