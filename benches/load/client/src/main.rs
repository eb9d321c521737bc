//! pcload: a small HTTP/1.1 load client for the benchmark harness (`benches/load/run.sh`).
//!
//! One client for every scenario keeps the figures comparable: plain HTTP and TLS keep-alive
//! load, TLS with a client certificate (S3; neither wrk nor h2load can present one), one request
//! per fresh connection with a full handshake and no resumption (S4, S5 connection rate), bulk
//! downloads (S5 throughput), holding many idle keep-alive connections (memory), and generating
//! the large configuration (10,000 routes, 1,000 certificates) for the memory figure.
//!
//! It runs on a single-threaded Tokio runtime so that `taskset` can give it exactly one core, and
//! prints one JSON object per run on stdout.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslMode, SslVerifyMode, SslVersion};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

const USAGE: &str = "usage:
  pcload run  --addr IP:PORT [--host H] [--path /] [--tls] [--sni NAME] [--ca FILE]
              [--cert FILE --key FILE] [--groups X25519] [--conns 64] [--duration 5]
              [--warmup 1] [--close] [--header-file FILE]
  pcload hold --addr IP:PORT [--tls --sni NAME ...] [--conns 1000] [--hold 5]
  pcload bigconf --dir DIR --routes 10000 --certs 1000 --upstream IP:PORT --listen IP:PORT
              --tls-listen IP:PORT
  pcload ports N";

/// `--key value` and `--flag` options.
struct Args {
    map: BTreeMap<String, String>,
}

impl Args {
    fn parse(list: &[String]) -> Result<Args, Error> {
        let mut map = BTreeMap::new();
        let mut i = 0;
        while i < list.len() {
            let k = list[i]
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {:?}\n{USAGE}", list[i]))?;
            match list.get(i + 1) {
                Some(v) if !v.starts_with("--") => {
                    map.insert(k.to_string(), v.clone());
                    i += 2;
                }
                _ => {
                    map.insert(k.to_string(), String::new());
                    i += 1;
                }
            }
        }
        Ok(Args { map })
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.map.get(k).map(String::as_str)
    }
    fn flag(&self, k: &str) -> bool {
        self.map.contains_key(k)
    }
    fn req(&self, k: &str) -> Result<&str, Error> {
        self.get(k)
            .ok_or_else(|| format!("--{k} is required\n{USAGE}").into())
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T, Error> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{k}: not a number: {v:?}").into()),
        }
    }
}

/// How to reach the system under test.
struct Target {
    addr: std::net::SocketAddr,
    tls: Option<(SslConnector, String)>,
    request: Vec<u8>,
    /// The version, cipher suite and key-exchange group of the first handshake, for the report.
    cipher: std::sync::OnceLock<String>,
}

