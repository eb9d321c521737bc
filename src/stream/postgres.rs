//! PostgreSQL's pre-TLS negotiation: the 8-byte `SSLRequest` (and `GSSENCRequest`) that libpq
//! before 17, and 17 with the default `sslnegotiation=postgres`, sends before its ClientHello.
//!
//! Recognising it is what lets the gateway route classic PostgreSQL TLS by SNI: it answers `S`
//! itself, reads the ClientHello that follows, and repeats the request to the chosen upstream.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::clienthello::{read_client_hello, read_more, ClientHello, ReadError};

/// `SSLRequest`: length 8, code 80877103 (protocol docs, "Message Formats").
pub const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// `GSSENCRequest`: length 8, code 80877104. Answered `N` so that libpq falls back to
/// `SSLRequest` on the same connection: the gateway cannot route GSSAPI encryption.
pub const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
/// The server's one-byte answer accepting TLS.
pub const ACCEPT_TLS: u8 = b'S';
/// The server's one-byte answer refusing TLS (or GSSAPI encryption).
pub const REFUSE: u8 = b'N';

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prelude {
    /// Not enough bytes to tell yet.
    NeedMore,
    /// Not a PostgreSQL request: handed to the ClientHello parser (TLS, or PostgreSQL 17 direct
    /// SSL), which rejects whatever is not TLS.
    NotPostgres,
    /// PostgreSQL `SSLRequest` in the first 8 bytes.
    SslRequest,
    /// PostgreSQL `GSSENCRequest` in the first 8 bytes.
    GssEncRequest,
    /// A PostgreSQL message sent in the clear (StartupMessage, CancelRequest) or other bytes
    /// starting with 0: nothing the stream listener can route.
    Unroutable,
}

/// Classifies the start of a connection from the bytes received so far.
pub fn classify(buf: &[u8]) -> Prelude {
    match buf.first() {
        None => Prelude::NeedMore,
        // Every PostgreSQL length prefix starts with 0 (messages are far below 16 MiB); a TLS
        // record starts with its content type, 22. Anything else is neither.
        Some(0) => {
            let head = &buf[..buf.len().min(SSL_REQUEST.len())];
            if head.len() < SSL_REQUEST.len() {
                if SSL_REQUEST.starts_with(head) || GSSENC_REQUEST.starts_with(head) {
                    Prelude::NeedMore
                } else {
                    Prelude::Unroutable
                }
            } else if head == SSL_REQUEST {
                Prelude::SslRequest
            } else if head == GSSENC_REQUEST {
                Prelude::GssEncRequest
            } else {
                Prelude::Unroutable
            }
        }
        Some(_) => Prelude::NotPostgres,
    }
}

/// Why the first bytes of a connection cannot be routed.
#[derive(Debug)]
pub enum Refusal {
    Read(ReadError),
    /// A PostgreSQL message that cannot be routed (StartupMessage in the clear, CancelRequest).
    UnroutablePostgres,
}

impl From<ReadError> for Refusal {
    fn from(e: ReadError) -> Self {
        Refusal::Read(e)
    }
}

/// Reads the optional PostgreSQL prelude and the ClientHello into `buf`. Returns the ClientHello
/// and whether the client opened with `SSLRequest`; `buf` then holds exactly the bytes to replay.
pub async fn read_prelude_and_hello<S>(
    client: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(ClientHello, bool), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut refused_gss = false;
    let postgres = loop {
        match classify(buf) {
            Prelude::NeedMore => read_more(client, buf).await?,
            Prelude::NotPostgres => break false,
            Prelude::SslRequest => {
                buf.drain(..SSL_REQUEST.len());
                write_now(client, &[ACCEPT_TLS]).await?;
                break true;
            }
            // libpq asks for GSSAPI encryption first when it has Kerberos credentials; `N` makes
            // it go on with SSLRequest on this connection. Only once: a loop would be abuse.
            Prelude::GssEncRequest if !refused_gss => {
                buf.drain(..GSSENC_REQUEST.len());
                write_now(client, &[REFUSE]).await?;
                refused_gss = true;
            }
            Prelude::GssEncRequest | Prelude::Unroutable => {
                return Err(Refusal::UnroutablePostgres)
            }
        }
    };
    let hello = read_client_hello(client, buf).await?;
    Ok((hello, postgres))
}

