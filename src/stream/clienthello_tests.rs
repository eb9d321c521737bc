//! Parser tests on real OpenSSL ClientHellos, every split of them, and hostile inputs.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::stream::test_support::{hello, hello_tls12, hello_with_padding, refragment, Rng};

fn done(buf: &[u8]) -> ClientHello {
    match parse(buf) {
        Ok(Progress::Done(h)) => h,
        other => panic!("expected a ClientHello, got {other:?}"),
    }
}

#[test]
fn reads_sni_and_alpn_from_a_tls13_client_hello() {
    let flight = hello(Some("httpbin-tls.example.com"), &[b"h2", b"http/1.1"]);
    let h = done(&flight);
    assert_eq!(h.sni.as_deref(), Some("httpbin-tls.example.com"));
    assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    assert_eq!(h.len, flight.len());
    assert_eq!(h.record_version >> 8, 3);
}

#[test]
fn reads_postgres_direct_ssl_alpn() {
    let h = done(&hello(Some("postgres.example.com"), &[b"postgresql"]));
    assert_eq!(h.sni.as_deref(), Some("postgres.example.com"));
    assert_eq!(h.alpn, vec![b"postgresql".to_vec()]);
}

#[test]
fn reads_a_tls12_only_client_hello() {
    let h = done(&hello_tls12("legacy.example.com"));
    assert_eq!(h.sni.as_deref(), Some("legacy.example.com"));
    assert!(h.alpn.is_empty());
}

#[test]
fn no_sni_is_reported_as_none() {
    let h = done(&hello(None, &[]));
    assert_eq!(h.sni, None);
}

#[test]
fn sni_is_lowercased_without_trailing_dot() {
    let h = done(&hello(Some("PostGres.Example.COM."), &[]));
    assert_eq!(h.sni.as_deref(), Some("postgres.example.com"));
}

#[test]
fn every_prefix_is_incomplete_and_the_whole_is_done() {
    let flight = hello(Some("one.example.com"), &[b"h2"]);
    for n in 0..flight.len() {
        assert_eq!(
            parse(&flight[..n]),
            Ok(Progress::Incomplete),
            "prefix of {n} bytes"
        );
    }
    assert_eq!(done(&flight).sni.as_deref(), Some("one.example.com"));
}

#[test]
fn client_hello_split_over_many_records() {
    let flight = hello(Some("split.example.com"), &[b"h2"]);
    // One byte per record (the handshake header itself spans four records), then odd sizes.
    for sizes in [&[1usize][..], &[2, 3], &[3, 1000], &[100], &[4, 7, 1]] {
        let split = refragment(&flight, sizes);
        let h = done(&split);
        assert_eq!(
            h.sni.as_deref(),
            Some("split.example.com"),
            "sizes {sizes:?}"
        );
        assert_eq!(h.alpn, vec![b"h2".to_vec()]);
        assert_eq!(h.len, split.len(), "sizes {sizes:?}");
        for n in 0..split.len() {
            assert_eq!(
                parse(&split[..n]),
                Ok(Progress::Incomplete),
                "{sizes:?} prefix {n}"
            );
        }
    }
}

#[test]
fn bytes_after_the_client_hello_are_left_alone() {
    let mut flight = hello(Some("early.example.com"), &[]);
    let hello_len = flight.len();
    // TLS 1.3 middlebox-compatibility ChangeCipherSpec, as sent before early data.
    flight.extend_from_slice(&[20, 3, 3, 0, 1, 1]);
    let h = done(&flight);
    assert_eq!(h.len, hello_len);
}

#[test]
fn large_client_hello_under_the_limit_is_read() {
    let flight = hello_with_padding("big.example.com", 12 * 1024);
    assert!(flight.len() > 12 * 1024);
    assert_eq!(done(&flight).sni.as_deref(), Some("big.example.com"));
}

#[test]
fn client_hello_over_16_kib_is_rejected_early() {
    let flight = hello_with_padding("huge.example.com", 20 * 1024);
    assert!(flight.len() > MAX_CLIENT_HELLO_BYTES);
    // OpenSSL splits it into records; the declared handshake length gives it away as soon as
    // the first record header and handshake header are in.
    assert_eq!(parse(&flight[..9]), Err(Reject::TooLarge));
    assert_eq!(parse(&flight), Err(Reject::TooLarge));
}

