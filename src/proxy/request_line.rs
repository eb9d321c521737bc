//! Request lines with spaces or control characters in the target (`GET /a b HTTP/1.1`) get 400,
//! as nginx ≥ 1.21.1 answers them.
//!
//! Why this sits under Pingora: httparse rejects such a line, and Pingora 0.9's HTTP/1 reader
//! then percent-encodes the target (`escape_illegal_request_line`: controls, space, `"`, `<`,
//! `>`) and parses again, so the proxy hooks only ever see `/a%20b`, the same as a well-formed
//! request. What the client really sent is visible only in the bytes read from the connection.
//! [`RequestLineGuard`] wraps each HTTP connection's stream; the wrapper notes every line that
//! Pingora would have rewritten (any line ending in ` HTTP/1.x` with such a byte in its target)
//! and [`escaped_by_pingora`] tells the proxy whether the request line it got is one of them.
//! Over HTTP/2 the `http` crate refuses such a `:path` itself.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest line kept for comparison: nginx answers 414 beyond its 8 KiB header buffers.
const MAX_LINE: usize = 8 * 1024;
/// Line buffer capacity kept between lines.
const LINE_KEPT: usize = 512;
/// Malformed request lines remembered per connection; beyond that every later request line
/// with an escape is refused (a client sending that many is not a client to serve).
const MAX_SEEN: usize = 8;

/// The byte Pingora percent-encodes in a target it re-parses (its `URI_ESC_CHARSET`, plus
/// non-ASCII, which `percent_encode` always encodes).
fn escaped_class(b: u8) -> bool {
    b <= b' ' || b >= 0x7f || matches!(b, b'"' | b'<' | b'>')
}

/// A request line Pingora would rewrite: `METHOD SP target SP HTTP/1.x` whose target holds a
/// control character, a space, `"`, `<` or `>` (non-ASCII alone httparse accepts).
fn malformed_request_line(line: &[u8]) -> bool {
    let Some(rest) = line
        .strip_suffix(b" HTTP/1.1")
        .or_else(|| line.strip_suffix(b" HTTP/1.0"))
    else {
        return false;
    };
    let Some(sp) = rest.iter().position(|&b| b == b' ') else {
        return false;
    };
    sp > 0 && rest[sp + 1..].iter().any(|&b| suspect_byte(b))
}

/// A byte in a target that makes httparse refuse the line (non-ASCII alone it accepts).
fn suspect_byte(b: u8) -> bool {
    b < 0x80 && escaped_class(b)
}

/// Lines read from one connection, split on LF as httparse does.
#[derive(Debug, Default)]
struct Lines {
    /// The current line, up to `MAX_LINE` bytes.
    line: Vec<u8>,
    /// The current line is longer than `MAX_LINE`; `tail` keeps its last bytes, each with
    /// whether it comes after the first space (the target, not the method).
    overlong: bool,
    tail: std::collections::VecDeque<(u8, bool)>,
    method_done: bool,
    /// The overlong line's target has a byte Pingora would escape.
    overlong_suspect: bool,
    /// Malformed request lines seen, raw, without the line ending.
    seen: Vec<Vec<u8>>,
    /// A malformed line could not be remembered (too long, too many).
    poisoned: bool,
}

impl Lines {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (part, done) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], Some(i + 1)),
                None => (data, None),
            };
            self.append(part);
            match done {
                Some(i) => {
                    self.finish();
                    data = &data[i..];
                }
                None => break,
            }
        }
    }

    fn append(&mut self, part: &[u8]) {
        if !self.overlong && self.line.len() + part.len() <= MAX_LINE {
            self.line.extend_from_slice(part);
            return;
        }
        if !self.overlong {
            self.overlong = true;
            self.method_done = false;
            self.overlong_suspect = false;
            self.tail.clear();
            let line = std::mem::take(&mut self.line);
            self.overlong_bytes(&line);
        }
        self.overlong_bytes(part);
    }

    /// A line too long to keep (rare): bytes are judged as they leave a short window, so the
    /// line's ending (` HTTP/1.x\r`), which is not part of the target, can be told apart.
    fn overlong_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let in_target = self.method_done;
            self.method_done |= b == b' ';
            self.tail.push_back((b, in_target));
            if self.tail.len() > 16 {
                if let Some((old, in_target)) = self.tail.pop_front() {
                    self.overlong_suspect |= in_target && suspect_byte(old);
                }
            }
        }
    }

    fn finish(&mut self) {
        if self.overlong {
            let mut tail: Vec<(u8, bool)> = self.tail.drain(..).collect();
            if tail.last().is_some_and(|&(b, _)| b == b'\r') {
                tail.pop();
            }
            let bytes: Vec<u8> = tail.iter().map(|&(b, _)| b).collect();
            if bytes.ends_with(b" HTTP/1.1") || bytes.ends_with(b" HTTP/1.0") {
                let target_end = &tail[..tail.len() - 9];
                let suspect =
                    self.overlong_suspect || target_end.iter().any(|&(b, t)| t && suspect_byte(b));
                self.poisoned |= suspect;
            }
            self.overlong = false;
        } else {
            let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
            if malformed_request_line(line) {
                if self.seen.len() < MAX_SEEN {
                    self.seen.push(line.to_vec());
                } else {
                    self.poisoned = true;
                }
            }
        }
        self.line.clear();
        // An idle keep-alive connection keeps this buffer: a long Cookie line must not pin its
        // kilobytes on every connection a browser leaves open.
        if self.line.capacity() > LINE_KEPT {
            self.line = Vec::new();
        }
    }
}