async fn write_now<S>(client: &mut S, bytes: &[u8]) -> Result<(), ReadError>
where
    S: AsyncWrite + Unpin + ?Sized,
{
    client.write_all(bytes).await.map_err(ReadError::Io)?;
    client.flush().await.map_err(ReadError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_request_is_the_documented_code() {
        let code = u32::from_be_bytes([
            SSL_REQUEST[4],
            SSL_REQUEST[5],
            SSL_REQUEST[6],
            SSL_REQUEST[7],
        ]);
        assert_eq!(code, 80877103);
        let code = u32::from_be_bytes([
            GSSENC_REQUEST[4],
            GSSENC_REQUEST[5],
            GSSENC_REQUEST[6],
            GSSENC_REQUEST[7],
        ]);
        assert_eq!(code, 80877104);
    }

    #[test]
    fn classifies_every_prefix_of_ssl_request_as_need_more() {
        for n in 0..SSL_REQUEST.len() {
            assert_eq!(classify(&SSL_REQUEST[..n]), Prelude::NeedMore, "prefix {n}");
        }
        assert_eq!(classify(&SSL_REQUEST), Prelude::SslRequest);
        assert_eq!(classify(&GSSENC_REQUEST), Prelude::GssEncRequest);
    }

    #[test]
    fn bytes_after_the_request_do_not_change_the_answer() {
        let mut buf = SSL_REQUEST.to_vec();
        buf.extend_from_slice(&[0x16, 3, 1]);
        assert_eq!(classify(&buf), Prelude::SslRequest);
    }

    #[test]
    fn startup_message_and_cancel_request_are_unroutable() {
        // StartupMessage, protocol 3.0, length 41.
        assert_eq!(classify(&[0, 0, 0, 41, 0, 3, 0, 0]), Prelude::Unroutable);
        // CancelRequest, code 80877102.
        assert_eq!(
            classify(&[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e]),
            Prelude::Unroutable
        );
        // Diverges early from both requests.
        assert_eq!(classify(&[0, 1]), Prelude::Unroutable);
    }

    #[test]
    fn anything_not_starting_with_zero_goes_to_the_tls_parser() {
        assert_eq!(classify(&[0x16]), Prelude::NotPostgres);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Prelude::NotPostgres);
    }

    /// Runs the prelude reader on `input` (written, then EOF); returns its result and answers.
    async fn prelude(input: Vec<u8>) -> (Result<(ClientHello, bool), Refusal>, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&input).await.unwrap();
        client.shutdown().await.unwrap();
        let mut buf = Vec::new();
        let result = read_prelude_and_hello(&mut server, &mut buf).await;
        drop(server);
        let mut answers = Vec::new();
        client.read_to_end(&mut answers).await.unwrap();
        (result, answers)
    }

    #[tokio::test]
    async fn ssl_request_then_client_hello() {
        let mut input = SSL_REQUEST.to_vec();
        input.extend(crate::stream::test_support::hello(
            Some("pg.example.com"),
            &[],
        ));
        let (result, answers) = prelude(input).await;
        let (hello, postgres) = result.unwrap();
        assert!(postgres);
        assert_eq!(hello.sni.as_deref(), Some("pg.example.com"));
        assert_eq!(answers, b"S");
    }

    #[tokio::test]
    async fn only_one_gssenc_request_is_answered() {
        let mut input = GSSENC_REQUEST.to_vec();
        input.extend_from_slice(&GSSENC_REQUEST);
        let (result, answers) = prelude(input).await;
        assert!(
            matches!(result, Err(Refusal::UnroutablePostgres)),
            "{result:?}"
        );
        assert_eq!(answers, b"N");
    }

    #[tokio::test]
    async fn ssl_request_followed_by_plain_text_is_not_tls() {
        let mut input = SSL_REQUEST.to_vec();
        input.extend_from_slice(&[0, 0, 0, 9, 0, 3, 0, 0, 0]);
        let (result, answers) = prelude(input).await;
        assert!(
            matches!(
                result,
                Err(Refusal::Read(ReadError::Reject(
                    crate::stream::Reject::NotTls
                )))
            ),
            "{result:?}"
        );
        assert_eq!(answers, b"S");
    }
}
