//! Test helpers: real ClientHellos produced by OpenSSL (the library behind openssl s_client,
//! curl and libpq here) captured in memory, and re-fragmentation into other record layouts.
#![allow(clippy::unwrap_used)]

use std::io::{self, Read, Write};

use openssl::ssl::{
    ExtensionContext, HandshakeError, SslConnector, SslConnectorBuilder, SslMethod, SslVersion,
};

/// Collects what the client writes; reads would block, so the handshake stops after the
/// ClientHello.
#[derive(Debug)]
struct Capture(Vec<u8>);

impl Read for Capture {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The first flight OpenSSL sends for `sni` (none when `None`) after `configure`.
pub fn capture(sni: Option<&str>, configure: impl FnOnce(&mut SslConnectorBuilder)) -> Vec<u8> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    configure(&mut builder);
    let connector = builder.build();
    let mut config = connector.configure().unwrap();
    config.set_use_server_name_indication(sni.is_some());
    config.set_verify_hostname(false);
    match config.connect(sni.unwrap_or("unused.invalid"), Capture(Vec::new())) {
        Err(HandshakeError::WouldBlock(mid)) => mid.get_ref().0.clone(),
        Err(e) => panic!("unexpected handshake error: {e}"),
        Ok(_) => panic!("handshake cannot complete without a server"),
    }
}

/// A TLS 1.3-capable ClientHello for `sni` offering `alpn` (wire format lists).
pub fn hello(sni: Option<&str>, alpn: &[&[u8]]) -> Vec<u8> {
    let wire: Vec<u8> = alpn
        .iter()
        .flat_map(|p| std::iter::once(p.len() as u8).chain(p.iter().copied()))
        .collect();
    capture(sni, |b| {
        if !wire.is_empty() {
            b.set_alpn_protos(&wire).unwrap();
        }
    })
}

/// A ClientHello limited to TLS 1.2.
pub fn hello_tls12(sni: &str) -> Vec<u8> {
    capture(Some(sni), |b| {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    })
}

/// A ClientHello carrying an extra extension of `size` bytes (type 0xffa0), to make it large.
pub fn hello_with_padding(sni: &str, size: usize) -> Vec<u8> {
    capture(Some(sni), move |b| {
        b.add_custom_ext(
            0xffa0,
            ExtensionContext::CLIENT_HELLO,
            move |_, _, _| Ok(Some(vec![0x5a; size])),
            |_, _, _, _| Ok(()),
        )
        .unwrap();
    })
}

/// Splits the handshake payload of single-record `flight` into records of `sizes` bytes (the
/// last size repeats), keeping the record header's type and version.
pub fn refragment(flight: &[u8], sizes: &[usize]) -> Vec<u8> {
    let payload_len = usize::from(u16::from_be_bytes([flight[3], flight[4]]));
    let payload = &flight[5..5 + payload_len];
    let mut out = Vec::new();
    let mut rest = payload;
    let mut i = 0;
    while !rest.is_empty() {
        let size = sizes[i.min(sizes.len() - 1)].min(rest.len());
        out.extend_from_slice(&[flight[0], flight[1], flight[2]]);
        out.extend_from_slice(&(size as u16).to_be_bytes());
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        i += 1;
    }
    out.extend_from_slice(&flight[5 + payload_len..]);
    out
}

/// A small deterministic generator (xorshift64*), so failures reproduce from the printed seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