#[test]
fn many_tiny_records_cannot_exceed_the_bound() {
    // A legitimate-looking 3000-byte message sent one payload byte per record needs 18 KB.
    let mut body = vec![1u8, 0, 0x0b, 0xb8];
    body.resize(3004, 0);
    let mut flight = vec![22, 3, 1, 0x0b, 0xbc];
    flight.extend_from_slice(&body);
    let split = refragment(&flight, &[1]);
    assert!(split.len() > MAX_CLIENT_HELLO_BYTES);
    assert_eq!(parse(&split), Err(Reject::TooLarge));
}

#[test]
fn not_tls_is_recognised_from_the_first_bytes() {
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Reject::NotTls));
    assert_eq!(parse(b"SSH-2.0-OpenSSH_9.2\r\n"), Err(Reject::NotTls));
    assert_eq!(parse(&[0x16, 0x02]), Err(Reject::NotTls));
    // SSLv2-compatible ClientHello: cannot carry SNI.
    assert_eq!(parse(&[0x80, 0x2e, 0x01, 0x03, 0x01]), Err(Reject::NotTls));
    assert_eq!(parse(&[]), Ok(Progress::Incomplete));
    assert_eq!(parse(&[0x16]), Ok(Progress::Incomplete));
}

#[test]
fn malformed_handshakes_are_rejected_as_tls() {
    let malformed = |buf: &[u8]| matches!(parse(buf), Err(Reject::Malformed(_)));
    // Empty record.
    assert!(malformed(&[22, 3, 1, 0, 0]));
    // Record over 2^14.
    assert!(malformed(&[22, 3, 1, 0x40, 0x01]));
    // Not a ClientHello (ServerHello).
    assert!(malformed(&[22, 3, 1, 0, 4, 2, 0, 0, 0]));
    // ClientHello with an empty body.
    assert!(malformed(&[22, 3, 1, 0, 4, 1, 0, 0, 0]));
    // A handshake record followed by an alert record before the message is complete.
    let flight = hello(Some("x.example.com"), &[]);
    let mut split = refragment(&flight, &[10]);
    split[15] = 21;
    assert!(malformed(&split), "{:?}", parse(&split));
}

#[test]
fn truncated_or_inconsistent_lengths_are_malformed() {
    let flight = hello(Some("len.example.com"), &[b"h2"]);
    // Shorten the handshake length by one: the extensions no longer fit.
    let mut short = flight.clone();
    short[8] = short[8].wrapping_sub(1);
    if short[8] == 0xff {
        short[7] = short[7].wrapping_sub(1);
    }
    assert!(
        matches!(parse(&short), Err(Reject::Malformed(_))),
        "{:?}",
        parse(&short)
    );
}

/// Rewrites the server_name extension's host name bytes in place (same length).
fn with_host_bytes(flight: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = flight.to_vec();
    let at = out.windows(from.len()).position(|w| w == from).unwrap();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

#[test]
fn host_names_with_forbidden_bytes_are_malformed() {
    let flight = hello(Some("abc.example.com"), &[]);
    for bad in [
        &b"a c.example.com"[..],
        b"a\0c.example.com",
        b"a\xffc.example.com",
        b"a/c.example.com",
    ] {
        let edited = with_host_bytes(&flight, b"abc.example.com", bad);
        assert!(
            matches!(parse(&edited), Err(Reject::Malformed(_))),
            "{bad:?}"
        );
    }
    let edited = with_host_bytes(&flight, b"abc.example.com", b"a_c.example.com");
    assert_eq!(done(&edited).sni.as_deref(), Some("a_c.example.com"));
}

#[tokio::test]
async fn reader_handles_one_byte_per_segment() {
    let flight = hello(Some("slow.example.com"), &[b"postgresql"]);
    let (mut client, mut server) = tokio::io::duplex(1);
    let sent = flight.clone();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for b in sent {
            client.write_all(&[b]).await.unwrap();
            tokio::task::yield_now().await;
        }
        client
    });
    let mut buf = Vec::new();
    let h = read_client_hello(&mut server, &mut buf).await.unwrap();
    assert_eq!(h.sni.as_deref(), Some("slow.example.com"));
    assert_eq!(buf, flight);
    writer.await.unwrap();
}

