//! Bidirectional byte relay between client and upstream with half-close and an idle timeout.
//!
//! Both directions run in one future (no task or lock per direction). When one side reaches
//! EOF its buffered bytes are flushed and the other side's write half is shut down, while the
//! opposite direction keeps flowing: a client that sends its last query and half-closes still
//! gets the whole answer. Byte counters are updated as bytes are delivered, so long tunnels show
//! progress in metrics.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant};

/// Per-direction buffer. Big enough for a full TLS record (16 KiB + overhead) and a second one
/// in flight; small enough that 10 000 tunnels stay under 700 MB.
const BUF_SIZE: usize = 32 * 1024;

/// First size of a direction's buffer. Most tunnels of a connection-heavy workload move a
/// handshake and a few records; zero-filling 2 × 32 KiB for each was most of the passthrough's
/// per-connection cost. A buffer grows to `BUF_SIZE` once a read fills it.
const INITIAL_BUF_SIZE: usize = 4 * 1024;

/// Which way bytes were flowing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → upstream.
    Upstream,
    /// Upstream → client.
    Downstream,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides reached EOF and every byte was delivered.
    Closed,
    /// No byte moved either way for the idle timeout.
    IdleTimeout,
    /// One side had already sent its EOF, then a read or write failed: the usual end of a
    /// session whose peer closes without reading everything (PostgreSQL exits on Terminate
    /// without reading the client's close_notify, so its kernel answers with a reset).
    ClosedWithError(Direction, io::Error),
    /// Reading or writing failed (typically a reset) while both sides were still sending.
    Error(Direction, io::Error),
}

/// Names how a failed relay ended, from whether a side had finished sending before.
fn failed(direction: Direction, e: io::Error, up: &Pipe, down: &Pipe) -> RelayEnd {
    if up.eof || down.eof {
        RelayEnd::ClosedWithError(direction, e)
    } else {
        RelayEnd::Error(direction, e)
    }
}

/// Bytes delivered each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Client → upstream.
    pub up: u64,
    /// Upstream → client.
    pub down: u64,
}

/// One direction of the relay: a read buffer and where its bytes stand.
struct Pipe {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    eof: bool,
    need_flush: bool,
    finished: bool,
    delivered: u64,
}

impl Pipe {
    fn new() -> Self {
        Pipe {
            buf: vec![0; INITIAL_BUF_SIZE].into_boxed_slice(),
            pos: 0,
            cap: 0,
            eof: false,
            need_flush: false,
            finished: false,
            delivered: 0,
        }
    }

