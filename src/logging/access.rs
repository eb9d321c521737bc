//! The access log: one line per request, formatted without `tracing`'s machinery and written by
//! a background thread.
//!
//! A line per request through `tracing`'s formatter and an unbuffered `write(2)` to stderr cost
//! about a third of a small proxied request. Here the request path formats the line straight
//! into a thread-local buffer (numbers with `itoa`, the timestamp's date and time of day cached
//! per second, strings escaped only when they need it) and appends it to a shared buffer; the
//! `access-log` thread writes that buffer in one call every [`FLUSH_EVERY`] or as soon as it holds
//! [`WAKE_AT`] bytes. When stderr does not keep up and [`MAX_BUFFERED`] bytes wait, new lines are
//! dropped and counted (`portcullis_access_log_dropped_total`) rather than held without bound or
//! blocking requests. Once a graceful shutdown starts, lines are written as they come, so the
//! exit that follows the drain loses none.
//!
//! The lines keep the shape of the gateway's other log lines (`tracing`'s text or flattened JSON
//! format, target `access`, message `request`), and the `access` target's level in
//! `PORTCULLIS_LOG` still turns them on and off.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines wait at most this long before they are written.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this full is written without waiting for the tick.
const WAKE_AT: usize = 64 * 1024;
/// Beyond this, stderr is not keeping up: lines are dropped.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;

struct Sink {
    json: bool,
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Set when a graceful shutdown begins: write each line as it comes.
    direct: AtomicBool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Starts the writer thread. Called once, by `logging::init`; without it access lines go
/// through `tracing` as any other event (the tests' in-process gateways).
pub(super) fn init(json: bool) {
    if SINK
        .set(Sink {
            json,
            buf: Mutex::new(Vec::with_capacity(WAKE_AT * 2)),
            wake: Condvar::new(),
            direct: AtomicBool::new(false),
        })
        .is_err()
    {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(writer);
    if let Err(e) = spawned {
        // Without the thread, write each line as it comes.
        if let Some(s) = SINK.get() {
            s.direct.store(true, Ordering::Relaxed);
        }
        tracing::warn!(error = %e, "cannot start the access log writer: writing lines directly");
    }
}

fn writer() {
    let Some(sink) = SINK.get() else { return };
    let mut out = Vec::with_capacity(WAKE_AT * 2);
    loop {
        {
            let buf = lock(&sink.buf);
            let (mut buf, _) = sink
                .wake
                .wait_timeout_while(buf, FLUSH_EVERY, |b| b.len() < WAKE_AT)
                .unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *buf, &mut out);
        }
        if !out.is_empty() {
            // Nothing useful can be done when stderr is gone; the lines are lost either way.
            let _ = std::io::stderr().lock().write_all(&out);
            out.clear();
        }
    }
}

fn lock(m: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes what is buffered and every later line directly: the process is about to exit.
pub fn shutdown() {
    let Some(sink) = SINK.get() else { return };
    sink.direct.store(true, Ordering::Relaxed);
    let mut buf = lock(&sink.buf);
    let _ = std::io::stderr().lock().write_all(&buf);
    buf.clear();
}

/// Whether a request's access line is written: the `access` target at `info`.
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// One request's access line.
pub struct Line<'a> {
    pub request_id: &'a str,
    pub client: Option<IpAddr>,
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub route: &'a str,
    pub service: &'a str,
    pub consumer: &'a str,
    pub status: u16,
    pub latency_ms: u64,
    pub upstream_latency_ms: u64,
    pub upstream: Option<SocketAddr>,
    pub tls: &'a str,
    pub tls_group: &'a str,
    pub error: &'a str,
}

/// Logs one request: buffered for the writer thread once `init` ran, else through `tracing`.
pub fn write(line: &Line<'_>) {
    let Some(sink) = SINK.get() else {
        line.trace();
        return;
    };
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let Ok(mut text) = scratch.try_borrow_mut() else {
            return;
        };
        text.clear();
        let now = SystemTime::now();
        if sink.json {
            line.json(&mut text, now);
        } else {
            line.text(&mut text, now);
        }
        if sink.direct.load(Ordering::Relaxed) {
            let _ = std::io::stderr().lock().write_all(&text);
            return;
        }
        let mut buf = lock(&sink.buf);
        if buf.len() + text.len() > MAX_BUFFERED {
            drop(buf);
            crate::metrics::ACCESS_LOG_DROPPED.inc();
            return;
        }
        buf.extend_from_slice(&text);
        if buf.len() >= WAKE_AT && buf.len() - text.len() < WAKE_AT {
            sink.wake.notify_one();
        }
    });
}