impl Target {
    /// `idle`: connections that are opened, used once and held (`hold`): OpenSSL frees a
    /// connection's record buffers while it has nothing to read or write, so that 10,000 held
    /// TLS connections cost the client little memory.
    fn from_args(a: &Args, close: bool, idle: bool) -> Result<Target, Error> {
        let addr = a.req("addr")?.parse()?;
        let host = a.get("host").unwrap_or("bench.test").to_string();
        let path = a.get("path").unwrap_or("/");
        let tls = if a.flag("tls") {
            let mut b = SslConnector::builder(SslMethod::tls_client())?;
            // The scenarios are TLS 1.3; pinning it keeps every system on the same protocol.
            b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
            b.set_alpn_protos(b"\x08http/1.1")?;
            // One key exchange for every system: OpenSSL 3.5+ (Portcullis, this client) would
            // otherwise negotiate the hybrid X25519MLKEM768, which Debian's OpenSSL 3.0 (nginx,
            // HAProxy) lacks, and compare a post-quantum handshake with a classic one.
            b.set_groups_list(a.get("groups").unwrap_or("X25519"))?;
            match a.get("ca") {
                Some(ca) => b.set_ca_file(ca)?,
                // Skipping chain verification keeps the client's share of a handshake small
                // (the handshake signature is still checked, as TLS 1.3 requires).
                None => b.set_verify(SslVerifyMode::NONE),
            }
            if let (Some(cert), Some(key)) = (a.get("cert"), a.get("key")) {
                b.set_certificate_chain_file(cert)?;
                b.set_private_key_file(key, SslFiletype::PEM)?;
            }
            if idle {
                b.set_mode(SslMode::RELEASE_BUFFERS);
            }
            // No session cache: every new connection is a full handshake (no resumption).
            b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::OFF);
            let sni = a.get("sni").unwrap_or(&host).to_string();
            Some((b.build(), sni))
        } else {
            None
        };
        let conn = if close { "close" } else { "keep-alive" };
        // Extra request headers, one `Name: value` per line (credentials for plugin scenarios).
        let extra: String = match a.get("header-file") {
            Some(f) => std::fs::read_to_string(f)?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("{}\r\n", l.trim_end()))
                .collect(),
            None => String::new(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: pcload\r\nAccept: */*\r\n{extra}Connection: {conn}\r\n\r\n"
        )
        .into_bytes();
        Ok(Target {
            addr,
            tls,
            request,
            cipher: std::sync::OnceLock::new(),
        })
    }

    /// A new connection, TLS handshake included; returns whether the session was resumed.
    async fn connect(&self) -> Result<(Box<dyn Io>, bool), Error> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok((Box::new(tcp), false)),
            Some((connector, sni)) => {
                let ssl = connector
                    .configure()?
                    .verify_hostname(false)
                    .into_ssl(sni)?;
                let mut s = SslStream::new(ssl, tcp)?;
                Pin::new(&mut s).connect().await?;
                let resumed = s.ssl().session_reused();
                if self.cipher.get().is_none() {
                    let c = s.ssl().current_cipher().map(|c| c.name()).unwrap_or("?");
                    let v = s.ssl().version_str();
                    let g = portcullis_openssl_ext::negotiated_group(s.ssl()).unwrap_or("?");
                    let _ = self.cipher.set(format!("{v} {c} {g}"));
                }
                Ok((Box::new(s), resumed))
            }
        }
    }
}

/// A read buffer that keeps unread bytes between responses.
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes; returns how many (0 at end of stream).
    async fn fill(&mut self, io: &mut dyn Io, counter: &mut Counter) -> Result<usize, Error> {
        if self.start > 0 && self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err("response header too large".into());
        }
        let n = io.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        counter.bytes(n);
        Ok(n)
    }

    async fn line(&mut self, io: &mut dyn Io, counter: &mut Counter) -> Result<Vec<u8>, Error> {
        loop {
            if let Some(i) = self.data().windows(2).position(|w| w == b"\r\n") {
                let line = self.data()[..i].to_vec();
                self.consume(i + 2);
                return Ok(line);
            }
            if self.fill(io, counter).await? == 0 {
                return Err("connection closed in a chunk header".into());
            }
        }
    }

    /// Discards `n` body bytes.
    async fn skip(
        &mut self,
        io: &mut dyn Io,
        mut n: u64,
        counter: &mut Counter,
    ) -> Result<(), Error> {
        while n > 0 {
            if self.data().is_empty() && self.fill(io, counter).await? == 0 {
                return Err("connection closed in the body".into());
            }
            let take = (self.data().len() as u64).min(n) as usize;
            self.consume(take);
            n -= take as u64;
        }
        Ok(())
    }
}

/// Counts bytes received inside the measurement window.
struct Counter {
    window: (Instant, Instant),
    bytes: u64,
}

impl Counter {
    fn bytes(&mut self, n: usize) {
        let now = Instant::now();
        if now >= self.window.0 && now <= self.window.1 {
            self.bytes += n as u64;
        }
    }
}

/// Status code and whether the connection may be reused.
async fn read_response(
    io: &mut dyn Io,
    r: &mut Reader,
    counter: &mut Counter,
) -> Result<(u16, bool), Error> {
    let (status, hlen, length, chunked, close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(r.data())? {
            httparse::Status::Complete(hlen) => {
                let mut length = None;
                let mut chunked = false;
                let mut close = false;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<u64>().ok());
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = h.value.eq_ignore_ascii_case(b"chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                break (resp.code.unwrap_or(0), hlen, length, chunked, close);
            }
            httparse::Status::Partial => {
                if r.fill(io, counter).await? == 0 {
                    return Err("connection closed before a response".into());
                }
            }
        }
    };
    r.consume(hlen);
    if chunked {
        loop {
            let line = r.line(io, counter).await?;
            let text = std::str::from_utf8(&line)?;
            let size = u64::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)?;
            if size == 0 {
                while !r.line(io, counter).await?.is_empty() {}
                break;
            }
            r.skip(io, size, counter).await?;
            r.line(io, counter).await?;
        }
    } else if let Some(n) = length {
        r.skip(io, n, counter).await?;
    } else if !(status == 204 || status == 304) {
        // Delimited by the end of the connection.
        while {
            let n = r.data().len();
            r.consume(n);
            r.fill(io, counter).await? > 0
        } {}
        return Ok((status, false));
    }
    Ok((status, !close))
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    requests: u64,
    errors: u64,
    statuses: BTreeMap<u16, u64>,
    handshakes: u64,
    resumed: u64,
    reconnects: u64,
    bytes: u64,
    first_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, o: Stats) {
        self.latencies_us.extend(o.latencies_us);
        self.requests += o.requests;
        self.errors += o.errors;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.handshakes += o.handshakes;
        self.resumed += o.resumed;
        self.reconnects += o.reconnects;
        self.bytes += o.bytes;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// One connection's loop: keep-alive requests, or (`close`) one request per new connection.
async fn worker(target: Arc<Target>, window: (Instant, Instant), close: bool) -> Stats {
    let mut st = Stats::default();
    let mut counter = Counter { window, bytes: 0 };
    let mut conn: Option<Box<dyn Io>> = None;
    let end = window.1;
    let mut reader = Reader::new();
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let attempt = async {
            if conn.is_none() {
                let (c, resumed) = target.connect().await?;
                conn = Some(c);
                reader = Reader::new();
                return Ok::<_, Error>((None, resumed));
            }
            Ok((Some(()), false))
        };
        // Connect (with its handshake) inside the timed request when `close`: S4 measures the
        // whole connection.
        let fresh = match tokio::time::timeout_at(end.into(), attempt).await {
            Err(_) => break,
            Ok(Err(e)) => {
                st.errors += 1;
                st.first_error
                    .get_or_insert_with(|| format!("connect: {e}"));
                // Do not spin on a refused port.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Ok(Ok((reused, resumed))) => {
                if reused.is_none() {
                    st.handshakes += 1;
                    st.resumed += u64::from(resumed);
                }
                reused.is_none()
            }
        };
        if fresh && !close && st.handshakes > 1 {
            st.reconnects += 1;
        }
        let Some(io) = conn.as_mut() else { continue };
        let exchange = async {
            io.write_all(&target.request).await?;
            read_response(io.as_mut(), &mut reader, &mut counter).await
        };
        match tokio::time::timeout_at(end.into(), exchange).await {
            Err(_) => break,
            Ok(Err(e)) => {
                st.errors += 1;
                st.first_error
                    .get_or_insert_with(|| format!("request: {e}"));
                conn = None;
            }
            Ok(Ok((status, keep))) => {
                let t1 = Instant::now();
                if t0 >= window.0 && t1 <= end {
                    st.requests += 1;
                    *st.statuses.entry(status).or_default() += 1;
                    if !(200..300).contains(&status) {
                        st.errors += 1;
                    }
                    st.latencies_us
                        .push(t1.duration_since(t0).as_micros().min(u32::MAX as u128) as u32);
                }
                if close || !keep {
                    if let Some(mut c) = conn.take() {
                        let _ = c.shutdown().await;
                    }
                }
            }
        }
    }
    st.bytes = counter.bytes;
    st
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 Hz on Linux).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((u + st) / 100.0)
        })
        .unwrap_or(0.0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn run(a: &Args) -> Result<(), Error> {
    let close = a.flag("close");
    let target = Arc::new(Target::from_args(a, close, false)?);
    let conns: usize = a.num("conns", 64)?;
    let duration: f64 = a.num("duration", 5.0)?;
    let warmup: f64 = a.num("warmup", 1.0)?;
    let start = Instant::now();
    let window = (
        start + Duration::from_secs_f64(warmup),
        start + Duration::from_secs_f64(warmup + duration),
    );
    let cpu0 = cpu_seconds();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(worker(target.clone(), window, close)));
    }
    let mut st = Stats::default();
    for t in tasks {
        st.merge(t.await?);
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = start.elapsed().as_secs_f64();
    st.latencies_us.sort_unstable();
    let statuses: Vec<String> = st
        .statuses
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    println!(
        "{{\"requests\":{},\"errors\":{},\"duration\":{duration},\"rps\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"gbps\":{:.3},\"bytes\":{},\"handshakes\":{},\"resumed\":{},\"reconnects\":{},\"client_cpu\":{:.2},\"client_util\":{:.2},\"statuses\":{{{}}},\"tls\":{:?},\"first_error\":{}}}",
        st.requests,
        st.errors,
        st.requests as f64 / duration,
        percentile(&st.latencies_us, 0.50),
        percentile(&st.latencies_us, 0.99),
        st.bytes as f64 * 8.0 / duration / 1e9,
        st.bytes,
        st.handshakes,
        st.resumed,
        st.reconnects,
        cpu,
        cpu / wall,
        statuses.join(","),
        target.cipher.get().map(String::as_str).unwrap_or(""),
        match &st.first_error {
            Some(e) => format!("{:?}", e),
            None => "null".into(),
        }
    );
    Ok(())
}

/// Opens `conns` keep-alive connections, one request on each, holds them for `hold` seconds.
async fn hold(a: &Args) -> Result<(), Error> {
    let target = Arc::new(Target::from_args(a, false, true)?);
    let conns: usize = a.num("conns", 1000)?;
    let hold: f64 = a.num("hold", 5.0)?;
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(conns);
    let release = Arc::new(tokio::sync::Notify::new());
    for _ in 0..conns {
        let (t, sem, tx, release) = (
            target.clone(),
            sem.clone(),
            ready_tx.clone(),
            release.clone(),
        );
        tokio::spawn(async move {
            let far = Instant::now() + Duration::from_secs(3600);
            let mut counter = Counter {
                window: (far, far),
                bytes: 0,
            };
            let permit = sem.acquire_owned().await;
            let r = async {
                let (mut io, _) = t.connect().await?;
                let mut reader = Reader::new();
                io.write_all(&t.request).await?;
                let (status, _) = read_response(io.as_mut(), &mut reader, &mut counter).await?;
                Ok::<_, Error>((io, status))
            }
            .await;
            drop(permit);
            match r {
                Ok((io, _status)) => {
                    // Registered before reporting ready, so the release cannot be missed.
                    let released = release.notified();
                    let _ = tx.send(Ok(())).await;
                    drop(tx);
                    released.await;
                    drop(io);
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                }
            }
        });
    }
    drop(ready_tx);
    let (mut ok, mut failed, mut first) = (0usize, 0usize, None);
    for _ in 0..conns {
        let Some(r) = ready_rx.recv().await else {
            break;
        };
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    // The harness samples the proxy's memory between these two lines.
    println!("ready open={ok} failed={failed} first_error={first:?}");
    std::io::stdout().flush()?;
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    release.notify_waiters();
    println!("released");
    Ok(())
}

/// Self-signed P-256 certificate and key for `names` (the first is the CN).
fn self_signed(names: &[String]) -> Result<(String, String), Error> {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, &names[0])?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    b.set_serial_number(&*serial.to_asn1_integer()?)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(365)?)?;
    let mut san = SubjectAlternativeName::new();
    for n in names {
        san.dns(n);
    }
    let san = san.build(&b.x509v3_context(None, None))?;
    b.append_extension(san)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok((
        String::from_utf8(b.build().to_pem()?)?,
        String::from_utf8(key.private_key_to_pem_pkcs8()?)?,
    ))
}

/// The memory-test configuration: `routes` routes over `routes / 10` services (a host and a
/// path each, every tenth a wildcard host, every hundredth a regex path) and `certs`
/// certificates (every tenth for a wildcard SNI).
fn bigconf(a: &Args) -> Result<(), Error> {
    let dir = PathBuf::from(a.req("dir")?);
    let routes: usize = a.num("routes", 10_000)?;
    let certs: usize = a.num("certs", 1000)?;
    let upstream = a.req("upstream")?;
    let listen = a.req("listen")?;
    let tls_listen = a.req("tls-listen")?;
    std::fs::create_dir_all(dir.join("certs"))?;
    let mut y = String::new();
    y.push_str(&format!(
        "_format_version: \"3.0\"\nlisteners:\n  proxy:\n    - address: {listen}\n    - address: {tls_listen}\n      tls: true\nserver:\n  threads: 1\n  pid_file: {d}/portcullis.pid\n  upgrade_sock: {d}/upgrade.sock\ncertificates:\n",
        d = dir.display()
    ));
    for i in 0..certs {
        let sni = if i % 10 == 0 {
            format!("*.w{i}.bench.test")
        } else {
            format!("h{i}.bench.test")
        };
        let (cert, key) = self_signed(std::slice::from_ref(&sni))?;
        write(&dir.join(format!("certs/c{i}.crt")), &cert)?;
        write(&dir.join(format!("certs/c{i}.key")), &key)?;
        y.push_str(&format!(
            "  - name: c{i}\n    cert_file: certs/c{i}.crt\n    key_file: certs/c{i}.key\n    snis: [\"{sni}\"]\n"
        ));
    }
    y.push_str("services:\n");
    let per = 10;
    for s in 0..routes.div_ceil(per) {
        y.push_str(&format!(
            "  - name: s{s}\n    url: http://{upstream}/svc{s}\n    routes:\n"
        ));
        for j in 0..per.min(routes - s * per) {
            let n = s * per + j;
            let host = if n % 10 == 9 {
                format!("\"*.s{s}.bench.test\"")
            } else {
                format!("s{s}.bench.test")
            };
            let path = if n % 100 == 50 {
                format!("\"~/r{j}/[0-9]+$\"")
            } else {
                format!("/r{j}")
            };
            y.push_str(&format!(
                "      - name: r{n}\n        hosts: [{host}]\n        paths: [{path}]\n"
            ));
        }
    }
    write(&dir.join("gateway.yaml"), &y)?;
    println!(
        "wrote {} ({routes} routes, {certs} certificates)",
        dir.display()
    );
    Ok(())
}

fn write(p: &Path, s: &str) -> Result<(), Error> {
    std::fs::write(p, s).map_err(|e| format!("{}: {e}", p.display()).into())
}

fn ports(n: usize) -> Result<(), Error> {
    // Bound all at once so the numbers differ; released just before the servers bind them.
    let socks: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let list: Vec<String> = socks
        .iter()
        .map(|s| s.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()?;
    println!("{}", list.join(" "));
    Ok(())
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = (|| -> Result<(), Error> {
        let (cmd, rest) = argv.split_first().ok_or(USAGE)?;
        if cmd == "ports" {
            return ports(rest.first().and_then(|n| n.parse().ok()).unwrap_or(1));
        }
        let a = Args::parse(rest)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match cmd.as_str() {
            "run" => rt.block_on(run(&a)),
            "hold" => rt.block_on(hold(&a)),
            "bigconf" => bigconf(&a),
            _ => Err(USAGE.into()),
        }
    })();
    if let Err(e) = result {
        eprintln!("pcload: {e}");
        std::process::exit(1);
    }
}