/// A downstream stream that notes malformed request lines as they are read.
#[derive(Debug)]
pub struct RequestLineGuard {
    inner: Stream,
    lines: Lines,
}

impl RequestLineGuard {
    pub fn wrap(inner: Stream) -> Stream {
        if inner.as_any().is::<RequestLineGuard>() {
            return inner;
        }
        Box::new(RequestLineGuard {
            inner,
            lines: Lines::default(),
        })
    }
}

/// Whether Pingora rewrote `request_line` (the head's first line as it parsed it) from a
/// malformed one read on `stream`.
pub fn escaped_by_pingora(stream: &Stream, request_line: &[u8]) -> bool {
    if !request_line.contains(&b'%') {
        return false;
    }
    let Some(guard) = stream.as_any().downcast_ref::<RequestLineGuard>() else {
        return false;
    };
    let Some(original) = unescape(request_line) else {
        return false;
    };
    guard.lines.poisoned || guard.lines.seen.contains(&original)
}

/// `request_line` with Pingora's escapes undone; `None` when it has none.
fn unescape(line: &[u8]) -> Option<Vec<u8>> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(line.len());
    let mut changed = false;
    let mut i = 0;
    while i < line.len() {
        if line[i] == b'%' && i + 2 < line.len() {
            if let (Some(h), Some(l)) = (hex(line[i + 1]), hex(line[i + 2])) {
                let b = h * 16 + l;
                if escaped_class(b) {
                    out.push(b);
                    changed = true;
                    i += 3;
                    continue;
                }
            }
        }
        out.push(line[i]);
        i += 1;
    }
    changed.then_some(out)
}

impl AsyncRead for RequestLineGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            this.lines.feed(&buf.filled()[before..]);
        }
        res
    }
}

impl AsyncWrite for RequestLineGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for RequestLineGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for RequestLineGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for RequestLineGuard {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for RequestLineGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for RequestLineGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for RequestLineGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for RequestLineGuard {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// A listener application whose connections are read through [`RequestLineGuard`].
pub struct GuardedApp<A> {
    inner: Arc<A>,
}

impl<A> GuardedApp<A> {
    pub fn new(inner: A) -> Self {
        GuardedApp {
            inner: Arc::new(inner),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner
            .process_new(RequestLineGuard::wrap(session), shutdown)
            .await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(input: &[u8]) -> Lines {
        let mut l = Lines::default();
        // One byte at a time too: lines span reads.
        for b in input {
            l.feed(std::slice::from_ref(b));
        }
        let mut whole = Lines::default();
        whole.feed(input);
        assert_eq!(l.seen, whole.seen);
        assert_eq!(l.poisoned, whole.poisoned);
        whole
    }

    #[test]
    fn a_long_header_line_does_not_pin_its_buffer() {
        let mut cookie = b"Cookie: ".to_vec();
        cookie.extend(std::iter::repeat_n(b'c', 4000));
        cookie.extend_from_slice(b"\r\n\r\n");
        let l = seen(&cookie);
        assert!(l.line.capacity() <= LINE_KEPT, "{}", l.line.capacity());
        let l = seen(b"Host: x\r\n");
        assert!(l.line.capacity() > 0, "short lines keep their buffer");
    }

    #[test]
    fn notes_the_lines_pingora_would_escape() {
        let l = seen(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\n\r\nPOST /x\x01y HTTP/1.0\n\n");
        assert_eq!(
            l.seen,
            vec![
                b"GET /a b HTTP/1.1".to_vec(),
                b"POST /x\x01y HTTP/1.0".to_vec()
            ]
        );
        assert!(!l.poisoned);
        // Body text and headers with spaces are not request lines.
        let l = seen(b"hello world, said the body\r\nX-A: b c d\r\n");
        assert!(l.seen.is_empty());
        // A line too long to keep poisons the connection instead of being forgotten.
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE));
        long.extend_from_slice(b" b HTTP/1.1\r\n");
        let l = seen(&long);
        assert!(l.poisoned);
        let mut long_ok = b"GET /".to_vec();
        long_ok.extend(std::iter::repeat_n(b'a', MAX_LINE));
        long_ok.extend_from_slice(b" HTTP/1.1\r\n");
        assert!(!seen(&long_ok).poisoned);
    }

    #[test]
    fn unescape_undoes_only_pingoras_escapes() {
        assert_eq!(
            unescape(b"GET /a%20b%01%22%3C%3E%7F%C3%A9 HTTP/1.1").as_deref(),
            Some(&b"GET /a b\x01\"<>\x7f\xc3\xa9 HTTP/1.1"[..])
        );
        assert_eq!(unescape(b"GET /a%2Fb%25 HTTP/1.1"), None);
        assert_eq!(unescape(b"GET /a%2 HTTP/1.1"), None);
        assert_eq!(unescape(b"GET /a% HTTP/1.1"), None);
    }
}