impl Line<'_> {
    /// The line as a `tracing` event (no writer thread: tests that embed the gateway).
    fn trace(&self) {
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            client = %Opt(self.client),
            method = %self.method,
            path = %self.path,
            host = self.host,
            route = self.route,
            service = self.service,
            consumer = self.consumer,
            status = self.status,
            latency_ms = self.latency_ms,
            upstream_latency_ms = self.upstream_latency_ms,
            upstream = %Opt(self.upstream),
            tls = self.tls,
            tls_group = self.tls_group,
            error = self.error,
            "request"
        );
    }

    /// `tracing`'s text format: `<time>  INFO access: request request_id=… host="…" status=200 …`.
    fn text(&self, out: &mut Vec<u8>, now: SystemTime) {
        timestamp(out, now);
        out.extend_from_slice(b"  INFO access: request request_id=");
        plain(out, self.request_id);
        out.extend_from_slice(b" client=");
        match self.client {
            Some(ip) => push_ip(out, ip),
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" method=");
        plain(out, self.method);
        out.extend_from_slice(b" path=");
        plain(out, self.path);
        for (name, value) in [
            (&b" host="[..], self.host),
            (b" route=", self.route),
            (b" service=", self.service),
            (b" consumer=", self.consumer),
        ] {
            out.extend_from_slice(name);
            quoted(out, value);
        }
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b" status=");
        out.extend_from_slice(n.format(self.status).as_bytes());
        out.extend_from_slice(b" latency_ms=");
        out.extend_from_slice(n.format(self.latency_ms).as_bytes());
        out.extend_from_slice(b" upstream_latency_ms=");
        out.extend_from_slice(n.format(self.upstream_latency_ms).as_bytes());
        out.extend_from_slice(b" upstream=");
        match self.upstream {
            Some(a) => push_addr(out, a),
            None => out.push(b'-'),
        }
        for (name, value) in [
            (&b" tls="[..], self.tls),
            (b" tls_group=", self.tls_group),
            (b" error=", self.error),
        ] {
            out.extend_from_slice(name);
            quoted(out, value);
        }
        out.push(b'\n');
    }

    /// `tracing`'s flattened JSON format.
    fn json(&self, out: &mut Vec<u8>, now: SystemTime) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\"");
        let field = |out: &mut Vec<u8>, name: &str, value: &str| {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            json_str(out, value);
        };
        field(out, "request_id", self.request_id);
        out.extend_from_slice(b",\"client\":\"");
        match self.client {
            Some(ip) => push_ip(out, ip),
            None => out.push(b'-'),
        }
        out.push(b'"');
        field(out, "method", self.method);
        field(out, "path", self.path);
        field(out, "host", self.host);
        field(out, "route", self.route);
        field(out, "service", self.service);
        field(out, "consumer", self.consumer);
        let mut n = itoa::Buffer::new();
        for (name, value) in [
            ("status", u64::from(self.status)),
            ("latency_ms", self.latency_ms),
            ("upstream_latency_ms", self.upstream_latency_ms),
        ] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            out.extend_from_slice(n.format(value).as_bytes());
        }
        out.extend_from_slice(b",\"upstream\":\"");
        match self.upstream {
            Some(a) => push_addr(out, a),
            None => out.push(b'-'),
        }
        out.push(b'"');
        field(out, "tls", self.tls);
        field(out, "tls_group", self.tls_group);
        field(out, "error", self.error);
        out.extend_from_slice(b",\"target\":\"access\"}\n");
    }
}

/// An address as `Display` writes it; IPv4 without `core::fmt`, a measurable share of the line.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(n.format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            push_ip(out, IpAddr::V4(*a.ip()));
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
        }
        SocketAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// `Some(x)` as `x`, `None` as `-`.
struct Opt<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Opt<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