    /// Moves bytes from `reader` to `writer` until one of them would block; `Ready(Ok)` once
    /// the reader hit EOF and the writer was flushed and shut down. Sets `moved` when any byte
    /// was read or written, for the idle timer.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counter: &IntCounter,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.eof {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.eof = true;
                        } else {
                            self.pos = 0;
                            self.cap = n;
                            *moved = true;
                            if n == self.buf.len() && self.buf.len() < BUF_SIZE {
                                // A full read: this is a bulk tunnel; grow before the next
                                // read (the bytes just read are kept).
                                let mut bigger = vec![0; BUF_SIZE];
                                bigger[..n].copy_from_slice(&self.buf[..n]);
                                self.buf = bigger.into_boxed_slice();
                            }
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read for now: push what the writer buffered.
                        if self.need_flush {
                            ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n =
                    ready!(Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.delivered += n as u64;
                counter.inc_by(n as u64);
                self.need_flush = true;
                *moved = true;
            }
            if self.eof && self.pos == self.cap {
                // Half-close: the peer learns of the EOF while the other direction continues.
                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Relays between `client` and `upstream` until both directions are finished, one fails, or
/// nothing moves for `idle`. Counters receive the bytes delivered each way.
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    idle: Duration,
    up_counter: &IntCounter,
    down_counter: &IntCounter,
) -> (RelayEnd, Totals)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = Pipe::new();
    let mut down = Pipe::new();
    let mut last_activity = Instant::now();
    // Re-armed lazily: activity only moves `last_activity`; the timer is reset when it fires
    // early, so a busy tunnel does not touch the timer wheel on every read.
    let mut timer = Box::pin(sleep_until(last_activity + idle));

    let end = poll_fn(|cx| {
        let mut moved = false;
        if !up.finished {
            match up.poll_copy(cx, client, upstream, up_counter, &mut moved) {
                Poll::Ready(Ok(())) => up.finished = true,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(failed(Direction::Upstream, e, &up, &down))
                }
                Poll::Pending => {}
            }
        }
        if !down.finished {
            match down.poll_copy(cx, upstream, client, down_counter, &mut moved) {
                Poll::Ready(Ok(())) => down.finished = true,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(failed(Direction::Downstream, e, &up, &down))
                }
                Poll::Pending => {}
            }
        }
        if up.finished && down.finished {
            return Poll::Ready(RelayEnd::Closed);
        }
        if moved {
            last_activity = Instant::now();
        }
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = last_activity + idle;
            if deadline <= Instant::now() {
                return Poll::Ready(RelayEnd::IdleTimeout);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await;

    let totals = Totals {
        up: up.delivered,
        down: down.delivered,
    };
    (end, totals)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    fn counter() -> IntCounter {
        IntCounter::new("t", "test counter").unwrap()
    }

    /// Runs the relay between the two gateway-side ends of duplex pipes on its own task.
    fn spawn_relay(
        mut client_side: tokio::io::DuplexStream,
        mut upstream_side: tokio::io::DuplexStream,
        idle: Duration,
    ) -> tokio::task::JoinHandle<(RelayEnd, Totals)> {
        let (up, down) = (counter(), counter());
        tokio::spawn(
            async move { relay(&mut client_side, &mut upstream_side, idle, &up, &down).await },
        )
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        // client_app <-> (client_side | relay | upstream_side) <-> upstream_app
        let (mut client_app, client_side) = duplex(1024);
        let (upstream_side, mut upstream_app) = duplex(1024);
        let relay = spawn_relay(client_side, upstream_side, Duration::from_secs(5));

        let request: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let expected = request.clone();
        let upstream = tokio::spawn(async move {
            let mut got = Vec::new();
            upstream_app.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, expected);
            // The client already half-closed; the answer must still reach it.
            upstream_app.write_all(b"answer after EOF").await.unwrap();
            upstream_app.shutdown().await.unwrap();
        });
        client_app.write_all(&request).await.unwrap();
        client_app.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client_app.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer after EOF");
        upstream.await.unwrap();
        let (end, totals) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert_eq!(
            totals,
            Totals {
                up: 100_000,
                down: 16
            }
        );
    }

    #[tokio::test]
    async fn client_closing_after_its_eof_is_a_normal_end() {
        let (mut client_app, client_side) = duplex(64);
        let (upstream_side, mut upstream_app) = duplex(64);
        let relay = spawn_relay(client_side, upstream_side, Duration::from_secs(5));
        client_app.write_all(b"Terminate").await.unwrap();
        client_app.shutdown().await.unwrap();
        drop(client_app);
        let mut got = [0u8; 9];
        upstream_app.read_exact(&mut got).await.unwrap();
        // The server's goodbye (close_notify) finds the client gone.
        let _ = upstream_app.write_all(&[0u8; 1024]).await;
        let (end, totals) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::ClosedWithError(..)), "{end:?}");
        assert_eq!(totals.up, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_tunnel_is_closed_after_the_timeout() {
        let (mut client_app, client_side) = duplex(64);
        let (upstream_side, _upstream_app) = duplex(64);
        let relay = spawn_relay(client_side, upstream_side, Duration::from_secs(60));
        // Activity at 30 s pushes the deadline to 90 s.
        tokio::time::sleep(Duration::from_secs(30)).await;
        client_app.write_all(b"x").await.unwrap();
        let started = Instant::now();
        let (end, totals) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::IdleTimeout), "{end:?}");
        assert_eq!(totals.up, 1);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(59) && waited <= Duration::from_secs(61),
            "{waited:?}"
        );
    }
}
