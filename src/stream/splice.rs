//! Zero-copy relay between two TCP sockets (Linux): `splice(2)` moves each direction's bytes
//! socket → pipe → socket inside the kernel instead of copying them through a user-space
//! buffer, with the semantics of [`super::relay::relay`] (one future for both directions,
//! half-close, lazy idle timer, the same [`RelayEnd`] and counters).
//!
//! Readiness comes from tokio: a splice that returns `EAGAIN` clears the socket's readiness
//! (through `try_io`) so the next `poll_*_ready` registers the waker, as tokio's own reads do.
//! One ambiguity needs care: `splice(socket → pipe)` also returns `EAGAIN` when the *pipe* is
//! full, and a pipe can be full with far fewer bytes than its size (each slot may hold a small
//! segment). Clearing the socket's readiness then would lose the edge and hang the tunnel, so
//! `EAGAIN` is taken to mean "socket empty" only when the pipe is empty; otherwise the pipe is
//! drained first and the read retried.
//!
//! Writing into a socket whose peer is gone raises `SIGPIPE` for splice (no `MSG_NOSIGNAL`);
//! the Rust runtime ignores `SIGPIPE` before `main`, so it surfaces as `EPIPE` like a write.

#![allow(unsafe_code)]

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, Instant};

use super::relay::{failed, Direction, RelayEnd, Totals};

/// Bytes asked of one `splice` into a pipe; the kernel moves at most what the pipe holds.
const SPLICE_LEN: usize = 1 << 20;

/// Smallest pipe worth splicing through: the default 64 KiB (16 slots). Once the user's pipe
/// budget (`fs.pipe-user-pages-soft`, 64 MiB by default; not enforced with CAP_SYS_RESOURCE)
/// is spent, new pipes get 2 slots, and splicing 8 KiB at a time costs more CPU than copying
/// (953 vs 690 ms per GiB measured), so such a tunnel is copied instead.
const MIN_PIPE_SIZE: libc::c_int = 64 * 1024;

/// Size a direction's pipe grows to once it carries bulk (best effort, within the budget): the
/// relay's CPU per GiB on loopback was 240 ms with 1 MiB pipes, 330 with 256 KiB, 400 with
/// 64 KiB, against 430-550 for the copying relay. 1 MiB is the unprivileged maximum
/// (`fs.pipe-max-size`).
const BULK_PIPE_SIZE: libc::c_int = 1024 * 1024;

/// Bytes held in the pipe at once that mark a direction as bulk (the copying relay grows its
/// buffer at the same point).
const BULK_AT: usize = 32 * 1024;

/// A kernel pipe: both ends close on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds: [RawFd; 2] = [-1, -1];
        // SAFETY: `fds` is a valid, writable array of two c_ints, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_GETPIPE_SZ on a pipe we own returns its size or -1; no memory is passed.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if size < MIN_PIPE_SIZE {
            return Err(io::Error::other(format!(
                "pipe of {size} bytes: the user's pipe budget (fs.pipe-user-pages-soft) is spent"
            )));
        }
        Ok(Pipe { read, write })
    }

    /// Asks for a bulk-sized pipe; failure (EPERM over the user's budget) keeps the size.
    fn grow(&self) {
        // SAFETY: F_SETPIPE_SZ takes an int and only resizes the pipe we own (growing keeps
        // the bytes it holds); no memory is passed.
        let _ = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, BULK_PIPE_SIZE) };
    }
}

/// One `splice` with null offsets (both ends are sockets or pipes), never blocking.
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are borrowed from live owners for the call; null offsets are
    // what splice requires for pipes and sockets; no memory of ours is passed.
    let n = unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `shutdown(SHUT_WR)`: the peer reads EOF, the socket can still receive. `&self` is enough