fn needs_escape(s: &str) -> bool {
    s.bytes()
        .any(|b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\' || b >= 0x80)
}

/// A value written bare (`request_id=abc`), control characters escaped as elsewhere in text logs.
fn plain(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let mut text = String::new();
    let _ = super::write_escaped(&mut text, s);
    out.extend_from_slice(text.as_bytes());
}

/// A value written as `tracing` writes a `&str` field: Rust's debug quoting.
fn quoted(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    let mut text = String::new();
    let _ = super::write_escaped(&mut text, &format!("{s:?}"));
    out.extend_from_slice(text.as_bytes());
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing a string into memory cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// RFC 3339 UTC with microseconds, as `tracing` writes it; the part before the fraction is
/// formatted once a second per thread.
fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached_secs, mut prefix) = CACHED.get();
    if cached_secs != secs {
        prefix = date_time(secs);
        CACHED.set((secs, prefix));
    }
    out.extend_from_slice(&prefix);
    let micros = since.subsec_micros();
    let mut frac = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z'];
    let mut m = micros;
    for i in (1..7).rev() {
        frac[i] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(&frac);
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (the civil-from-days algorithm of H. Hinnant's
/// `chrono`-compatible date library).
fn date_time(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut b = [0u8; 19];
    let mut put = |at: usize, v: i64, width: usize| {
        let mut v = v.clamp(0, 9999);
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, (tod / 3600) as i64, 2);
    put(14, (tod / 60 % 60) as i64, 2);
    put(17, (tod % 60) as i64, 2);
    b[4] = b'-';
    b[7] = b'-';
    b[10] = b'T';
    b[13] = b':';
    b[16] = b':';
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Line<'static> {
        Line {
            request_id: "rid-1",
            client: Some("127.0.0.9".parse().unwrap()),
            method: "GET",
            path: "/a",
            host: "h.test",
            route: "r",
            service: "s",
            consumer: "-",
            status: 200,
            latency_ms: 3,
            upstream_latency_ms: 1,
            upstream: Some("127.0.0.1:8080".parse().unwrap()),
            tls: "-",
            tls_group: "-",
            error: "",
        }
    }

    #[test]
    fn timestamps_match_rfc3339_across_dates() {
        let at = |secs: u64, micros: u64| {
            let mut out = Vec::new();
            timestamp(
                &mut out,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2000-02-29 (a leap day in a century leap year), 2026-12-04, 2100-03-01.
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(at(1_796_373_296, 123_456), "2026-12-04T08:34:56.123456Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn addresses_print_as_display_does() {
        for a in [
            "127.0.0.1:8080",
            "10.200.3.45:1",
            "[::1]:443",
            "[2001:db8::7]:65535",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let mut out = Vec::new();
            push_addr(&mut out, a);
            assert_eq!(String::from_utf8(out).unwrap(), a.to_string());
            let mut out = Vec::new();
            push_ip(&mut out, a.ip());
            assert_eq!(String::from_utf8(out).unwrap(), a.ip().to_string());
        }
    }

    #[test]
    fn text_line_has_tracings_shape() {
        let mut out = Vec::new();
        line().text(&mut out, UNIX_EPOCH);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000Z  INFO access: request request_id=rid-1 client=127.0.0.9 \
             method=GET path=/a host=\"h.test\" route=\"r\" service=\"s\" consumer=\"-\" status=200 \
             latency_ms=3 upstream_latency_ms=1 upstream=127.0.0.1:8080 tls=\"-\" tls_group=\"-\" \
             error=\"\"\n"
        );
    }

    #[test]
    fn client_strings_cannot_forge_lines_in_either_format() {
        let mut l = line();
        l.request_id = "x\ninjected\u{1b}[31m";
        l.host = "evil\"\r\nhost";
        l.client = None;
        l.upstream = None;
        let mut text = Vec::new();
        l.text(&mut text, UNIX_EPOCH);
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text}");
        assert!(
            text.contains("request_id=x\\ninjected\\u{1b}[31m"),
            "{text}"
        );
        assert!(text.contains(r#"host="evil\"\r\nhost""#), "{text}");
        assert!(
            text.contains("client=- ") && text.contains("upstream=- "),
            "{text}"
        );
        let mut json = Vec::new();
        l.json(&mut json, UNIX_EPOCH);
        let json = String::from_utf8(json).unwrap();
        assert_eq!(json.matches('\n').count(), 1, "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["request_id"], "x\ninjected\u{1b}[31m");
        assert_eq!(v["host"], "evil\"\r\nhost");
        assert_eq!(v["status"], 200);
        assert_eq!(v["target"], "access");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
    }
}