#[tokio::test]
async fn reader_stops_at_the_bound_on_an_endless_stream() {
    // A valid-looking header promising a huge message is refused before reading further.
    let mut stream: &[u8] = &[22, 3, 1, 0x40, 0x00, 1, 0xff, 0xff, 0xff, 0, 0, 0];
    let mut buf = Vec::new();
    let err = read_client_hello(&mut stream, &mut buf).await.unwrap_err();
    assert!(
        matches!(err, ReadError::Reject(Reject::TooLarge)),
        "{err:?}"
    );

    // Records that never complete a message: reading stops at the bound.
    let mut endless = Vec::new();
    endless.extend_from_slice(&[22, 3, 1, 0, 4, 1, 0, 0x3f, 0xf0]);
    while endless.len() < 3 * MAX_CLIENT_HELLO_BYTES {
        endless.extend_from_slice(&[22, 3, 1, 0, 1, 0]);
    }
    let mut stream: &[u8] = &endless;
    let mut buf = Vec::new();
    let err = read_client_hello(&mut stream, &mut buf).await.unwrap_err();
    assert!(
        matches!(err, ReadError::Reject(Reject::TooLarge)),
        "{err:?}"
    );
    assert!(buf.len() <= MAX_CLIENT_HELLO_BYTES);
}

#[tokio::test]
async fn reader_reports_eof_before_a_whole_hello() {
    let flight = hello(Some("eof.example.com"), &[]);
    let mut stream: &[u8] = &flight[..flight.len() / 2];
    let mut buf = Vec::new();
    let err = read_client_hello(&mut stream, &mut buf).await.unwrap_err();
    assert!(matches!(err, ReadError::Eof), "{err:?}");
}

/// Property: parsing never panics, never claims more bytes than given, and is monotone: once a
/// prefix is decided (Done or Err), every longer input gives the same answer. Monotonicity is
/// what makes reading in arbitrary segments equivalent to reading everything at once.
fn check_properties(input: &[u8], rng: &mut Rng) {
    let whole = parse(input);
    if let Ok(Progress::Done(h)) = &whole {
        assert!(h.len <= input.len());
    }
    let cut = rng.below(input.len() + 1);
    match parse(&input[..cut]) {
        Ok(Progress::Incomplete) => {}
        decided => assert_eq!(decided, whole, "prefix {cut} of {input:02x?}"),
    }
}

/// Structured random mutation of real ClientHellos plus pure noise: a fuzzer that runs in
/// `cargo test` (the libFuzzer target in `fuzz/` covers the same property for longer runs).
#[test]
fn random_and_mutated_inputs_never_panic() {
    let seeds = [
        hello(Some("fuzz.example.com"), &[b"h2", b"http/1.1"]),
        hello(None, &[b"postgresql"]),
        hello_tls12("tls12.example.com"),
        refragment(&hello(Some("frag.example.com"), &[b"h2"]), &[3, 50]),
    ];
    let iterations: u64 = std::env::var("STREAM_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed = std::env::var("STREAM_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_c0de);
    let mut rng = Rng::new(seed);
    for i in 0..iterations {
        let mut input = if i % 5 == 0 {
            // Noise, half of it behind a plausible record header.
            let n = rng.below(300);
            let mut v = rng.bytes(n);
            if i % 2 == 0 {
                let mut h = vec![22, 3, 1, (n >> 8) as u8, n as u8];
                h.append(&mut v);
                v = h;
            }
            v
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..=rng.below(4) {
            if input.is_empty() {
                break;
            }
            let at = rng.below(input.len());
            match rng.below(6) {
                0 => input[at] ^= 1 << rng.below(8),
                1 => input[at] = rng.next() as u8,
                2 => input.truncate(at),
                3 => {
                    let n = rng.below(16) + 1;
                    let extra = rng.bytes(n);
                    input.splice(at..at, extra);
                }
                // Length fields are where parsers break: hit 16-bit values with extremes.
                4 if at + 1 < input.len() => {
                    let v = [0u16, 1, 0xff, 0x100, 0x3fff, 0x4000, 0xffff][rng.below(7)];
                    input[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
                _ => {
                    let end = (at + rng.below(64)).min(input.len());
                    input.drain(at..end);
                }
            }
        }
        check_properties(&input, &mut rng);
    }
}
