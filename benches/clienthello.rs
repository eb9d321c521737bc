//! Micro-benchmarks of the stream listener's per-connection work before any byte is relayed:
//! parsing a real ClientHello (whole, and the worst case of re-parsing after every byte of a
//! trickled one) and looking the SNI up in a table of a thousand routes.
//!
//! `cargo bench --bench clienthello`

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openssl::ssl::{HandshakeError, SslConnector, SslMethod};
use portcullis::stream::clienthello::{parse, Progress};
use portcullis::stream::{StreamRouteSpec, StreamTable, StreamTarget};

/// Captures what an OpenSSL client sends first (its ClientHello), without any server.
fn client_hello(sni: &str, alpn: &[u8]) -> Vec<u8> {
    #[derive(Debug)]
    struct Capture(Vec<u8>);
    impl Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut builder = SslConnector::builder(SslMethod::tls_client()).expect("connector");
    builder.set_alpn_protos(alpn).expect("alpn");
    match builder.build().connect(sni, Capture(Vec::new())) {
        Err(HandshakeError::WouldBlock(mid)) => mid.get_ref().0.clone(),
        _ => panic!("the handshake must wait for a server"),
    }
}

/// The same handshake payload in records of `size` bytes.
fn refragment(flight: &[u8], size: usize) -> Vec<u8> {
    let len = usize::from(u16::from_be_bytes([flight[3], flight[4]]));
    flight[5..5 + len]
        .chunks(size)
        .flat_map(|c| {
            let mut r = vec![flight[0], flight[1], flight[2]];
            r.extend_from_slice(&(c.len() as u16).to_be_bytes());
            r.extend_from_slice(c);
            r
        })
        .collect()
}

fn parsing(c: &mut Criterion) {
    let hello = client_hello("httpbin-tls.example.com", b"\x02h2\x08http/1.1");
    let fragmented = refragment(&hello, 64);
    let mut group = c.benchmark_group("clienthello");
    group.throughput(Throughput::Bytes(hello.len() as u64));
    group.bench_function("parse_whole", |b| {
        b.iter(|| match parse(black_box(&hello)) {
            Ok(Progress::Done(h)) => h,
            other => panic!("{other:?}"),
        })
    });
    group.bench_function("parse_64_byte_records", |b| {
        b.iter(|| parse(black_box(&fragmented)))
    });
    // A client sending one byte per segment makes the reader parse every prefix.
    group.bench_function("parse_every_prefix", |b| {
        b.iter(|| {
            for n in 1..=hello.len() {
                let _ = black_box(parse(black_box(&hello[..n])));
            }
        })
    });
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let target = StreamTarget {
        host: "127.0.0.1".into(),
        port: 5432,
        weight: 100,
    };
    let specs = (0..1000)
        .map(|i| StreamRouteSpec {
            route: format!("r{i}").into(),
            service: "s".into(),
            snis: vec![
                format!("db{i}.example.com"),
                format!("*.tenant{i}.example.com"),
            ],
            targets: vec![target.clone()],
            connect_timeout: Duration::from_secs(1),
            health: None,
            kinds: portcullis::stream::StreamKinds::PASSTHROUGH,
            sources: Vec::new(),
            destinations: Vec::new(),
            upstream_tls: None,
        })
        .collect();
    let table = StreamTable::new(specs);
    let mut group = c.benchmark_group("sni_lookup");
    group.bench_function("exact", |b| {
        b.iter(|| table.lookup(black_box("db517.example.com")).is_some())
    });
    group.bench_function("wildcard", |b| {
        b.iter(|| {
            table
                .lookup(black_box("pg.eu.tenant517.example.com"))
                .is_some()
        })
    });
    group.bench_function("miss", |b| {
        b.iter(|| table.lookup(black_box("nobody.example.org")).is_none())
    });
    group.finish();
}

criterion_group!(benches, parsing, lookup);
criterion_main!(benches);
