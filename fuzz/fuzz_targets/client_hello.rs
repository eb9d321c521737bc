//! Fuzzes the stream listener's first-bytes readers: the ClientHello parser, the async reader
//! that drives it over arbitrary TCP segmentation, and the PostgreSQL prelude (`SSLRequest`,
//! `GSSENCRequest`) read before it.
//!
//! Input: the first byte picks the segment size the reader sees (1..=256 bytes), the rest is the
//! byte stream a client sends. Checked properties, beyond "never panics":
//! - a parsed ClientHello never claims more bytes than it was given;
//! - parsing is monotone: a prefix that is decided (done or rejected) decides the whole the same
//!   way, which is what makes reading in any segmentation equivalent to reading at once;
//! - the async reader, fed in segments, agrees with one-shot parsing and never buffers more
//!   than the 16 KiB bound;
//! - the prelude reader answers at most one `N` then at most one `S`, and reports PostgreSQL
//!   exactly when it answered `S`.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[allow(dead_code)]
#[path = "../../src/stream/clienthello.rs"]
mod clienthello;
#[allow(dead_code)]
#[path = "../../src/stream/postgres.rs"]
mod postgres;

use clienthello::{parse, read_client_hello, Progress, ReadError, MAX_CLIENT_HELLO_BYTES};
use postgres::{read_prelude_and_hello, Refusal};

/// Hands out `data` in segments of `segment` bytes, then EOF; always ready. Collects what is
/// written back.
struct Segmented<'a> {
    data: &'a [u8],
    segment: usize,
    answers: Vec<u8>,
}

impl AsyncWrite for Segmented<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.answers.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls a future over always-ready I/O once: it must complete.
fn once<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("pending on always-ready I/O"),
    }
}

impl AsyncRead for Segmented<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self.segment.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let whole = parse(data);
    if let Ok(Progress::Done(hello)) = &whole {
        assert!(hello.len <= data.len());
    }
    let cut = usize::from(first) * data.len() / 256;
    match parse(&data[..cut]) {
        Ok(Progress::Incomplete) => {}
        decided => assert_eq!(decided, whole, "prefix of {cut} bytes decided differently"),
    }

    let _ = postgres::classify(data);

    let segment = usize::from(first) + 1;
    let mut source = Segmented {
        data,
        segment,
        answers: Vec::new(),
    };
    let mut buf = Vec::new();
    let read = once(read_client_hello(&mut source, &mut buf));
    assert!(buf.len() <= MAX_CLIENT_HELLO_BYTES);
    assert!(
        data.starts_with(&buf),
        "the reader's buffer is not what was sent"
    );
    match read {
        Ok(hello) => assert_eq!(parse(&buf), Ok(Progress::Done(hello))),
        Err(ReadError::Reject(reject)) => assert_eq!(parse(&buf), Err(reject)),
        Err(ReadError::Eof) => {
            assert_eq!(buf.len(), data.len());
            assert_eq!(parse(&buf), Ok(Progress::Incomplete));
        }
        Err(ReadError::Io(e)) => panic!("no I/O error is possible here: {e}"),
    }

    let mut source = Segmented {
        data,
        segment,
        answers: Vec::new(),
    };
    let mut buf = Vec::new();
    let read = once(read_prelude_and_hello(&mut source, &mut buf));
    let answers = source.answers;
    assert!(
        matches!(answers.as_slice(), b"" | b"N" | b"S" | b"NS"),
        "answers {answers:?}"
    );
    assert!(buf.len() <= MAX_CLIENT_HELLO_BYTES);
    match read {
        Ok((hello, postgres)) => {
            assert_eq!(postgres, answers.ends_with(b"S"));
            assert_eq!(parse(&buf), Ok(Progress::Done(hello)));
        }
        Err(Refusal::Read(ReadError::Io(e))) => panic!("no I/O error is possible here: {e}"),
        Err(_) => {}
    }
});