/// (tokio's `poll_shutdown` needs `&mut`, which the two directions cannot both hold).
fn shutdown_write(socket: &TcpStream) -> io::Result<()> {
    // SAFETY: shutdown on a descriptor borrowed from a live socket; no memory is passed.
    let rc = unsafe { libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What a splice into the pipe found.
enum Filled {
    Bytes(usize),
    Eof,
    /// `EAGAIN` with bytes already in the pipe: the pipe may be full, the socket not empty.
    PipeMaybeFull,
}

/// One direction: its pipe and where its bytes stand.
struct Half {
    pipe: Pipe,
    /// Bytes spliced in and not yet out: exact, the pipe holds nothing else.
    in_pipe: usize,
    /// The pipe was asked to grow (once: small tunnels keep the default size and budget).
    grown: bool,
    eof: bool,
    finished: bool,
    delivered: u64,
}

impl Half {
    fn new() -> io::Result<Half> {
        Ok(Half {
            pipe: Pipe::new()?,
            in_pipe: 0,
            grown: false,
            eof: false,
            finished: false,
            delivered: 0,
        })
    }

    /// Moves bytes from `src` to `dst` until both would block; `Ready(Ok)` once `src` hit EOF,
    /// the pipe was drained and `dst`'s write half shut down. Sets `moved` for the idle timer.
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        counter: &IntCounter,
        moved: &mut bool,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut progress = false;
            if !self.eof {
                // Loops only to re-poll readiness after an EAGAIN cleared it (that registers
                // the waker).
                while let Poll::Ready(ready) = src.poll_read_ready(cx) {
                    ready?;
                    let in_pipe = self.in_pipe;
                    let write_end = self.pipe.write.as_fd();
                    let filled = src.try_io(Interest::READABLE, || {
                        match splice(src.as_fd(), write_end, SPLICE_LEN) {
                            Ok(0) => Ok(Filled::Eof),
                            Ok(n) => Ok(Filled::Bytes(n)),
                            // Not a WouldBlock for try_io: the socket's readiness is kept.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock && in_pipe > 0 => {
                                Ok(Filled::PipeMaybeFull)
                            }
                            Err(e) => Err(e),
                        }
                    });
                    match filled {
                        Ok(Filled::Bytes(n)) => {
                            self.in_pipe += n;
                            *moved = true;
                            progress = true;
                            if !self.grown && self.in_pipe >= BULK_AT {
                                self.grown = true;
                                self.pipe.grow();
                            }
                        }
                        Ok(Filled::Eof) => self.eof = true,
                        Ok(Filled::PipeMaybeFull) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    break;
                }
            }
            if self.in_pipe > 0 {
                while let Poll::Ready(ready) = dst.poll_write_ready(cx) {
                    ready?;
                    let read_end = self.pipe.read.as_fd();
                    let in_pipe = self.in_pipe;
                    match dst.try_io(Interest::WRITABLE, || {
                        splice(read_end, dst.as_fd(), in_pipe)
                    }) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(n) => {
                            self.in_pipe -= n;
                            self.delivered += n as u64;
                            counter.inc_by(n as u64);
                            *moved = true;
                            progress = true;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    break;
                }
            }
            if self.eof && self.in_pipe == 0 {
                // Half-close: the peer learns of the EOF while the other direction continues.
                return Poll::Ready(shutdown_write(dst));
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

/// The two pipes of a splice relay, created before the relay starts so that a failure (fd
/// limit) can fall back to the buffered relay before any byte moved.
pub struct Pipes {
    up: Half,
    down: Half,
}

impl Pipes {
    pub fn new() -> io::Result<Pipes> {
        Ok(Pipes {
            up: Half::new()?,
            down: Half::new()?,
        })
    }
}

/// Relays between two TCP sockets until both directions are finished, one fails, or nothing
/// moves for `idle`. Same contract as [`super::relay::relay`].
pub async fn relay(
    pipes: Pipes,
    client: &TcpStream,
    upstream: &TcpStream,
    idle: Duration,
    up_counter: &IntCounter,
    down_counter: &IntCounter,
) -> (RelayEnd, Totals) {
    let Pipes { mut up, mut down } = pipes;
    let mut last_activity = Instant::now();
    // Re-armed lazily, as in the buffered relay.
    let mut timer = Box::pin(sleep_until(last_activity + idle));

    let end = poll_fn(|cx| {
        let mut moved = false;
        if !up.finished {
            match up.poll_copy(cx, client, upstream, up_counter, &mut moved) {
                Poll::Ready(Ok(())) => up.finished = true,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(failed(Direction::Upstream, e, up.eof, down.eof))
                }
                Poll::Pending => {}
            }
        }
        if !down.finished {
            match down.poll_copy(cx, upstream, client, down_counter, &mut moved) {
                Poll::Ready(Ok(())) => down.finished = true,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(failed(Direction::Downstream, e, up.eof, down.eof))
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

/// A tokio socket on a duplicate of `fd`, the client's TCP socket owned by Pingora.
///
/// Pingora's `l4::Stream` keeps its `TcpStream` private and only lends the raw fd, and the
/// fd is already registered with this runtime's epoll (registering it again fails with
/// `EEXIST`). A `dup` is a second registration of the same socket, which epoll allows: the
/// duplicate gives us readiness and a descriptor to splice, while the Pingora stream stays
/// alive, unused, until the relay ends (its buffers are empty: the stream listener reads
/// unbuffered and the caller flushes before). Dropping the duplicate deregisters and closes
/// only the duplicate.
pub fn dup_tcp(fd: RawFd) -> io::Result<TcpStream> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller keeps open for the duration; it
    // returns a new descriptor or -1 and touches no memory of ours.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl, so it is open and owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(new) };
    // The duplicate shares the open file description, so it is already non-blocking as tokio
    // requires (Pingora's socket is a tokio socket).
    TcpStream::from_std(std::net::TcpStream::from(owned))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    fn counter() -> IntCounter {
        IntCounter::new("t", "test counter").unwrap()
    }

    /// A connected pair on 127.0.0.1: (the application's end, the gateway's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (gateway, _) = listener.accept().await.unwrap();
        (app, gateway)
    }

    #[derive(Clone, Copy, Debug)]
    enum Path {
        Copy,
        Splice,
    }

    struct Tunnel {
        client: TcpStream,
        upstream: TcpStream,
        relay: JoinHandle<(RelayEnd, Totals, u64, u64)>,
    }

    /// client <-> (client side | relay on `path` | upstream side) <-> upstream; the relay
    /// returns its end, totals and what its counters saw.
    async fn tunnel(path: Path, idle: Duration) -> Tunnel {
        let (client, mut client_side) = pair().await;
        let (mut upstream_side, upstream) = pair().await;
        let relay = tokio::spawn(async move {
            let (up, down) = (counter(), counter());
            let (end, totals) = match path {
                Path::Copy => {
                    super::super::relay::relay(
                        &mut client_side,
                        &mut upstream_side,
                        idle,
                        &up,
                        &down,
                    )
                    .await
                }
                Path::Splice => {
                    let pipes = Pipes::new().unwrap();
                    relay(pipes, &client_side, &upstream_side, idle, &up, &down).await
                }
            };
            (end, totals, up.get(), down.get())
        });
        Tunnel {
            client,
            upstream,
            relay,
        }
    }

    /// Deterministic bytes of stream `seed` at offset `at` (xorshift per 8-byte word).
    fn byte(seed: u64, at: u64) -> u8 {
        let mut x = seed ^ (at / 8).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x.to_le_bytes()[(at % 8) as usize]
    }

    /// Writes `len` bytes of stream `seed` in uneven chunks (many small segments fill pipe
    /// slots long before pipe bytes), then shuts the write half down.
    async fn send(mut w: tokio::net::tcp::OwnedWriteHalf, seed: u64, len: u64) {
        let mut at = 0u64;
        let mut chunk = vec![0u8; 70_000];
        let mut step = 1u64;
        while at < len {
            step = (step * 7919 + 13) % 69_000 + 1;
            let n = step.min(len - at) as usize;
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = byte(seed, at + i as u64);
            }
            w.write_all(&chunk[..n]).await.unwrap();
            at += n as u64;
        }
        w.shutdown().await.unwrap();
    }

    /// Reads to EOF, pausing now and then so the relay meets a full socket buffer and pipe;
    /// returns how many bytes arrived, all checked against stream `seed`.
    async fn receive(mut r: tokio::net::tcp::OwnedReadHalf, seed: u64) -> u64 {
        let mut at = 0u64;
        let mut buf = vec![0u8; 50_000];
        let mut reads = 0u32;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                return at;
            }
            for (i, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, byte(seed, at + i as u64), "byte {}", at + i as u64);
            }
            at += n as u64;
            reads += 1;
            if reads.is_multiple_of(16) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    #[tokio::test]
    async fn mebibytes_each_way_concurrently_byte_exact() {
        const UP: u64 = 6 << 20;
        const DOWN: u64 = 9 << 20;
        let t = tunnel(Path::Splice, Duration::from_secs(30)).await;
        let (client_r, client_w) = t.client.into_split();
        let (upstream_r, upstream_w) = t.upstream.into_split();
        let sends = tokio::spawn(async move {
            tokio::join!(send(client_w, 1, UP), send(upstream_w, 2, DOWN));
        });
        let (got_up, got_down) = tokio::join!(receive(upstream_r, 1), receive(client_r, 2));
        sends.await.unwrap();
        assert_eq!((got_up, got_down), (UP, DOWN));
        let (end, totals, up, down) = t.relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert_eq!(totals, Totals { up: UP, down: DOWN });
        assert_eq!((up, down), (UP, DOWN));
    }

    #[tokio::test]
    async fn client_half_close_still_gets_the_whole_answer() {
        let t = tunnel(Path::Splice, Duration::from_secs(30)).await;
        let (client_r, client_w) = t.client.into_split();
        let (upstream_r, upstream_w) = t.upstream.into_split();
        send(client_w, 3, 1 << 20).await;
        // The upstream sees the client's EOF before it answers.
        assert_eq!(receive(upstream_r, 3).await, 1 << 20);
        let answer = tokio::spawn(send(upstream_w, 4, 3 << 20));
        assert_eq!(receive(client_r, 4).await, 3 << 20);
        answer.await.unwrap();
        let (end, totals, _, _) = t.relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert_eq!(
            totals,
            Totals {
                up: 1 << 20,
                down: 3 << 20
            }
        );
    }

    #[tokio::test]
    async fn upstream_half_close_still_gets_the_whole_request() {
        let t = tunnel(Path::Splice, Duration::from_secs(30)).await;
        let (client_r, client_w) = t.client.into_split();
        let (upstream_r, upstream_w) = t.upstream.into_split();
        send(upstream_w, 5, 2 << 20).await;
        assert_eq!(receive(client_r, 5).await, 2 << 20);
        let request = tokio::spawn(send(client_w, 6, 1 << 20));
        assert_eq!(receive(upstream_r, 6).await, 1 << 20);
        request.await.unwrap();
        let (end, totals, _, _) = t.relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Closed), "{end:?}");
        assert_eq!(
            totals,
            Totals {
                up: 1 << 20,
                down: 2 << 20
            }
        );
    }

    #[tokio::test]
    async fn silent_tunnel_ends_after_the_idle_timeout() {
        let idle = Duration::from_millis(300);
        let mut t = tunnel(Path::Splice, idle).await;
        let started = Instant::now();
        // Activity half way pushes the deadline.
        tokio::time::sleep(Duration::from_millis(150)).await;
        t.client.write_all(b"x").await.unwrap();
        let mut got = [0u8; 1];
        t.upstream.read_exact(&mut got).await.unwrap();
        let (end, totals, up, _) = tokio::time::timeout(Duration::from_secs(5), t.relay)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(end, RelayEnd::IdleTimeout), "{end:?}");
        assert_eq!((totals.up, up), (1, 1));
        assert!(started.elapsed() >= Duration::from_millis(450));
    }

    /// How a relay ended, comparable across paths: variant, direction, error kind.
    fn shape(end: &RelayEnd) -> (&'static str, Option<Direction>) {
        match end {
            RelayEnd::Closed => ("closed", None),
            RelayEnd::IdleTimeout => ("idle", None),
            RelayEnd::ClosedWithError(d, _) => ("closed_with_error", Some(*d)),
            RelayEnd::Error(d, _) => ("error", Some(*d)),
        }
    }

    /// The client resets while both sides are still sending.
    async fn client_resets_mid_tunnel(path: Path) -> RelayEnd {
        let mut t = tunnel(path, Duration::from_secs(30)).await;
        t.client.write_all(b"query").await.unwrap();
        let mut got = [0u8; 5];
        t.upstream.read_exact(&mut got).await.unwrap();
        t.client.set_zero_linger().unwrap();
        drop(t.client);
        let (end, ..) = t.relay.await.unwrap();
        end
    }

    /// The client sends its last bytes and EOF, then resets; the upstream's goodbye finds it
    /// gone (PostgreSQL's Terminate then close_notify).
    async fn client_resets_after_its_eof(path: Path) -> RelayEnd {
        let mut t = tunnel(path, Duration::from_secs(30)).await;
        t.client.write_all(b"Terminate").await.unwrap();
        t.client.shutdown().await.unwrap();
        let mut got = Vec::new();
        t.upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"Terminate");
        t.client.set_zero_linger().unwrap();
        drop(t.client);
        // Several writes: the first may still be accepted before the reset is noticed.
        for _ in 0..50 {
            if t.upstream.write_all(&[0u8; 1024]).await.is_err() || t.relay.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (end, ..) = t.relay.await.unwrap();
        end
    }

    #[tokio::test]
    async fn resets_end_the_tunnel_as_the_copying_relay_does() {
        let copied = client_resets_mid_tunnel(Path::Copy).await;
        let spliced = client_resets_mid_tunnel(Path::Splice).await;
        assert_eq!(shape(&spliced), ("error", Some(Direction::Upstream)));
        assert_eq!(shape(&spliced), shape(&copied), "{spliced:?} vs {copied:?}");

        let copied = client_resets_after_its_eof(Path::Copy).await;
        let spliced = client_resets_after_its_eof(Path::Splice).await;
        assert_eq!(
            shape(&spliced),
            ("closed_with_error", Some(Direction::Downstream))
        );
        assert_eq!(shape(&spliced), shape(&copied), "{spliced:?} vs {copied:?}");
    }
}
